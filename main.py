"""score_jax command line: one config file, one workdir, one mode.

    python main.py --config=configs/toy/gmm2d.py --workdir=runs/gmm --mode=train
    python main.py --config=configs/toy/gmm2d.py --workdir=runs/gmm --mode=sample
    python main.py --config=configs/ve/digits.py:smoke --workdir=runs/d --config.training.num_steps=50
    python main.py --config=configs/ve/digits.py --workdir=runs/digits --mode=inpaint           # or colorize (RGB data)

Kept short on purpose: everything else lives in the library, where tests can call it.
``--config=PATH[:variant]`` names a config file (``:smoke`` shrinks any of them to run in
seconds to a minute on a CPU); ``--config.section.field=value`` overrides one field.
"""

from __future__ import annotations

import importlib
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from score_jax import config_files  # light: the library (JAX) loads only once a mode runs
from score_jax.jobs import peers  # light too

# mode -> ("module:function" of (config, workdir), one-line description for --help)
# mode -> one-line description for --help; --mode=NAME runs score_jax.modes.NAME.run(config, workdir).
# A new mode is one file in score_jax/modes/ and one row here.
MODES = {
    "train": "train (resuming from the latest checkpoint), then sample the EMA model",
    "sample": "draw config.sampling.num_samples from the latest (or a chosen) checkpoint into <workdir>/samples/<k>",
    "eval": "held-out loss, bits/dim, FID / KID / IS / precision-recall of checkpoints (config.eval)",
    "fid_stats": "cache the real data's feature statistics for FID",
    "train_classifier": "train the in-domain feature classifier of an embedded dataset (offline FID features)",
    "train_noisy_classifier": "train the noise-conditional classifier p_t(y | x(t)) of classifier guidance "
                              "(config.noisy_classifier)",
    "inpaint": "fill masked regions of input images with the EMA model (config.controllable) into <workdir>/inpaint/<k>",
    "colorize": "colour gray versions of RGB input images with the EMA model into <workdir>/colorize/<k>",
    "distill": "consistency distillation of config.distill's teacher run into a 1-to-k-step student "
               "(config.model.parametrization='consistency') in <workdir>",
    "posthoc_ema": "reconstruct EMA profiles of config.posthoc.sigma_rel from a power-EMA run's snapshots into "
                   "<workdir>/ema/posthoc_<σ_rel>/<step>",
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a variant: path.py:smoke.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, samples and metrics (created by --mode=train).")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do; see --help.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU / GPU / "
                  "SLURM launches; the coordinator is found from the environment unless given below).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for --distributed without autodetection.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed without autodetection.")
flags.DEFINE_integer("process_id", None, "This process's index, for --distributed without autodetection.")
flags.DEFINE_integer("heartbeat_timeout", peers.DEFAULT_HEARTBEAT_TIMEOUT,
                     "With --distributed: seconds without a heartbeat after which a process counts as lost; "
                     "the others then stop in one line naming it.", lower_bound=1)
flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache folder, or 'off'; default "
                    "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/score_jax/jax.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors a user can fix from the command line (one line, no traceback), besides the library's
# ConfigError, NonFiniteLossError and CheckpointError (see ``user_errors``).
USER_ERRORS = (config_files.ConfigFileError, FileNotFoundError, FileExistsError, NotADirectoryError)
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")


def usage() -> str:
  """--help: what the command does, its flags, every mode and every config file, one line each."""
  lines = [__doc__.strip(), "", "Flags:"]
  for name in ("config", "workdir", "mode", "distributed", "coordinator_address", "num_processes", "process_id",
               "heartbeat_timeout", "compilation_cache"):
    lines.append(f"  --{name:<22}{FLAGS[name].help}")
  lines += ["", "Modes (--mode=):"]
  width = max(map(len, MODES)) + 2
  lines += [f"  {name:<{width}}{description}" for name, description in MODES.items()]
  lines += ["", "Config files (--config=; each takes :smoke):"]
  lines += [f"  {path:<45}{summary}" for path, summary in config_files.catalog()]
  return "\n".join(line if len(line) <= 160 or not line.startswith("  ") else line[:159] + "…" for line in lines)


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of ``--name=value`` or ``--name value`` in argv (the last one wins)."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir} is a file, not a folder; pass a folder (--mode=train creates it).")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every slip reported in one line (exit status 2) instead of a
  traceback, and --help printing ``usage()`` (exit status 0)."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    spec = _flag_value(argv, "config")
    if spec:  # the file, its variant and the overridden fields, checked before absl loads it
      config_files.check_fields(config_files.load(spec), config_files.override_names(argv))
      path, variant = config_files.split_spec(spec)  # absl is given the resolved file: any cwd works
      resolved = str(config_files.resolve(path)) + ("" if variant is None else f":{variant}")
      argv = [f"--config={resolved}" if arg in (f"--config={spec}", spec) else arg for arg in argv]
    rest = FLAGS(argv)
    _check_workdir(FLAGS.workdir)
    return rest
  except (flags.Error, config_files.ConfigFileError, NotADirectoryError) as e:
    message = " ".join(str(e).split())
    if isinstance(e, flags.Error):
      message += " (python main.py --help lists the flags, modes and config files)"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class _DropNoise(std_logging.Filter):
  """Keeps Orbax's per-save INFO chatter and JAX's "no TPU here" probe out of the console
  (warnings and errors still show)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    if "/orbax/" in record.pathname:
      return False
    return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_DropNoise())
  watch = None
  if FLAGS.distributed:
    watch = peers.connect(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                          process_id=FLAGS.process_id, heartbeat_timeout=FLAGS.heartbeat_timeout, workdir=FLAGS.workdir)
  from score_jax import compilation  # pylint: disable=g-import-not-at-top
  cache = compilation.enable_persistent_cache(FLAGS.compilation_cache)
  logging.info("Persistent compilation cache: %s.", cache or "off (--compilation_cache=off)")
  mode = importlib.import_module(f"score_jax.modes.{FLAGS.mode}")
  try:
    mode.run(FLAGS.config, FLAGS.workdir)
  except BaseException as e:  # pylint: disable=broad-except
    if watch is not None:
      watch.await_verdict(e)  # a collective whose peer is gone fails: the watch ends the run in its line
      watch.leave(finished=False)
    if isinstance(e, user_errors()):
      sys.exit(f"error: {e}")
    raise
  if watch is not None:
    watch.leave(finished=True)  # every process waits for the others here, so none is taken for lost


def user_errors() -> tuple[type[BaseException], ...]:
  from score_jax import checkpointing, experiment  # pylint: disable=import-outside-toplevel
  from score_jax.jobs import train_loop  # pylint: disable=import-outside-toplevel
  return USER_ERRORS + (experiment.ConfigError, train_loop.NonFiniteLossError, checkpointing.CheckpointError)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
