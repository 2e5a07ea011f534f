"""sub-VP SDE defaults: DDPM++ (continuous) on CIFAR-10, score_sde's configs/subvp/cifar10_ddpmpp_continuous.

    python main.py --config=configs/default_subvp.py --workdir=runs/cifar10_subvp --mode=train \
        --config.data.path=$TFDS_DATA_DIR
"""

import ml_collections

from configs import common
from configs import default_vp


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_vp.get_config()
  config.sde.name = "subvp"
  return common.finalize(config, variant, "configs/default_subvp.py")
