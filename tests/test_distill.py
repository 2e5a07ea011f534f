"""Consistency distillation: the parametrization's boundary, the schedules' formulas and the
distance (Song et al. 2023; Song & Dhariwal 2024).  More to come with issue 21."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import run_main

from score_jax import distillation
from score_jax import score_fn as score_fn_lib
from score_jax import sde as sde_lib
from score_jax.models import mlp
from score_jax.sampling import edm


def test_boundary_condition_holds_exactly_whatever_the_network():
  eps = 0.002
  c_skip, c_out, _ = score_fn_lib.consistency_coefficients(jnp.float32(eps), 0.5, eps)
  assert float(c_skip) == 1.0 and float(c_out) == 0.0
  # A slip (c_skip at σ instead of σ − ε) would leave c_skip(ε) = σ_d²/(ε² + σ_d²) < 1.
  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)
  model = mlp.MLPScore(hidden=16, num_layers=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))["params"]
  score = score_fn_lib.get_score_fn(sde, lambda p, x, c: 100.0 * model.apply({"params": p}, x, c), params,
                                    parametrization="consistency", conditioning="log_sigma", boundary_sigma=eps)
  y = jax.random.normal(jax.random.key(1), (64, 2))
  sigma = jnp.full((64,), eps)
  t = sde.time_from_noise_level(sigma)
  f = edm.make_denoiser(sde, score)(y, sigma, t)
  # score_fn reads its boundary through the same σ → t → σ̃(t) round trip, so f(y, ε) = y bit for
  # bit, under VP too (where σ̃(t(ε)) is several ulps off ε) and inside jit.
  np.testing.assert_array_equal(np.asarray(f), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(jax.jit(edm.make_denoiser(sde, score))(y, sigma, t)), np.asarray(y))
  vp = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0)
  score_vp = score_fn_lib.get_score_fn(vp, lambda p, x, c: 100.0 * model.apply({"params": p}, x, c), params,
                                       parametrization="consistency", conditioning="log_sigma", boundary_sigma=eps)
  t_vp = vp.time_from_noise_level(sigma)
  f_vp = jax.jit(edm.make_denoiser(vp, score_vp))(y, sigma, t_vp)  # y is x̃/m, as the sampler's state
  np.testing.assert_array_equal(np.asarray(f_vp), np.asarray(y))
  far = edm.make_denoiser(sde, score)(y, jnp.full((64,), 1.0), sde.time_from_noise_level(jnp.full((64,), 1.0)))
  assert float(jnp.max(jnp.abs(far - y))) > 1e-2  # away from ε the network matters


def test_levels_and_schedules_match_their_formulas():
  sig = np.asarray(distillation.levels(18, 20, sigma_min=0.002, sigma_max=80.0, rho=7.0))
  i = np.arange(18)
  want = (0.002 ** (1 / 7) + i / 17 * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
  np.testing.assert_allclose(sig[:18], want, rtol=1e-5)
  np.testing.assert_allclose(sig[18:], 80.0, rtol=1e-6)
  # The paper's CT schedule (s0 = 2, s1 = 150): N(0) = 2, N(K) = 151.
  sqrt = lambda k: int(distillation.num_scales_at(k, 1000, schedule="sqrt", num_scales=150, start_scales=2))
  assert sqrt(0) == 2 and sqrt(1000) == 151
  assert sqrt(500) == math.ceil(math.sqrt(0.5 * (151**2 - 4) + 4) - 1) + 1
  # The improved recipe (s0 = 10, s1 = 1280, K = 400k): K' = 50 000, doubling each stage.
  exp = lambda k: int(distillation.num_scales_at(k, 400_000, schedule="exponential", num_scales=1280, start_scales=10))
  assert [exp(0), exp(49_999), exp(50_000), exp(399_999)] == [11, 11, 21, 1281]
  mu = distillation.target_rate_at(2, schedule="adaptive", target_ema=0.9, start_scales=2)
  assert float(mu) == np.float32(0.9)


def test_pseudo_huber_distance():
  a = jnp.zeros((2, 4, 4, 1))
  b = jnp.ones((2, 4, 4, 1))
  c = 0.00054 * 4.0
  got = distillation.distance(a, b, metric="pseudo_huber")
  np.testing.assert_allclose(got, math.sqrt(16 + c * c) - c, rtol=1e-6)
  np.testing.assert_allclose(distillation.distance(a, b, metric="l2"), 1.0)


def test_one_loss_term_pinned_against_its_formula():
  """The loss of Gaussian data N(0, s0² I) under VE, every network the exact denoiser
  D(y, σ) = s0²/(s0² + σ²) y, equals the hand computation: the student at σ_{n+1} on
  y = x + σ_{n+1} z, the target at σ_n on the teacher's Heun step from σ_{n+1} to σ_n."""
  s0, eps, smax, n_levels = 1.5, 0.002, 80.0, 6
  sde = sde_lib.VESDE(sigma_min=eps, sigma_max=smax)
  exact = lambda x, t: -x / (s0**2 + sde_lib.bcast(sde.marginal_std(t), x) ** 2)
  key = jax.random.key(3)
  x = s0 * jax.random.normal(jax.random.key(4), (16, 3))
  got = distillation.consistency_distillation_loss(
      key, sde, exact, x, target_score_fn=exact, teacher_score_fn=exact, num_scales=n_levels, max_scales=8,
      sigma_min=eps, sigma_max=smax, rho=7.0, metric="l2")
  # The draws, as the docstring says: k_n, k_z = split(key); n uniform on {0..N−2}; z normal.
  k_n, k_z = jax.random.split(key)
  logits = jnp.where(jnp.arange(7) < n_levels - 1, 0.0, -jnp.inf)
  n = np.asarray(jax.random.categorical(k_n, logits, shape=(16,)))
  z = np.asarray(jax.random.normal(k_z, x.shape), np.float64)
  assert n.max() <= n_levels - 2
  i = np.arange(n_levels)
  sig = (eps ** (1 / 7) + i / (n_levels - 1) * (smax ** (1 / 7) - eps ** (1 / 7))) ** 7
  lo, hi = sig[n][:, None], sig[n + 1][:, None]
  den = lambda y, s: s0**2 / (s0**2 + s**2) * y
  xs = np.asarray(x, np.float64)
  y_hi = xs + hi * z
  d = (y_hi - den(y_hi, hi)) / hi
  y_euler = y_hi + (lo - hi) * d
  d_next = (y_euler - den(y_euler, lo)) / lo
  y_lo = y_hi + (lo - hi) * 0.5 * (d + d_next)
  want = np.mean(np.mean((den(y_hi, hi) - den(y_lo, lo)) ** 2, axis=-1))
  np.testing.assert_allclose(float(got), want, rtol=2e-4)
  assert want > 1e-4  # the Heun step's error is what the loss sees: not a 0 = 0 comparison


