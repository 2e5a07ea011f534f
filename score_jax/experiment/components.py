"""A config becomes components here: ``build(config) -> Setup``.

Every component gets plain arguments, never the ConfigDict:

    config.sde, config.data   ``experiment.data``: the SDE and the data source
    config.model     models.get_model(name, **config.model.network)         the network (its
                     image_size / num_channels / num_classes come from the data), plus its
                     parametrization, conditioning and EMA (``config.model.ema``)
    config.optim     train_state.create_optimizer(config.optim)             clip -> Adam + warmup, decay
    config.training  losses.<loss>(**loss_options), batch size, steps, checkpoints, logging
    config.sampling  sampling.sample(method, **config.sampling[method])

Sections keyed by the chosen name (``config.sde.ve``, ``config.sampling.ode``, ...) keep the
options of the alternatives, so ``--config.sde.name=ve`` or ``--config.sampling.method=ode``
switch components from the command line.

``build`` validates everything and traces (never compiles) the train step and the sampler
abstractly, so a bad value fails in seconds with ``ConfigError``, whose message starts with
the config field, before any compilation and before the workdir is touched.

Randomness: five streams are folded from ``jax.random.key(config.seed)`` (init, train,
data, sample, eval); see ``keys``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from score_jax import ema as ema_lib
from score_jax import losses
from score_jax import models
from score_jax import pretrained as pretrained_lib
from score_jax import sampling
from score_jax import score_fn as score_fn_lib
from score_jax import sde as sde_lib
from score_jax import sharding as sharding_lib
from score_jax import train_state as ts_lib
from score_jax.experiment.checks import ConfigDict, ConfigError, as_dict, check, config_field, is_int, is_number
from score_jax.experiment.data import IMAGE_KINDS, Data, ImageData, ImageLayout, build_data, build_sde, data_range
from score_jax.experiment.state import abstract_batch, param_shapes

Array = Any

LOSSES: dict[str, Callable[..., Array]] = {
    "dsm": losses.dsm_loss,
    "smld": losses.smld_loss,
    "ddpm": losses.ddpm_loss,
}


# config.model.dtype: the dtype the network computes in; parameters, optimizer state, EMA,
# the noise embedding, normalisation statistics, softmax and the loss stay float32.
COMPUTE_DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


KEY_STREAMS = ("init", "train", "data", "sample", "eval")


def seed_of(config: ConfigDict) -> int:
  """``config.seed``, checked to be an integer."""
  check(is_int(config.seed), "config.seed", f"must be an integer, got {config.seed!r}.")
  return int(config.seed)


def keys(seed: int) -> dict[str, jax.Array]:
  """The run's base keys, one per stream in ``KEY_STREAMS``, folded from ``key(seed)``."""
  base = jax.random.key(seed)
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(KEY_STREAMS)}


