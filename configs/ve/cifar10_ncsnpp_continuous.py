"""VE SDE, NCSN++ (continuous) on CIFAR-10 from the TFDS catalog (score_sde's headline VE model).

    python main.py --config=configs/ve/cifar10_ncsnpp_continuous.py --workdir=runs/cifar10_ve \
        --mode=train --config.data.path=$TFDS_DATA_DIR    # prepared: tfds build cifar10 ...

Everything is ``configs/default_ve.py``; this file names the experiment.
"""

import ml_collections

from configs import common
from configs import default_ve


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default_ve.get_config()
  config.data.kind, config.data.name = "tfds", "cifar10"
  return common.finalize(config, variant, "configs/ve/cifar10_ncsnpp_continuous.py")