def test_two_step_consistency_sampling_pinned_against_algorithm_1():
  """method="consistency", 2 steps, with the exact Gaussian denoiser as f: x = f(y_0, τ_0), then
  x = f(x + √(τ_1² − ε²) z_1, τ_1), each draw from the documented key."""
  from score_jax import sampling  # pylint: disable=g-import-not-at-top
  from score_jax.sampling import common  # pylint: disable=g-import-not-at-top
  s0, eps, smax = 1.5, 0.002, 80.0
  sde = sde_lib.VESDE(sigma_min=eps, sigma_max=smax)
  exact = lambda x, t: -x / (s0**2 + sde_lib.bcast(sde.marginal_std(t), x) ** 2)
  key = jax.random.key(11)
  got, nfe = sampling.sample(key, sde, exact, (8, 3), "consistency", num_steps=2, sigmas=(60.0, 2.5),
                             sigma_min=eps)
  assert nfe == 2
  keys = common.per_sample_keys(key, 8)
  z0, z1 = (np.asarray(common.normal(keys, (8, 3), i), np.float64) for i in (0, 1))
  den = lambda y, s: s0**2 / (s0**2 + s**2) * y
  v = eps**2  # VE's prior N(0, σ_max²) in y: the data's share σ_min² (sampling/edm.py)
  x = den(math.sqrt(60.0**2 + v) * z0, 60.0)
  x = den(x + math.sqrt(2.5**2 - eps**2) * z1, 2.5)
  # f is read back from the score as y + σ² score at t(σ) in float32: at σ = 60, s(t(σ)) = σ (1 ± 4e-7)
  # moves D = y (1 − σ²/(s0² + s²)) by ~60 |z| · 5e-7 — the 3e-5 scale of the tolerance.
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-4)


