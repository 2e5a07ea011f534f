"""NCSN++'s building blocks in alternative forms, timed in isolation on the current backend.

    python benchmarks/ncsnpp_ops.py                    # batch 32, the 64-px nf-32 NCSN++'s shapes
    python benchmarks/ncsnpp_ops.py --batch=8 --reps=7 --ops=fir,groupnorm

Each row times one op at one NCSN++ shape, forward and forward + backward (gradient of a
sum w.r.t. the input and any weights), in two or more forms; repetitions of the forms are
interleaved and the medians shown, so a load change hits every form alike.  The forms:

* ``fir``: FIR (1, 3, 3, 1) 2× down- / up-sampling — one depthwise 2-D convolution with the
  4×4 kernel (``upfirdn2d(..., separable=False)``, the previous form) against two 1-D passes
  of shifted slices (polyphase for up; the current form).
* ``groupnorm``: GroupNorm + SiLU — ``flax.linen.GroupNorm`` against ``layers.GroupNorm``
  (the current form: float32 sums over H·W, then one fused multiply-add).
* ``attention``: single-head self-attention of NCSN++'s AttnBlock at 16×16 — einsum +
  softmax against ``jax.nn.dot_product_attention``.
* ``conv``: a 3×3 'SAME' convolution in NHWC / HWIO (the current form) against NCHW / OIHW
  (transposes around it included) — XLA:CPU's backward convolution is the suspect.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from score_jax.models import layers  # pylint: disable=g-import-not-at-top
from score_jax.models import up_or_down_sampling as uds  # pylint: disable=g-import-not-at-top

OPS = ("fir", "groupnorm", "attention", "conv")


def _timed(fn, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def compare(title: str, forms: dict, args: tuple, reps: int) -> None:
  """Prints one row per direction: median seconds of each form, forms interleaved."""
  for direction in ("fwd", "fwd+bwd"):
    fns = {}
    for name, f in forms.items():
      if direction == "fwd":
        fns[name] = jax.jit(f)
      else:
        fns[name] = jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a)), argnums=tuple(range(len(args)))))
      jax.block_until_ready(fns[name](*args))  # compile + warm
    times = {name: [] for name in fns}
    for _ in range(reps):
      for name, fn in fns.items():
        times[name].append(_timed(fn, args))
    med = {name: statistics.median(v) for name, v in times.items()}
    first = next(iter(med.values()))
    cells = "  ".join(f"{name} {v * 1e3:8.2f} ms ({v / first:.2f}x)" for name, v in med.items())
    print(f"{title:<44} {direction:<8} {cells}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--ops", default=",".join(OPS))
  args = parser.parse_args()
  ops = args.ops.split(",")
  b = args.batch
  rng = np.random.default_rng(0)
  arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  print(f"# backend {jax.default_backend()}, batch {b}, medians of {args.reps} interleaved reps; "
        f"load avg {open('/proc/loadavg').read().split()[:3]}")

  if "fir" in ops:
    for size, ch in ((64, 32), (32, 32), (16, 64)):
      x = arr(b, size, size, ch)
      compare(f"FIR down {size}px x{ch}", {
          "depthwise": lambda x: uds.upfirdn2d(x, uds.setup_kernel((1, 3, 3, 1)), down=2, pad=(1, 1), separable=False),
          "separable": lambda x: uds.upfirdn2d(x, uds.setup_kernel((1, 3, 3, 1)), down=2, pad=(1, 1)),
      }, (x,), args.reps)
      xs = arr(b, size // 2, size // 2, ch)
      k_up = uds.setup_kernel((1, 3, 3, 1)) * 4
      compare(f"FIR up {size // 2}->{size}px x{ch}", {
          "depthwise": lambda x: uds.upfirdn2d(x, k_up, up=2, pad=(2, 1), separable=False),
          "separable": lambda x: uds.upfirdn2d(x, k_up, up=2, pad=(2, 1)),
      }, (xs,), args.reps)

  if "groupnorm" in ops:
    for size, ch in ((64, 32), (16, 64)):
      x = arr(b, size, size, ch)
      flax_gn = nn.GroupNorm(num_groups=layers.num_groups(ch), epsilon=1e-6)
      ours = layers.group_norm(ch)
      params = flax_gn.init(jax.random.PRNGKey(0), x)
      compare(f"GroupNorm+SiLU {size}px x{ch}", {
          "flax": lambda x, p: nn.silu(flax_gn.apply(p, x)),
          "layers": lambda x, p: nn.silu(ours.apply(p, x)),
      }, (x, params), args.reps)

  if "attention" in ops:
    ch = 32
    q, k, v = arr(b, 256, ch), arr(b, 256, ch), arr(b, 256, ch)

    def einsum_attn(q, k, v):
      logits = jnp.einsum("bnc,bmc->bnm", q, k) / np.sqrt(ch)
      return jnp.einsum("bnm,bmc->bnc", jax.nn.softmax(logits, axis=-1), v)

    def dpa(q, k, v):
      return jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])[:, :, 0]

    compare(f"attention 16x16 x{ch}", {"einsum": einsum_attn, "dot_product_attention": dpa}, (q, k, v), args.reps)

  if "conv" in ops:
    for size, cin, cout in ((64, 32, 32), (16, 64, 64)):
      x, w = arr(b, size, size, cin), arr(3, 3, cin, cout) * 0.1

      def nhwc(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

      def nchw(x, w):
        y = jax.lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (1, 1), "SAME",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y.transpose(0, 2, 3, 1)

      compare(f"conv3x3 {size}px {cin}->{cout}", {"NHWC": nhwc, "NCHW": nchw}, (x, w), args.reps)


if __name__ == "__main__":
  main()
