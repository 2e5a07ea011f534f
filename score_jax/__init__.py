"""score_jax: score-based generative modeling through SDEs in JAX/Flax.

Modules (imports point one way: math <- models <- jobs <- modes <- main):
  sde, schedules, losses, sampling, guidance, likelihood, data.toy, metrics, analysis  -- pure math
  models, score_fn                                    -- networks and their parametrization
  experiment                                          -- the only config reader: build(config) -> Setup, options
  train_state, checkpointing, outputs, sharding       -- state, files, devices
  jobs                                                -- the shared job library (Control, sampler, writers, ...)
  modes                                               -- one file per --mode, run(config, workdir)
  runs (load_run), config_files                       -- trained runs and config files as library objects
See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  # ``score_jax.load_run`` without importing the training system on ``import score_jax``.
  if name in ("load_run", "Run"):
    from score_jax import runs  # pylint: disable=import-outside-toplevel
    return getattr(runs, name)
  raise AttributeError(f"module 'score_jax' has no attribute {name!r}")
