"""FID Inception-v3: architecture (shapes, parameter count), FID-variant blocks, resize,
weight conversion / loading, batched feature extraction.

Nothing here needs torch or the real weights: shapes come from ``jax.eval_shape`` and the
weights from random numpy arrays laid out like pytorch-fid's state dict.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from score_jax.metrics import convert_inception, inception

# ---- The known layer list of the FID Inception (torchvision Inception3 names) ----
# (layer, kh, kw, in_channels, out_channels), every one a bias-free conv + BatchNorm.


def _block_a(name, cin, pool_features):
  return [(f"{name}.branch1x1", 1, 1, cin, 64), (f"{name}.branch5x5_1", 1, 1, cin, 48),
          (f"{name}.branch5x5_2", 5, 5, 48, 64), (f"{name}.branch3x3dbl_1", 1, 1, cin, 64),
          (f"{name}.branch3x3dbl_2", 3, 3, 64, 96), (f"{name}.branch3x3dbl_3", 3, 3, 96, 96),
          (f"{name}.branch_pool", 1, 1, cin, pool_features)]


def _block_b(name, cin):
  return [(f"{name}.branch3x3", 3, 3, cin, 384), (f"{name}.branch3x3dbl_1", 1, 1, cin, 64),
          (f"{name}.branch3x3dbl_2", 3, 3, 64, 96), (f"{name}.branch3x3dbl_3", 3, 3, 96, 96)]


def _block_c(name, c7):
  return [(f"{name}.branch1x1", 1, 1, 768, 192), (f"{name}.branch7x7_1", 1, 1, 768, c7),
          (f"{name}.branch7x7_2", 1, 7, c7, c7), (f"{name}.branch7x7_3", 7, 1, c7, 192),
          (f"{name}.branch7x7dbl_1", 1, 1, 768, c7), (f"{name}.branch7x7dbl_2", 7, 1, c7, c7),
          (f"{name}.branch7x7dbl_3", 1, 7, c7, c7), (f"{name}.branch7x7dbl_4", 7, 1, c7, c7),
          (f"{name}.branch7x7dbl_5", 1, 7, c7, 192), (f"{name}.branch_pool", 1, 1, 768, 192)]


def _block_d(name, cin):
  return [(f"{name}.branch3x3_1", 1, 1, cin, 192), (f"{name}.branch3x3_2", 3, 3, 192, 320),
          (f"{name}.branch7x7x3_1", 1, 1, cin, 192), (f"{name}.branch7x7x3_2", 1, 7, 192, 192),
          (f"{name}.branch7x7x3_3", 7, 1, 192, 192), (f"{name}.branch7x7x3_4", 3, 3, 192, 192)]


def _block_e(name, cin):
  return [(f"{name}.branch1x1", 1, 1, cin, 320), (f"{name}.branch3x3_1", 1, 1, cin, 384),
          (f"{name}.branch3x3_2a", 1, 3, 384, 384), (f"{name}.branch3x3_2b", 3, 1, 384, 384),
          (f"{name}.branch3x3dbl_1", 1, 1, cin, 448), (f"{name}.branch3x3dbl_2", 3, 3, 448, 384),
          (f"{name}.branch3x3dbl_3a", 1, 3, 384, 384), (f"{name}.branch3x3dbl_3b", 3, 1, 384, 384),
          (f"{name}.branch_pool", 1, 1, cin, 192)]


CONV_LAYERS = ([("Conv2d_1a_3x3", 3, 3, 3, 32), ("Conv2d_2a_3x3", 3, 3, 32, 32), ("Conv2d_2b_3x3", 3, 3, 32, 64),
                ("Conv2d_3b_1x1", 1, 1, 64, 80), ("Conv2d_4a_3x3", 3, 3, 80, 192)]
               + _block_a("Mixed_5b", 192, 32) + _block_a("Mixed_5c", 256, 64) + _block_a("Mixed_5d", 288, 64)
               + _block_b("Mixed_6a", 288)
               + _block_c("Mixed_6b", 128) + _block_c("Mixed_6c", 160) + _block_c("Mixed_6d", 160)
               + _block_c("Mixed_6e", 192)
               + _block_d("Mixed_7a", 768) + _block_e("Mixed_7b", 1280) + _block_e("Mixed_7c", 2048))
FC_IN, FC_OUT = 2048, 1008


def _expected_param_count():
  """Trainable parameters from the layer list: conv kernels, BN scale + bias, the 1008-way fc."""
  convs = sum(kh * kw * cin * cout for _, kh, kw, cin, cout in CONV_LAYERS)
  bn = sum(2 * cout for *_, cout in CONV_LAYERS)
  return convs + bn + FC_IN * FC_OUT + FC_OUT


def _torch_state_dict(seed=0):
  """Random numpy arrays under pytorch-fid's state-dict keys and PyTorch shapes (OIHW, [out, in])."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, kh, kw, cin, cout in CONV_LAYERS:
    sd[f"{name}.conv.weight"] = rng.standard_normal((cout, cin, kh, kw), dtype=np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.standard_normal(cout, dtype=np.float32)
    sd[f"{name}.bn.running_mean"] = rng.standard_normal(cout, dtype=np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  sd["fc.weight"] = rng.standard_normal((FC_OUT, FC_IN), dtype=np.float32)
  sd["fc.bias"] = rng.standard_normal(FC_OUT, dtype=np.float32)
  return sd


def _eval_shape_variables(size=299):
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  return jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0), images)


