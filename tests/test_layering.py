"""The job layer's shape, read from the source: no mode imports another mode, imports point one
way (math <- models <- experiment <- jobs <- modes), and only ``score_jax/experiment/`` and
``config_files.py`` read a ConfigDict.  The checkers run on hand-written violations too, so
they can fail."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "score_jax"
CONFIG_READERS = ("score_jax/experiment/", "score_jax/config_files.py")
# Layers, lowest first: a module may import its own layer and those below it, never above.
LAYERS = (
    ("math", ("sde", "ema", "schedules", "losses", "distillation", "likelihood", "guidance", "sampling", "metrics", "analysis", "data",
              "compilation", "outputs", "sharding")),
    ("models", ("models", "score_fn", "train_state", "checkpointing", "pretrained")),
    ("experiment", ("experiment", "config_files")),
    ("jobs", ("jobs", "runs")),
    ("modes", ("modes",)),
)
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
NAMES = {"config", "cfg"}


def _module_name(path: pathlib.Path) -> str:
  return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _library_nodes(tree: ast.AST):
  """Every node but those of a command-line entry point (``def main`` at module level and
  ``if __name__ == "__main__":``), which sits above every layer: ``python -m score_jax.pretrained``
  reads its --config through score_jax.experiment."""
  skip = set()
  for node in getattr(tree, "body", []):
    if (isinstance(node, ast.FunctionDef) and node.name == "main") or (
        isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)):
      skip.update(id(n) for n in ast.walk(node))
  return [n for n in ast.walk(tree) if id(n) not in skip]


def imported_modules(tree: ast.AST, module: str) -> list[str]:
  """Every score_jax module a module imports (``from a import b`` gives ``a.b`` when b may be a module)."""
  found = []
  for node in _library_nodes(tree):
    if isinstance(node, ast.Import):
      found += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        parts = module.split(".")[:-node.level] if not module.endswith("__init__") else module.split(".")
        base = ".".join(parts + ([base] if base else []))
      found += [base] + [f"{base}.{alias.name}" for alias in node.names]
  return [m for m in found if m.startswith("score_jax")]


def mode_import_violations(tree: ast.AST, module: str) -> list[str]:
  """A mode importing another mode."""
  if not module.startswith("score_jax.modes.") or module == "score_jax.modes":
    return []
  return sorted({m for m in imported_modules(tree, module)
                 if m.startswith("score_jax.modes.") and m.split(".")[2] != module.split(".")[2]})


def layer_violations(tree: ast.AST, module: str) -> list[str]:
  """Imports of a higher layer than the module's own."""
  top = module.split(".")[1] if "." in module else ""
  if top not in LAYER_OF:
    return []
  bad = []
  for m in imported_modules(tree, module):
    parts = m.split(".")
    if len(parts) > 1 and parts[1] in LAYER_OF and LAYER_OF[parts[1]] > LAYER_OF[top]:
      bad.append(m)
  return sorted(set(bad))


def config_violations(tree: ast.AST, *, job_layer: bool = False) -> list[str]:
  """ConfigDict reads: ``import ml_collections``, or an attribute / item / ``.get`` of a
  parameter annotated ConfigDict.  In the job layer (modes/, jobs/, runs.py) a parameter named
  ``config`` must carry that annotation, so the rule cannot be dodged by leaving it off."""
  bad = []
  typed = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
        if arg.annotation is not None and "ConfigDict" in ast.unparse(arg.annotation):
          typed.add(arg.arg)
        elif job_layer and arg.arg == "config":
          bad.append(f"line {node.lineno}: {node.name}(config) without a ConfigDict annotation")
  for node in _library_nodes(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
      bad += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] == "ml_collections"]
    if isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.value, ast.Name) and node.value.id in typed:
      bad.append(f"line {node.lineno}: {ast.unparse(node)}")
  return sorted(bad, key=lambda v: int(v.split(":")[0].split()[1]))


def _sources():
  for path in sorted(PACKAGE.rglob("*.py")):
    yield path, _module_name(path), ast.parse(path.read_text())


def test_no_mode_imports_another_mode():
  modes = sorted(p.stem for p in (PACKAGE / "modes").glob("*.py") if p.stem != "__init__")
  assert {"train", "sample", "eval", "fid_stats", "train_classifier", "train_noisy_classifier", "inpaint",
          "colorize"} <= set(modes)
  bad = {module: v for _, module, tree in _sources() if (v := mode_import_violations(tree, module))}
  assert not bad, f"modes import other modes (move what they share to score_jax/jobs/): {bad}"


