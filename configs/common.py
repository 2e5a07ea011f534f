"""What every image config shares: the base sections and the ``smoke`` and ``tiny`` variants.

Config files are loaded by path (``--config=configs/ve/digits.py:smoke``) and import their
base as ``from configs import default_ve``: run ``main.py`` from the repository root (tests
and benchmarks put the root on ``sys.path`` themselves).

The ``smoke`` variant keeps the structure of a config — SDE, loss, sampler, network options
(block type, FIR, progressive growing, embedding) — and shrinks its sizes so a few training
steps and a sample run in under a minute on a 2-core CPU, mostly compiling (digits: about 20 s
with an empty compilation cache on a quiet 2-core Intel Xeon):
a 2-level, 8-channel network, batch 8, four
steps, eight samples with few sampler steps.  Configs whose data live on disk (folders,
TFDS, tfrecords) switch to the embedded ``shapes`` dataset at 16×16 in smoke mode, so the
variant runs anywhere without a download.

The ``tiny`` variant is a first run on one's own images: it keeps the data as the config and
its overrides set them (``--config.data.path=/my/images`` for a folder), crops them to 32×32
(or keeps a smaller size) and trains a 3-level, 16-channel network of the config's kind for 400
steps of batch 16, then samples a grid of 16 with 100 sampler steps (README, "A first run on
your own images").  VE's σ_max shrinks with the image side (it stands for the largest distance
between training images); every other option of the config (SDE, loss, parametrization,
sampler kind, block type) stays.
"""

import ml_collections
from ml_collections import config_dict

VARIANTS = ("", "smoke", "tiny")


def base_config() -> ml_collections.ConfigDict:
  """Sections and fields common to all image configs (score_sde's CIFAR-10 defaults)."""
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.sde = sde = ml_collections.ConfigDict()
  sde.name = "ve"
  # eps: where samplers stop (score_sde's sampling_eps); train_eps: the smallest training time
  # and the likelihood ODE's start (score_sde's eps).  See score_jax.sde.SDE.
  sde.ve = ml_collections.ConfigDict(dict(sigma_min=0.01, sigma_max=50.0, eps=1e-5, train_eps=1e-5))
  sde.vp = ml_collections.ConfigDict(dict(beta_min=0.1, beta_max=20.0, eps=1e-3, train_eps=1e-5))
  sde.subvp = ml_collections.ConfigDict(dict(beta_min=0.1, beta_max=20.0, eps=1e-3, train_eps=1e-5))
  # x(t) = (1 − t) x(0) + t ε; T < 1 because the drift is singular at t = 1 (score_jax/sde.py).
  sde.rectified_flow = ml_collections.ConfigDict(dict(T=0.999, eps=1e-3, train_eps=1e-5))

  # Data: pipeline.get_dataset(kind, name, ...).  kind: embedded | folder | tfds | tfrecords.
  config.data = data = ml_collections.ConfigDict()
  data.kind = "tfds"
  data.name = "cifar10"
  data.path = ""  # folder root, TFDS data_dir or tfrecords folder; unused by embedded data
  data.split = "train"
  data.eval_split = "test"
  data.image_size = 32
  data.random_flip = True
  data.uniform_dequantization = False
  data.centered = False  # False: data in [0, 1]; True: in [-1, 1]
  # kind "folder": a file that cannot be decoded stops the run before anything compiles, in one
  # line naming it ("error"), or is left out and listed in <workdir>/data_skipped.txt ("skip");
  # an image smaller than the crop is upscaled ("upscale") or refused ("error").
  data.on_unreadable = "error"
  data.small_images = "upscale"
  data.options = ml_collections.ConfigDict()  # dataset-specific options of pipeline.get_dataset

  # Model: models.get_model(name, **network); image_size / num_channels / num_classes come
  # from the data.  The parametrization (noise -> score) lives outside the network.
  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"
  model.network = ml_collections.ConfigDict()
  model.parametrization = "noise"  # noise | score | data | velocity | edm (score_jax/score_fn.py)
  model.conditioning = "sigma"
  model.sigma_data = 0.5  # σ_d of the "edm" parametrization and loss weighting (EDM: 0.5 for [−1, 1] data)
  model.ema = ema_section()
  model.class_conditional = False
  # A converted published checkpoint (`python -m score_jax.pretrained --out=DIR`): --mode=sample / eval
  # read the network from DIR instead of the workdir's checkpoints.  "": the workdir's own.
  model.pretrained = ""
  # The dtype the network computes in: "float32" or "bfloat16" (mixed precision: parameters,
  # optimizer state and EMA stay float32; embedding, GroupNorm statistics, softmax, loss in float32).
  model.dtype = "float32"

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "adam"
  optim.lr = 2e-4
  optim.warmup = 5000
  # After the warmup: "constant" (score_sde), "cosine" to 0 over decay_steps, or EDM2's
  # "inverse_sqrt" (lr / sqrt(max(step / decay_steps, 1))); decay_steps is read by the last two.
  optim.decay = "constant"
  optim.decay_steps = 0
  optim.grad_clip = 1.0
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8

  config.training = training = ml_collections.ConfigDict()
  training.num_steps = 1_300_001
  training.batch_size = 128
  training.loss = "dsm"
  training.loss_options = ml_collections.ConfigDict(dict(weighting="sigma2", reduce="sum"))
  training.snapshot_freq = 10_000
  training.max_to_keep = 5
  training.log_freq = 50
  training.sample_freq = 50_000
  training.skip_nonfinite = False
  training.label_dropout = 0.0
  # FSDP: shard parameters, EMA and optimizer state over the "data" axis (score_jax/sharding.py);
  # arrays with fewer than fsdp_min_size elements stay replicated.
  training.fsdp = False
  training.fsdp_min_size = 2 ** 14
  # Memory for high resolution: recompute each residual block's activations in the backward
  # pass (remat), and split the batch into grad_accum micro-batches scanned inside the one
  # jitted step (the same update as the whole batch; batch_size % (grad_accum × devices) == 0).
  training.remat = False
  training.grad_accum = 1

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"
  sampling.num_samples = 64
  sampling.batch_size = config_dict.placeholder(int)  # samples per compiled call; None: all at once
  sampling.checkpoint_step = config_dict.placeholder(int)  # --mode=sample from this step; None: the latest
  # The parameters sample / eval / inpaint / colorize use: "ema", "raw" (a full checkpoint's trained
  # parameters), "power_<σ_rel>" (a power-EMA snapshot) or "posthoc_<σ_rel>" (--mode=posthoc_ema).
  sampling.params = "ema"
  sampling.pc = ml_collections.ConfigDict(dict(
      predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_steps=1, num_steps=1000, denoise=True))
  sampling.ode = ml_collections.ConfigDict(dict(solver="tsit5", rtol=1e-5, atol=1e-5, denoise=True))
  sampling.adaptive = ml_collections.ConfigDict(dict(rel_tol=1e-2, abs_tol=None, data_range="[0,1]", denoise=True))
  sampling.ald = ml_collections.ConfigDict(dict(num_steps=232, n_steps_each=5, denoise=True))

  config.controllable = controllable_section()
  config.posthoc = posthoc_section()
  config.eval = eval_section()
  config.noisy_classifier = noisy_classifier_section()
  config.guidance = guidance_section()
  return config


