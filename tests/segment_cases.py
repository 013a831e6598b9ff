"""Shared cases of the mmd_segments tests (tests/test_segments.py, tests/test_cpp_segments_tiles.py):
ragged weighted data, the dense float64 oracle per set, the tolerances."""
from __future__ import annotations

import torch

from . import oracle

VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 5e-5, torch.bfloat16: 5e-5}


def segment_data(xo, yo, d, dtype, dev, seed, zero_frac=0.25, nan_pad=True):
    """Points, and weights in [0.2, 2] with about ``zero_frac`` zeros (at least two positive
    weights per set); rows with weight 0 hold NaN when ``nan_pad`` (they must never be read)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xo[-1], d, generator=g, dtype=torch.float64) * 0.9 + 0.2
    y = torch.randn(yo[-1], d, generator=g, dtype=torch.float64)
    ws = []
    for offs, n in ((xo, xo[-1]), (yo, yo[-1])):
        w = torch.rand(n, generator=g, dtype=torch.float64) * 1.8 + 0.2
        w[torch.rand(n, generator=g) < zero_frac] = 0.0
        for s in offs[:-1]:  # keep two positive weights per set (the unbiased denominator)
            w[s:s + 2] = torch.rand(2, generator=g, dtype=torch.float64) + 0.5
        ws.append(w)
    xw, yw = ws
    x, y = x.to(dtype), y.to(dtype)
    if nan_pad:
        x[xw == 0] = float("nan")
        y[yw == 0] = float("nan")
    return [t.to(dev) for t in (x, y, xw.to(dtype), yw.to(dtype))]


def segment_oracle(x, y, xw, yw, xo, yo, kind, params, unbiased, gt, drop_zero=True):
    """Terms (B, 3) and the gradients of sum(gt * terms) to x, y, xw, yw from the dense oracle."""
    xd, yd, xwd, ywd = [None if t is None else t.detach().cpu().double().requires_grad_(True)
                        for t in (x, y, xw, yw)]
    shared = len(yo) == 2 and len(xo) > 2
    rows = []
    for b in range(len(xo) - 1):
        ys, ye = (yo[0], yo[1]) if shared else (yo[b], yo[b + 1])
        rows.append(oracle.weighted_mmd_terms(
            xd[xo[b]:xo[b + 1]], yd[ys:ye], kind, params, unbiased,
            None if xwd is None else xwd[xo[b]:xo[b + 1]], None if ywd is None else ywd[ys:ye],
            drop_zero=drop_zero))
    terms = torch.stack(rows)
    ins = [t for t in (xd, yd, xwd, ywd) if t is not None]
    grads = torch.autograd.grad((terms * gt).sum(), ins, allow_unused=True)
    return terms.detach(), grads


def terms_scale(t):
    return (t[:, 0] + t[:, 1] + 2 * t[:, 2]).abs()
