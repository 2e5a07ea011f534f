"""VP SDE on scikit-learn's 8×8 handwritten digits (embedded, no download), the VP twin of
``configs/ve/digits.py``: data centered to [−1, 1], ε-prediction, Euler–Maruyama sampling.

    python main.py --config=configs/vp/digits.py --workdir=runs/digits_vp --mode=train
    python main.py --config=configs/vp/digits.py --workdir=runs/digits_vp --mode=sample
"""

import ml_collections

from configs import common
from configs import default_vp
from configs.ve import digits as ve_digits


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_vp.get_config()
  ve = ve_digits.get_config()
  for section in ("data", "optim", "eval"):
    config[section] = ve[section]
  config.data.centered = True
  config.model.name = "unet"
  config.model.network = ve.model.network
  config.model.conditioning = "time"
  config.model.ema = ve.model.ema
  config.training = ve.training
  config.sampling.num_samples = ve.sampling.num_samples
  config.sampling.pc.update(dict(predictor="euler_maruyama", corrector="none", num_steps=500))
  return common.finalize(config, variant, "configs/vp/digits.py")