@pytest.mark.optimized  # 1500 train steps: the run, not the compile, dominates
def test_one_step_student_of_the_exact_score_reproduces_the_mixture_and_two_steps_do_better():
  """Consistency distillation end to end on the 4-mode mixture of mixture_bar, the exact score as
  the teacher: the loss of score_jax.distillation, the target EMA of train_state.update_target,
  the sampler of method="consistency".  A small MLP, 1500 steps of batch 512 in one compiled loop (about 12 s)."""
  import optax  # pylint: disable=g-import-not-at-top
  from mixture_bar import SHARE_TOL, TARGET  # pylint: disable=g-import-not-at-top
  from score_jax import ema as ema_lib  # pylint: disable=g-import-not-at-top
  from score_jax import sampling  # pylint: disable=g-import-not-at-top
  from score_jax import train_state as ts_lib  # pylint: disable=g-import-not-at-top
  from score_jax.metrics.samples import mode_statistics, sliced_wasserstein  # pylint: disable=g-import-not-at-top

  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=20.0)
  sigma_max = float(sde.noise_level(sde.T))
  teacher = TARGET.score_fn(sde)
  model = mlp.MLPScore(hidden=64, num_layers=3, fourier_scale=1.0)
  steps, batch, mu = 1500, 512, 0.95

  def student(params):
    return score_fn_lib.get_score_fn(sde, lambda p, x, c: model.apply({"params": p}, x, c), params,
                                     parametrization="consistency", conditioning="log_sigma", sigma_data=3.0,
                                     boundary_sigma=0.002)

  tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 200, steps, 1e-5))
  params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))["params"]
  state = ts_lib.create_distill_state(params, tx, ema_lib.EMA(rate=0.0))

  def step(i, state):
    k_data, k_loss = jax.random.split(jax.random.fold_in(jax.random.key(1), i))
    x = TARGET.sample(k_data, batch)

    def loss(p):
      return distillation.consistency_distillation_loss(
          k_loss, sde, student(p), x, target_score_fn=student(state.target_params), teacher_score_fn=teacher,
          num_scales=18, max_scales=18, sigma_min=0.002, sigma_max=sigma_max, metric="l2")

    grads = jax.grad(loss)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    return ts_lib.update_target(new, mu)

  state = jax.jit(lambda state: jax.lax.fori_loop(0, steps, step, state))(state)  # one call, no per-step dispatch

  ref = TARGET.sample(jax.random.key(5), 4000)
  floor = sliced_wasserstein(jax.random.key(9), ref, TARGET.sample(jax.random.key(6), 4000))
  result = {}
  for k, sigmas in ((1, None), (2, (sigma_max, 3.0))):
    x, nfe = sampling.sample(jax.random.key(3), sde, student(state.params), (4000, 2), "consistency", num_steps=k,
                             sigma_min=0.002, sigmas=sigmas)
    assert int(nfe) == k
    stats = mode_statistics(x, TARGET)
    result[k] = (stats, sliced_wasserstein(jax.random.key(9), x, ref))
  one, sw_one = result[1]
  # Every mode covered, few points between modes (1.1 % here; the ODE samplers' bar of 1 % is
  # for 35+ evaluations, this is one), shares within the bar, and SW₂ within twice the floor.
  assert one["outlier_fraction"] <= 0.02 and min(one["share"]) > 0, one
  assert one["max_share_rel_error"] <= SHARE_TOL, one["share"]
  assert sw_one <= 2.0 * floor, (sw_one, floor)
  assert result[2][1] < 0.8 * sw_one, (result[2][1], sw_one)  # two steps: closer to the target


def _smoke_config(path: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], root / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


