r"""The linear-time MMD^2 estimator (Gretton et al. 2012, sec. 6) and its use against the prior."""
from __future__ import annotations

import math
from typing import Union

import torch

from ..contract import compute_dtype
from ..kernel_specs import IMQ, KIND_IMQ, KernelSpec, resolve_kernel
from ..validation import check_finite as _check_finite
from ..validation import check_points

_DEFAULT_KERNEL = IMQ()
_F64 = torch.float64


def _kernel_values(a, b, kind, params):
    """Differentiable k(a_i, b_i) for paired rows, from direct differences.  A non-finite r (a
    non-finite coordinate, or |a - b|^2 overflowing the compute dtype: the linear estimator's
    range) gives a NaN value and NaN gradients for both rows (hostile-input contract)."""
    r = ((a - b) ** 2).sum(1)
    r = r * torch.where(torch.isfinite(r.detach()), 1.0, math.nan).to(r.dtype)
    k = torch.zeros_like(r)
    for p in params:
        k = k + (p / (p + r) if kind == KIND_IMQ else torch.exp(-p * r))
    return k


def mmd_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    return_std: bool = False,
    check_finite: bool = False,
):
    r"""Linear-time MMD^2 estimator (Gretton et al., JMLR 2012, sec. 6, "MMD_l^2").

    With P = floor(N / 2) disjoint pairs (x_{2i-1}, x_{2i}) and (y_{2i-1}, y_{2i})::

        h_i = k(x_{2i-1}, x_{2i}) + k(y_{2i-1}, y_{2i}) - k(x_{2i-1}, y_{2i}) - k(x_{2i}, y_{2i-1})
        MMD_l^2 = 1/P sum_i h_i

    Unbiased (E h = MMD^2), O(N d) time and memory, but with a much larger variance than the
    quadratic-time U-statistic (Var = Var(h)/P, not O(1/N^2) near MMD = 0): use it where N is
    too large for the quadratic statistic or for a cheap, noisy training signal.  Needs N = M
    (x and y are paired row by row; with odd N the last row is unused).  Differentiable w.r.t.
    both inputs.

    ``return_std=True`` also returns the estimated standard error std(h)/sqrt(P) (detached;
    needs P >= 2).
    """
    x, y = check_points(x, y, "biased")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"y has {y.shape[0]} points but x has {x.shape[0]}; the linear estimator "
                         "pairs them row by row and needs equal counts")
    if x.shape[0] < 2:
        raise ValueError(f"x has {x.shape[0]} point(s); the linear estimator needs at least 2")
    if check_finite:
        _check_finite("x", x)
        _check_finite("y", y)
    spec = resolve_kernel(kernel)
    kind, params = spec.lower(x.shape[1])
    ct = compute_dtype(x.dtype)
    p2 = 2 * (x.shape[0] // 2)
    xc, yc = x.to(ct), y.to(ct)
    x1, x2, y1, y2 = xc[0:p2:2], xc[1:p2:2], yc[0:p2:2], yc[1:p2:2]
    if check_finite:  # the range: every paired |a - b|^2 finite in the compute dtype
        big = torch.finfo(ct).max
        for name, a, b in (("x", x1, x2), ("y", y1, y2), ("x and y", x1, y2), ("x and y", x2, y1)):
            worst = float(((a.double() - b.double()) ** 2).sum(1).max())
            if not worst <= big:
                raise ValueError(f"{name}: paired points lie {math.sqrt(worst):.4g} apart, outside "
                                 f"the linear estimator's range |a - b| <= {math.sqrt(big):.4g} "
                                 f"({str(ct)[6:]} compute; the result would be NaN)")
    h = (_kernel_values(x1, x2, kind, params) + _kernel_values(y1, y2, kind, params)
         - _kernel_values(x1, y2, kind, params) - _kernel_values(x2, y1, kind, params)).to(_F64)
    # 0, or NaN when the row left unpaired (odd N) is not finite
    h = h + ((xc[p2:] - xc[p2:]).sum() + (yc[p2:] - yc[p2:]).sum()).to(_F64)
    out = h.mean().to(_F64 if x.dtype == _F64 else torch.float32)
    if not return_std:
        return out
    if h.shape[0] < 2:
        raise ValueError("return_std needs at least 2 pairs (N >= 4)")
    return out, (h.detach().std() / math.sqrt(h.shape[0])).to(out.dtype)
