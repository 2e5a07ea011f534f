"""sub-VP SDE, DDPM++ (continuous) on CIFAR-10 from the TFDS catalog (score_sde's configs/subvp/cifar10_ddpmpp_continuous).

    python main.py --config=configs/subvp/cifar10_ddpmpp_continuous.py --workdir=runs/cifar10_subvp \
        --mode=train --config.data.path=$TFDS_DATA_DIR

Everything is ``configs/default_subvp.py``; this file names the experiment.
"""

import ml_collections

from configs import common
from configs import default_subvp


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_subvp.get_config()
  config.data.kind, config.data.name = "tfds", "cifar10"
  return common.finalize(config, variant, "configs/subvp/cifar10_ddpmpp_continuous.py")