def ema_section() -> ml_collections.ConfigDict:
  """``config.model.ema``: the parameter averages training tracks (score_jax/ema.py)."""
  # kind "classic": one EMA at `rate` (score_sde's ema_rate), its half-life ramped up as
  # min(half-life of rate, rampup_ratio × steps so far) (EDM's ramp-up; 0: none, score_sde's
  # configs).  kind "power": EDM2's power-function EMA, one profile per sigma_rels entry, each
  # exported every snapshot_freq steps to <workdir>/ema/power_<σ_rel>/<step> for
  # --mode=posthoc_ema (config.posthoc); the first profile is the one sampling uses.
  ema = ml_collections.ConfigDict()
  ema.kind = "classic"
  ema.rate = 0.999
  ema.rampup_ratio = 0.05
  ema.sigma_rels = (0.05, 0.10)
  ema.snapshot_freq = 10_000
  return ema


def posthoc_section() -> ml_collections.ConfigDict:
  """``config.posthoc``: --mode=posthoc_ema (score_jax/modes/posthoc_ema.py documents each field)."""
  # Post-hoc EMA (EDM2, sec. 3.2): the power-EMA profiles of sigma_rel reconstructed at `step`
  # (None: the last snapshot) from the snapshots of a run trained with config.model.ema.kind="power",
  # written to <workdir>/ema/posthoc_<σ_rel>/<step> (sample / eval them with
  # --config.sampling.params=posthoc_<σ_rel>).  A target whose profile the snapshots reproduce
  # worse than max_error (relative L2) is refused.
  ph = ml_collections.ConfigDict()
  ph.sigma_rel = ()
  ph.step = config_dict.placeholder(int)
  ph.max_error = 0.05
  return ph


