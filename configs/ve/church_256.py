"""VE SDE, NCSN++ at 256×256 on LSUN church_outdoor from the TFDS catalog (score_sde's setup).

    python main.py --config=configs/ve/church_256.py --workdir=runs/church --mode=train \
        --config.data.path=$TFDS_DATA_DIR     # prepared: tfds build lsun/church_outdoor ...

σ_max 380, N = 2000, batch 64 (Table 3.1 of the report "From Noise to Images", Traoré 2025);
NCSN++ with nf 128 and channels ×(1, 1, 2, 2, 2, 2, 2), two res blocks per level,
output-skip / input-skip progressive growing.
"""

import ml_collections

from configs import common
from configs import default_ve


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_ve.get_config()
  config.sde.ve.update(dict(sigma_min=0.01, sigma_max=380.0))
  data = config.data
  data.kind, data.name, data.path = "tfds", "lsun/church_outdoor", ""
  data.image_size = 256
  data.eval_split = "train"  # TFDS's LSUN church has train and validation; FID uses train statistics
  config.model.network.update(dict(
      nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
      progressive="output_skip", progressive_input="input_skip", progressive_combine="sum"))
  config.model.ema.rate = 0.999
  tr = config.training
  tr.batch_size = 64
  tr.num_steps = 2_400_000
  config.sampling.num_samples = 16
  config.sampling.pc.update(dict(num_steps=2000, snr=0.075))
  return common.finalize(config, variant, "configs/ve/church_256.py")
