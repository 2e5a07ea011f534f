"""Data-parallel sharding on 4 forced host devices: the mesh, sampling under jit with
out_shardings (equal to the 1-device result), global batches, the batch-size check.

The 4-device checks run in a subprocess, since XLA_FLAGS must be set before jax is imported.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

from score_jax import sampling, sharding
from score_jax import sde as sde_lib
from score_jax.data import toy

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (16, 2)
PC = dict(method="pc", predictor="reverse_diffusion", corrector="ald", num_steps=20)
TARGET = dict(means=[[-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0], [3.0, 3.0]], stds=[0.3, 0.5, 0.4, 0.6],
              weights=[0.1, 0.2, 0.3, 0.4])

_CHILD = """
import json, sys
import jax
import numpy as np
from score_jax import sampling, sharding
from score_jax import sde as sde_lib
from score_jax.data import toy

args = json.loads(sys.argv[1])
out = {"device_count": jax.device_count()}
mesh = sharding.make_mesh()
out["mesh_size"] = mesh.size

sde = sde_lib.VPSDE()
score_fn = toy.GaussianMixture(**args["target"]).score_fn(sde)
draw = jax.jit(lambda key: sampling.sample(key, sde, score_fn, tuple(args["shape"]), **args["pc"])[0],
               out_shardings=sharding.data_sharding(mesh))
x = draw(jax.random.PRNGKey(0))
out["samples"] = np.asarray(x).tolist()
out["sample_sharded"] = x.sharding.is_equivalent_to(sharding.data_sharding(mesh), x.ndim)
out["sample_shard_rows"] = sorted({s.data.shape[0] for s in x.addressable_shards})
out["sample_devices"] = len({s.device for s in x.addressable_shards})

local = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
g = sharding.global_batch(local, mesh)
out["batch_sharded"] = g.sharding.is_equivalent_to(sharding.data_sharding(mesh), g.ndim)
out["batch_shape"] = list(g.shape)
out["batch_equal"] = bool(np.array_equal(np.asarray(g), local))
out["batch_shard_rows"] = sorted({s.data.shape[0] for s in g.addressable_shards})

try:
  sharding.check_batch_divisible(10, mesh)
  out["error"] = None
except ValueError as e:
  out["error"] = str(e)
sharding.check_batch_divisible(12, mesh)
print("RESULT" + json.dumps(out))
"""


def _run_on_4_devices() -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  args = json.dumps(dict(target=TARGET, shape=SHAPE, pc=PC))
  proc = subprocess.run([sys.executable, "-c", _CHILD, args], env=env, check=True, capture_output=True,
                        text=True, timeout=120, cwd=str(ROOT))
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_data_parallel_on_four_devices():
  # The 1-device reference, in this process.
  sde = sde_lib.VPSDE()
  score_fn = toy.GaussianMixture(**TARGET).score_fn(sde)
  ref, _ = sampling.sample(jax.random.PRNGKey(0), sde, score_fn, SHAPE, **PC)
  ref = np.asarray(ref)

  out = _run_on_4_devices()

  # (a) 4 devices, a 4-device mesh.
  assert out["device_count"] == 4
  assert out["mesh_size"] == 4
  # (b) samples split 4 ways, equal to the 1-device draw (sample i's noise is fold_in(key, i)).
  assert out["sample_sharded"] and out["sample_devices"] == 4 and out["sample_shard_rows"] == [4]
  x = np.asarray(out["samples"], dtype=np.float32)
  assert np.isfinite(x).all()
  np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)
  # (c) a numpy batch becomes a global array split over "data" with the same values.
  assert out["batch_sharded"] and out["batch_shape"] == [8, 3] and out["batch_equal"]
  assert out["batch_shard_rows"] == [2]
  # (d) an indivisible batch size names the config field and the device count.
  assert out["error"] is not None
  assert "config.training.batch_size" in out["error"] and "4" in out["error"]


def test_one_device_mesh_in_process():
  mesh = sharding.make_mesh()
  assert mesh.size == jax.device_count() and mesh.axis_names == ("data",)
  g = sharding.global_batch(np.ones((4, 2), np.float32), mesh)
  assert g.sharding.is_equivalent_to(sharding.data_sharding(mesh), 2)
  assert sharding.replicated(mesh).is_fully_replicated
