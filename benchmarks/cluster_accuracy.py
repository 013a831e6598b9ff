"""Accuracy of a tight cluster (spread 1e-3) 1e3..1e4 from the other set, per backend op: one
shared shift mean(y) (the former glue; a (d,) offset still means one shift for every term) vs
the per-term shifts of ``wae_fast.contract.term_shifts``, against the float64 oracle.

    python benchmarks/cluster_accuracy.py [BACKEND ...]      (default: reference cpp)

Prints |value error| / kernel-sum scale and, for the backends that fuse the gradient into the
forward, the relative error of the x gradient.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import wae_fast  # noqa: E402
from wae_fast import contract  # noqa: E402
from tests import oracle  # noqa: E402

backends = sys.argv[1:] or ["reference", "cpp"]
g = torch.Generator().manual_seed(11)
for dtype in (torch.float32, torch.float64):
    for loc in (1e3, 1e4):
        c = torch.randn(3, generator=g, dtype=torch.float64)
        c = c / c.norm() * loc
        x = (c + 1e-3 * torch.randn(7, 3, generator=g, dtype=torch.float64)).to(dtype)
        y = torch.randn(5, 3, generator=g, dtype=torch.float64).to(dtype)
        kind, params = wae_fast.IMQ().lower(3)
        want, gx, gy, scale = oracle.mmd_and_grads(x, y, kind, params, True)
        gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm()
        for b in backends:
            wae_fast.mmd(x, y, backend=b)  # loads the backend
            op = contract.op(f"mmd_fwd_{b}")
            for label, off in (("shared mean(y)", y.to(contract.compute_dtype(dtype)).mean(0)),
                               ("per-term", contract.term_shifts(kind, x, y))):
                t, px, _py = op(x, y, off, kind, params, True, True, True, "ieee")
                err = abs((t[0] + t[1] - 2 * t[2]).item() - want.item()) / scale
                gerr = ((px[0] - 2.0 * px[1]).double() - gx).norm() / gnorm if px.numel() else float("nan")
                print(f"{str(dtype)[6:]:8s} loc={loc:.0e} {b:10s} {label:15s} "
                      f"value err/scale={err:.2e}  grad_x rel err={float(gerr):.2e}")
