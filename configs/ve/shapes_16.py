"""VE SDE on the embedded RGB "shapes" dataset at 16×16 with the small U-Net: an RGB model
that trains on a 2-core CPU in well under an hour, for colorization and inpainting in colour.

    python main.py --config=configs/ve/shapes_16.py --workdir=runs/shapes_16 --mode=train
    python main.py --config=configs/ve/shapes_16.py --workdir=runs/shapes_16 --mode=colorize

``configs/ve/shapes_32.py`` (class-conditional NCSN++ at 32×32) takes seconds per step on a
CPU; this one is unconditional, 16×16×3 and a 2-level U-Net.  σ_max = 25 covers the largest
distance between two 16×16×3 training images in [0, 1] (23.5 over the first 2000; score_sde's
rule for VE).  Variant ``smoke`` runs in seconds (tests, debugging).
"""

import ml_collections

from configs import common
from configs import default_ve


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_ve.get_config()
  config.sde.ve = ml_collections.ConfigDict(dict(sigma_min=0.01, sigma_max=25.0))

  data = config.data
  data.kind, data.name, data.path = "embedded", "shapes", ""
  data.image_size = 16
  data.random_flip = True
  data.centered = False

  config.model.name = "unet"
  config.model.network = ml_collections.ConfigDict(dict(
      nf=32, ch_mult=(1, 2), num_res_blocks=1, attention=True, dropout=0.0, fourier_scale=16.0,
      skip_rescale=True, init_scale=0.0))
  config.model.parametrization = "noise"
  config.model.conditioning = "time"  # the U-Net embeds t ∈ [0, 1] with Fourier features
  config.model.ema_rate = 0.999

  config.optim.lr = 2e-3
  config.optim.warmup = 200
  tr = config.training
  tr.num_steps = 3000
  tr.batch_size = 32
  tr.loss_options = ml_collections.ConfigDict(dict(weighting="sigma2", reduce="mean"))
  tr.snapshot_freq = 500
  tr.max_to_keep = 3
  tr.log_freq = 100
  tr.sample_freq = 1000

  s = config.sampling
  s.num_samples = 64
  s.pc.update(dict(num_steps=500, snr=0.16))

  ev = config.eval  # in-domain features: --mode=train_classifier first
  ev.features = "classifier"
  ev.num_samples = 500
  ev.sample_batch_size = 500
  ev.bpd_num_examples = 500
  ev.classifier.update(dict(widths=(16, 32), feature_dim=64, num_steps=1000, batch_size=64, lr=1e-3, max_shift=1))
  return common.finalize(config, variant, "configs/ve/shapes_16.py")