def distill_section() -> ml_collections.ConfigDict:
  """``config.distill``: --mode=distill, consistency distillation (score_jax/distillation.py)."""
  # Consistency distillation (Song et al. 2023, Algorithm 2) of the teacher run in teacher_workdir
  # (its config.json and its `teacher_params` parameters of `teacher_step`; a converted published
  # checkpoint is a teacher_config file plus teacher_pretrained, the export).  The student is this
  # config's network (config.model.parametrization = "consistency"), trained in its own --workdir.
  d = ml_collections.ConfigDict()
  d.teacher_workdir = ""
  d.teacher_step = config_dict.placeholder(int)
  d.teacher_params = "ema"  # ema | raw | power_<σ_rel> | posthoc_<σ_rel>
  d.teacher_config = ""  # instead of teacher_workdir: a config file (path.py[:variant]) ...
  d.teacher_pretrained = ""  # ... and the converted export it describes
  d.init = "teacher"  # teacher (the student starts from the teacher's weights; same network) | random
  d.num_scales = 18  # N of the discretization (N(k)'s largest value)
  d.start_scales = 2  # s0 of the "sqrt" and "exponential" schedules
  d.scale_schedule = "constant"  # constant | sqrt | exponential
  d.target_ema = 0.95  # μ of the target network (0: θ⁻ = θ); with target_schedule="adaptive", μ0
  d.target_schedule = "fixed"  # fixed | adaptive
  d.sigma_min = 0.002  # ε: config.model.boundary_sigma must equal it
  d.sigma_max = 80.0
  d.rho = 7.0
  d.metric = "l2"  # l2 | l1 | pseudo_huber
  d.huber_c = config_dict.placeholder(float)  # None: 0.00054 √d
  d.weighting = "uniform"  # uniform | inverse_step
  d.index = "uniform"  # uniform | lognormal (p_mean, p_std)
  d.p_mean = -1.1
  d.p_std = 2.0
  return d


def controllable_section() -> ml_collections.ConfigDict:
  """``config.controllable``: inputs, masks and method of --mode=inpaint / colorize."""
  # Inpainting and colorization from a trained model (--mode=inpaint / --mode=colorize;
  # score_jax/experiment/control_options.py checks each field, score_jax/jobs/observations.py
  # documents the methods).  config.guidance (class guidance) applies to these modes too.
  ctl = ml_collections.ConfigDict()
  ctl.inputs = "test"  # "test": config.data.eval_split; "train": config.data.split; "folder": input_path
  ctl.input_path = ""  # a folder of images (centre-cropped and resized to config.data.image_size)
  ctl.first_input = 0  # index of the first input image (sorted file order for a folder)
  ctl.num_inputs = 8
  ctl.samples_per_input = 4
  ctl.mask = "box"  # inpaint: box | half | random_patches | png
  ctl.box = config_dict.placeholder(tuple)  # (top, left, height, width) in pixels; None: centred, half the side
  ctl.half = "right"  # the half to fill: left | right | top | bottom
  ctl.num_patches = 4  # random_patches: squares per image, placed from (mask_seed, input index)
  ctl.patch_size = config_dict.placeholder(int)  # None: a quarter of the side
  ctl.mask_seed = 0
  ctl.mask_path = ""  # png: image-sized mask, white (>= 128) = fill, black = keep (diffusers' convention)
  # How the known pixels enter: "replacement" (re-imposed after every step), "repaint" (the same
  # with every step repeated `resample` times) or "posterior" (posterior guidance of the score,
  # known pixels also re-imposed, `resample` times).
  ctl.method = "replacement"
  ctl.resample = 1  # RePaint repetitions of every sampler step: 1 for replacement, >= 2 for repaint
  ctl.covariance = "isotropic"  # posterior: "isotropic" (images) or "tweedie" (exact, small dimensions only)
  ctl.guidance_scale = 1.0  # posterior: the weight of the guidance term (1: Bayes' rule)
  ctl.data_variance = 1.0  # posterior, isotropic: the data variance v of ΠGDM's r² = vσ²/(v + σ²)
  return ctl


