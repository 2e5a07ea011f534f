"""score_jax: score-based generative modeling through SDEs in JAX/Flax.

Modules (imports point one way: math <- models <- train/eval <- main):
  sde, schedules, losses, sampling, data.toy, metrics, analysis   -- pure math, no networks
  models, score_fn                                                  -- networks and their parametrization
  train, train_state, checkpointing                                 -- the training system
"""

__version__ = "0.1.0"
