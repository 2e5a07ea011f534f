"""EDM's unconditional CIFAR-10 recipe (Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", NeurIPS 2022: its DDPM++ "config F", FID 1.97 at 35 NFE)
on the TFDS catalog.

    python main.py --config=configs/edm/cifar10_ddpmpp.py --workdir=runs/cifar10_edm --mode=train \
        --config.data.path=$TFDS_DATA_DIR

Section by section, with the values of EDM's training script (paper App. F.1, Table 7):

* network: DDPM++ (``configs/default_vp.py``'s NCSN++ in DDPM++ form) with 128 channels at
  multipliers (2, 2, 2), 4 residual blocks per resolution, attention at 16×16, a positional
  embedding of c_noise, box (not FIR) resampling, dropout 0.13;
* preconditioning (Table 1): c_skip, c_out, c_in with σ_data = 0.5, c_noise = ¼ ln σ;
* SDE and noise range: VE in σ ∈ [0.002, 80] on data in [−1, 1];
* loss (sec. 5): λ(σ) = (σ² + σ_d²)/(σ σ_d)², ln σ ~ N(−1.2, 1.2²), summed over pixels;
* optimizer: Adam (0.9, 0.999, 1e-8), learning rate 1e-3 ramped up linearly over 10 Mimg
  (19 531 steps of batch 512), no gradient clipping; 200 Mimg = 390 625 steps of batch 512;
* EMA: a half-life of 0.5 Mimg, i.e. a rate of 0.5^(512/500 000) = 0.99929 per step, its
  half-life ramped up as min(0.5 Mimg, 0.05 × images seen) (EDM's ``ema_rampup_ratio``);
* sampler (Algorithm 1, sec. 3): Heun, 18 steps, ρ = 7 (35 NFE), no churn.

Not reproduced: EDM's non-leaking augmentation (probability 0.12, with the network conditioned
on the augmentation); without it EDM reports a higher FID on CIFAR-10 (their Table 2 ablations
use it).  No x-flips, as in EDM's default.
"""

import ml_collections

from configs import common
from configs import default_vp


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = common.base_config()
  config.sde.name = "ve"
  config.sde.ve.update(dict(sigma_min=0.002, sigma_max=80.0))
  data = config.data
  data.kind, data.name = "tfds", "cifar10"
  data.centered = True
  data.random_flip = False

  model = config.model
  model.name = "ncsnpp"
  model.network = default_vp.ddpmpp_network()
  model.network.update(dict(ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.13))
  model.parametrization = "edm"
  model.conditioning = "log_sigma"
  model.sigma_data = 0.5
  # EMA half-life 500 kimg at batch 512 (β = ½^(512/500 000) = 0.99929 per step), ramped up as
  # min(500 kimg, 0.05 × images seen) (EDM's training loop, ema_rampup_ratio).
  model.ema.update(dict(rate=0.99929, rampup_ratio=0.05))

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 19_531
  optim.grad_clip = 0.0
  optim.b1, optim.b2, optim.eps = 0.9, 0.999, 1e-8

  tr = config.training
  tr.batch_size = 512
  tr.num_steps = 390_625
  tr.loss_options = ml_collections.ConfigDict(dict(
      weighting="edm", noise_distribution="lognormal", p_mean=-1.2, p_std=1.2, reduce="sum"))

  s = config.sampling
  s.method = "edm"
  s.edm = ml_collections.ConfigDict(dict(num_steps=18, rho=7.0, sigma_min=0.002, sigma_max=80.0))
  s.adaptive.data_range = "[-1,1]"
  return common.finalize(config, variant, "configs/edm/cifar10_ddpmpp.py")
