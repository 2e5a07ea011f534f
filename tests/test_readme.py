"""README's code runs: every ```python block executes as written (a fresh namespace each, in
a scratch directory where ``runs/gmm`` is a smoke-sized run of the main job's config), and every
command line names a config file and a mode that exist."""

import pathlib
import re

import pytest

from score_jax import config_files
from score_jax.modes import train

# One worker computes this module's shared fixture (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("readme")

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks():
  assert len(BLOCKS) >= 2


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  """A directory holding ``runs/gmm``, trained like the README's main job at smoke size."""
  root = tmp_path_factory.mktemp("readme")
  config = config_files.load("configs/toy/gmm2d.py:smoke")
  train.run(config, str(root / "runs" / "gmm"))
  return root


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, scratch, monkeypatch):
  monkeypatch.chdir(scratch)
  code = compile(BLOCKS[index], f"README.md python block {index}", "exec")
  exec(code, {"__name__": f"readme_block_{index}"})  # pylint: disable=exec-used


def test_readme_commands_name_existing_configs_and_modes():
  import main  # pylint: disable=import-outside-toplevel
  configs = re.findall(r"--config=([\w/.]+\.py)(?::(\w+))?", README)
  modes = re.findall(r"--mode=(\w+)", README)
  assert configs and modes
  for path, variant in configs:
    if path.startswith("pretrained/"):  # written by `python -m score_jax.pretrained` (tests/test_pretrained.py runs it)
      continue
    assert (ROOT / path).is_file(), path
    if variant:
      config_files.load(f"{ROOT / path}:{variant}")
  assert set(modes) <= set(main.MODES), set(modes) - set(main.MODES)
