"""VE SDE on scikit-learn's 8×8 handwritten digits (embedded, no download): a small U-Net that
draws recognisable digits after minutes of training on a 2-core CPU.

    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=sample
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_noisy_classifier

σ_max = 5 is about the largest distance between two training digits (4.8 in [0, 1]^64),
score_sde's rule for VE.  Variant ``smoke`` takes about 20 s on a quiet 2-core CPU with an empty compilation cache, mostly compiling
(tests, debugging).
"""

import ml_collections

from configs import common
from configs import default_ve


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_ve.get_config()
  config.sde.ve.update(dict(sigma_min=0.01, sigma_max=5.0))

  data = config.data
  data.kind, data.name, data.path = "embedded", "digits", ""
  data.image_size = 8
  data.random_flip = False  # digits are not mirror symmetric
  data.centered = False

  config.model.name = "unet"
  config.model.network = ml_collections.ConfigDict(dict(
      nf=32, ch_mult=(1, 2), num_res_blocks=1, attention=True, dropout=0.0, fourier_scale=16.0,
      skip_rescale=True, init_scale=0.0))
  config.model.parametrization = "noise"
  config.model.conditioning = "time"  # the U-Net embeds t ∈ [0, 1] with Fourier features
  config.model.ema.update(dict(rate=0.999, rampup_ratio=0.05))  # EDM's ramp-up: no weight left on the init

  config.optim.lr = 2e-3
  config.optim.warmup = 200
  tr = config.training
  tr.num_steps = 4000
  tr.batch_size = 64
  tr.loss_options = ml_collections.ConfigDict(dict(weighting="sigma2", reduce="mean"))
  tr.snapshot_freq = 1000
  tr.max_to_keep = 3
  tr.log_freq = 100
  tr.sample_freq = 1000

  s = config.sampling
  s.num_samples = 100
  s.pc.update(dict(num_steps=500, snr=0.16))

  ev = config.eval  # in-domain features: --mode=train_classifier first
  ev.features = "classifier"
  ev.num_samples = 500  # ~4 min of PC sampling per checkpoint on 2 CPU cores; bits/dim of the 297 test digits as long
  ev.sample_batch_size = 500
  ev.classifier.update(dict(widths=(32, 64), feature_dim=128, num_steps=1000, batch_size=128, lr=2e-3, max_shift=1))

  nc = config.noisy_classifier  # p_t(y | x(t)) for classifier guidance: --mode=train_noisy_classifier
  nc.model = "cnn"
  nc.network = ml_collections.ConfigDict(dict(widths=(32, 64), hidden_dim=128, embedding_dim=32))
  nc.update(dict(num_steps=4000, batch_size=128, lr=2e-3, max_shift=1, num_bands=10, band_repeats=4))
  return common.finalize(config, variant, "configs/ve/digits.py")
