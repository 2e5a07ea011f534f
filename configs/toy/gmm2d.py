"""Score model on 8 Gaussians on a ring (2-D), trained and sampled in under 3 minutes on a CPU.

    python main.py --config=configs/toy/gmm2d.py --workdir=runs/gmm --mode=train
    python main.py --config=configs/toy/gmm2d.py --workdir=runs/gmm --mode=sample

Variant ``smoke`` (``--config=configs/toy/gmm2d.py:smoke``) takes about 12 s on a 2-core CPU, for tests and
debugging.  Any field can be overridden, e.g. ``--config.sde.name=ve --config.sde.ve.sigma_max=12``
or ``--config.sampling.method=ode``.
"""

import ml_collections
from ml_collections import config_dict

from configs import common

VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The toy config; ``variant`` is "" (full run) or "smoke"."""
  if variant not in VARIANTS:
    raise ValueError(f"configs/toy/gmm2d.py: unknown variant {variant!r}; choose one of {list(VARIANTS)}.")
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Forward SDE: sde_lib.get_sde(name, **config.sde[name]); the fields of the other kinds
  # stay here so that --config.sde.name=ve just works.
  config.sde = sde = ml_collections.ConfigDict()
  sde.name = "vp"
  # eps: where samplers stop; train_eps: smallest training time and likelihood start (sde.SDE).
  sde.vp = ml_collections.ConfigDict(dict(beta_min=0.1, beta_max=20.0, eps=1e-3, train_eps=1e-5))
  sde.subvp = ml_collections.ConfigDict(dict(beta_min=0.1, beta_max=20.0, eps=1e-3, train_eps=1e-5))
  # σ_max ≈ the ring's diameter
  sde.ve = ml_collections.ConfigDict(dict(sigma_min=0.01, sigma_max=10.0, eps=1e-5, train_eps=1e-5))

  # Data: a score_jax.data.toy target (exact samples drawn inside the train step).
  config.data = data = ml_collections.ConfigDict()
  data.kind = "toy"
  data.name = "ring8"  # any of toy.TARGETS: ring8, grid25, moons, swiss_roll, checkerboard, funnel
  # Keyword arguments of a preset, in a section named after it (others use their defaults).
  data.ring8 = ml_collections.ConfigDict(dict(radius=4.0, std=0.25))

  # Model: models.get_model(name, **network); the parametrization lives outside the network.
  config.model = model = ml_collections.ConfigDict()
  model.name = "mlp"
  model.network = net = ml_collections.ConfigDict()
  net.hidden = 128
  net.num_layers = 3
  net.embed_dim = 64
  net.fourier_scale = 4.0
  net.num_fourier_features = 32
  net.zero_init_output = False
  model.parametrization = "noise"
  model.conditioning = "time"  # the network sees t; "sigma" for NCSN++'s Fourier embedding of log σ̃
  model.ema = common.ema_section()  # 0.999 with EDM's ramp-up

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "adam"
  optim.lr = 2e-3
  optim.warmup = 200
  optim.grad_clip = 1.0
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8

  config.training = training = ml_collections.ConfigDict()
  training.num_steps = 4000
  training.batch_size = 512
  training.loss = "dsm"  # "dsm" (continuous), "smld" (VE) or "ddpm" (VP / sub-VP)
  training.loss_options = ml_collections.ConfigDict(dict(weighting="sigma2", reduce="mean"))
  training.snapshot_freq = 1000
  training.max_to_keep = 2
  training.log_freq = 100
  training.fsdp = False  # shard parameters, EMA and optimizer state over the devices (score_jax/sharding.py)
  training.fsdp_min_size = 2 ** 14  # arrays with fewer elements stay replicated under FSDP

  # Sampling: sampling.sample(method, **config.sampling[method]); options of the other
  # methods stay here so that --config.sampling.method=ode just works.
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.num_samples = 5000
  sampling.batch_size = config_dict.placeholder(int)  # samples per compiled call; None: all at once
  sampling.checkpoint_step = config_dict.placeholder(int)  # --mode=sample from this step; None: the latest
  sampling.pc = ml_collections.ConfigDict(dict(
      predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_steps=1, num_steps=250, denoise=True))
  sampling.ode = ml_collections.ConfigDict(dict(solver="tsit5", rtol=1e-4, atol=1e-4, denoise=True))
  sampling.ald = ml_collections.ConfigDict(dict(num_steps=100, n_steps_each=10, denoise=True))

  # --mode=eval: loss, bits/dim against the target's exact value, and sample quality.
  config.eval = ev = common.base_config().eval
  ev.num_samples = ev.sample_batch_size = 5000
  ev.bpd_num_examples = 1000
  ev.batch_size = 512
  ev.reference = False

  if variant == "smoke":
    net.hidden = 16
    net.num_layers = 1
    net.embed_dim = 16
    net.num_fourier_features = 8
    training.num_steps = 20
    training.batch_size = 64
    training.snapshot_freq = 10
    training.log_freq = 5
    optim.warmup = 5
    sampling.num_samples = 256
    sampling.pc.num_steps = 10
    sampling.ode.rtol = sampling.ode.atol = 1e-2
    sampling.ald.num_steps = 5
    sampling.ald.n_steps_each = 2
    ev.num_samples = ev.sample_batch_size = 64
    ev.bpd_num_examples = 16
    ev.bpd_rtol = ev.bpd_atol = 1e-2
    ev.num_loss_batches = 2
  return config