# --- setup --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def forward(model: Any) -> Callable[..., Array]:
  """``model``'s forward pass as one jitted function per module (modules are hashable and
  compare by their fields): ``forward(model)(params, x, cond, labels, dropout_key, train)``.

  A jitted function called inside another traced program is traced once per input shapes and
  dtypes and its jaxpr reused, derivatives included.  So the train step, the samplers, the
  likelihood and the evaluations of one process trace the network once per batch shape,
  instead of once per program and per call site (the digits smoke U-Net: about 0.45 s a trace
  on a 2-core CPU).  XLA inlines the call: checked on the digits smoke U-Net's forward pass
  and the shapes_16 smoke U-Net's gradient, whose optimised HLO has no call op and as many
  fusions as with a direct ``model.apply`` (108 and 512).
  """

  def apply(params: Any, x: Array, cond: Array, labels: Optional[Array], dropout_key: Optional[jax.Array],
            train: bool) -> Array:
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    return model.apply({"params": params}, x, cond, labels, train=train, rngs=rngs)

  return jax.jit(apply, static_argnums=5)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything built from a config, before anything is compiled.

  Attributes:
    sde: the forward SDE.
    data: ``ToyData`` (exact samples on the device) or ``ImageData`` (host-fed batches).
    model: the (unbound) Flax network, called as ``(x, cond, labels=None, train=False)``.
    tx: the optax chain.
    lr_schedule: step -> learning rate (for logging; the chain holds its own copy).
    loss_fn: ``loss_fn(key, sde, score_fn, x) -> scalar`` with the config's options bound.
    parametrization: how the network output becomes a score (``score_fn.get_score_fn``).
    conditioning: what the network is conditioned on (t, σ̃(t) or 999·t; ``score_fn.CONDITIONINGS``).
    ema: the parameter averages training tracks (``config.model.ema``; ``score_jax.ema.EMA``).
    num_classes: classes of a class-conditional network; 0 when unconditional.
    label_dropout: probability of replacing a label by the null id while training
      (classifier-free guidance); 0 disables.
    batch_size: the global batch size.
    grad_accum: micro-batches per step (``config.training.grad_accum``); 1: none.
    skip_nonfinite: skip (instead of stop at) updates whose loss or gradient is not finite.
    mesh: the data-parallel mesh over all devices.
    sampling_method: the sampler's name.
    sampling_options: its options, defaults filled in.
    seed: ``config.seed`` (keys come from ``keys(seed)``; image batching uses it directly).
    centered: the data live in [−1, 1] (else [0, 1]); score_sde's convention needs it.
    pretrained: a converted published checkpoint (``score_jax.pretrained`` export) that
      sample / eval use instead of the workdir's checkpoints; "" for none.
    sigma_data: σ_d of the "edm" parametrization and loss weighting (``config.model.sigma_data``).
    sample_params: which parameters sample, eval and the controllable modes read
      (``config.sampling.params``): "ema" (the state's EMA), "raw" (the trained parameters of a
      full checkpoint), "power_<σ_rel>" (a tracked power-EMA snapshot) or "posthoc_<σ_rel>" (a
      ``--mode=posthoc_ema`` reconstruction).
    boundary_sigma: ε of the "consistency" parametrization (``config.model.boundary_sigma``), where
      f(x, ε) = x.
  """

  sde: sde_lib.SDE
  data: Data
  model: Any
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  loss_fn: Callable[..., Array]
  parametrization: str
  conditioning: str
  ema: ema_lib.EMA
  num_classes: int
  label_dropout: float
  batch_size: int
  skip_nonfinite: bool
  mesh: jax.sharding.Mesh
  sampling_method: str
  sampling_options: dict[str, Any]
  seed: int
  centered: bool = True
  pretrained: str = ""
  grad_accum: int = 1
  sigma_data: float = 0.5
  sample_params: str = "ema"
  boundary_sigma: float = 0.002

  @property
  def data_shape(self) -> tuple[int, ...]:
    return self.data.shape

  def apply(self, params: Any, x: Array, cond: Array, labels: Array | None = None, *, train: bool = False,
            dropout_key: jax.Array | None = None) -> Array:
    """The network on its ``"params"`` collection: x [B, ...], cond [B] -> [B, ...]."""
    return forward(self.model)(params, x, cond, labels, dropout_key if train else None, train)

  def score_fn(self, params: Any, labels: Array | None = None, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> Callable[[Array, Array], Array]:
    """``score_fn(x, t)`` of the network with ``params`` (labels bound when given)."""
    apply = functools.partial(self.apply, train=train, dropout_key=dropout_key)
    return score_fn_lib.get_score_fn(self.sde, apply, params, parametrization=self.parametrization,
                                     conditioning=self.conditioning, labels=labels, centered=self.centered,
                                     sigma_data=self.sigma_data, boundary_sigma=self.boundary_sigma)


def _validate_training(config: ConfigDict) -> None:
  tr = config.training
  for field in ("num_steps", "batch_size", "snapshot_freq", "max_to_keep", "log_freq"):
    value = tr[field]
    check(is_int(value) and value >= 1, f"config.training.{field}", f"must be an integer >= 1, got {value!r}.")
  sample_freq = tr.get("sample_freq", 0)
  check(is_int(sample_freq) and sample_freq >= 0, "config.training.sample_freq",
        f"must be an integer >= 0 (steps between sample grids; 0: only at the end), got {sample_freq!r}.")
  check(tr.loss in LOSSES, "config.training.loss", f"unknown loss {tr.loss!r}; choose one of {sorted(LOSSES)}.")
  p = tr.get("label_dropout", 0.0)
  check(isinstance(p, (int, float)) and 0.0 <= p < 1.0, "config.training.label_dropout",
        f"must lie in [0, 1), got {p!r}.")
  op = config.optim
  check(isinstance(op.lr, (int, float)) and op.lr > 0, "config.optim.lr", f"must be > 0, got {op.lr!r}.")
  check(is_int(op.warmup) and op.warmup >= 0, "config.optim.warmup", f"must be an integer >= 0, got {op.warmup!r}.")
  decay = op.get("decay", "constant")
  check(decay in ts_lib.LR_DECAYS, "config.optim.decay", f"unknown decay {decay!r}; choose one of {list(ts_lib.LR_DECAYS)}.")
  if decay != "constant":
    steps = op.get("decay_steps", 0)
    check(is_int(steps) and steps >= 1, "config.optim.decay_steps",
          f"decay={decay!r} needs an integer >= 1 (the cosine's length after the warmup, or inverse_sqrt's "
          f"reference step), got {steps!r}.")
  check(0.0 <= op.b1 < 1.0, "config.optim.b1", f"must lie in [0, 1), got {op.b1!r}.")
  check(0.0 <= op.b2 < 1.0, "config.optim.b2", f"must lie in [0, 1), got {op.b2!r}.")
  check(op.eps > 0, "config.optim.eps", f"must be > 0, got {op.eps!r}.")
  check(isinstance(tr.get("fsdp", False), bool), "config.training.fsdp",
        f"must be True or False, got {tr.get('fsdp')!r}.")
  min_size = tr.get("fsdp_min_size", sharding_lib.FSDP_MIN_SIZE)
  check(is_int(min_size) and min_size >= 0, "config.training.fsdp_min_size",
        f"must be an integer >= 0 (arrays with fewer elements stay replicated under FSDP), got {min_size!r}.")
  n = config.sampling.num_samples
  check(is_int(n) and n >= 1, "config.sampling.num_samples", f"must be an integer >= 1, got {n!r}.")
  check(is_int(config.seed), "config.seed", f"must be an integer, got {config.seed!r}.")
  dtype = config.model.get("dtype", "float32")
  check(dtype in COMPUTE_DTYPES, "config.model.dtype",
        f"unknown compute dtype {dtype!r}; choose one of {list(COMPUTE_DTYPES)} (parameters stay float32).")
  remat = tr.get("remat", False)
  check(isinstance(remat, bool), "config.training.remat", f"must be True or False, got {remat!r}.")
  accum = tr.get("grad_accum", 1)
  check(is_int(accum) and accum >= 1, "config.training.grad_accum",
        f"must be an integer >= 1 (micro-batches per step), got {accum!r}.")


SAMPLE_PARAMS = ("ema", "raw")  # besides power_<σ_rel> and posthoc_<σ_rel>


def build_ema(config: ConfigDict) -> ema_lib.EMA:
  """``config.model.ema`` as an ``ema.EMA``.  A config without the section (a run trained before
  it existed) has score_sde's classic EMA at ``config.model.ema_rate`` with no ramp-up."""
  model = config.model
  if "ema" not in model:
    rate = model.get("ema_rate", 0.999)
    check(is_number(rate) and 0.0 <= rate < 1.0, "config.model.ema_rate", f"must lie in [0, 1), got {rate!r}.")
    return ema_lib.EMA(kind="classic", rate=float(rate), rampup_ratio=0.0)
  check("ema_rate" not in model, "config.model.ema_rate",
        "has moved to config.model.ema.rate (with config.model.ema.kind, rampup_ratio, sigma_rels); set it there.")
  e = model.ema
  known = {"kind", "rate", "rampup_ratio", "sigma_rels", "snapshot_freq"}
  unknown = sorted(set(e.keys()) - known)
  check(not unknown, f"config.model.ema.{unknown[0] if unknown else ''}",
        f"is not a field of config.model.ema; its fields are {sorted(known)}.")
  kind = e.get("kind", "classic")
  check(kind in ema_lib.KINDS, "config.model.ema.kind", f"unknown {kind!r}; choose one of {list(ema_lib.KINDS)}.")
  rate = e.get("rate", 0.999)
  check(is_number(rate) and 0.0 <= rate < 1.0, "config.model.ema.rate",
        f"must lie in [0, 1) (score_sde's ema_rate), got {rate!r}.")
  ratio = e.get("rampup_ratio", 0.0)
  check(is_number(ratio) and ratio >= 0.0, "config.model.ema.rampup_ratio",
        f"must be a number >= 0 (EDM: 0.05; 0: no ramp-up, score_sde), got {ratio!r}.")
  sigma_rels = e.get("sigma_rels", ())
  if is_number(sigma_rels):
    sigma_rels = (sigma_rels,)
  check(isinstance(sigma_rels, (tuple, list)), "config.model.ema.sigma_rels",
        f"must be a tuple of σ_rel values (EDM2: (0.05, 0.10)), got {sigma_rels!r}.")
  freq = e.get("snapshot_freq", 1)
  check(is_int(freq) and freq >= 1, "config.model.ema.snapshot_freq",
        f"must be an integer >= 1 (steps between power-EMA snapshots), got {freq!r}.")
  if kind == "power":
    check(len(sigma_rels) >= 1, "config.model.ema.sigma_rels", "must name at least one σ_rel (EDM2: (0.05, 0.10)).")
    sigma_rels = tuple(_sigma_rel(v, "config.model.ema.sigma_rels") for v in sigma_rels)
    check(len(set(sigma_rels)) == len(sigma_rels), "config.model.ema.sigma_rels", f"repeats a value: {sigma_rels}.")
  else:
    sigma_rels = ()
  return ema_lib.EMA(kind=kind, rate=float(rate), rampup_ratio=float(ratio), sigma_rels=sigma_rels)


