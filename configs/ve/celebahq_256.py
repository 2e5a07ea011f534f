"""VE SDE, NCSN++ at 256×256 on CelebA-HQ from ProGAN-format tfrecords (score_sde's setup).

    python main.py --config=configs/ve/celebahq_256.py --workdir=runs/celebahq --mode=train \
        --config.data.path=/data/celebahq     # holds celebahq-r08.tfrecords

σ_max 348, N = 2000, batch 64 (Table 3.1 of the report "From Noise to Images: Implementing
Score-Based Generative Models using Stochastic Differential Equation", Traoré 2025); NCSN++
with nf 128 and channels ×(1, 1, 2, 2, 2, 2, 2), two res blocks per level, output-skip /
input-skip progressive growing.  Langevin snr 0.075, score_sde's value for its 256-px configs
(default_lsun_configs.py, which celebahq_256_ncsnpp_continuous.py builds on); its 0.17 is
for 64-px CelebA.
"""

import ml_collections

from configs import common
from configs import default_ve


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_ve.get_config()
  config.sde.ve.update(dict(sigma_min=0.01, sigma_max=348.0))
  data = config.data
  data.kind, data.name, data.path = "tfrecords", "celebahq", ""
  data.image_size = 256
  data.eval_split = "train"  # CelebA-HQ has a single split
  config.model.network.update(dict(
      nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
      progressive="output_skip", progressive_input="input_skip", progressive_combine="sum"))
  config.model.ema.rate = 0.999
  tr = config.training
  tr.batch_size = 64
  tr.num_steps = 2_400_000
  config.sampling.num_samples = 16
  config.sampling.pc.update(dict(num_steps=2000, snr=0.075))
  return common.finalize(config, variant, "configs/ve/celebahq_256.py")
