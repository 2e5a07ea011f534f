"""--mode=inpaint / --mode=colorize (score_jax/modes/, jobs/observations.py, jobs/masks.py): masks, inputs, one-line errors
before compiling, and end-to-end runs at smoke size that keep known pixels / the luminance."""

import functools
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from configs.ve import digits as digits_config
from configs.ve import shapes_16 as shapes_config
from score_jax import checkpointing
from score_jax import experiment
from score_jax import sampling
from score_jax.jobs import control as control_lib
from score_jax.jobs import masks
from score_jax.jobs import observation_metrics
from score_jax.jobs import observations
from score_jax.jobs import sampler as sampler_lib
from score_jax.modes import inpaint as inpaint_mode
from score_jax.modes import colorize as colorize_mode
from tests import run_main


def _digits(**fields):
  config = digits_config.get_config("smoke")
  config.controllable.update(fields)
  return config


def _prepare(config, mode):
  """What a mode builds before it loads parameters: the components, the problem and its control."""
  setup, opts = experiment.build(config), experiment.controllable_options(config, mode)
  problem = observations.prepare(setup, opts, mode)
  return setup, opts, problem, observations.control_for(problem, opts, setup, control_lib.unconditional(setup))


def _fast(config):
  """The smallest sampler and network of the config's kind, for the runs below: a zero
  network's score is 0, where Langevin's step size blows up, so the predictor runs alone."""
  config.sampling.pc.update(dict(corrector="none", num_steps=2, denoise=False))
  config.model.network.attention = False
  return config


def _opts(**fields):
  return experiment.controllable_options(_digits(**fields), "inpaint")


# --- masks ------------------------------------------------------------------------------------
def test_box_mask_default_is_the_centred_half_and_explicit_boxes_are_pixels():
  fill = masks.box_mask(8)
  assert fill.sum() == 16 and fill[2:6, 2:6].all()
  fill = masks.box_mask(8, (1, 0, 2, 5))
  assert fill.sum() == 10 and fill[1:3, 0:5].all()
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.box: \(5, 0, 4, 4\)"):
    masks.box_mask(8, (5, 0, 4, 4))


@pytest.mark.parametrize("half,rows,cols", [("left", slice(None), slice(0, 3)), ("right", slice(None), slice(4, 7)),
                                            ("top", slice(0, 3), slice(None)), ("bottom", slice(4, 7), slice(None))])
def test_half_mask_fills_that_half_and_keeps_the_middle_line(half, rows, cols):
  fill = masks.half_mask(7, half)
  assert fill[rows, cols].all() and fill.sum() == 21  # 3 of 7 lines; the middle line is kept


def test_random_patches_follow_seed_and_input_index():
  a = masks.random_patches_mask(16, 3, num_patches=3, patch_size=4, seed=0)
  assert np.array_equal(a, masks.random_patches_mask(16, 3, num_patches=3, patch_size=4, seed=0))
  assert not np.array_equal(a, masks.random_patches_mask(16, 4, num_patches=3, patch_size=4, seed=0))
  assert 16 <= a.sum() <= 48  # three 4×4 squares, possibly overlapping
  one = masks.random_patches_mask(16, 0, num_patches=1, patch_size=5, seed=1)
  rows, cols = np.nonzero(one)
  assert one.sum() == 25 and rows.max() - rows.min() == 4 and cols.max() - cols.min() == 4
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.patch_size: 9 exceeds"):
    masks.random_patches_mask(8, 0, num_patches=1, patch_size=9, seed=0)


def test_png_mask_white_fills_and_its_size_must_match(tmp_path):
  pixels = np.zeros((8, 8), np.uint8)
  pixels[:, 5:] = 255
  path = str(tmp_path / "mask.png")
  Image.fromarray(pixels).save(path)
  fill = masks.png_mask(path, 8)
  assert fill[:, 5:].all() and fill.sum() == 24
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.mask_path: the mask is 8×8 pixels "
                                                   r"but the images are 16×16"):
    masks.png_mask(path, 16)
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.mask_path: no file"):
    masks.png_mask(str(tmp_path / "absent.png"), 8)
  black = str(tmp_path / "black.png")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(black)
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.mask: mask 'png' fills no pixel"):
    masks.make_fill_masks(_opts(mask="png", mask_path=black), 8, np.arange(2))


