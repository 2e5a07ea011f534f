"""score_jax against diffusers' NCSN++ (PyTorch) on identical weights, timed side by side.

    python benchmarks/peer_diffusers.py --torch_python=/path/to/venv/bin/python
    python benchmarks/peer_diffusers.py --torch_python=... --quick        # one size, batch 8, 3 reps
    python benchmarks/peer_diffusers.py --torch_python=... --ops=train --batches=32 --resolutions=64

The torch side runs in another interpreter (``--torch_python``: any environment with
``pip install torch diffusers safetensors``); neither the package nor its tests need it.
This script starts it as a worker (this same file with ``--worker``) and talks to it over
stdin / stdout, one JSON line per request.

What is compared, for each resolution R (default 32 and 64):

* The network: a scaled-down CelebA-HQ NCSN++ (score_sde's ``celebahq_256_ncsnpp_continuous``
  with nf 32, ch_mult (1, 1, 2, 2, 2), two BigGAN blocks per level, attention at 16 px, FIR
  (1, 3, 3, 1) resampling, output-skip / input-skip pyramids, Fourier noise embedding).  The
  worker builds diffusers' ``UNet2DModel`` with the skip block types Google's converted
  ``google/ncsnpp-*`` models use, saves it as ``.safetensors``, and score_jax reads that
  folder through ``score_jax.pretrained.convert`` — the same weights on both sides, and the
  network its config.json describes.  diffusers picks some GroupNorm group counts differently
  from NCSN++'s min(C/4, 32) (its attention blocks use a fixed 32, ``AttnSkipUpBlock2D``
  computes its resnets' groups as ``min(in + skip // 4, 32)``); at widths >= 128 (the published
  models) both agree, at the 32 / 64 channels here they do not, and the converter reproduces
  diffusers' counts (``NCSNpp.group_counts``).  The forward outputs agree to float32 round-off:
  the max abs difference of the scores is printed (diffusers' output is the network's divided
  by σ).  (Before the converter read the counts, the worker set diffusers' norms to NCSN++'s.)
* ``forward``: one network evaluation, no gradient.
* ``pc``: one predictor–corrector step of the VE SDE (σ 0.01 … 348): reverse-diffusion
  predictor + one Langevin corrector step (snr 0.075, score_sde's 256-px value), two network
  evaluations — score_jax's ``sampling.steps.reverse_diffusion`` / ``langevin`` on one side,
  the same formulas in torch on the other.
* ``train``: one training step: continuous DSM loss (t ~ U(1e-5, 1), σ²-weighted, score =
  net / σ), gradient, global-norm clipping at 1, Adam (lr 2e-4), EMA 0.999 — score_jax's
  ``losses.dsm_loss`` + ``train_state.create_optimizer`` / ``apply_gradients`` (jitted, state
  donated) against torch autograd + ``clip_grad_norm_`` + ``torch.optim.Adam`` (foreach) + a
  foreach EMA.

Every op is timed in three columns: score_jax (jitted), torch eager, and torch with
``torch.compile(model, dynamic=True)`` (the optimizer / sampler arithmetic around it stays
eager; diffusers' code still made it recompile once for a second batch size).  Warm-up
calls come first (JAX: the compile, reported separately; torch.compile: its first calls,
reported too), then the repetitions are *interleaved* — jax, eager, compiled, jax, eager, … —
so a load change on a shared machine hits all columns alike; the table shows medians.  torch
uses ``--threads`` threads (torch.set_num_threads, default 2); XLA:CPU uses every core the
process may run on, so run on a machine (or under ``taskset``) with that many cores.
Times are wall-clock seconds per call including the device sync (``block_until_ready``).

Output: a markdown table (ratios score_jax / eager and score_jax / compiled; < 1 means
score_jax is faster) and the JAX compile times, plus ``uptime``'s load average before and after.

Run time: the default set without ``--no_compile`` is dominated by compilation — score_jax's
(about 7 min of the 17.5 min the ``--no_compile`` run took on 2 cores loaded by other jobs)
and inductor's (its training graph took over 10 min on that loaded machine; inductor caches it
under /tmp/torchinductor_*, so a second run is much shorter).  Narrow it with ``--ops``,
``--batches``, ``--resolutions`` or ``--no_compile``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "@@peer "  # the worker's reply lines start with this; anything else it prints goes to stderr

# The network (score_jax NCSNpp fields); image_size is filled in per resolution.
NETWORK = dict(nf=32, ch_mult=(1, 1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
               resblock_type="biggan", resamp_with_conv=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
               progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
               embedding_type="fourier", fourier_scale=16.0, init_scale=0.0, conditional=True, num_channels=3)
SIGMA_MIN, SIGMA_MAX = 0.01, 348.0
SNR = 0.075
LR, GRAD_CLIP, EMA_RATE, TRAIN_EPS = 2e-4, 1.0, 0.999, 1e-5
T_PC, T_PC_NEXT = 0.5, 0.5 - 1.0 / 2000  # one step of a 2000-step grid
OPS = ("forward", "pc", "train")
OP_NAMES = {"forward": "forward", "pc": "PC step (rev. diffusion + Langevin)", "train": "train step (DSM, clip, Adam, EMA)"}


def _sigma(t):
  return SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


# ============================================================================================
# torch worker (runs under --torch_python; imports nothing from score_jax or jax)


class _TorchSide:
  """Holds the diffusers model, its torch.compile twin, and per-(op, batch, res) closures."""

  def __init__(self, threads: int):
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    self.torch = torch
    self.models: dict[int, Any] = {}
    self.compiled: dict[int, Any] = {}
    self.fns: dict[tuple, Any] = {}

  def build(self, res: int, config: dict[str, Any], folder: str, seed: int) -> dict[str, Any]:
    torch = self.torch
    from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel
    torch.manual_seed(seed)
    model = UNet2DModel(**config)
    with torch.no_grad():  # O(1) activations everywhere: no zero-initialised output layer
      for name, p in model.named_parameters():
        if p.ndim >= 2 and not name.startswith("time_proj"):
          fan_in = p[0].numel()
          p.uniform_(-math.sqrt(3.0 / fan_in), math.sqrt(3.0 / fan_in))
    if folder:
      model.save_pretrained(folder, safe_serialization=True)
    self.models[res] = model
    self.compiled[res] = torch.compile(model, dynamic=True)  # fewer recompiles across batch sizes
    return {"params": sum(p.numel() for p in model.parameters()),
            "torch": torch.__version__, "threads": torch.get_num_threads()}

  def forward(self, res: int, path: str) -> dict[str, Any]:
    torch = self.torch
    data = np.load(path)
    model = self.models[res].eval()
    with torch.no_grad():
      x = torch.from_numpy(data["x"].transpose(0, 3, 1, 2).copy())
      out = model(x, torch.from_numpy(data["sigma"])).sample.numpy().transpose(0, 2, 3, 1)
    np.save(path + ".torch.npy", out)
    return {}

  def _make(self, op: str, batch: int, res: int, mode: str):
    torch = self.torch
    model = self.models[res]
    net = self.compiled[res] if mode == "compiled" else model
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, res, res, generator=gen) * 2 - 1

    if op == "forward":
      sigma = torch.full((batch,), _sigma(T_PC))

      def fn():
        model.eval()
        with torch.no_grad():
          return net(x, sigma).sample
      return fn

    if op == "pc":
      sig_t, sig_next = torch.full((batch,), _sigma(T_PC)), torch.full((batch,), _sigma(T_PC_NEXT))
      state = {"x": x * _sigma(T_PC)}

      def score(xt, s):  # UNet2DModel with Fourier embedding returns net(x, σ) / σ: the score already
        return net(xt, s).sample

      def fn():
        model.eval()
        with torch.no_grad():
          xt = state["x"]
          # Reverse diffusion (VE): G² = σ_t² − σ_next²; x ← x + G² s + G z.
          g2 = (sig_t**2 - sig_next**2)[:, None, None, None]
          xt = xt + g2 * score(xt, sig_t) + g2.sqrt() * torch.randn_like(xt)
          # Langevin corrector at t_next, ε = 2 (snr ‖z‖ / ‖s‖)² with batch-mean norms.
          grad = score(xt, sig_next)
          z = torch.randn_like(xt)
          step = 2 * (SNR * z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()) ** 2
          return xt + step * grad + (2 * step).sqrt() * z
      return fn

    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=LR, foreach=True)
    ema = [p.detach().clone() for p in params]

    def fn():
      model.train()
      t = torch.rand(batch) * (1 - TRAIN_EPS) + TRAIN_EPS
      sigma = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
      z = torch.randn_like(x)
      s4 = sigma[:, None, None, None]
      score = net(x + s4 * z, sigma).sample  # already divided by σ
      loss = torch.mean(torch.sum((score * s4 + z) ** 2, dim=(1, 2, 3)) / (3 * res * res))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
      opt.step()
      with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - EMA_RATE)  # pylint: disable=protected-access
      return loss
    return fn

  def time(self, op: str, batch: int, res: int, mode: str) -> dict[str, Any]:
    key = (op, batch, res, mode)
    if key not in self.fns:
      self.fns[key] = self._make(op, batch, res, mode)
    start = time.perf_counter()
    self.fns[key]()
    return {"seconds": time.perf_counter() - start}


def worker_main(threads: int) -> None:
  """Serves JSON requests from stdin until EOF; replies start with PREFIX."""
  real_stdout = sys.stdout
  sys.stdout = sys.stderr  # library prints (torch.compile, diffusers) must not corrupt the replies
  side = _TorchSide(threads)
  for line in sys.stdin:
    req = json.loads(line)
    cmd = req.pop("cmd")
    try:
      reply = getattr(side, cmd)(**req)
      reply["ok"] = True
    except Exception as e:  # pylint: disable=broad-except
      reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    real_stdout.write(PREFIX + json.dumps(reply) + "\n")
    real_stdout.flush()


# ============================================================================================
# driver (score_jax's interpreter)


class Worker:
  """The torch worker process."""

  def __init__(self, python: str, threads: int, omp_wait: str):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if omp_wait != "default":
      env["OMP_WAIT_POLICY"] = omp_wait.upper()
    env.pop("PYTHONPATH", None)
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", f"--threads={threads}"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

  def __call__(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
    self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
    self.proc.stdin.flush()
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise SystemExit(f"the torch worker exited (code {self.proc.wait()}); see its messages above.")
      if line.startswith(PREFIX):
        reply = json.loads(line[len(PREFIX):])
        if not reply.pop("ok"):
          raise SystemExit(f"torch worker: {cmd} failed: {reply['error']}")
        return reply
      sys.stderr.write(line)

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


class JaxSide:
  """score_jax's network, PC step and train step on the converted weights."""

  def __init__(self):
    import jax  # pylint: disable=import-outside-toplevel
    self.jax = jax
    self.fns: dict[tuple, Any] = {}
    self.params: dict[int, Any] = {}
    self.models: dict[int, Any] = {}
    self.compile_s: dict[tuple, float] = {}

  def load(self, res: int, folder: str) -> int:
    from score_jax import pretrained  # pylint: disable=import-outside-toplevel
    from score_jax.models import NCSNpp  # pylint: disable=import-outside-toplevel
    tree, meta = pretrained.convert(folder)  # the network of the folder's config.json, diffusers' group counts
    model = NCSNpp(**meta["network"])
    assert model.image_size == res and all(getattr(model, k) == v for k, v in NETWORK.items() if k != "dropout"), meta
    self.models[res] = model
    self.params[res] = self.jax.tree.map(self.jax.numpy.asarray, tree)
    return sum(int(np.prod(np.shape(a))) for a in self.jax.tree.leaves(tree))

  def forward(self, res: int, x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    model = self.models[res]
    return np.asarray(self.jax.jit(lambda p, x, s: model.apply({"params": p}, x, s))(self.params[res], x, sigma))

  def _make(self, op: str, batch: int, res: int):
    jax, jnp = self.jax, self.jax.numpy
    from score_jax import losses, sde as sde_lib, score_fn as score_fn_lib, train_state  # pylint: disable=import-outside-toplevel
    from score_jax.sampling import steps  # pylint: disable=import-outside-toplevel
    model, params = self.models[res], self.params[res]
    sde = sde_lib.VESDE(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    apply = lambda p, x, c: model.apply({"params": p}, x, c)  # noqa: E731
    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, res, res, 3)) * 2 - 1
    key = jax.random.PRNGKey(1)

    if op == "forward":
      sigma = jnp.full((batch,), _sigma(T_PC), jnp.float32)
      fn = jax.jit(apply)
      args = (params, x, sigma)
    elif op == "pc":
      def pc_step(p, x, key):
        score = score_fn_lib.get_score_fn(sde, apply, p, conditioning="score_sde", centered=True)
        t, t_next = jnp.full((batch,), T_PC), jnp.full((batch,), T_PC_NEXT)
        k1, k2 = jax.random.split(key)
        x, _ = steps.reverse_diffusion(sde, score, x, t, t_next, jax.random.normal(k1, x.shape))
        return steps.langevin(sde, score, x, t_next, jax.random.normal(k2, x.shape), SNR, jnp.ones(()))[0]
      fn = jax.jit(pc_step)
      args = (params, x * _sigma(T_PC), key)
    else:
      tx = train_state.create_optimizer({"lr": LR, "warmup": 0, "grad_clip": GRAD_CLIP})
      state = train_state.create_train_state(jax.tree.map(jnp.copy, params), tx)  # donated: not the shared params

      def train_step(state, x, key):
        key = jax.random.fold_in(key, state.step)

        def loss_of(p):
          score = score_fn_lib.get_score_fn(sde, apply, p, conditioning="score_sde", centered=True)
          return losses.dsm_loss(key, sde, score, x)
        loss, grads = jax.value_and_grad(loss_of)(state.params)
        return train_state.apply_gradients(state, grads, tx, ema_rate=EMA_RATE), loss

      fn = jax.jit(train_step, donate_argnums=0)
      args = (state, x, key)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    self.compile_s[(op, batch, res)] = time.perf_counter() - start
    holder = {"args": args}

    def call():
      out = compiled(*holder["args"])
      if op == "train":  # the state was donated: carry the new one
        holder["args"] = (out[0],) + holder["args"][1:]
      jax.block_until_ready(out)
    return call

  def time(self, op: str, batch: int, res: int) -> float:
    key = (op, batch, res)
    if key not in self.fns:
      self.fns[key] = self._make(op, batch, res)
    start = time.perf_counter()
    self.fns[key]()
    return time.perf_counter() - start