def test_distill_mode_resumes_to_the_uninterrupted_state_and_its_student_samples_and_inpaints(tmp_path):
  """The smoke chain of configs/distill/digits.py: an EDM teacher's export → --mode=distill (4
  steps, a checkpoint every 2) → a second run in a copy of that folder cut back to its step-2
  checkpoint resumes and ends bit for bit where the uninterrupted run did (student, EMA, target
  network, optimizer) → --mode=sample with 2 consistency steps → --mode=inpaint, known pixels exact."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top

  from score_jax.modes import distill as distill_mode  # pylint: disable=g-import-not-at-top
  from score_jax.modes import inpaint as inpaint_mode  # pylint: disable=g-import-not-at-top
  from score_jax.modes import sample as sample_mode  # pylint: disable=g-import-not-at-top

  from score_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from score_jax import config_files  # pylint: disable=g-import-not-at-top
  from score_jax import experiment  # pylint: disable=g-import-not-at-top

  # The teacher as training leaves it for sampling (config.json and the EMA export of its step
  # 4), with stand-in parameters: what is distilled does not matter here, only the plumbing.
  teacher_dir = str(tmp_path / "teacher")
  teacher = _smoke_config("configs/edm/digits.py")
  os.makedirs(teacher_dir)
  with open(os.path.join(teacher_dir, "config.json"), "w") as f:
    f.write(config_files.to_json(teacher))
  checkpointing.export_params(teacher_dir, 4, run_main.stand_in_params(experiment.build(teacher), 3))

  config = _smoke_config("configs/distill/digits.py")
  config.distill.teacher_workdir = teacher_dir
  config.training.update(dict(num_steps=4, snapshot_freq=2, max_to_keep=5, sample_freq=0))
  whole = str(tmp_path / "student")
  result = distill_mode.run(config, whole)
  assert int(result.state.step) == 4 and np.isfinite(result.metrics["final_loss"])
  with open(os.path.join(whole, "metrics_step4.json")) as f:
    metrics = json.load(f)
  assert metrics["teacher"]["step"] == 4 and metrics["objective"] == "consistency distillation", metrics

  cut = str(tmp_path / "cut")
  os.makedirs(os.path.join(cut, "checkpoints"))
  shutil.copy(os.path.join(whole, "config.json"), cut)
  shutil.copytree(os.path.join(whole, "checkpoints", "2"), os.path.join(cut, "checkpoints", "2"))
  resumed = distill_mode.run(config, cut)
  assert resumed.start_step == 2 and int(resumed.state.step) == 4
  final, want = run_main.saved_state(cut, 4), run_main.saved_state(whole, 4)
  assert "target_params" in final
  run_main.assert_trees_close(final, want, rtol=0, atol=0)
  assert not np.array_equal(jax.tree.leaves(final["target_params"])[0], jax.tree.leaves(final["params"])[0])

  config.sampling.consistency.num_steps = 2
  out = sample_mode.run(config, whole)
  with np.load(os.path.join(out.folder, "samples.npz")) as data:
    cli = data["samples"]
  assert np.all(np.isfinite(cli))
  with open(os.path.join(out.folder, "metrics.json")) as f:
    assert json.load(f)["nfe"] == 2
  # score_jax.load_run reads the student as any run: its sampler is the consistency method on its grid.
  import score_jax  # pylint: disable=g-import-not-at-top
  from score_jax import sampling  # pylint: disable=g-import-not-at-top
  run = score_jax.load_run(whole)
  assert run.sampling_method == "consistency" and run.sampling_options["num_scales"] == 18
  key = run.draw_key(0)
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(np.arange(len(cli), dtype=np.uint32))
  x, nfe = sampling.sample(keys, run.sde, run.score_fn, cli.shape, "consistency",
                           **dict(run.sampling_options, num_steps=2))
  np.testing.assert_allclose(np.asarray(x), cli, rtol=1e-5, atol=1e-5)
  out = inpaint_mode.run(config, whole)
  with open(os.path.join(out.folder, "metrics.json")) as f:
    assert json.load(f)["known_max_abs_error"] == 0.0


def test_consistency_sampler_grid_puts_levels_on_the_distillation_grid_and_refuses_levels_off_it():
  """num_scales = N: the default levels are EDM-spaced levels moved to the nearest of the N
  levels of distillation.levels (the loss's grid), sigmas off that grid are refused, and a
  config whose sampler grid is not the distillation's is one line naming the field."""
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  from score_jax import sampling  # pylint: disable=g-import-not-at-top
  from score_jax.sampling import consistency  # pylint: disable=g-import-not-at-top
  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)
  grid = np.asarray(distillation.levels(18, 18, sigma_min=0.002, sigma_max=80.0, rho=7.0), np.float64)[::-1]
  opts = dict(sigmas=None, rho=7.0, sigma_min=0.002, sigma_max=80.0, num_scales=18)
  for k, want in ((1, [0]), (2, [0, 8]), (4, [0, 4, 8, 13])):  # round(17 · (0, ¼, ½, ¾)) = 0, 4, 8 (half to even), 13
    taus, eps = consistency.levels(sde, dict(opts, num_steps=k))
    np.testing.assert_allclose(taus, grid[want], rtol=1e-6)
    assert eps == 0.002
  continuous, _ = consistency.levels(sde, dict(opts, num_steps=2, num_scales=None))
  assert abs(continuous[1] - 2.5152) < 1e-3  # EDM-spaced, between grid levels 1.92 and 3.26
  score = lambda x, t: -x / (1.0 + sde.noise_level(t)[:, None] ** 2)
  x, nfe = sampling.sample(jax.random.key(0), sde, score, (4, 2), "consistency", num_steps=2, sigmas=(80.0, float(grid[5])), **{
                               k: v for k, v in opts.items() if k != "sigmas"})
  assert int(nfe) == 2 and np.all(np.isfinite(x))
  with pytest.raises(ValueError, match=r"sigmas=\(80.0, 15.0\): \[15.0\] lie between the levels"):
    sampling.sample(jax.random.key(0), sde, score, (4, 2), "consistency", num_steps=2, sigmas=(80.0, 15.0),
                    **{k: v for k, v in opts.items() if k != "sigmas"})
  with pytest.raises(ValueError, match="num_steps=18 exceeds the 17 levels"):
    sampling.sample(jax.random.key(0), sde, score, (4, 2), "consistency", num_steps=18, **opts)

  config = _smoke_config("configs/distill/digits.py")
  config.distill.num_scales = 40
  with pytest.raises(experiment.ConfigError, match=r"config.sampling.consistency.num_scales: is 18 but .* N = 40"):
    experiment.distill_options(config, 0.002)
  config.sampling.consistency.num_scales = 40
  config.sampling.consistency.rho = 5.0
  with pytest.raises(experiment.ConfigError, match=r"config.sampling.consistency.rho: is 5.0 but config.distill.rho"):
    experiment.distill_options(config, 0.002)


