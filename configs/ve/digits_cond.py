"""Class-conditional VE SDE on the embedded 8×8 digits, trained with a null label so that
classifier-free guidance (Ho & Salimans 2022) can use it: ``configs/ve/digits.py`` plus a
label embedding in the U-Net and label dropout 0.1.

    python main.py --config=configs/ve/digits_cond.py --workdir=runs/digits_cond --mode=train
    python main.py --config=configs/ve/digits_cond.py --workdir=runs/digits_cond --mode=sample \
        --config.guidance.kind=cfg --config.guidance.w=1.0

Without ``config.guidance`` the sample grid has one class per column (the conditional
score, w = 0).  Variant ``smoke`` runs in seconds (tests, debugging).
"""

import ml_collections

from configs.ve import digits


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = digits.get_config(variant)
  config.model.class_conditional = True
  config.training.label_dropout = 0.1  # the null label 10 % of the time: s(x, t, ∅) for CFG
  return config
