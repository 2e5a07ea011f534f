"""Config files by path: ``load("configs/ve/digits.py:smoke")``, the catalog, and checks of
command-line overrides before anything is parsed into them.

A config file is a Python module with ``get_config(variant="")`` returning an
``ml_collections.ConfigDict`` (the ml_collections convention that ``main.py --config=`` follows).
The files under ``configs/`` import their bases as ``from configs import common``; ``configs`` is
installed as a package with ``score_jax``, so a spec resolves from any working directory: a path
that exists relative to the current directory wins, else it is taken relative to the installed
``configs`` package's parent (``configs/ve/digits.py`` works everywhere).

Every mistake a user can make in a spec or an override is a ``ConfigFileError`` (a ValueError)
whose message is one line that names the fix: the list of config files for a path that does not
exist, the variants for an unknown variant, the closest field for a misspelt one.
"""

from __future__ import annotations

import ast
import json
import difflib
import importlib.util
import os
import pathlib
from typing import Iterable, Optional, Sequence

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigFileError(ValueError):
  """A config spec or override that cannot be used; the message is one line naming the fix."""


def configs_root() -> Optional[pathlib.Path]:
  """The folder that holds the ``configs`` package (the repository root, or site-packages)."""
  spec = importlib.util.find_spec("configs")
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0]).parent


def _docstring(path: pathlib.Path) -> tuple[bool, str]:
  """(has get_config, first sentence of the module docstring) without importing the file."""
  tree = ast.parse(path.read_text())
  has = any(isinstance(node, ast.FunctionDef) and node.name == "get_config" for node in tree.body)
  doc = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
  return has, doc


def catalog() -> list[tuple[str, str]]:
  """Every config file as ("configs/…/name.py", one-line summary), sorted by path."""
  root = configs_root()
  if root is None:
    return []
  found = []
  for path in sorted((root / "configs").rglob("*.py")):
    has, doc = _docstring(path)
    if has:
      summary = doc.split(". ")[0].rstrip(".")
      found.append((path.relative_to(root).as_posix(), summary))
  return found


def _catalog_hint() -> str:
  names = [name for name, _ in catalog()]
  return f"config files: {', '.join(names)}" if names else "no configs package is installed"


def resolve(path: str) -> pathlib.Path:
  """The config file a spec's path names: relative to the current directory, else to the
  installed ``configs`` package's parent.

  Raises:
    ConfigFileError: no such file; the message lists the config files.
  """
  candidates = [pathlib.Path(path)]
  root = configs_root()
  if root is not None and not os.path.isabs(path):
    candidates.append(root / path)
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  raise ConfigFileError(f"--config={path}: no such config file; {_catalog_hint()}.")


def split_spec(spec: str) -> tuple[str, Optional[str]]:
  """``"path.py:variant"`` -> ("path.py", "variant"); no colon -> (spec, None)."""
  path, sep, variant = spec.partition(":")
  return path, (variant if sep else None)


def load(spec: str) -> ConfigDict:
  """Loads ``path.py[:variant]`` by calling its ``get_config(variant)``.

  Args:
    spec: a config file path, optionally followed by ``:variant`` (e.g. ``:smoke``).

  Returns:
    The ConfigDict the file builds.

  Raises:
    ConfigFileError: the file does not exist, has no ``get_config``, or rejects the variant.
  """
  path, variant = split_spec(spec)
  file = resolve(path)
  module_spec = importlib.util.spec_from_file_location(f"_score_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except ImportError as e:
    raise ConfigFileError(f"--config={spec}: the file failed to import ({e}); is score_jax installed "
                          f"(pip install -e .) so that `configs` is importable?") from e
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    raise ConfigFileError(f"--config={spec}: {path} has no get_config(); {_catalog_hint()}.")
  try:
    return get_config() if variant is None else get_config(variant)
  except ValueError as e:
    raise ConfigFileError(f"--config={spec}: {' '.join(str(e).split())}") from e


def override_names(argv: Sequence[str], flag: str = "config") -> list[str]:
  """The dotted field names of ``--config.a.b=value`` / ``--config.a.b value`` arguments."""
  names = []
  for arg in argv:
    for prefix in (f"--{flag}.", f"-{flag}.", f"--no{flag}."):
      if arg.startswith(prefix):
        names.append(arg[len(prefix):].split("=", 1)[0])
        break
  return names


def check_fields(config: ConfigDict, names: Iterable[str], prefix: str = "config") -> None:
  """Raises ConfigFileError for the first dotted name that is not a field of ``config``,
  suggesting the closest existing field."""
  for name in names:
    node, walked = config, prefix
    for part in name.split("."):
      fields = list(node.keys()) if isinstance(node, (ConfigDict, dict)) else []
      if part not in fields:
        if not fields:
          raise ConfigFileError(f"no field {prefix}.{name}: {walked} is a value ({type(node).__name__}), "
                                f"not a section.")
        close = difflib.get_close_matches(part, fields, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"the fields of {walked} are: {', '.join(sorted(fields))}."
        raise ConfigFileError(f"no field {prefix}.{name}; {hint}")
      node, walked = node[part], f"{walked}.{part}"


def to_json(config: ConfigDict) -> str:
  """The resolved config as the JSON text a training run saves (``config.json``)."""
  return config.to_json(indent=2, sort_keys=True) + "\n"


def _tuples(value):
  """JSON has no tuples: config sequences (ch_mult, attn_resolutions, ...) come back as tuples."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def from_json(path: str) -> ConfigDict:
  """A config a training run saved with ``to_json``, read back as a ConfigDict."""
  with open(path) as f:
    return ConfigDict(_tuples(json.load(f)))