# ---- Architecture ----


def test_conv_layers_match_the_known_layer_list():
  params = traverse_util.flatten_dict(dict(_eval_shape_variables()["params"]), sep=".")
  kernels = {k[: -len(".conv.kernel")]: v.shape for k, v in params.items() if k.endswith(".conv.kernel")}
  expected = {name: (kh, kw, cin, cout) for name, kh, kw, cin, cout in CONV_LAYERS}
  assert kernels == expected
  assert len(CONV_LAYERS) == 94
  assert params["fc.kernel"].shape == (FC_IN, FC_OUT) and params["fc.bias"].shape == (FC_OUT,)
  for name, *_, cout in CONV_LAYERS:
    assert params[f"{name}.bn.scale"].shape == params[f"{name}.bn.bias"].shape == (cout,)


def test_parameter_count():
  variables = _eval_shape_variables()
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  assert count == _expected_param_count()
  # Cross-check: torchvision's Inception3 has 27,161,264 parameters with the auxiliary classifier
  # (1x1 768->128 + BN, 5x5 128->768 + BN, fc 768->1000: 3,326,696) and a 1000-way fc; the FID
  # network drops the auxiliary head and has 8 more classes (8 * 2049), i.e. ~23.9M.
  assert count == 27_161_264 - (768 * 128 + 2 * 128 + 25 * 128 * 768 + 2 * 768 + 768 * 1000 + 1000) + 8 * 2049
  stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["batch_stats"]))
  assert stats == sum(2 * cout for *_, cout in CONV_LAYERS)


@pytest.mark.parametrize("size", [299, 32])
def test_intermediate_and_output_shapes(size):
  variables = _eval_shape_variables(size)
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

  def run(v, x):
    return inception.InceptionV3().apply(v, x, capture_intermediates=True, mutable=["intermediates"])

  out, state = jax.eval_shape(run, variables, images)
  inter = state["intermediates"]
  assert inter["Conv2d_4a_3x3"]["__call__"][0].shape == (2, 71, 71, 192)
  assert inter["Mixed_5b"]["__call__"][0].shape == (2, 35, 35, 256)
  assert inter["Mixed_5d"]["__call__"][0].shape == (2, 35, 35, 288)
  assert inter["Mixed_6e"]["__call__"][0].shape == (2, 17, 17, 768)
  assert inter["Mixed_7a"]["__call__"][0].shape == (2, 8, 8, 1280)
  assert inter["Mixed_7c"]["__call__"][0].shape == (2, 8, 8, 2048)
  assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)


def test_rejects_non_rgb_input():
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))


# ---- FID-variant pooling ----


def test_avg_pool_excludes_padding():
  x = jnp.ones((1, 4, 5, 2))
  np.testing.assert_allclose(inception._avg_pool_exclude_pad(x), 1.0, rtol=1e-6)
  y = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 5, 1)), jnp.float32)
  pooled = inception._avg_pool_exclude_pad(y)
  np.testing.assert_allclose(pooled[0, 0, 0, 0], y[0, :2, :2, 0].mean(), rtol=1e-5)  # corner: 4 inputs
  np.testing.assert_allclose(pooled[0, 0, 2, 0], y[0, :2, 1:4, 0].mean(), rtol=1e-5)  # edge: 6 inputs
  np.testing.assert_allclose(pooled[0, 1, 1, 0], y[0, :3, :3, 0].mean(), rtol=1e-5)  # interior: 9
  negative = -jnp.ones((1, 3, 3, 1))
  np.testing.assert_allclose(inception._max_pool_same(negative), -1.0)  # padding never wins the max


