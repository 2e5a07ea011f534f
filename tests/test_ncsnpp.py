"""FIR resampling against a NumPy reference, NCSN++ in every progressive / block / embedding
combination at smoke size, the full-size AFHQ-512 parameter count, labels, dropout, field
validation, and the small U-Net.

Networks are compiled with XLA:CPU's cheapest settings: these tests check shapes and values,
not speed, and a cold compile of 36 NCSN++ variants must stay in seconds.
"""

import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.models import MODELS, NCSNpp, UNet, get_model, layers
from score_jax.models import up_or_down_sampling as uds

# XLA:CPU options that cut compile time (the checks here are about values, not speed).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
SMOKE = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16, num_channels=3)

# AFHQ-512 as the seed-001 project trained it (its configs/ve/afhq_512_ncsnpp_continuous.py, on
# score_sde's LSUN defaults): NCSN++ with nf 16 and ch_mult (1, 2, 4, 8, 16, 32, 32), i.e.
# 16 … 512 channels over 512 … 8 pixels.
AFHQ_512 = dict(nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
                resblock_type="biggan", fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
                progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
                embedding_type="fourier", fourier_scale=16.0, init_scale=0.0, conditional=True,
                image_size=512, num_channels=3)
# score_sde's CelebA-HQ-256 / FFHQ-256 NCSN++ (nf 128, ch_mult (1, 1, 2, 2, 2, 2, 2)); SGMSE
# (sp-uhh/sgmse#11) reports "65M parameters" for this configuration.
CELEBAHQ_256 = dict(AFHQ_512, nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), image_size=256)


def _compile(fn, *args):
  lowered = jax.jit(fn).lower(*args)
  return lowered.compile(FAST_COMPILE) if jax.default_backend() == "cpu" else lowered.compile()


