"""jobs.control.Control: composition, labels, per-sample arrays cut with the samples, the
posterior-guidance observation pinned against its formula, the method options, the key table."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import experiment
from score_jax import guidance as guidance_lib
from score_jax import sde as sde_lib
from score_jax.jobs import control as control_lib
from score_jax.jobs import keys as keys_lib
from score_jax.jobs import observations
from score_jax.jobs import sampler as sampler_lib
from tests.test_configs import load


def _source(scale):
  return lambda setup, chunk: (lambda x, t: -scale * x)


def test_observe_appends_transforms_in_order_and_merges_arrays_and_records():
  calls = []

  def transform(name):
    def wrap(score, setup, chunk):
      calls.append(name)
      return lambda x, t: score(x, t) + 1.0
    return wrap

  base = control_lib.Control(source=_source(2.0), transforms=(transform("a"),), per_sample={"u": np.zeros((4, 1))},
                             record={"guidance": {"kind": "x"}})
  obs = control_lib.Observation(transforms=(transform("b"),), constraint=lambda chunk: "c",
                                per_sample={"v": np.ones((4, 1))}, record={"method": "m"})
  both = base.observe(obs)
  assert set(both.per_sample) == {"u", "v"} and both.record == {"guidance": {"kind": "x"}, "method": "m"}
  assert both.constraint_of(None) == "c" and base.constraint_of(None) is None
  x = jnp.ones((4, 1))
  np.testing.assert_array_equal(both.score_fn(None, None)(x, jnp.zeros(4)), -2.0 * x + 2.0)
  assert calls == ["a", "b"]  # the source first, then the transforms in order
  with pytest.raises(ValueError, match="one constraint"):
    both.observe(obs)
  with pytest.raises(ValueError, match=r"\['u'\] are given twice"):
    base.observe(control_lib.Observation(per_sample={"u": np.zeros((4, 1))}))


def test_labels_cycle_over_the_samples():
  control = control_lib.Control(source=_source(1.0), labels=np.array([3, 7], np.int32))
  assert control.sample_labels(5).tolist() == [3, 7, 3, 7, 3]
  assert np.asarray(control.labels_of(jnp.arange(4, 8, dtype=jnp.uint32))).tolist() == [3, 7, 3, 7]
  assert control_lib.Control(source=_source(1.0)).sample_labels(3) is None


@pytest.fixture(scope="module")
def toy_setup():
  _, config = load("configs/toy/gmm2d.py", "smoke")
  config.sampling.pc.update(dict(corrector="none", num_steps=100))
  return experiment.build(config)


def test_per_sample_arrays_travel_with_their_samples_whatever_the_chunking(toy_setup):
  """Sample j follows the exact score of N(μ_j, 0.01 I) with μ_j = 4·j (a per-sample array): it
  ends near its own μ_j, and chunks of 3 give the samples of one call."""
  mu = (4.0 * np.arange(7, dtype=np.float32))[:, None] * np.ones((1, 2), np.float32)  # [7, 2]
  sde = toy_setup.sde

  def source(setup, chunk):
    def score(x, t):  # the exact perturbed score of N(μ, 0.01 I) under the VP SDE
      m, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
      return -(x - m * chunk.arrays["mu"]) / (0.01 * m**2 + s**2)
    return score

  control = control_lib.Control(source=source, per_sample={"mu": mu})
  key = jax.random.key(0)
  whole, _ = sampler_lib.make_sampler(toy_setup, 7, control)(None, key)
  chunked, _ = sampler_lib.make_sampler(toy_setup, 7, control, batch_size=3)(None, key)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-4)
  assert np.abs(whole - mu).max() < 1.0, whole  # every sample near its own mean (std 0.1, neighbours 4 apart)
  with pytest.raises(ValueError, match="'mu' has 7 rows for 6 samples"):
    sampler_lib.check_control(toy_setup, 6, control)


def _problem(values, known):
  n = values.shape[0]
  return observations.Problem(mode="inpaint", originals=values, labels=None, indices=np.arange(n), source="t",
                              shown=values, values=values, known=known, fill=known[..., 0] == 0, basis=None,
                              samples_per_input=2)


@pytest.mark.parametrize("covariance", ["isotropic", "tweedie"])
def test_posterior_observation_is_posterior_guidance_of_the_class_part(covariance):
  """method='posterior': the transform is guidance.posterior_guidance of whatever score came
  before, on the rows of this chunk, with the config's covariance and weights; plus replacement."""
  sde = sde_lib.get_sde("ve", sigma_min=0.01, sigma_max=5.0)
  rng = np.random.default_rng(0)
  values = rng.uniform(size=(2, 2, 2, 1)).astype(np.float32)
  known = np.broadcast_to(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)[..., None], values.shape).copy()
  opts = dataclasses.replace(experiment.controllable_options(load("configs/ve/digits.py", "smoke")[1], "inpaint"),
                             method="posterior", covariance=covariance, guidance_scale=0.7, data_variance=0.2,
                             resample=2)
  obs = observations.observation(_problem(values, known), opts, None)
  assert obs.per_sample["values"].shape == (4, 2, 2, 1)  # each input twice
  setup = types.SimpleNamespace(sde=sde)
  rows = {name: a[[1, 2]] for name, a in obs.per_sample.items()}  # a chunk of samples 1 and 2 (inputs 0 and 1)
  chunk = control_lib.Chunk(None, {}, rows, jnp.array([1, 2]), None)
  prior = lambda x, t: -x / (0.3 + sde.marginal_std(t)[:, None, None, None] ** 2)
  got = obs.transforms[0](prior, setup, chunk)
  want = guidance_lib.posterior_guidance(prior, sde, values, known, covariance=covariance, data_variance=0.2, scale=0.7)
  x, t = jnp.asarray(rng.normal(size=(2, 2, 2, 1)), jnp.float32), jnp.array([0.3, 0.6])
  np.testing.assert_allclose(np.asarray(got(x, t)), np.asarray(want(x, t)), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(got(x, t) - prior(x, t)).max()) > 1e-3  # the guidance term is there
  constraint = obs.constraint(chunk)
  assert constraint.resample == 2 and np.array_equal(np.asarray(constraint.mask), known)