def _uptime() -> str:
  try:
    with open("/proc/loadavg") as f:
      return " ".join(f.read().split()[:3])
  except OSError:
    return "?"


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--torch_python", help="python of an environment with torch, diffusers and safetensors")
  parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
  parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
  parser.add_argument("--resolutions", default="32,64", help="comma-separated image sizes (multiples of 16)")
  parser.add_argument("--reps", type=int, default=5, help="interleaved timed repetitions per cell (median shown)")
  parser.add_argument("--threads", type=int, default=2, help="CPU threads on both sides")
  parser.add_argument("--omp_wait", default="passive", choices=("passive", "active", "default"),
                      help="OMP_WAIT_POLICY of the torch worker; passive: threads sleep at barriers (on a loaded "
                           "machine torch's spinning barriers cost it several times; default: torch's own setting)")
  parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile column")
  parser.add_argument("--quick", action="store_true", help="resolution 32, batch 8, 3 reps (a smoke run)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker_main(args.threads)
    return
  if not args.torch_python:
    parser.error("--torch_python is required (an interpreter with torch + diffusers + safetensors).")
  if args.quick:
    args.batches, args.resolutions, args.reps = "8", "32", 3
  ops = [o for o in args.ops.split(",") if o]
  bad = [o for o in ops if o not in OPS]
  if bad:
    parser.error(f"--ops: unknown {bad}; choose from {list(OPS)}.")
  batches, resolutions = _ints(args.batches), _ints(args.resolutions)
  if any(r % 16 for r in resolutions):
    parser.error("--resolutions must be multiples of 16 (four halvings, attention at 16 px).")

  sys.path.append(ROOT)  # after PYTHONPATH: a score_jax placed there first is the one measured
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import jax  # pylint: disable=import-outside-toplevel
  from pretrained_fixtures import diffusers_config  # pylint: disable=import-outside-toplevel

  load_before = _uptime()
  print(f"# peer benchmark: score_jax (jax {jax.__version__}, {jax.default_backend()}) vs diffusers; "
        f"{args.threads} threads (torch OMP_WAIT_POLICY {args.omp_wait}); load avg before: {load_before}; "
        f"cpus: {os.cpu_count()}")
  worker = Worker(args.torch_python, args.threads, args.omp_wait)
  side = JaxSide()
  modes = ["eager"] + ([] if args.no_compile else ["compiled"])
  rows, compile_rows = [], []
  try:
    with tempfile.TemporaryDirectory() as tmp:
      for res in resolutions:
        folder = os.path.join(tmp, f"ncsnpp_{res}")
        cfg = diffusers_config(dict(NETWORK, image_size=res))
        info = worker("build", res=res, config=cfg, folder=folder, seed=args.seed)
        n_jax = side.load(res, folder)
        if res == resolutions[0]:
          import score_jax  # pylint: disable=import-outside-toplevel
          print(f"# score_jax from {os.path.dirname(score_jax.__file__)}")
        rng = np.random.default_rng(args.seed)
        x = rng.uniform(-1, 1, (4, res, res, 3)).astype(np.float32)
        sigma = np.asarray([0.05, 1.0, 20.0, 300.0], np.float32)
        path = os.path.join(tmp, f"check_{res}.npz")
        np.savez(path, x=x, sigma=sigma)
        worker("forward", res=res, path=path)
        ref = np.load(path + ".torch.npy")
        out = side.forward(res, x, sigma) / sigma[:, None, None, None]  # diffusers returns net / σ
        diff = float(np.max(np.abs(out - ref)))
        print(f"# {res}x{res}: {n_jax:,} parameters in score_jax, {info['params']:,} in diffusers (torch "
              f"{info['torch']}, {info['threads']} threads; {len(side.models[res].group_counts)} GroupNorms with diffusers' "
              f"group counts); forward max |score_jax - diffusers| = {diff:.2e} "
              f"(outputs up to {float(np.max(np.abs(ref))):.2f})")
        for batch in batches:
          for op in ops:
            # Warm-up: JAX compiles (timed separately), torch runs each mode twice (torch.compile compiles).
            side.time(op, batch, res)
            warm = {}
            for mode in modes:
              warm[mode] = worker("time", op=op, batch=batch, res=res, mode=mode)["seconds"]
              worker("time", op=op, batch=batch, res=res, mode=mode)
            times = {m: [] for m in ["jax"] + modes}
            for _ in range(args.reps):  # interleaved
              times["jax"].append(side.time(op, batch, res))
              for mode in modes:
                times[mode].append(worker("time", op=op, batch=batch, res=res, mode=mode)["seconds"])
            med = {m: statistics.median(v) for m, v in times.items()}
            rows.append((op, batch, res, med))
            compile_rows.append((op, batch, res, side.compile_s[(op, batch, res)], warm.get("compiled")))
            line = " ".join(f"{m} {v:.3f}s" for m, v in med.items())
            print(f"#   {op} batch {batch} {res}px: {line} (load {_uptime()})", flush=True)
  finally:
    worker.close()

  print()
  head = "| op | batch | size | score_jax s | diffusers eager s |"
  sep = "|---|---|---|---|---|"
  if "compiled" in modes:
    head += " diffusers torch.compile s |"
    sep += "---|"
  head += " score_jax / eager |" + (" score_jax / compiled |" if "compiled" in modes else "")
  sep += "---|" + ("---|" if "compiled" in modes else "")
  print(head)
  print(sep)
  for op, batch, res, med in rows:
    cells = [OP_NAMES[op], str(batch), f"{res}", f"{med['jax']:.3f}", f"{med['eager']:.3f}"]
    if "compiled" in modes:
      cells.append(f"{med['compiled']:.3f}")
    cells.append(f"{med['jax'] / med['eager']:.2f}")
    if "compiled" in modes:
      cells.append(f"{med['jax'] / med['compiled']:.2f}")
    print("| " + " | ".join(cells) + " |")
  print()
  print("| op | batch | size | score_jax compile s | torch.compile first call s |")
  print("|---|---|---|---|---|")
  for op, batch, res, cjax, ctorch in compile_rows:
    print(f"| {OP_NAMES[op]} | {batch} | {res} | {cjax:.1f} | {'-' if ctorch is None else f'{ctorch:.1f}'} |")
  print(f"\n# medians of {args.reps} interleaved repetitions; load avg before {load_before}, after {_uptime()}")


if __name__ == "__main__":
  main()
