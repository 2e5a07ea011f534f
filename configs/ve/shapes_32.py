"""VE SDE on the embedded 32×32 RGB "shapes" dataset (coloured circle / square / triangle /
cross on coloured backgrounds; no download), class-conditional NCSN++ with a null label so
classifier-free guidance can use it later.

    python main.py --config=configs/ve/shapes_32.py --workdir=runs/shapes --mode=train
    python main.py --config=configs/ve/shapes_32.py --workdir=runs/shapes --mode=sample

Sample grids have one class per column.  σ_max = 50 covers the largest distance between two
32×32×3 training images in [0, 1] (47 over the first 2000; score_sde's rule for VE).
"""

import ml_collections

from configs import common
from configs import default_ve


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_ve.get_config()
  config.sde.ve.update(dict(sigma_min=0.01, sigma_max=50.0))
  data = config.data
  data.kind, data.name, data.path = "embedded", "shapes", ""
  data.image_size = 32
  data.random_flip = True
  data.centered = False
  config.model.network.update(dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), dropout=0.1))
  config.model.class_conditional = True
  config.model.ema.update(dict(rate=0.999, rampup_ratio=0.05))
  config.optim.lr = 5e-4
  config.optim.warmup = 1000
  tr = config.training
  tr.num_steps = 50_000
  tr.batch_size = 64
  tr.snapshot_freq = 2000
  tr.sample_freq = 5000
  tr.log_freq = 100
  tr.label_dropout = 0.1
  config.sampling.num_samples = 64
  config.sampling.pc.num_steps = 1000

  ev = config.eval  # in-domain features: --mode=train_classifier first
  ev.features = "classifier"
  ev.num_samples = 2000
  ev.sample_batch_size = 500
  ev.bpd_num_examples = 500
  ev.classifier.update(dict(widths=(16, 32, 64), feature_dim=128, num_steps=1000, batch_size=64, lr=1e-3, max_shift=2))
  return common.finalize(config, variant, "configs/ve/shapes_32.py")