def _random_params(model, *args, seed=0):
  """Parameters of the right shapes without running the (slow to compile) initializers."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "bias":
      return np.zeros(s.shape, np.float32)
    if name == "scale":
      return np.ones(s.shape, np.float32)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _param_count(model, batch_shape):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(batch_shape, jnp.float32),
                          jax.ShapeDtypeStruct(batch_shape[:1], jnp.float32))
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


def _images(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


# ---------------------------------------------------------------------------------------------
# FIR up / down-sampling


def _upfirdn_reference(x, k, up, down, pad0, pad1):
  """Literal upfirdn: zero-insert, pad (negative crops), true convolution, keep every down-th."""
  b, h, w, c = x.shape
  z = np.zeros((b, h * up, w * up, c))
  z[:, ::up, ::up] = x
  grow = ((0, 0), (max(pad0, 0), max(pad1, 0)), (max(pad0, 0), max(pad1, 0)), (0, 0))
  z = np.pad(z, grow)
  lo, hi = max(-pad0, 0), max(-pad1, 0)
  z = z[:, lo:z.shape[1] - hi, lo:z.shape[2] - hi]
  size = k.shape[0]
  out_h, out_w = (z.shape[1] - size) // down + 1, (z.shape[2] - size) // down + 1
  out = np.zeros((b, out_h, out_w, c))
  for i in range(out_h):
    for j in range(out_w):
      patch = z[:, i * down:i * down + size, j * down:j * down + size]  # [B, K, K, C]
      out[:, i, j] = np.einsum("bklc,kl->bc", patch, k[::-1, ::-1])
  return out


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (3, 2, (-1, 2)),
                                         (2, 2, (0, -1))])
def test_upfirdn2d_matches_numpy_reference(up, down, pad):
  x = np.asarray(_images((2, 7, 6, 3)), np.float64)
  k = np.array([[1.0, 2.0, 0.5], [0.0, 3.0, 1.0], [-1.0, 0.5, 2.0]])  # asymmetric: checks the flip
  got = uds.upfirdn2d(jnp.asarray(x, jnp.float32), k, up=up, down=down, pad=pad)
  np.testing.assert_allclose(got, _upfirdn_reference(x, k, up, down, *pad), rtol=1e-5, atol=1e-5)


def test_fir_kernel_values_on_a_ramp():
  ramp = np.broadcast_to(np.arange(8.0)[:, None], (8, 8))[None, :, :, None]  # x[i, j] = i
  down = np.asarray(uds.downsample_2d(jnp.asarray(ramp, jnp.float32)))[0, :, 1, 0]
  # Taps (1, 3, 3, 1) / 8 around output centre 2m + 1/2; the end rows each see one zero pad.
  np.testing.assert_allclose(down, [5 / 8, 2.5, 4.5, 44 / 8], rtol=1e-6)
  up = np.asarray(uds.upsample_2d(jnp.asarray(ramp, jnp.float32)))[0, :, 5, 0]
  # Quarter-pixel linear interpolation: rows 2i, 2i + 1 sit at i − 1/4, i + 1/4.
  np.testing.assert_allclose(up[1:-1], np.arange(1, 15) / 2 - 0.25, rtol=1e-6)
  np.testing.assert_allclose(up[[0, -1]], [0.0, 21 / 4], rtol=1e-6)


def test_fir_down_after_up_is_identity_on_smooth_images():
  i, j = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
  linear = (0.3 * i - 0.2 * j + 1.0)[None, :, :, None]
  smooth = np.sin(2 * np.pi * i / 16) * np.cos(2 * np.pi * j / 16)
  x = jnp.asarray(np.concatenate([linear, smooth[None, :, :, None]], -1), jnp.float32)  # [1, 16, 16, 2]
  round_trip = np.asarray(uds.downsample_2d(uds.upsample_2d(x)))
  inner = (0, slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(round_trip[inner + (0,)], x[inner + (0,)], atol=1e-5)  # exact on linear images
  assert np.max(np.abs(round_trip[inner + (1,)] - x[inner + (1,)])) < 0.1  # 16-pixel period: mild blur
  np.testing.assert_array_equal(uds.naive_downsample_2d(uds.naive_upsample_2d(x)), x)


def test_separable_fir_matches_the_depthwise_convolution():
  # The fast path (two 1-D passes of shifted slices, polyphase when upsampling) against the
  # single depthwise 2-D convolution it replaced, in float64: equal to round-off.
  cases = [(taps, up, down, pad) for taps in ((1, 3, 3, 1), (1, 2, -0.5))
           for up, down, pad in ((1, 2, (1, 1)), (2, 1, (2, 1)), (1, 1, (-1, 2)), (3, 1, (2, 2)))]

  def both(x):
    return [(uds.upfirdn2d(x, uds.setup_kernel(taps), up=up, down=down, pad=pad),
             uds.upfirdn2d(x, uds.setup_kernel(taps), up=up, down=down, pad=pad, separable=False))
            for taps, up, down, pad in cases]

  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 5, 3)))
    for case, (fast, slow) in zip(cases, _compile(both, x)(x)):
      assert fast.shape == slow.shape and fast.dtype == jnp.float64
      np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-13, err_msg=str(case))
  assert uds._separable_taps(np.array([[1.0, 2.0], [0.0, 3.0]])) is None  # 2-D path: checked against NumPy above


def test_group_norm_matches_flax():
  ours, ref = layers.group_norm(12), flax.linen.GroupNorm(num_groups=3, epsilon=1e-6)
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(1).normal(2.0, 3.0, size=(2, 4, 3, 12)))
    params = {"params": {"scale": jnp.linspace(0.5, 1.5, 12), "bias": jnp.linspace(-1.0, 1.0, 12)}}
    assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, jax.random.PRNGKey(0), x)) == \
        jax.tree.map(jnp.shape, params)  # flax's parameter names and shapes: checkpoints still load
    both = lambda p, x: (ours.apply(p, x), ref.apply(p, x))  # noqa: E731
    got, want = _compile(both, params, x)(params, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", [(1, 1), (1, 3, 3, 1), (1, 4, 6, 4, 1)])
def test_fused_resampling_convolution_matches_sequential(kernel):
  x = _images((2, 8, 8, 3))
  w = _images((3, 3, 3, 5), seed=1)
  for fn, size in ((uds.upsample_conv_2d, 16), (uds.conv_downsample_2d, 4)):
    fused, sequential = fn(x, w, kernel), fn(x, w, kernel, fused=False)
    assert fused.shape == sequential.shape == (2, size, size, 5)
    # The literal version zero-pads the intermediate image; away from that ring they agree.
    np.testing.assert_allclose(fused[:, 1:-1, 1:-1], sequential[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# NCSN++


COMBOS = list(itertools.product(["none", "output_skip", "residual"], ["none", "input_skip", "residual"],
                                ["ddpm", "biggan"], ["fourier", "positional"]))


@pytest.mark.parametrize("progressive,progressive_input,resblock_type,embedding_type", COMBOS)
def test_ncsnpp_smoke_every_combination(progressive, progressive_input, resblock_type, embedding_type):
  # FIR with the Fourier embedding (NCSN++), naive resampling with the positional one (DDPM++);
  # input_skip concatenates with DDPM blocks and sums with BigGAN blocks.
  model = NCSNpp(**SMOKE, progressive=progressive, progressive_input=progressive_input,
                 resblock_type=resblock_type, embedding_type=embedding_type, fir=embedding_type == "fourier",
                 progressive_combine="cat" if resblock_type == "ddpm" else "sum")
  x = _images((2, 16, 16, 3))
  cond = jnp.array([0.01, 50.0]) if embedding_type == "fourier" else jnp.array([0.0, 700.0])
  params = _random_params(model, x, cond)
  out = _compile(model.apply, params, x, cond)(params, x, cond)
  assert out.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(out)))


def test_celebahq_256_parameter_count_without_allocating():
  # AFHQ-512's count (105.7M) is checked on its config file in tests/test_configs.py.
  reference = _param_count(NCSNpp(**CELEBAHQ_256), (1, 256, 256, 3))
  print(f"NCSN++ CelebA-HQ-256 (nf 128, ch_mult 1-1-2-2-2-2-2): {reference:,} parameters")
  assert 64e6 < reference < 67e6  # "65M" for score_sde's configuration (SGMSE, 4 input channels)


def test_class_labels_and_null_label():
  model = NCSNpp(**SMOKE, num_classes=10, dropout=0.0)
  x, sigma = _images((2, 16, 16, 3)), jnp.array([1.0, 1.0])
  labels = jnp.array([3, 10])  # 10 = the null label
  params = _random_params(model, x, sigma, labels)
  apply = _compile(model.apply, params, x, sigma, labels)
  cond_out, null_out = apply(params, x, sigma, labels), apply(params, x, sigma, jnp.array([10, 10]))
  assert bool(jnp.all(jnp.isfinite(cond_out)))
  assert float(jnp.max(jnp.abs(cond_out[0] - null_out[0]))) > 1e-3  # a label changes the output
  np.testing.assert_array_equal(cond_out[1], null_out[1])  # the null id is the unconditional output
  no_labels = _compile(model.apply, params, x, sigma)(params, x, sigma)
  np.testing.assert_allclose(no_labels, null_out, rtol=1e-5, atol=1e-5)  # labels=None means the null label
  plain = NCSNpp(**SMOKE)
  with pytest.raises(ValueError, match="num_classes"):
    plain.apply(_random_params(plain, x, sigma), x, sigma, labels)


def test_unconditional_network_takes_no_cond():
  model = NCSNpp(**SMOKE, conditional=False)
  x = jnp.zeros((2, 16, 16, 3))
  out, variables = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), x, None)
  assert out.shape == x.shape
  names = {k.key for path, _ in jax.tree_util.tree_leaves_with_path(variables) for k in path}
  assert not names & {"temb_dense_0", "temb_proj", "fourier_proj"}  # no conditioning layers at all
  with pytest.raises(ValueError, match="needs cond"):
    jax.eval_shape(NCSNpp(**SMOKE).init, jax.random.PRNGKey(0), x, None)


def test_dropout_only_in_training():
  model = NCSNpp(**SMOKE, dropout=0.5, init_scale=1.0)
  x, sigma = _images((2, 16, 16, 3)), jnp.array([0.5, 5.0])
  params = _random_params(model, x, sigma)

  def both(p, x, s, keys):
    train = jax.vmap(lambda k: model.apply(p, x, s, train=True, rngs={"dropout": k}))(keys)  # [2, B, H, W, C]
    return model.apply(p, x, s), train

  keys = jax.random.split(jax.random.PRNGKey(1))
  evaluated, (a, b) = _compile(both, params, x, sigma, keys)(params, x, sigma, keys)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # a fresh mask per key
  assert float(jnp.max(jnp.abs(a - evaluated))) > 1e-3
  # train=False ran above without any RNG; train=True without a 'dropout' stream is an error.
  with pytest.raises(flax.errors.InvalidRngError):
    jax.eval_shape(lambda: model.apply(params, x, sigma, train=True))


BAD_FIELDS = [
    (dict(image_size=28, ch_mult=(1, 2, 2, 2)), "image_size", "not divisible by the down-sampling factor"),
    (dict(attn_resolutions=(4,)), "attn_resolutions", "never reaches"),
    (dict(resblock_type="wide"), "resblock_type", "must be one of"),
    (dict(progressive="skip"), "progressive", "must be one of"),
    (dict(progressive_input="output_skip"), "progressive_input", "must be one of"),
    (dict(progressive_combine="mean"), "progressive_combine", "must be one of"),
    (dict(embedding_type="learned"), "embedding_type", "must be one of"),
    (dict(ch_mult=()), "ch_mult", "non-empty"),
    (dict(nf=0), "nf", ">= 1"),
    (dict(num_res_blocks=0), "num_res_blocks", ">= 1"),
    (dict(dropout=1.0), "dropout", r"\[0, 1\)"),
    (dict(fir_kernel=(1,)), "fir_kernel", "taps"),
    (dict(fourier_scale=0.0), "fourier_scale", "> 0"),
    (dict(num_classes=-1), "num_classes", ">= 0"),
]


@pytest.mark.parametrize("fields,field,message", BAD_FIELDS, ids=[b[1] for b in BAD_FIELDS])
def test_bad_fields_raise_naming_the_field(fields, field, message):
  with pytest.raises(ValueError, match=rf"NCSNpp\.{field}\b.*{message}"):
    NCSNpp(**{**SMOKE, **fields})


def test_wrong_input_shape_is_a_clear_error():
  model = NCSNpp(**SMOKE)
  with pytest.raises(ValueError, match=r"\[B, 16, 16, 3\]"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,)))


# ---------------------------------------------------------------------------------------------
# Small U-Net and the registry


def test_registry_builds_both_networks():
  assert MODELS["ncsnpp"] is NCSNpp and MODELS["unet"] is UNet
  assert get_model("unet", image_size=32, num_channels=3).image_size == 32
  with pytest.raises(ValueError, match="no field"):
    get_model("ncsnpp", sigma_max=50.0)
  with pytest.raises(ValueError, match=r"UNet\.image_size=7 is not divisible by the down-sampling factor"):
    get_model("unet", image_size=7)


def test_unet_digits_real_init():
  # 8×8 grey digits, 10 classes: the real initializers, jitted.
  model = UNet(nf=16, image_size=8, num_channels=1, num_classes=10)
  x, t, labels = _images((2, 8, 8, 1)), jnp.array([0.05, 0.95]), jnp.array([3, 10])
  init = _compile(model.init_with_output, jax.random.PRNGKey(0), x, t, labels)
  out, variables = init(jax.random.PRNGKey(0), x, t, labels)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.max(jnp.abs(out))) < 1e-3  # init_scale = 0: near-zero output at init
  count = sum(a.size for a in jax.tree.leaves(variables))
  assert 50_000 < count < 500_000, count  # small enough to train on a CPU


def test_unet_shapes_32():
  model = UNet(nf=16, image_size=32, num_channels=3, dropout=0.1)
  x, t = _images((2, 32, 32, 3)), jnp.array([0.05, 0.95])
  params = _random_params(model, x, t)
  out = _compile(model.apply, params, x, t)(params, x, t)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def _kernel_scale(kernel) -> float:
  """The variance-scaling scale a kernel [..., C_in, C_out] was drawn with: Var·fan_avg."""
  k = np.asarray(kernel)
  receptive = int(np.prod(k.shape[:-2]))
  fan_avg = 0.5 * receptive * (k.shape[-2] + k.shape[-1])
  return float(np.var(k) * fan_avg)


def test_one_by_one_layers_start_at_score_sde_nin_scale():
  """score_sde builds attention's q, k, v and the DDPM block's channel-changing shortcut as NIN
  with default_init(0.1); its BigGAN shortcut and Combine are conv1x1 with scale 1 and the
  attention output uses init_scale.  64 → 128 channels: 8192 draws pin each scale to ~3 %."""
  from score_jax.models import layers
  x = jnp.ones((1, 2, 2, 64))
  init = lambda block, seed: _compile(block.init, jax.random.PRNGKey(seed), x)(jax.random.PRNGKey(seed), x)["params"]
  attn = init(layers.AttnBlock(init_scale=0.0), 0)
  for name in ("Conv_0", "Conv_1", "Conv_2"):  # q, k, v in creation order
    assert _kernel_scale(attn[name]["kernel"]) == pytest.approx(layers.NIN_INIT_SCALE, rel=0.1), name
  assert layers.NIN_INIT_SCALE == 0.1
  assert np.abs(attn["Conv_3"]["kernel"]).max() < 1e-4  # output projection: init_scale 0 -> 1e-10
  ddpm = init(layers.ResnetBlockDDPM(out_ch=128), 1)
  shortcut = ddpm["Conv_2"]["kernel"]  # conv3x3, conv3x3, then the 1×1 shortcut
  assert shortcut.shape == (1, 1, 64, 128)
  assert _kernel_scale(shortcut) == pytest.approx(0.1, rel=0.1)
  biggan = init(layers.ResnetBlockBigGAN(out_ch=128), 2)
  assert biggan["Conv_2"]["kernel"].shape == (1, 1, 64, 128)
  assert _kernel_scale(biggan["Conv_2"]["kernel"]) == pytest.approx(1.0, rel=0.1)