def _sigma_rel(value: Any, field: str) -> float:
  try:
    return ema_lib.check_sigma_rel(value, field)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def sample_params(config: ConfigDict) -> str:
  """``config.sampling.params``, checked and written canonically (``posthoc_0.08`` -> ``posthoc_0.080``)."""
  field = "config.sampling.params"
  value = config.sampling.get("params", "ema")
  if value in SAMPLE_PARAMS:
    pass
  else:
    kind, _, number = str(value).partition("_")
    check(kind in ema_lib.PROFILE_KINDS and number, field,
          f"unknown {value!r}; choose 'ema', 'raw', 'power_<σ_rel>' (a tracked power-EMA snapshot) or "
          f"'posthoc_<σ_rel>' (a --mode=posthoc_ema reconstruction), e.g. 'posthoc_0.080'.")
    try:
      sigma = float(number)
    except ValueError:
      raise ConfigError(f"{field}: {number!r} in {value!r} is not a number; e.g. 'posthoc_0.080'.") from None
    value = ema_lib.profile_name(kind, _sigma_rel(sigma, field))
  if config.model.get("pretrained", ""):
    check(value == "ema", field, f"is {value!r}, but config.model.pretrained holds one set of (EMA) parameters; "
          "leave it 'ema'.")
  ema = build_ema(config)
  parsed = ema_lib.parse_profile_name(value)
  if parsed is not None and parsed[0] == "power":
    check(ema.kind == "power" and parsed[1] in ema.sigma_rels, field,
          f"is {value!r}, but the run tracks " + (f"the power EMA at σ_rel {list(ema.sigma_rels)}" if ema.kind == "power"
                                                 else "the classic EMA (config.model.ema.kind)") +
          "; pick one of those, or reconstruct it with --mode=posthoc_ema.")
  return value


