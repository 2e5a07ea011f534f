"""Every config file imports, validates and builds at smoke size; full sizes are checked abstractly."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from score_jax import experiment
from score_jax import models

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py")
                 if p.name not in ("__init__.py", "common.py"))
EMBEDDED = ("configs/ve/digits.py", "configs/ve/digits_cond.py", "configs/vp/digits.py", "configs/ve/shapes_32.py",
            "configs/ve/shapes_16.py", "configs/toy/gmm2d.py", "configs/edm/digits.py", "configs/rf/digits.py",
            "configs/distill/digits.py")


def load(path: str, variant: str = ""):
  spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(variant)


def test_every_config_is_listed():
  assert len(CONFIGS) == 22, CONFIGS
  for name in ("configs/default_ve.py", "configs/default_vp.py", "configs/default_subvp.py", "configs/ve/afhq_512.py",
               "configs/ve/cifar10_ncsnpp_continuous.py", "configs/ve/celebahq_256.py", "configs/ve/ffhq_1024.py",
               "configs/ve/church_256.py", "configs/vp/cifar10_ddpmpp_continuous.py",
               "configs/subvp/cifar10_ddpmpp_continuous.py", "configs/edm/cifar10_ddpmpp.py", "configs/rf/cifar10.py",
               *EMBEDDED):
    assert name in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_docstring_holds_the_command(path):
  module, _ = load(path)
  assert f"python main.py --config={path}" in module.__doc__


@pytest.mark.parametrize("path", CONFIGS)
def test_smoke_variant_builds(path):
  _, config = load(path, "smoke")
  setup = experiment.build(config)  # validates and traces the loss through the network
  assert config.training.num_steps <= 20
  params = jax.eval_shape(lambda k: experiment.init_params(setup, k), jax.random.key(0))
  assert experiment.num_params(params) < 200_000


@pytest.mark.parametrize("path", CONFIGS)
def test_unknown_variant_is_rejected(path):
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    load(path, "huge")


@pytest.mark.parametrize("path", [c for c in CONFIGS if c != "configs/toy/gmm2d.py"])
def test_tiny_variant_keeps_the_data_and_shrinks_the_rest(path):
  """``:tiny`` (a first run on one's own images) reads the data the full config reads, at <= 32 px,
  with a network of under 1.5M parameters, 400 steps and a 16-sample grid at the end."""
  _, full = load(path)
  _, tiny = load(path, "tiny")
  assert (tiny.data.kind, tiny.data.name, tiny.data.path) == (full.data.kind, full.data.name, full.data.path)
  assert tiny.data.image_size == min(full.data.image_size, 32)
  assert (tiny.training.num_steps, tiny.training.sample_freq, tiny.sampling.num_samples) == (400, 0, 16)
  assert (tiny.sde.name, tiny.training.loss, tiny.sampling.method) == (full.sde.name, full.training.loss,
                                                                       full.sampling.method)
  if "ve" in tiny.sde:  # σ_max, the largest distance between images, scales with their side
    assert tiny.sde.ve.sigma_max == pytest.approx(full.sde.ve.sigma_max * tiny.data.image_size / full.data.image_size)
  if tiny.model.name in ("ncsnpp", "unet"):
    model, channels = _full_size_model(tiny)
    assert _count(model, tiny.data.image_size, channels) < 1_500_000


def _full_size_model(config):
  data = config.data
  channels = 1 if data.name == "digits" else 3
  network = dict(config.model.network.to_dict(), image_size=data.image_size, num_channels=channels)
  return models.get_model(config.model.name, **network), channels


def _count(model, size, channels):
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  cond = jax.ShapeDtypeStruct((1,), jnp.float32)
  params = jax.eval_shape(lambda k, x, c: model.init(k, x, c)["params"], jax.random.key(0), x, cond)
  return experiment.num_params(params)


def test_afhq_512_parameter_count_without_allocating():
  _, config = load("configs/ve/afhq_512.py")
  model, channels = _full_size_model(config)
  count = _count(model, 512, channels)
  print(f"configs/ve/afhq_512.py: {count:,} parameters")
  assert count == pytest.approx(105.7e6, rel=0.002)


@pytest.mark.parametrize("path,count", [("configs/edm/cifar10_ddpmpp.py", 55_732_739), ("configs/rf/cifar10.py", 61_804_419)])
def test_recipe_cifar10_parameter_counts(path, count):
  """EDM's DDPM++ config F has 55.73M parameters (Karras et al. 2022, Table 7); the rectified flow's
  DDPM++ is score_sde's, 61.8M."""
  _, config = load(path)
  model, channels = _full_size_model(config)
  assert _count(model, 32, channels) == count


@pytest.mark.parametrize("path", [c for c in CONFIGS if c not in EMBEDDED and "afhq" not in c])
def test_full_size_models_trace(path):
  _, config = load(path)
  model, channels = _full_size_model(config)
  assert _count(model, config.data.image_size, channels) > 1_000_000


@pytest.mark.parametrize("path", [c for c in CONFIGS if c not in EMBEDDED])
def test_full_size_config_without_data_says_where_to_put_it(path, tmp_path):
  _, config = load(path)
  config.data.path = str(tmp_path / "nowhere")
  with pytest.raises(experiment.ConfigError) as info:
    experiment.build(config)
  message = str(info.value)
  assert message.startswith("config.data.path") and "\n" not in message, message


@pytest.mark.parametrize("path", [c for c in EMBEDDED if "toy" not in c])
def test_embedded_configs_build_at_full_size(path):
  _, config = load(path)
  setup = experiment.build(config)
  shapes = {"digits": (8, 8, 1), "digits_cond": (8, 8, 1), "shapes_32": (32, 32, 3), "shapes_16": (16, 16, 3)}
  if path.startswith(("configs/edm/", "configs/rf/")):
    # The recipe configs keep configs/ve/digits.py's network, batch, optimizer and steps.
    _, ve = load("configs/ve/digits.py")
    for section in ("model.network", "optim", "training.batch_size", "training.num_steps", "model.ema"):
      get = lambda c: functools.reduce(getattr, section.split("."), c)
      assert get(config) == get(ve), section
  assert setup.data_shape == shapes[path.split("/")[-1][:-3]]


# --- values checked against score_sde's configs ------------------------------------------------
def test_celebahq_256_langevin_snr_is_score_sde_256px_value():
  """score_sde's celebahq_256 config builds on default_lsun_configs (snr 0.075); 0.17 is its 64-px CelebA value."""
  _, config = load("configs/ve/celebahq_256.py")
  assert config.sampling.pc.snr == 0.075


def test_ffhq_1024_loss_is_averaged_over_pixels():
  """score_sde's ffhq_ncsnpp_continuous sets reduce_mean=True.  With a zero score and σ²
  weighting the loss is E‖z‖² reduced over the D = 16·16·3 values of a smoke image:
  ≈ 1 when averaged, ≈ 768 when summed."""
  from score_jax import losses, sde as sde_lib
  _, config = load("configs/ve/ffhq_1024.py")
  assert config.training.loss == "dsm" and config.training.loss_options.reduce == "mean"
  x = jnp.zeros((64, 16, 16, 3))
  loss = losses.dsm_loss(jax.random.PRNGKey(0), sde_lib.VESDE(sigma_max=1348.0), lambda y, t: jnp.zeros_like(y), x,
                         **config.training.loss_options.to_dict())
  assert float(loss) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("path,eps,train_eps", [("configs/default_ve.py", 1e-5, 1e-5),
                                                ("configs/default_vp.py", 1e-3, 1e-5),
                                                ("configs/default_subvp.py", 1e-3, 1e-5)])
def test_sde_smallest_times_reach_the_built_sde(path, eps, train_eps):
  """Sampling stops at eps (score_sde's sampling_eps); losses and bits/dim start at train_eps (its eps)."""
  _, config = load(path, "smoke")
  sde = experiment.build(config).sde
  assert (sde.eps, sde.train_eps) == (eps, train_eps)


def test_sde_smallest_times_can_be_overridden():
  _, config = load("configs/vp/digits.py", "smoke")
  config.sde.vp.update(dict(eps=1e-2, train_eps=1e-4))
  sde = experiment.build(config).sde
  assert (sde.eps, sde.train_eps) == (1e-2, 1e-4)


def test_the_network_is_traced_once_per_batch_shape_whatever_program_calls_it(monkeypatch):
  """Setup.apply runs the network through experiment.forward(model), one jitted function per
  network: a gradient, a program with two call sites and a program of a second build of the
  same config trace the U-Net once for one batch shape (a new batch shape once more), and the
  compiled result is model.apply's."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from score_jax.models import unet  # pylint: disable=g-import-not-at-top
  _, config = load("configs/ve/digits.py", "smoke")
  config.model.network.nf = 12  # a network that no other test of this process has traced
  setup = experiment.build(config)
  shapes = experiment.param_shapes(setup)
  x, t = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32)
  calls = []
  call = unet.UNet.__call__
  monkeypatch.setattr(unet.UNet, "__call__", lambda self, *a, **k: (calls.append(a[0].shape), call(self, *a, **k))[1])
  jax.eval_shape(jax.grad(lambda p, x, t: jnp.sum(setup.apply(p, x, t) ** 2)), shapes, x, t)
  jax.eval_shape(lambda p, x, t: setup.apply(p, x, t) - setup.apply(p, 2.0 * x, t), shapes, x, t)
  again = experiment.build(config)
  jax.eval_shape(again.apply, shapes, x, t)
  assert calls == [(3, 8, 8, 1)]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes)
  x2, t2 = jnp.asarray(rng.standard_normal((2, 8, 8, 1)), jnp.float32), jnp.array([0.1, 0.9])
  out, direct = jax.jit(lambda p: (again.apply(p, x2, t2), setup.model.apply({"params": p}, x2, t2, None)))(params)
  assert calls == [(3, 8, 8, 1), (2, 8, 8, 1), (2, 8, 8, 1)]  # forward's trace, then the direct apply's
  np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)
  assert float(np.max(np.abs(np.asarray(out)))) > 0.0


def test_param_shapes_are_the_init_shapes_traced_once_and_follow_x64():
  """experiment.param_shapes: the shapes and dtypes of init_params, traced once per network and
  data shape (a second build of the same config does not trace the network again) and keyed on
  jax_enable_x64, under which initializers' default dtype is float64."""
  from score_jax.experiment import state as state_lib  # pylint: disable=g-import-not-at-top
  path = "configs/ve/digits.py"
  setup = experiment.build(load(path, "smoke")[1])
  traced = lambda: jax.eval_shape(lambda k: experiment.init_params(setup, k), jax.random.key(1))
  shapes, want = experiment.param_shapes(setup), traced()
  assert jax.tree.structure(shapes) == jax.tree.structure(want)
  for s, w in zip(jax.tree.leaves(shapes), jax.tree.leaves(want)):
    assert (s.shape, s.dtype) == (w.shape, w.dtype)
  before = state_lib._cached_param_shapes.cache_info()  # pylint: disable=protected-access
  again = experiment.build(load(path, "smoke")[1])
  assert experiment.param_shapes(again) is shapes
  after = state_lib._cached_param_shapes.cache_info()  # pylint: disable=protected-access
  assert after.misses == before.misses and after.hits > before.hits
  assert jax.tree.structure(experiment.abstract_state(setup).params) == jax.tree.structure(want)
  with jax.enable_x64(True):
    wide, want = experiment.param_shapes(setup), traced()
  assert [s.dtype for s in jax.tree.leaves(wide)] == [w.dtype for w in jax.tree.leaves(want)]
  assert jnp.dtype("float64") in {s.dtype for s in jax.tree.leaves(wide)}  # the key matters: GroupNorm's scale and bias