def eval_section() -> ml_collections.ConfigDict:
  """``config.eval``: what --mode=eval / fid_stats / train_classifier do (toy configs use it too)."""
  # Evaluation from checkpoints (--mode=eval / fid_stats / train_classifier; score_jax/modes/eval.py
  # documents each field).  Steps: 0 means the first / the latest checkpoint.  Fields that may
  # be None are typed placeholders, so --config.eval.<field>=<value> can still set them.
  ev = ml_collections.ConfigDict()
  ev.begin_step = 0
  ev.end_step = 0
  ev.wait = False  # poll for checkpoints not written yet (up to end_step, else training.num_steps)
  ev.poll_seconds = 60.0
  ev.wait_timeout_seconds = config_dict.placeholder(float)  # None: wait until the end step
  ev.batch_size = 128
  ev.num_loss_batches = 8  # held-out loss; 0 skips it
  ev.bpd_num_examples = config_dict.placeholder(int)  # None: the whole held-out split; 0 skips bits/dim
  ev.bpd_num_repeats = 1  # dequantization passes
  ev.bpd_rtol = 1e-5
  ev.bpd_atol = 1e-5
  ev.bpd_divergence = "hutchinson"
  ev.num_samples = 50_000  # FID / KID / IS / precision-recall samples; 0 skips them
  ev.sample_batch_size = 500
  ev.features = "inception"  # or "classifier" (the in-domain CNN of --mode=train_classifier)
  ev.inception_path = ""  # .npz from `python -m score_jax.metrics.convert_inception`
  ev.classifier_dir = ""  # default <workdir>/classifier
  ev.classifier = ml_collections.ConfigDict(dict(widths=(32, 64), feature_dim=128, num_steps=2000, batch_size=128,
                                                 lr=1e-3, max_shift=1))
  ev.kid_subsets = 100
  ev.kid_subset_size = 1000
  ev.is_splits = 10
  ev.pr_k = 3
  ev.real_features_max = 10_000  # real rows kept for KID / precision-recall
  ev.reference = True  # real held-out data and noise scored once into eval/reference.json
  return ev


def noisy_classifier_section() -> ml_collections.ConfigDict:
  """``config.noisy_classifier``: the classifier of classifier guidance."""
  # The noise-conditional classifier p_t(y | x(t)) of classifier guidance
  # (--mode=train_noisy_classifier; score_jax/modes/train_noisy_classifier.py documents each field).
  nc = ml_collections.ConfigDict()
  nc.model = "wideresnet"  # score_sde's CIFAR-10 classifier, WRN-28-10; "cnn" for the embedded data
  nc.network = ml_collections.ConfigDict(dict(depth=28, width=10))
  nc.num_steps = 100_000
  nc.batch_size = 128
  nc.lr = 2e-4
  nc.max_shift = 0
  nc.dir = ""  # default <workdir>/noisy_classifier
  nc.num_bands = 10
  nc.band_repeats = 1
  return nc


def guidance_section() -> ml_collections.ConfigDict:
  """``config.guidance``: class guidance of the sampling modes (none, classifier, cfg)."""
  # Class guidance of --mode=sample, inpaint and colorize (score_jax/jobs/control.py documents
  # each field): kind "none", "classifier" (the noise-conditional classifier above), "cfg"
  # (classifier-free guidance) or "autoguidance" (guided by a worse model of the same task:
  # another run's or an earlier checkpoint's EMA, guide_workdir / guide_step).  Every kind can
  # be limited to σ_lo < σ <= σ_hi with sigma_interval = (σ_lo, σ_hi) (None: every σ).
  g = ml_collections.ConfigDict()
  g.kind = "none"
  g.labels = ()  # requested classes, cycled over the samples; empty: 0 … K−1
  g.strategy = "constant"  # constant | linear | truncated | norm_ratio (the report's §5.3, and ours)
  g.scale = 1.0
  g.scale_start, g.scale_end = 500.0, 400.0
  g.sigma_min = config_dict.placeholder(float)
  g.sigma_max = config_dict.placeholder(float)
  g.sigma_lo, g.sigma_hi = 0.0, float("inf")
  g.ratio = 1.0
  g.sigma_classifier_max = config_dict.placeholder(float)
  g.w = 1.0
  g.sigma_interval = config_dict.placeholder(tuple)
  g.guide_workdir = ""  # autoguidance: the guiding run ("": this workdir, e.g. an earlier step)
  g.guide_step = config_dict.placeholder(int)  # autoguidance: its step (None: its latest)
  return g