def _branch_pool_reference(variables, pooled):
  """relu(BN(conv1x1(pooled))) of a block's branch_pool from its variables, in numpy."""
  kernel = np.asarray(variables["params"]["branch_pool"]["conv"]["kernel"])[0, 0]  # [C_in, C_out]
  bn, stats = variables["params"]["branch_pool"]["bn"], variables["batch_stats"]["branch_pool"]["bn"]
  y = np.asarray(pooled) @ kernel
  y = (y - stats["mean"]) / np.sqrt(stats["var"] + inception.BN_EPSILON) * bn["scale"] + bn["bias"]
  return np.maximum(y, 0.0)


def _random_stats(variables, seed):
  """Replaces the all-zero / all-one BatchNorm statistics of an init with random ones."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  for k, v in flat.items():
    if k.startswith("batch_stats"):
      flat[k] = jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if k.endswith("var") else rng.standard_normal(v.shape),
                            jnp.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_block_e_pool_branch(pool):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 4, 4, 8)), jnp.float32)
  block = inception.InceptionE(pool)
  variables = _random_stats(jax.jit(block.init)(jax.random.PRNGKey(0), x), seed=2)
  out = np.asarray(jax.jit(block.apply)(variables, x))  # [1, 4, 4, 2048]
  assert out.shape == (1, 4, 4, 2048)
  pooled = inception._avg_pool_exclude_pad(x) if pool == "avg" else inception._max_pool_same(x)
  np.testing.assert_allclose(out[..., -192:], _branch_pool_reference(variables, pooled), rtol=1e-4, atol=1e-4)


def test_block_a_pool_branch_excludes_padding():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 5, 5, 8)), jnp.float32)
  block = inception.InceptionA(16)
  variables = _random_stats(jax.jit(block.init)(jax.random.PRNGKey(0), x), seed=4)
  out = np.asarray(jax.jit(block.apply)(variables, x))
  assert out.shape == (1, 5, 5, 64 + 64 + 96 + 16)
  expected = _branch_pool_reference(variables, inception._avg_pool_exclude_pad(x))
  np.testing.assert_allclose(out[..., -16:], expected, rtol=1e-4, atol=1e-4)


# ---- Input preprocessing ----


def _torch_bilinear_1d(n_in, n_out):
  """Interpolation matrix [n_out, n_in] of PyTorch's bilinear resize with align_corners=False."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    m[i, i0] += 1.0 - lam
    m[i, i1] += lam
  return m


@pytest.mark.parametrize("h, w", [(7, 9), (400, 350)])
def test_preprocess_matches_pytorch_bilinear_and_scales_to_unit_range(h, w):
  img = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3))
  out = np.asarray(inception.preprocess(jnp.asarray(img, jnp.float32)))
  rows, cols = _torch_bilinear_1d(h, 299), _torch_bilinear_1d(w, 299)
  expected = np.einsum("ih,jw,bhwc->bijc", rows, cols, img, optimize=True) / 127.5 - 1.0
  assert out.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(out, expected, atol=1e-4)  # float32 sample positions: <= 0.01 grey levels
  edges = np.asarray(inception.preprocess(jnp.asarray([[[[0, 255, 0]]]], jnp.uint8)))
  np.testing.assert_allclose(edges[0, 0, 0], [-1.0, 1.0, -1.0])


# ---- Conversion and loading ----


