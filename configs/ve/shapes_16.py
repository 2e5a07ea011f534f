"""VE SDE on the embedded RGB "shapes" dataset at 16×16 with a small U-Net: the RGB twin of
``configs/ve/digits.py``, fast enough to train on a 2-core CPU, for colorization (and
inpainting in colour).

    python main.py --config=configs/ve/shapes_16.py --workdir=runs/shapes_16 --mode=train
    python main.py --config=configs/ve/shapes_16.py --workdir=runs/shapes_16 --mode=colorize

``configs/ve/shapes_32.py`` (class-conditional NCSN++ at 32×32) takes seconds per step on a
CPU; this one is unconditional, 16×16×3, and its U-Net has 16 base channels.  σ_max = 25
covers the largest distance between two 16×16×3 training images in [0, 1] (23.5 over the
first 2000; score_sde's rule for VE).  Variant ``smoke`` runs in well under a minute on a 2-core CPU, mostly compiling (tests, debugging).
"""

import ml_collections

from configs import common
from configs.ve import digits as ve_digits


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ve_digits.get_config()  # SDE kind, loss, U-Net layout, optimizer, sampler
  config.sde.ve = ml_collections.ConfigDict(dict(sigma_min=0.01, sigma_max=25.0))

  data = config.data
  data.name = "shapes"
  data.image_size = 16
  data.random_flip = True

  config.model.network.nf = 16
  tr = config.training
  tr.num_steps = 3000
  tr.batch_size = 32
  tr.snapshot_freq = 500
  config.sampling.num_samples = 64

  ev = config.eval  # in-domain features: --mode=train_classifier first
  ev.bpd_num_examples = 500
  ev.classifier.update(dict(widths=(16, 32), feature_dim=64, batch_size=64, lr=1e-3))
  return common.finalize(config, variant, "configs/ve/shapes_16.py")