def _network_fields(config: ConfigDict, data: Data) -> dict[str, Any]:
  """``config.model.network`` with the data's image size, channels and classes filled in, and
  the compute dtype (``config.model.dtype``) and ``config.training.remat`` passed on."""
  fields = as_dict(config.model.network)
  cls = models.MODELS.get(config.model.name)
  names = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
  dtype = config.model.get("dtype", "float32")
  if dtype != "float32":  # float32 leaves the network's own default (None: its inputs' dtype)
    check("dtype" in names, "config.model.dtype",
          f"model {config.model.name!r} computes in float32 only; use 'ncsnpp' or 'unet' for {dtype!r}.")
    fields["dtype"] = COMPUTE_DTYPES[dtype]
  if config.training.get("remat", False):
    check("remat" in names, "config.training.remat",
          f"model {config.model.name!r} has no residual blocks to rematerialise; use 'ncsnpp' or 'unet'.")
    fields["remat"] = True
  if not isinstance(data, ImageData):
    return fields
  size, _, channels = data.shape
  for field, value in (("image_size", size), ("num_channels", channels)):
    if field not in names:
      continue
    given = fields.get(field)
    check(given is None or given == value, f"config.model.network.{field}",
          f"is {given!r} but the data have {value} (config.data); leave it unset, the data fill it in.")
    fields[field] = value
  ch_mult = fields.get("ch_mult")
  if ch_mult is not None and "image_size" in names:
    factor = 2 ** (len(ch_mult) - 1)
    check(size % factor == 0, "config.data.image_size",
          f"{size} is not divisible by the down-sampling factor {factor} of config.model.network.ch_mult="
          f"{tuple(ch_mult)} ({len(ch_mult)} levels); use a multiple of {factor} or fewer levels.")
  if config.model.get("class_conditional", False):
    check(data.num_classes > 0, "config.model.class_conditional",
          f"dataset {data.name!r} has no labels; set it to False.")
    check("num_classes" in names, "config.model.class_conditional",
          f"model {config.model.name!r} takes no labels; use 'unet' or 'ncsnpp'.")
    fields["num_classes"] = data.num_classes
  return fields


