"""Writes tests/fixtures/pretrained/edm/: small network pickles made by EDM's own code
(NVlabs/edm, "Elucidating the Design Space of Diffusion-Based Generative Models"), for the
restricted reader ``score_jax.pretrained.read_edm_pickle``.

Run in a scratch environment with torch and a checkout of https://github.com/NVlabs/edm
(its ``dnnlib``, ``torch_utils`` and ``training`` packages on the path)::

    python tools/edm_fixtures.py --edm=/path/to/edm --out=tests/fixtures/pretrained/edm

For each case it builds EDM's preconditioned ``SongUNet`` (DDPM++ or NCSN++ options, tiny
widths), draws every parameter from a fixed torch seed (so that no layer is EDM's zero
initialisation), pickles ``dict(ema=net, dataset_kwargs=...)`` as EDM's training loop writes a
snapshot (gzip-compressed here: each persistent object carries its class's source code), and
stores ``<case>.json`` (the class, its constructor arguments, and every ``state_dict()`` array's
shape and SHA-256 of its float32 bytes) and ``<case>.npz`` (for the mapping onto score_jax's
networks: the denoiser output ``net(x, sigma, class_labels)`` in float64 at fixed inputs).  Nothing is overwritten: delete a file to regenerate it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import sys

import numpy as np

CASES = {
    # EDM's CIFAR-10 DDPM++ options (train.py --arch=ddpmpp), tiny: VP preconditioning, unconditional.
    "vp_ddpmpp_uncond": dict(precond="VPPrecond", label_dim=0, model=dict(
        embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
        resample_filter=[1, 1])),
    # EDM's NCSN++ options (--arch=ncsnpp): VE preconditioning, class-conditional (3 labels).
    "ve_ncsnpp_cond": dict(precond="VEPrecond", label_dim=3, model=dict(
        embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
        resample_filter=[1, 3, 3, 1])),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--edm", required=True, help="a checkout of NVlabs/edm")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  sys.path.insert(0, args.edm)
  import torch  # pylint: disable=g-import-not-at-top
  from training import networks  # pylint: disable=g-import-not-at-top

  os.makedirs(args.out, exist_ok=True)
  for name, case in CASES.items():
    pkl, npz = os.path.join(args.out, f"{name}.pkl.gz"), os.path.join(args.out, f"{name}.npz")
    if os.path.exists(pkl) or os.path.exists(npz):
      print(f"{name}: exists, kept")
      continue
    torch.manual_seed(0)
    precond = getattr(networks, case["precond"])
    net = precond(img_resolution=8, img_channels=3, label_dim=case["label_dim"], model_type="SongUNet",
                  model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0,
                  **case["model"])
    with torch.no_grad():
      for p in net.parameters():
        p.copy_(torch.randn_like(p) / np.sqrt(max(1, p[0].numel())))
    net.eval()
    buf = io.BytesIO()
    pickle.dump(dict(ema=net, dataset_kwargs=dict(path="cifar10-8x8.zip", resolution=8)), buf)
    with gzip.open(pkl, "wb") as f:
      f.write(buf.getvalue())
    net64 = net.double()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, 8, 8))
    sigma = np.array([0.02, 1.0, 40.0])
    labels = np.eye(case["label_dim"])[[0, 2, 1]] if case["label_dim"] else None
    with torch.no_grad():
      out = net64(torch.from_numpy(x), torch.from_numpy(sigma),
                  None if labels is None else torch.from_numpy(labels)).numpy()
    state = {k: np.ascontiguousarray(v.detach().float().numpy()) for k, v in net.state_dict().items()}
    np.savez_compressed(npz, x=x, sigma=sigma, labels=np.zeros((0,)) if labels is None else labels, denoised=out)
    manifest = {"class_name": type(net).__name__, "model_class": type(net.model).__name__,
                "init_kwargs": {k: v for k, v in net.init_kwargs.items() if not isinstance(v, dict)},
                "model_kwargs": dict(net.init_kwargs.get("model_kwargs", {})),
                "state": {k: [list(v.shape), hashlib.sha256(v.tobytes()).hexdigest()] for k, v in state.items()}}
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
    print(f"{name}: {sum(v.size for v in state.values()):,} values, pickle {os.path.getsize(pkl):,} bytes")


if __name__ == "__main__":
  main()