def test_fill_masks_are_per_input_for_random_patches_and_shared_otherwise():
  fill = masks.make_fill_masks(_opts(mask="random_patches", num_patches=2, patch_size=2), 8, np.arange(3))
  assert fill.shape == (3, 8, 8) and not np.array_equal(fill[0], fill[1])
  fill = masks.make_fill_masks(_opts(mask="half", half="top"), 8, np.arange(2))
  assert fill.shape == (2, 8, 8) and fill[:, :4].all() and not fill[:, 4:].any()


@pytest.mark.parametrize("field,value,message", [
    ("inputs", "validation", r"^config\.controllable\.inputs: unknown 'validation'"),
    ("mask", "circle", r"^config\.controllable\.mask: unknown 'circle'"),
    ("half", "middle", r"^config\.controllable\.half: unknown 'middle'"),
    ("samples_per_input", 0, r"^config\.controllable\.samples_per_input: must be an integer >= 1"),
    ("box", (1, 2, 3), r"^config\.controllable\.box: must be \(top, left, height, width\)"),
    ("resample", 0, r"^config\.controllable\.resample: must be an integer >= 1"),
])
def test_bad_fields_are_one_line_naming_the_field(field, value, message):
  fields = {field: value}
  if field == "half":
    fields["mask"] = "half"
  with pytest.raises(experiment.ConfigError, match=message):
    experiment.controllable_options(_digits(**fields), "inpaint")


def test_folder_and_png_masks_need_their_paths():
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.input_path: not set"):
    _opts(inputs="folder")
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.mask_path: not set"):
    _opts(mask="png")


def test_per_sample_arrays_are_cut_into_full_chunks_like_the_samples():
  a = np.arange(10).reshape(5, 2)
  np.testing.assert_array_equal(sampler_lib._rows(a, 0, 3), a[:3])  # pylint: disable=protected-access
  np.testing.assert_array_equal(sampler_lib._rows(a, 3, 3), a[[3, 4, 4]])  # the last chunk repeats its last row


# --- grids and metrics on hand-made samples ------------------------------------------------------
def _job(mode, originals, fill=None, k=2):
  shown = originals if fill is None else np.where(fill[..., None], 0.5, originals)
  return observations.Problem(mode=mode, originals=originals, labels=None, indices=np.arange(len(originals)),
                              source="t", shown=shown, values=originals, known=np.ones_like(originals), fill=fill, basis=None,
                          samples_per_input=k)


def test_grid_rows_put_original_input_then_samples_in_each_row():
  originals = np.arange(2, dtype=np.float32)[:, None, None, None] * np.ones((2, 4, 4, 1), np.float32)
  job = _job("inpaint", originals, fill=np.zeros((2, 4, 4), bool))
  samples = 10.0 + np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1, 1) * np.ones((2, 3, 4, 4, 1), np.float32)
  rows = observations.grid_rows(job, samples)
  assert rows.shape == (10, 4, 4, 1)
  np.testing.assert_array_equal(rows[:, 0, 0, 0], [0, 0, 10, 11, 12, 1, 1, 13, 14, 15])


def test_inpaint_metrics_measure_known_pixels_and_the_filled_region():
  rng = np.random.default_rng(0)
  originals = rng.uniform(size=(2, 4, 4, 1)).astype(np.float32)
  fill = np.zeros((2, 4, 4), bool)
  fill[:, :2] = True  # 8 of 16 pixels filled
  samples = np.repeat(originals[:, None], 2, axis=1).copy()  # [2, 2, 4, 4, 1]
  samples[:, 0][fill] += 0.25
  samples[:, 1][fill] -= 0.25
  m = observation_metrics.constraint_metrics(_job("inpaint", originals, fill), samples, (0.0, 1.0))
  assert m["known_max_abs_error"] == 0.0 and m["filled_fraction"] == 0.5
  assert m["sampled_mae_to_original"] == pytest.approx(0.25) and m["sample_spread"] == pytest.approx(0.25)
  samples[1, 1, 3, 3, 0] += 0.125  # a known pixel moved
  m = observation_metrics.constraint_metrics(_job("inpaint", originals, fill), samples, (0.0, 1.0))
  assert m["known_max_abs_error"] == pytest.approx(0.125)


