"""Rectified flow on CIFAR-10 (Liu et al., "Flow Straight and Fast: Learning to Generate and
Transfer Data with Rectified Flow", ICLR 2023, its 1-rectified flow with DDPM++) on the TFDS
catalog.

    python main.py --config=configs/rf/cifar10.py --workdir=runs/cifar10_rf --mode=train \
        --config.data.path=$TFDS_DATA_DIR

Liu et al.'s code trains score_sde's DDPM++ continuous setup with the rectified-flow objective;
the values here are theirs:

* SDE: x(t) = (1 − t) x(0) + t ε (``sde.name = "rectified_flow"``), data in [−1, 1];
* network: DDPM++ (``configs/default_vp.py``) with dropout 0.15, conditioned on 999·t, predicting
  the velocity ε − x(0); EMA rate 0.999999;
* loss: ‖û − (ε − x(0))‖² averaged over pixels, t uniform (``weighting = "velocity"``);
* optimizer: score_sde's (Adam, lr 2e-4, 5000 warm-up steps, gradient clipping at 1), batch
  128, 1.3M steps;
* sampler: the flow ODE by an adaptive Runge–Kutta solver at tolerance 1e-5 (theirs: scipy's
  RK45; here diffrax's Tsit5), stopping at t = 1e-3.
"""

import ml_collections

from configs import common
from configs import default_vp


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.sde.name = "rectified_flow"
  data = config.data
  data.kind, data.name = "tfds", "cifar10"
  data.centered = True

  model = config.model
  model.name = "ncsnpp"
  model.network = default_vp.ddpmpp_network()
  model.network.dropout = 0.15
  model.parametrization = "velocity"
  model.conditioning = "ddpm_step"  # 999·t into the positional embedding
  model.ema.update(dict(rate=0.999999, rampup_ratio=0.05))

  config.training.loss_options = ml_collections.ConfigDict(dict(weighting="velocity", reduce="mean"))
  s = config.sampling
  s.method = "ode"
  s.ode.update(dict(solver="tsit5", rtol=1e-5, atol=1e-5, denoise=True))
  s.adaptive.data_range = "[-1,1]"
  return common.finalize(config, variant, "configs/rf/cifar10.py")
