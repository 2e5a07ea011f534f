"""Rectified flow (Liu et al., "Flow Straight and Fast", ICLR 2023; the conditional flow-matching
loss of Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023) on scikit-learn's 8×8
digits, on the network, optimizer, batch and step budget of ``configs/ve/digits.py``.

    python main.py --config=configs/rf/digits.py --workdir=runs/digits_rf --mode=train
    python main.py --config=configs/rf/digits.py --workdir=runs/digits_rf --mode=sample

x(t) = (1 − t) x(0) + t ε as a forward SDE (``sde.name = "rectified_flow"``, T = 0.999); the
network predicts the velocity ε − x(0) (``model.parametrization = "velocity"``) and is trained
with ‖û − (ε − x(0))‖² at t uniform (``weighting = "velocity"``; SD3's logit-normal t is
``noise_distribution = "logit_normal"``).  Sampling: the probability-flow ODE, which is the
flow itself, by 24 Heun steps on a uniform t grid and a final denoising step (49 NFE);
``--config.sampling.ode.solver=euler --config.sampling.ode.num_steps=49`` is Euler.
"""

import ml_collections

from configs import common
from configs.ve import digits as ve_digits


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ve_digits.get_config()
  config.sde.name = "rectified_flow"
  config.data.centered = True
  config.model.parametrization = "velocity"
  config.model.conditioning = "time"
  config.training.loss_options = ml_collections.ConfigDict(dict(weighting="velocity", reduce="mean"))
  s = config.sampling
  s.method = "ode"
  s.ode = ml_collections.ConfigDict(dict(solver="heun", num_steps=24, shift=1.0, denoise=True))
  return common.finalize(config, variant, "configs/rf/digits.py")