def test_colorize_metrics_and_gray_keep_the_luminance():
  rng = np.random.default_rng(1)
  originals = rng.uniform(size=(2, 4, 4, 3)).astype(np.float32)
  g = observations.gray(originals)
  np.testing.assert_allclose(g.mean(-1), originals.mean(-1), atol=1e-7)
  m = sampling.constraints.color_matrix()
  np.testing.assert_allclose(g @ m[:, 0], originals @ m[:, 0], atol=1e-6)  # the decoupled luminance channel
  samples = np.stack([g, originals], axis=1)  # [2, 2, 4, 4, 3]
  out = observation_metrics.constraint_metrics(_job("colorize", originals), samples, (0.0, 1.0))
  assert out["luminance_max_abs_error"] < 1e-6 and out["out_of_range_fraction"] == 0.0
  assert out["sampled_mae_to_original"] == pytest.approx(0.5 * np.abs(g - originals).mean(), rel=1e-6)


# --- validation before compiling ----------------------------------------------------------------
def test_colorization_of_a_one_channel_dataset_is_one_line():
  with pytest.raises(experiment.ConfigError, match=r"^config\.data\.name: --mode=colorize needs RGB images "
                                                   r"\(3 channels\) but dataset 'digits' has 1"):
    _prepare(_digits(), "colorize")


def test_inputs_beyond_the_split_and_a_missing_folder_are_one_line(tmp_path):
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.num_inputs: first_input 290 \+ "
                                                   r"num_inputs 8 exceeds the 297 images"):
    _prepare(_digits(first_input=290, num_inputs=8), "inpaint")
  with pytest.raises(experiment.ConfigError, match=r"^config\.controllable\.input_path: no image folder"):
    _prepare(_digits(inputs="folder", input_path=str(tmp_path / "none")), "inpaint")


def test_a_sampler_that_cannot_impose_known_pixels_is_rejected_before_compiling():
  config = _digits()
  config.sampling.method = "ode"  # tsit5: an adaptive solver, no step to replace after
  with pytest.raises(experiment.ConfigError, match=r"^config\.sampling\.method: "):
    _prepare(config, "inpaint")


def test_folder_inputs_are_resized_and_masked(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  for i, value in enumerate((40, 200)):
    Image.fromarray(np.full((20, 24), value, np.uint8)).save(folder / f"{i}.png")
  config = _digits(inputs="folder", input_path=str(folder), num_inputs=2, mask="half", half="left")
  _, _, job, _ = _prepare(config, "inpaint")
  assert job.originals.shape == (2, 8, 8, 1) and job.labels is None
  np.testing.assert_allclose(job.originals[:, 0, 0, 0], [40 / 255, 200 / 255], atol=1e-6)
  np.testing.assert_allclose(job.shown[:, 0, :4, 0], [[0.3, 0.7, 0.3, 0.7]] * 2, atol=1e-6)  # the hole's checkerboard
  np.testing.assert_array_equal(job.shown[:, :, 4:], job.originals[:, :, 4:])
  assert job.known.shape == (2, 8, 8, 1) and job.known[:, :, :4].sum() == 0 and job.known[:, :, 4:].all()


# --- end to end at smoke size ---------------------------------------------------------------------
def _export_zero_params(config, workdir):
  """An EMA export of all-zero parameters (the network outputs 0): something to run from,
  without compiling an initialisation or a train step."""
  setup = experiment.build(config)
  shapes = jax.eval_shape(functools.partial(experiment.init_params, setup), experiment.keys(config.seed)["init"])
  checkpointing.export_params(workdir, 1, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes))


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("digits"))
  _export_zero_params(_fast(_digits()), workdir)
  return workdir