def build(config: ConfigDict, *, mesh: Optional[jax.sharding.Mesh] = None, workdir: Optional[str] = None,
          read_data: bool = True) -> Setup:
  """Validates ``config`` and builds the SDE, data, network, optimizer, loss and sampler options.

  Nothing is compiled; the train step and the sampler are traced abstractly
  (``jax.eval_shape``), so any bad value surfaces here.

  Args:
    config: the full config (sections sde, data, model, optim, training, sampling, seed).
    mesh: the device mesh; default ``sharding.make_mesh()`` over all devices.
    workdir: the run's folder, where an image folder's header scan is cached (``build_data``).
    read_data: False for a mode that reads no data (``--mode=sample``): a converted export
      (``config.model.pretrained``) then gives the image channels and labels and the data are
      not opened (``export_layout``); a run of this project's opens its data as ever.

  Returns:
    The components.

  Raises:
    ConfigError (a ValueError): a bad config value; the message starts with the config field.
  """
  _validate_training(config)
  mesh = sharding_lib.make_mesh() if mesh is None else mesh
  try:
    sharding_lib.check_batch_divisible(config.training.batch_size, mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  accum = config.training.get("grad_accum", 1)
  check(config.training.batch_size % (accum * mesh.size) == 0, "config.training.grad_accum",
        f"{accum} micro-batches on {mesh.size} device(s) need config.training.batch_size "
        f"({config.training.batch_size}) to be a multiple of grad_accum × devices = {accum * mesh.size}.")
  sde = build_sde(config)
  data = build_data(config, workdir, layout=None if read_data else export_layout(config))
  fields = _network_fields(config, data)
  with config_field("config.model"):
    model = models.get_model(config.model.name, **fields)
  parametrization = config.model.parametrization
  check(parametrization in score_fn_lib.PARAMETRIZATIONS, "config.model.parametrization",
        f"unknown {parametrization!r}; choose one of {list(score_fn_lib.PARAMETRIZATIONS)}.")
  conditioning = config.model.conditioning
  check(conditioning in score_fn_lib.CONDITIONINGS, "config.model.conditioning",
        f"unknown {conditioning!r}; choose one of {list(score_fn_lib.CONDITIONINGS)}.")
  with config_field("config.optim"):
    tx = ts_lib.create_optimizer(as_dict(config.optim))
    lr_schedule = ts_lib.create_learning_rate_schedule(as_dict(config.optim))
  sigma_data = config.model.get("sigma_data", 0.5)
  check(isinstance(sigma_data, (int, float)) and not isinstance(sigma_data, bool) and sigma_data > 0,
        "config.model.sigma_data", f"must be a number > 0 (the data's standard deviation; EDM: 0.5), got {sigma_data!r}.")
  boundary_sigma = config.model.get("boundary_sigma", 0.002)
  check(is_number(boundary_sigma) and boundary_sigma > 0, "config.model.boundary_sigma",
        f"must be a number > 0 (a consistency model's ε, where f(x, ε) = x; 0.002 in the paper), got {boundary_sigma!r}.")
  if parametrization == "consistency":
    with jax.ensure_compile_time_eval():
      floor = float(sde.noise_level(jnp.float32(sde.eps)))
    check(boundary_sigma >= floor, "config.model.boundary_sigma",
          f"{boundary_sigma!r} is below the SDE's noise level at eps ({floor:.4g}), where the network is not defined.")
  loss_options = as_dict(config.training.get("loss_options"))
  check("sigma_data" not in loss_options, "config.training.loss_options.sigma_data",
        "is taken from config.model.sigma_data (one value for the parametrization and the loss); remove it here.")
  if loss_options.get("weighting") == "edm":
    loss_options["sigma_data"] = float(sigma_data)
  loss_fn = functools.partial(LOSSES[config.training.loss], **loss_options)
  method = config.sampling.method
  with config_field(f"config.sampling.{method}" if method in sampling.METHODS else "config.sampling.method"):
    options = sampling.resolve_options(sde, method, as_dict(config.sampling.get(method)))
  setup = Setup(sde=sde, data=data, model=model, tx=tx, lr_schedule=lr_schedule, loss_fn=loss_fn,
                parametrization=parametrization, conditioning=conditioning,
                ema=build_ema(config), num_classes=int(fields.get("num_classes", 0) or 0),
                label_dropout=float(config.training.get("label_dropout", 0.0)),
                batch_size=config.training.batch_size,
                skip_nonfinite=bool(config.training.get("skip_nonfinite", False)), mesh=mesh,
                sampling_method=method, sampling_options=options, seed=config.seed,
                centered=bool(config.data.get("centered", True)) if isinstance(data, ImageData) else True,
                pretrained=str(config.model.get("pretrained", "") or ""), grad_accum=accum,
                sigma_data=float(sigma_data), sample_params=sample_params(config),
                boundary_sigma=float(boundary_sigma))
  _trace_loss(config, setup)
  if setup.pretrained:
    _check_pretrained(setup, param_shapes(setup))
  return setup


# Configs whose loss traced cleanly in this process (their JSON and the widest float): tracing
# is a pure function of the config, and a job (train, then resume, sample, eval) builds the same
# config several times.
_TRACED: set[tuple[str, Any]] = set()


def _trace_loss(config: ConfigDict, setup: Setup) -> None:
  """Traces (never compiles) the loss, first with an exact-shape stand-in score, then with the
  network: a wrong loss option or a network that does not return x's shape fails here."""
  try:
    memo = (config.to_json(sort_keys=True), jax.dtypes.canonicalize_dtype(jnp.float64))
  except (TypeError, ValueError):  # a field JSON cannot hold: no memo
    memo = None
  if memo is not None and memo in _TRACED:
    return
  k = keys(config.seed)
  batch = abstract_batch(setup)
  with config_field("config.training.loss_options"):
    jax.eval_shape(lambda key, x: setup.loss_fn(key, setup.sde, lambda y, t: -y, x), k["train"], batch["image"])

  def network_loss(params, key, batch):
    labels = batch.get("label") if setup.num_classes else None
    return setup.loss_fn(key, setup.sde, setup.score_fn(params, labels, train=True, dropout_key=key), batch["image"])

  with config_field("config.model"):
    jax.eval_shape(network_loss, param_shapes(setup), k["train"], batch)
  if memo is not None:
    _TRACED.add(memo)


def export_layout(config: ConfigDict) -> Optional[ImageLayout]:
  """The image layout of ``config.model.pretrained``'s network (``pretrained.json``'s record):
  ``config.data.image_size`` (else the export's), ``config.data.options.channels`` (else the
  export's), the export's labels and ``config.data.centered``'s range.  None without an export
  (or one written before the record existed, or toy data): then the data say it."""
  path = str(config.model.get("pretrained", "") or "")
  if not path or config.data.kind not in IMAGE_KINDS:
    return None
  try:
    network = pretrained_lib.read_meta(path).get("network")
  except (OSError, ValueError):  # not an export: _check_pretrained says so
    return None
  if not network:
    return None
  d = config.data
  options = as_dict(d.get("options"))
  return ImageLayout(image_size=int(d.get("image_size") or network["image_size"]),
                     channels=int(options.get("channels", network["num_channels"])),
                     num_classes=int(network.get("num_classes", 0)), data_range=data_range(d.get("centered", True)))


def _check_pretrained(setup: Setup, params: Any) -> None:
  """``config.model.pretrained``: a converted export that fits the network and its conventions."""
  field, path = "config.model.pretrained", setup.pretrained
  with config_field(field):
    fmt = pretrained_lib.detect_format(path)
  check(fmt == "export", field, f"{path} is a {fmt} checkpoint, not a converted export; convert it once with "
        f"`python -m score_jax.pretrained --src={path} --config=<this config> --out=DIR` and pass DIR.")
  with config_field(field):
    meta = pretrained_lib.check_export(path, pretrained_lib.shapes_of(params))
  want = meta.get("conditioning", pretrained_lib.CONDITIONING)
  check(setup.conditioning == want, "config.model.conditioning",
        f"is {setup.conditioning!r} but {path} holds a network trained with score_sde's conventions; add "
        f"--config.model.conditioning={want} (score_jax.score_fn documents both).")
  counts = tuple(tuple(p) for p in meta.get("network", {}).get("group_counts", ()))
  if "network" in meta and hasattr(setup.model, "group_counts"):
    check(tuple(setup.model.group_counts) == tuple(sorted(counts)), "config.model.network.group_counts",
          f"is {tuple(setup.model.group_counts)!r} but {path}'s network has {tuple(sorted(counts))!r} (GroupNorm groups "
          f"that differ from min(C/4, 32)); use the config the converter wrote, {meta.get('config') or '<out>/config.py'}.")
  if "centered" in meta:
    check(bool(meta["centered"]) == setup.centered, "config.data.centered",
          f"is {setup.centered} but {path} was converted for centered={meta['centered']} data (its config "
          f"{meta.get('config', '')!r}); use the same data setting.")


def conversion_target(config: ConfigDict) -> tuple[Any, bool]:
  """(the NCSN++ a config describes, whether its data are centered), without touching its data:
  what ``python -m score_jax.pretrained`` converts a published checkpoint for (published models
  are RGB unless ``config.data.options.channels`` says otherwise).

  Raises:
    ValueError: the config's model is not "ncsnpp", or a bad network field.
  """
  if config.model.name != "ncsnpp":
    raise ValueError(f"config.model.name is {config.model.name!r}; published score_sde checkpoints are 'ncsnpp' "
                     "(NCSN++ / DDPM++) networks.")
  fields = config.model.network.to_dict()
  fields.setdefault("image_size", config.data.image_size)
  fields.setdefault("num_channels", config.data.get("options", {}).get("channels", 3))
  return models.get_model("ncsnpp", **fields), bool(config.data.centered)
