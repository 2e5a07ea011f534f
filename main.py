"""Command-line entry: parses flags and dispatches to ``score_jax.train``, ``sample``, ``evaluate`` or
``classifiers``.

    python main.py --config=configs/toy/gmm2d.py --workdir=runs/gmm --mode=train
    python main.py --config=configs/toy/gmm2d.py --workdir=runs/gmm --mode=sample
    python main.py --config=configs/ve/digits.py --workdir=runs/digits --mode=train_classifier   # then fid_stats, eval

Kept short on purpose: everything else lives in the library, where tests can call it.
Config fields are overridden with ``--config.section.field=value``.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from score_jax import classifiers
from score_jax import evaluate
from score_jax import experiment
from score_jax import sample
from score_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a variant: path.py:smoke.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, samples and metrics.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "fid_stats", "train_classifier",
                                     "train_noisy_classifier"],
                  "train: train (resuming from the latest checkpoint) then sample; sample: draw from the EMA "
                  "parameters of the latest checkpoint; eval: loss, bits/dim, FID / KID / IS of checkpoints "
                  "(config.eval); fid_stats: cache real-data feature statistics; train_classifier: train the "
                  "in-domain feature classifier of embedded datasets; train_noisy_classifier: train the "
                  "noise-conditional classifier p_t(y | x(t)) of classifier guidance (config.noisy_classifier).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host TPU / GPU / "
                  "SLURM launches; the coordinator is found from the environment unless given below).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for --distributed without autodetection.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed without autodetection.")
flags.DEFINE_integer("process_id", None, "This process's index, for --distributed without autodetection.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors a user can fix from the command line: one line, no traceback.
USER_ERRORS = (experiment.ConfigError, FileNotFoundError, FileExistsError, train.NonFiniteLossError)


def _quiet_orbax(record) -> bool:
  """Keeps Orbax's per-save INFO chatter out of the console (its warnings still show)."""
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if FLAGS.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPUs / TPUs unaffected
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  try:
    modes = {"train": train.train_and_evaluate, "sample": sample.sample, "eval": evaluate.evaluate,
             "fid_stats": evaluate.fid_stats, "train_classifier": classifiers.train_classifier,
             "train_noisy_classifier": classifiers.train_noisy_classifier}
    modes[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
