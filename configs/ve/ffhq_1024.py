"""VE SDE, NCSN++ at 1024×1024 on FFHQ from ProGAN-format tfrecords (score_sde's setup).

    python main.py --config=configs/ve/ffhq_1024.py --workdir=runs/ffhq --mode=train \
        --config.data.path=/data/ffhq         # holds ffhq-r10.tfrecords

σ_max 1348, N = 2000, batch 8 (Table 3.1 of the report "From Noise to Images: Implementing
Score-Based Generative Models using Stochastic Differential Equation", Traoré 2025); NCSN++
with nf 16 and channels ×(1, 2, 4, 8, 16, 32, 32, 32), one res block per level, EMA 0.9999.
The loss is averaged over pixels (score_sde's ``reduce_mean=True`` in
ffhq_ncsnpp_continuous.py): summed over the D = 1024·1024·3 ≈ 3·10⁶ values of an image, the
loss and its gradients are D times larger and every step is clipped to norm 1.
"""

import ml_collections

from configs import common
from configs import default_ve


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_ve.get_config()
  config.sde.ve.update(dict(sigma_min=0.01, sigma_max=1348.0))
  data = config.data
  data.kind, data.name, data.path = "tfrecords", "ffhq", ""
  data.image_size = 1024
  data.eval_split = "train"
  config.model.network.update(dict(
      nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0,
      progressive="output_skip", progressive_input="input_skip", progressive_combine="sum"))
  config.model.ema.rate = 0.9999
  tr = config.training
  tr.loss_options.reduce = "mean"
  tr.batch_size = 8
  tr.num_steps = 2_400_000
  config.sampling.num_samples = 4
  config.sampling.pc.update(dict(num_steps=2000, snr=0.15))
  return common.finalize(config, variant, "configs/ve/ffhq_1024.py")