def test_converter_mapping_round_trips_and_loads(tmp_path):
  sd = _torch_state_dict()
  flat = convert_inception.convert_state_dict(sd)
  np.testing.assert_array_equal(flat["params/Conv2d_2a_3x3/conv/kernel"],
                                sd["Conv2d_2a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # [O, I, 1, 7]
  assert flat["params/Mixed_6b/branch7x7_2/conv/kernel"][0, 5, 3, 7] == w[7, 3, 0, 5]
  np.testing.assert_array_equal(flat["params/fc/kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"],
                                sd["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(flat["params/Mixed_7c/branch_pool/bn/scale"], sd["Mixed_7c.branch_pool.bn.weight"])

  back = convert_inception.to_state_dict(flat)
  kept = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  assert set(back) == set(kept)
  for k, v in kept.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)

  path = tmp_path / "inception_fid.npz"
  convert_inception.save_npz(flat, str(path))
  with pytest.raises(FileExistsError):
    convert_inception.save_npz(flat, str(path))
  loaded = inception.load_inception_params(path)
  reference = _eval_shape_variables()
  assert jax.tree.structure(loaded) == jax.tree.structure(jax.tree.map(lambda s: 0, dict(reference)))
  jax.tree.map(lambda a, s: np.testing.assert_equal(a.shape, s.shape), loaded, dict(reference))
  np.testing.assert_array_equal(loaded["params"]["fc"]["bias"], sd["fc.bias"])


def test_converter_rejects_wrong_keys_and_shapes():
  sd = _torch_state_dict()
  sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)  # dropped, not an error
  convert_inception.convert_state_dict(sd)
  with pytest.raises(ValueError, match="unrecognised state-dict key 'Mixed_5b.extra'"):
    convert_inception.convert_state_dict({**sd, "Mixed_5b.extra": np.zeros(3)})
  missing = {k: v for k, v in sd.items() if not k.startswith("Mixed_7c.branch_pool.")}
  with pytest.raises(ValueError, match="missing .*Mixed_7c/branch_pool"):
    convert_inception.convert_state_dict(missing)
  wrong = {**sd, "fc.bias": np.zeros(1000, np.float32)}
  with pytest.raises(ValueError, match=r"wrong shape params/fc/bias: \(1000,\)"):
    convert_inception.convert_state_dict(wrong)


def test_converter_cli_without_torch(tmp_path, monkeypatch):
  src = tmp_path / "pt_inception.pth"
  src.write_bytes(b"stand-in; the loader is patched")
  monkeypatch.setattr(convert_inception, "_load_torch_state_dict", lambda path: _torch_state_dict(seed=5))
  out = tmp_path / "out.npz"
  convert_inception.main(["--src", str(src), "--out", str(out)])
  with np.load(out) as data:
    assert set(data.files) == set(inception.variable_shapes())
  with pytest.raises(SystemExit):
    convert_inception.main(["--src", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "x.npz")])


def test_missing_weights_file_gives_one_clear_line(tmp_path):
  path = tmp_path / "nowhere" / "inception_fid.npz"
  with pytest.raises(FileNotFoundError) as info:
    inception.load_inception_params(path)
  message = str(info.value)
  assert "\n" not in message
  for part in (str(path), "config.eval.inception_path", "python -m score_jax.metrics.convert_inception",
               "--src", "--out", inception.PTH_FILENAME):
    assert part in message
  with pytest.raises(FileNotFoundError, match="no path was given"):
    inception.load_inception_params(None)


# ---- Feature extraction ----


def test_inception_features_batches_and_pads():
  rng = np.random.default_rng(0)
  flat = {}
  for k, shape in inception.variable_shapes().items():
    if k.endswith("kernel"):  # He-scaled so that activations stay O(1) through 95 layers
      flat[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32)
    elif k.endswith(("var", "scale")):
      flat[k] = np.ones(shape, np.float32)
    else:
      flat[k] = np.zeros(shape, np.float32)
  variables = traverse_util.unflatten_dict(flat, sep="/")
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  feats = inception.inception_features(variables, images, batch_size=2)  # batches of 2 and 1 (+1 padding)
  assert feats["pool"].shape == (3, 2048) and feats["logits"].shape == (3, 1008)
  assert np.all(np.isfinite(feats["pool"])) and np.all(feats["pool"] >= 0)  # mean of ReLU outputs
  assert np.abs(feats["pool"]).mean() > 1e-3
  chunked = inception.inception_features(variables, [images[:2], images[2:]], batch_size=2)
  np.testing.assert_allclose(chunked["pool"], feats["pool"], rtol=1e-5, atol=1e-6)
  # Each image's features are independent of its batch neighbours (BatchNorm uses running statistics).
  assert not np.allclose(feats["pool"][0], feats["pool"][1])
