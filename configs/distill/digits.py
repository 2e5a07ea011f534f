"""Consistency distillation (Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023,
sec. 4, Algorithm 2) of the digits EDM model (``configs/edm/digits.py``) into a one-to-four-step
student with the same network.

    python main.py --config=configs/edm/digits.py --workdir=runs/digits_edm --mode=train
    python main.py --config=configs/distill/digits.py --workdir=runs/digits_cd --mode=distill
    python main.py --config=configs/distill/digits.py --workdir=runs/digits_cd --mode=sample \\
        --config.sampling.consistency.num_steps=2

What changes against the teacher's config (each a field):

* the parametrization (paper App. C): ``model.parametrization = "consistency"``, f(x, σ) =
  c_skip x + c_out F with the boundary ε = ``model.boundary_sigma`` = 0.002, σ_d = 0.5;
* the objective (``config.distill``): N = 18 levels of EDM's ρ = 7 schedule on [0.002, 80], one
  Heun step of the teacher's ODE between adjacent levels, the target network's EMA μ = 0.95
  (the paper's CD on CIFAR-10), and the pseudo-Huber metric of Song & Dhariwal (2024) in place
  of LPIPS (``metric``; "l2" is the paper's squared ℓ2);
* the student starts from the teacher's EMA weights (``distill.init = "teacher"``) at a lower
  learning rate, for 24000 steps of batch 64 (about 58 minutes on a quiet 2-core CPU);
* sampling: ``method = "consistency"``, one step from σ_max = 80; ``num_steps`` = 2, 4 re-inject
  noise at EDM-spaced levels moved onto the distillation's 18 levels (``num_scales``: the
  student has never seen a σ between them), or at ``sigmas`` of that grid.

``:smoke`` shrinks it like every config; its teacher must be a ``configs/edm/digits.py:smoke``
run (the same network), e.g. ``--config.distill.teacher_workdir=runs/edm_smoke``.
"""

import ml_collections

from configs import common
from configs.edm import digits as edm_digits


def student(config: ml_collections.ConfigDict, teacher_workdir: str) -> ml_collections.ConfigDict:
  """A teacher's config turned into its consistency student's (the fields above)."""
  config.model.parametrization = "consistency"
  config.model.boundary_sigma = 0.002
  config.distill = common.distill_section()
  config.distill.teacher_workdir = teacher_workdir
  config.distill.metric = "pseudo_huber"
  s = config.sampling
  s.method = "consistency"
  s.consistency = ml_collections.ConfigDict(dict(num_steps=1, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                                                  num_scales=config.distill.num_scales))
  s.consistency.sigmas = ml_collections.config_dict.placeholder(tuple)
  return config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = student(edm_digits.get_config(), "runs/digits_edm")
  config.optim.lr = 5e-4
  config.optim.warmup = 100
  config.training.num_steps = 24000  # 6x the teacher's: the one-step FID fell until about 18k (BENCHMARKS.md)
  return common.finalize(config, variant, "configs/distill/digits.py")