def test_imports_point_one_way():
  bad = {module: v for _, module, tree in _sources() if (v := layer_violations(tree, module))}
  assert not bad, f"imports of a higher layer: {bad}"


def test_only_experiment_and_config_files_read_a_config():
  bad = {}
  for path, _, tree in _sources():
    rel = path.relative_to(ROOT).as_posix()
    if rel.startswith(CONFIG_READERS):
      continue
    if v := config_violations(tree, job_layer=rel.startswith(("score_jax/modes/", "score_jax/jobs/", "score_jax/runs.py"))):
      bad[rel] = v
  assert not bad, f"ConfigDict read outside score_jax/experiment/ (add a typed option record there): {bad}"


def test_main_modes_table_names_every_mode_file():
  tree = ast.parse((ROOT / "main.py").read_text())
  table = next(node.value for node in tree.body if isinstance(node, ast.Assign) and
               getattr(node.targets[0], "id", "") == "MODES")
  rows = {ast.literal_eval(k) for k in table.keys}
  files = {p.stem for p in (PACKAGE / "modes").glob("*.py") if p.stem != "__init__"}
  assert rows == files


@pytest.mark.parametrize("source, module, checker, expected", [
    ("from score_jax.modes import sample\n", "score_jax.modes.inpaint", mode_import_violations,
     ["score_jax.modes.sample"]),
    ("from score_jax.modes.eval import run\n", "score_jax.modes.sample", mode_import_violations,
     ["score_jax.modes.eval", "score_jax.modes.eval.run"]),
    ("from score_jax.jobs import sampler\n", "score_jax.modes.sample", mode_import_violations, []),
    ("from score_jax.modes import train\n", "score_jax.jobs.writers", layer_violations,
     ["score_jax.modes", "score_jax.modes.train"]),
    ("from score_jax import experiment\n", "score_jax.sampling.pc", layer_violations, ["score_jax.experiment"]),
    ("from score_jax import sde\n", "score_jax.jobs.keys", layer_violations, []),
    ("def main():\n  from score_jax import experiment\n", "score_jax.pretrained", layer_violations, []),
    ("def helper():\n  from score_jax import experiment\n", "score_jax.pretrained", layer_violations,
     ["score_jax.experiment"]),
])
def test_the_import_checkers_catch_violations(source, module, checker, expected):
  assert checker(ast.parse(source), module) == expected


def test_the_config_checker_catches_reads():
  source = ("import ml_collections\n"
            "def f(config: ml_collections.ConfigDict, c: 'experiment.ConfigDict', flags, spec: dict):\n"
            "  a = config.training.num_steps\n  b = c['eval']\n  e = config.get('x')\n  s = spec['a']\n"
            "  return g(config, flags.config)\n")  # passing a config on is fine, so are other names
  found = config_violations(ast.parse(source))
  assert found == ["line 1: imports ml_collections", "line 3: config.training", "line 4: c['eval']",
                   "line 5: config.get"], found
  assert config_violations(ast.parse("def run(config, workdir):\n  return config\n"), job_layer=True) == [
      "line 1: run(config) without a ConfigDict annotation"]
  assert config_violations(ast.parse("def run(config, workdir):\n  return config\n")) == []


# Imported where they are used, not by every process that imports the package: diffrax (with
# equinox, optimistix and lineax) costs ~0.4 s of a training or sampling run's start.
DEFERRED = ("diffrax",)


def module_level_imports(tree: ast.AST) -> list[str]:
  """Top-level packages imported by a module's own statements (not inside a function or class)."""
  found = []

  def visit(nodes):
    for node in nodes:
      if isinstance(node, ast.Import):
        found.extend(alias.name.split(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        found.append(node.module.split(".")[0])
      elif isinstance(node, (ast.If, ast.Try, ast.With)):
        visit([n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])])
      elif isinstance(node, ast.ExceptHandler):
        visit(node.body)

  visit(getattr(tree, "body", []))
  return found


def test_heavy_optional_packages_are_imported_where_they_are_used():
  bad = [f"{module}: {name}" for _, module, tree in _sources() for name in module_level_imports(tree) if name in DEFERRED]
  assert not bad, f"import these inside the functions that use them: {bad}"
  assert module_level_imports(ast.parse("import diffrax\ndef f():\n  import optax\n")) == ["diffrax"]
