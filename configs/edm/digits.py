"""EDM's recipe (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
Models", NeurIPS 2022) on scikit-learn's 8×8 digits, on the network, optimizer, batch and step
budget of ``configs/ve/digits.py``, so that ``benchmarks/recipes.py`` compares recipes, not
networks.

    python main.py --config=configs/edm/digits.py --workdir=runs/digits_edm --mode=train
    python main.py --config=configs/edm/digits.py --workdir=runs/digits_edm --mode=sample

What EDM changes against score_sde's VE recipe (each a config field):

* preconditioning (Table 1): ``model.parametrization = "edm"`` with σ_data = 0.5 and
  c_noise = ¼ ln σ (``model.conditioning = "log_sigma"``);
* the loss (sec. 5, eq. 8): weight λ(σ) = (σ² + σ_d²)/(σ σ_d)² (``weighting = "edm"``) at
  ln σ ~ N(−1.2, 1.2²) (``noise_distribution = "lognormal"``);
* the noise range of the sampler and the SDE: σ ∈ [0.002, 80] (Table 1), data in [−1, 1];
* sampling (Algorithm 1): Heun, 18 steps, ρ = 7, 35 NFE.
"""

import ml_collections

from configs import common
from configs.ve import digits as ve_digits


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ve_digits.get_config()
  config.sde.name = "ve"
  config.sde.ve.update(dict(sigma_min=0.002, sigma_max=80.0))
  config.data.centered = True  # EDM's σ_data = 0.5 is the std of [−1, 1] images
  config.model.parametrization = "edm"
  config.model.conditioning = "log_sigma"
  config.model.sigma_data = 0.5
  config.training.loss_options = ml_collections.ConfigDict(dict(
      weighting="edm", noise_distribution="lognormal", p_mean=-1.2, p_std=1.2, reduce="mean"))
  s = config.sampling
  s.method = "edm"
  s.edm = ml_collections.ConfigDict(dict(num_steps=18, rho=7.0, sigma_min=0.002, sigma_max=80.0))
  return common.finalize(config, variant, "configs/edm/digits.py")