def _smoke(config: ml_collections.ConfigDict) -> None:
  data = config.data
  if data.kind not in ("embedded", "toy"):
    data.kind, data.name, data.path, data.image_size = "embedded", "shapes", "", 16
    data.options = ml_collections.ConfigDict(dict(num_train=64, num_test=16))
  net = config.model.network
  if config.model.name == "ncsnpp":
    net.nf = 8
    net.ch_mult = (1, 2)
    net.num_res_blocks = 1
    net.attn_resolutions = (data.image_size // 2,)
  elif config.model.name == "unet":
    net.nf = 8
    net.ch_mult = (1, 2)
  tr = config.training
  tr.num_steps, tr.batch_size, tr.snapshot_freq, tr.log_freq, tr.sample_freq = 4, 8, 2, 1, 0
  tr.max_to_keep = 2
  if "ema" in config.model:
    config.model.ema.snapshot_freq = 2
  config.optim.warmup = 2
  if config.optim.get("decay", "constant") != "constant":
    config.optim.decay_steps = tr.num_steps - config.optim.warmup  # the decay's whole shape in 4 steps
  s = config.sampling
  s.num_samples = 8
  s.pc.num_steps = 4
  s.ode.rtol = s.ode.atol = 1e-2
  s.ode.num_steps = 4  # the fixed-step solvers (heun, euler)
  if "edm" in s:
    s.edm.num_steps = 3
  s.adaptive.rel_tol = 0.1
  s.ald.num_steps, s.ald.n_steps_each = 4, 1
  ctl = config.controllable
  ctl.num_inputs, ctl.samples_per_input = 2, 2
  ev = config.eval
  if data.kind == "embedded":
    ev.features = "classifier"
  ev.num_loss_batches = 2
  ev.batch_size = 16
  ev.bpd_num_examples = 8
  ev.bpd_rtol = ev.bpd_atol = 1e-2
  ev.num_samples = ev.sample_batch_size = 32
  ev.classifier.update(dict(widths=(8, 16), feature_dim=16, num_steps=200, batch_size=32))
  nc = config.noisy_classifier
  nc.model = "cnn"
  nc.network = ml_collections.ConfigDict(dict(widths=(8, 16), hidden_dim=16, embedding_dim=8))
  nc.num_steps, nc.batch_size, nc.num_bands, nc.band_repeats = 20, 16, 3, 1
  ev.kid_subsets = 10
  ev.poll_seconds = 5.0


TINY_IMAGE_SIZE = 32
TINY_STEPS = 400


def _tiny(config: ml_collections.ConfigDict) -> None:
  data = config.data
  if data.image_size > TINY_IMAGE_SIZE and "ve" in config.sde:
    # VE's σ_max is the largest distance between training images (Song & Ermon 2020, "Improved
    # Techniques for Training Score-Based Generative Models", technique 1), which shrinks with the
    # image's side: ‖x − y‖ over D = 3·S² values grows like S.
    config.sde.ve.sigma_max *= TINY_IMAGE_SIZE / data.image_size
  data.image_size = min(data.image_size, TINY_IMAGE_SIZE)
  net = config.model.network
  if config.model.name in ("ncsnpp", "unet"):
    net.nf = 16
    net.ch_mult = (1, 2, 2)
  if config.model.name == "ncsnpp":
    net.num_res_blocks = 1
    net.attn_resolutions = (data.image_size // 4,)
    net.dropout = 0.0
  tr = config.training
  tr.num_steps, tr.batch_size, tr.log_freq, tr.sample_freq = TINY_STEPS, 16, 50, 0
  tr.snapshot_freq, tr.max_to_keep = TINY_STEPS // 2, 2
  tr.grad_accum = 1
  if "ema" in config.model:  # EDM's ramp-up: the average spans at most the last 10 % of the steps
    config.model.ema.update(dict(rampup_ratio=0.1, snapshot_freq=TINY_STEPS))
  config.optim.lr = max(config.optim.lr, 1e-3)
  config.optim.warmup = TINY_STEPS // 10
  if config.optim.get("decay", "constant") != "constant":
    config.optim.decay_steps = tr.num_steps - config.optim.warmup
  s = config.sampling
  s.num_samples, s.batch_size = 16, None
  s.pc.num_steps = 100
  s.ode.rtol = s.ode.atol = 1e-3
  if "num_steps" in s.ode:
    s.ode.num_steps = 50
  if "edm" in s:
    s.edm.num_steps = min(s.edm.num_steps, 18)
  s.ald.num_steps, s.ald.n_steps_each = 50, 2
  ctl = config.controllable
  ctl.num_inputs, ctl.samples_per_input = 4, 4
  ev = config.eval
  ev.num_samples = ev.sample_batch_size = 64
  ev.batch_size = 16


def finalize(config: ml_collections.ConfigDict, variant: str, path: str) -> ml_collections.ConfigDict:
  """Applies ``variant`` ("", "smoke" or "tiny") to a finished config; ``path`` names the file in errors."""
  if variant not in VARIANTS:
    raise ValueError(f"{path}: unknown variant {variant!r}; choose one of {list(VARIANTS)}.")
  if variant == "smoke":
    _smoke(config)
  elif variant == "tiny":
    _tiny(config)
  return config