def _known_pixels_kept(out):
  """Checks every sample of results.npz against its own input's mask; returns the masks [n, H, W]."""
  with np.load(os.path.join(out, "results.npz")) as r:
    samples, originals, known = r["samples"], r["originals"], r["known"]
  k = samples.shape[1]
  known = np.repeat(known[:, None, :, :, None], k, axis=1)  # [n, k, H, W, 1]
  expected = np.repeat(originals[:, None], k, axis=1)
  np.testing.assert_array_equal(samples[known], expected[known])  # bit for bit
  assert np.all(samples[~known] != expected[~known])  # the rest was sampled
  return known[:, 0, :, :, 0]


def test_inpaint_keeps_known_pixels_exactly_and_never_overwrites(digits_workdir):
  config = _fast(_digits(mask="box", num_inputs=2, samples_per_input=2))
  out = inpaint_mode.run(config, digits_workdir).folder
  assert out == os.path.join(digits_workdir, "inpaint", "0")
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["known_max_abs_error"] == 0.0 and metrics["step"] == 1 and metrics["nfe"] > 0
  assert metrics["filled_fraction"] == 0.25 and metrics["classifier_accuracy"] is None
  assert metrics["method"] == "replacement" and "posterior" not in metrics and "guidance" not in metrics
  known = _known_pixels_kept(out)
  assert known.sum() == 2 * 48
  with np.load(os.path.join(out, "results.npz")) as r:
    assert r["samples"].shape == (2, 2, 8, 8, 1) and r["originals"].shape == (2, 8, 8, 1)
    assert not np.array_equal(r["samples"][:, 0], r["samples"][:, 1])  # two samples per input differ
    assert r["labels"].tolist() == _test_labels(2)
  grid = np.asarray(Image.open(os.path.join(out, "grid.png")))
  assert grid.shape == (2 * (64 + 2) + 2, 4 * (64 + 2) + 2)  # 2 rows × (original, input, 2 samples), ×8
  # A second run (masks that differ between inputs) goes to a new folder; the first one's files stay.
  out2 = inpaint_mode.run(_fast(_digits(mask="random_patches", num_patches=2, patch_size=3, num_inputs=2,
                                         samples_per_input=2)), digits_workdir).folder
  assert out2.endswith(os.path.join("inpaint", "1")) and os.path.isfile(os.path.join(out, "grid.png"))
  known2 = _known_pixels_kept(out2)
  assert not np.array_equal(known2[0], known2[1])


def _test_labels(n):
  from score_jax.data import embedded  # pylint: disable=g-import-not-at-top
  return embedded.get_dataset("digits", split="test").labels[:n].tolist()


def test_colorize_keeps_the_luminance_to_float_precision(tmp_path):
  config = _fast(shapes_config.get_config("smoke"))
  config.controllable.update(dict(num_inputs=2, samples_per_input=2))
  workdir = str(tmp_path)
  _export_zero_params(config, workdir)
  out = colorize_mode.run(config, workdir).folder
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  with np.load(os.path.join(out, "results.npz")) as r:
    samples, originals = r["samples"], r["originals"]
  assert samples.shape == (2, 2, 16, 16, 3) and metrics["mode"] == "colorize"
  # float32 rounding of the basis round trip, relative to the samples' scale (an untrained model's are large)
  tol = 1e-6 * max(1.0, float(np.abs(samples).max()))
  assert metrics["luminance_max_abs_error"] < tol
  np.testing.assert_allclose(samples.mean(-1), np.repeat(originals.mean(-1)[:, None], 2, 1), atol=tol)
  assert np.abs(samples - samples.mean(-1, keepdims=True)).max() > 1e-2  # chrominance was sampled, not left gray


def test_main_colorize_on_digits_fails_in_one_line(tmp_path):
  result = run_main.run(run_main.main_command(str(tmp_path), "configs/ve/digits.py:smoke", mode="colorize"))
  assert result.returncode != 0
  lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
  assert lines == [lines[0]] and lines[0].startswith("error: config.data.name: --mode=colorize needs RGB images")
  assert "Traceback" not in result.stderr and not os.path.exists(os.path.join(str(tmp_path), "colorize"))
