"""score_jax: score-based generative modeling through SDEs in JAX/Flax.

Modules (imports point one way: math <- models <- train/eval <- main):
  sde, schedules, losses, sampling, data.toy, metrics, analysis   -- pure math, no networks
  models, score_fn                                                  -- networks and their parametrization
  train, train_state, checkpointing                                 -- the training system
  sample, evaluate, runs (load_run)                                 -- using trained runs
  config_files                                                      -- config files by path
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  # ``score_jax.load_run`` without importing the training system on ``import score_jax``.
  if name in ("load_run", "Run"):
    from score_jax import runs  # pylint: disable=import-outside-toplevel
    return getattr(runs, name)
  raise AttributeError(f"module 'score_jax' has no attribute {name!r}")