def test_a_converted_published_checkpoint_is_a_teacher_and_a_mismatched_one_is_one_line(tmp_path):
  """teacher_config + teacher_pretrained: the export is read through the config's network (the
  parameters come back as written, the source and step recorded); a teacher of another data shape
  is refused before its parameters are read."""
  import json  # pylint: disable=g-import-not-at-top
  from score_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  from score_jax import pretrained  # pylint: disable=g-import-not-at-top
  from score_jax.jobs import distill as distill_jobs  # pylint: disable=g-import-not-at-top

  teacher_spec = "configs/edm/digits.py:smoke"
  teacher_setup = experiment.build(_smoke_config("configs/edm/digits.py"))
  params = run_main.stand_in_params(teacher_setup, 5)
  export = str(tmp_path / "published")
  checkpointing.export_params(export, 7, params)  # as score_jax.pretrained.export leaves a conversion
  with open(os.path.join(export, pretrained.META_FILE), "w") as f:
    json.dump({"format": "test", "source": "none", "step": 7, "centered": teacher_setup.centered,
               "conditioning": teacher_setup.conditioning, "config": teacher_spec}, f)

  config = _smoke_config("configs/distill/digits.py")
  config.distill.update(dict(teacher_workdir="", teacher_config=teacher_spec, teacher_pretrained=export))
  student = experiment.build(config)
  options = experiment.distill_options(config, student.boundary_sigma)
  teacher = distill_jobs.load_teacher(options, student, str(tmp_path / "student"))
  assert teacher.step == 7 and teacher.setup.parametrization == "edm"
  assert teacher.source == f"{teacher_spec} + {export}"
  for a, b in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  config.distill.teacher_config = "configs/edm/cifar10_ddpmpp.py:smoke"
  with pytest.raises(experiment.ConfigError, match=r"^config\.distill\.teacher_config: the teacher .* has data shape"):
    distill_jobs.load_teacher(experiment.distill_options(config, student.boundary_sigma), student,
                              str(tmp_path / "student"))
  config.distill.teacher_config = teacher_spec + "_typo"
  with pytest.raises(experiment.ConfigError, match=r"^config\.distill\.teacher_config: "):
    distill_jobs.load_teacher(experiment.distill_options(config, student.boundary_sigma), student,
                              str(tmp_path / "student"))
  wider = _smoke_config("configs/edm/digits.py")
  wider.model.network.nf = 2 * wider.model.network.nf
  other = str(tmp_path / "other")
  checkpointing.export_params(other, 7, run_main.stand_in_params(experiment.build(wider), 5))
  with open(os.path.join(other, pretrained.META_FILE), "w") as f:
    json.dump({"format": "test", "step": 7, "conditioning": teacher_setup.conditioning}, f)
  config.distill.update(dict(teacher_config=teacher_spec, teacher_pretrained=other))
  with pytest.raises(experiment.ConfigError,
                     match=r"^config\.distill\.teacher_pretrained: the teacher's config\.model\.pretrained: .* shape"):
    distill_jobs.load_teacher(experiment.distill_options(config, student.boundary_sigma), student,
                              str(tmp_path / "student"))
