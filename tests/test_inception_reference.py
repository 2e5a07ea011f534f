"""score_jax's FID Inception, FID and KID against pytorch-fid and torch-fidelity themselves.

The fixture (tests/fixtures/inception, written by tools/inception_fixture.py with pytorch-fid
0.3.0 and torch-fidelity 0.4.0) holds pytorch-fid's outputs for a network with its module
classes and deterministic random weights; here the same weights are drawn again with numpy
from ``manifest.json`` (the BN statistics come from ``bn_stats.npz``), converted with
``convert_inception.convert_state_dict`` and run through ``inception_features`` on the
stored images — resize to 299 × 299 and input scaling included.  Neither torch nor the
real weights are needed.

Errors are relative per image: ‖a − b‖ / ‖b‖ over the 2048 pool features (or the 1008
logits), against pytorch-fid run in float64 on the float32 weights and against pytorch-fid
run in float32; bar 1e-4.  FID and KID are relative errors against the reference number,
bar 1e-3 (the KIDs here are ~0.04, far from 0, where a relative bar means something).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from score_jax.metrics import convert_inception, fid, inception
from tools import inception_fixture

pytestmark = pytest.mark.xdist_group("inception_reference")  # one worker builds the network's outputs once

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "inception"
FEATURE_RTOL = 1e-4
METRIC_RTOL = 1e-3


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURES / "reference.npz") as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def outputs(reference):
  """score_jax's {"pool", "logits"} of every stored image batch, float32."""
  manifest = json.loads((FIXTURES / "manifest.json").read_text())
  state = inception_fixture.drawn_weights(manifest["arrays"], manifest["seed"])
  with np.load(FIXTURES / "bn_stats.npz") as stats:
    state |= {k: stats[k] for k in stats.files}
  flat = convert_inception.convert_state_dict(state)
  variables = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat, sep=inception.SEPARATOR))
  return {name: inception.inception_features(variables, reference[f"{name}_images"])
          for name in inception_fixture.IMAGE_BATCHES}


def _relative(got, want):
  """Per-row ‖got − want‖ / ‖want‖ [B]."""
  return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


def test_fixture_inputs_regenerate(reference):
  for name in inception_fixture.IMAGE_BATCHES:
    np.testing.assert_array_equal(inception_fixture.images(name), reference[f"{name}_images"])


@pytest.mark.parametrize("name", list(inception_fixture.IMAGE_BATCHES))
def test_features_and_logits_match_pytorch_fid(name, reference, outputs):
  """Pool features and logits, images enlarged (37 × 53, 32 × 32) or reduced (331 × 317) to 299."""
  for key in ("pool", "logits"):
    got = outputs[name][key]
    want, want32 = reference[f"{name}_{key}"], reference[f"{name}_{key}_f32"]
    assert got.shape == want.shape and got.dtype == np.float32
    rel, rel32 = _relative(got, want), _relative(got, want32)
    print(f"{name} {key}: relative error vs pytorch-fid float64 {rel.max():.2e}, vs float32 {rel32.max():.2e}; "
          f"max abs {np.abs(got - want).max():.2e} (values up to {np.abs(want).max():.2f})")
    assert rel.max() <= FEATURE_RTOL and rel32.max() <= FEATURE_RTOL, (key, rel, rel32)
    if len(want) > 1:  # the part that differs between images, what FID compares
      diff = np.linalg.norm((got[0] - got[1]) - (want[0] - want[1])) / np.linalg.norm(want[0] - want[1])
      print(f"{name} {key}: relative error of the difference between the two images {diff:.2e}")
      assert diff <= 10 * FEATURE_RTOL


@pytest.mark.parametrize("name", list(inception_fixture.FEATURE_CASES))
def test_fid_matches_pytorch_fid(name, reference):
  """frechet_distance of FeatureStats against calculate_frechet_distance (scipy's sqrtm)."""
  x1, x2 = inception_fixture.feature_sets(name)
  s1, s2 = fid.FeatureStats.from_features(x1), fid.FeatureStats.from_features(x2)
  got = fid.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
  want = float(reference[f"{name}_fid"])
  print(f"{name}: FID {got:.9g}, pytorch-fid {want:.9g}, relative difference {abs(got - want) / want:.1e}")
  assert abs(got - want) <= METRIC_RTOL * want


@pytest.mark.parametrize("name", list(inception_fixture.FEATURE_CASES))
def test_kid_matches_torch_fidelity(name, reference):
  """kid with one subset of every row (no randomness), and mmd2_unbiased on torch-fidelity's own subsets."""
  x1, x2 = inception_fixture.feature_sets(name)
  full, std = fid.kid(x1, x2, num_subsets=1, subset_size=len(x1))
  assert std == 0.0
  values = np.asarray([fid.mmd2_unbiased(x1[i], x2[j])
                       for i, j in inception_fixture.kid_subset_indices(len(x1), len(x2))])
  for label, got, want in (("one subset of all", full, reference[f"{name}_kid_full"]),
                           ("subsets, mean", values.mean(), reference[f"{name}_kid_mean"]),
                           ("subsets, std", values.std(), reference[f"{name}_kid_std"])):
    want = float(want)
    print(f"{name} KID {label}: {got:.9g}, torch-fidelity {want:.9g}, relative difference {abs(got - want) / want:.1e}")
    assert abs(got - want) <= METRIC_RTOL * abs(want), label
