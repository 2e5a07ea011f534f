"""VP SDE, DDPM++ (continuous) on CIFAR-10 from the TFDS catalog (score_sde's configs/vp/cifar10_ddpmpp_continuous).

    python main.py --config=configs/vp/cifar10_ddpmpp_continuous.py --workdir=runs/cifar10_vp \
        --mode=train --config.data.path=$TFDS_DATA_DIR

Everything is ``configs/default_vp.py``; this file names the experiment.
"""

import ml_collections

from configs import common
from configs import default_vp


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_vp.get_config()
  config.data.kind, config.data.name = "tfds", "cifar10"
  return common.finalize(config, variant, "configs/vp/cifar10_ddpmpp_continuous.py")
