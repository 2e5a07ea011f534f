"""Consistency distillation of EDM's CIFAR-10 model (``configs/edm/cifar10_ddpmpp.py``) at the
scale of the paper's CD runs (Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023,
Table 3; one step FID 3.55, two steps 2.93 with LPIPS from an EDM teacher at 2.04 / 35 NFE).

    python main.py --config=configs/edm/cifar10_ddpmpp.py --workdir=runs/cifar10_edm --mode=train \\
        --config.data.path=$TFDS_DATA_DIR
    python main.py --config=configs/distill/cifar10.py --workdir=runs/cifar10_cd --mode=distill \\
        --config.data.path=$TFDS_DATA_DIR --config.distill.teacher_workdir=runs/cifar10_edm

The paper's values: N = 18, μ = 0.95, batch 512, learning rate 4e-4, 800k iterations, the
student initialised from the teacher, an evaluation EMA of 0.9999.  Not reproduced: LPIPS (the
pseudo-Huber metric of Song & Dhariwal 2024 takes its place, as in their improved recipe) and
RAdam (Adam here).
"""

from configs import common
from configs.distill import digits as distill_digits
from configs.edm import cifar10_ddpmpp


def get_config(variant: str = "") -> "ml_collections.ConfigDict":
  config = distill_digits.student(cifar10_ddpmpp.get_config(), "runs/cifar10_edm")
  config.optim.lr = 4e-4
  config.optim.warmup = 0
  config.model.ema.update(dict(rate=0.9999, rampup_ratio=0.0))
  config.training.num_steps = 800_000
  return common.finalize(config, variant, "configs/distill/cifar10.py")