@pytest.mark.parametrize("fields, message", [
    (dict(method="dps"), r"^config\.controllable\.method: unknown 'dps'; choose one of \['replacement', 'repaint', "
                         r"'posterior'\]"),
    (dict(resample=2), r"^config\.controllable\.resample: 2 repetitions of every step is RePaint; set "
                       r"config\.controllable\.method='repaint'"),
    (dict(method="repaint"), r"^config\.controllable\.resample: method 'repaint' repeats every step resample >= 2"),
    (dict(method="posterior", covariance="full"), r"^config\.controllable\.covariance: unknown 'full'"),
    (dict(method="posterior", data_variance=0.0), r"^config\.controllable\.data_variance: must be a number > 0"),
    (dict(guidance_scale=-1.0), r"^config\.controllable\.guidance_scale: must be a number >= 0"),
    (dict(masks="box"), r"^config\.controllable\.masks: unknown field"),
])
def test_bad_method_fields_are_one_line_naming_the_field(fields, message):
  _, config = load("configs/ve/digits.py", "smoke")
  for name, value in fields.items():
    config.controllable[name] = value
  with pytest.raises(experiment.ConfigError, match=message):
    experiment.controllable_options(config, "inpaint")


def test_the_sample_key_table():
  """Each purpose's key pinned against its fold_in chain (jobs/keys.py's docstring)."""
  base = experiment.keys(5)
  fold = jax.random.fold_in
  want = {"train": fold(base["sample"], 7), "sample": fold(fold(base["sample"], 7), 3),
          "inpaint": fold(fold(fold(base["sample"], 7), 1), 2), "colorize": fold(fold(fold(base["sample"], 7), 2), 2),
          "eval": fold(fold(base["eval"], 2), 7)}
  index = {"train": 0, "sample": 2, "inpaint": 2, "colorize": 2, "eval": 0}
  for purpose, key in want.items():
    assert np.array_equal(jax.random.key_data(keys_lib.draw_key(5, purpose, 7, index[purpose])),
                          jax.random.key_data(key)), purpose
  distinct = {jax.random.key_data(keys_lib.draw_key(5, p, s, i)).tobytes()
              for p in keys_lib.PURPOSES for s in (0, 1) for i in (0, 1)}
  assert len(distinct) == 3 * 2 * 2 + 2 * 2  # train and eval ignore the index; no two draws share a key
  with pytest.raises(ValueError, match="purpose='grid'"):
    keys_lib.draw_key(5, "grid", 0)
