r"""The sampling-free ("closed_form") estimator of MMD^2 between codes and N(0, sigma2 I_d).

MMD^2 = T_xx + E_{y,y'~P} k(y, y') - 2/N sum_i E_{y~P} k(x_i, y), T_xx the U- or V-statistic of
the codes (a blocked pair sum of :mod:`wae_fast.pairsum`), the prior expectations in closed form
(RBF, Rustamov 2019) or by quadrature (IMQ, C/(C+r) = C int_0^inf exp(-t(C+r)) dt); the formulas,
rules and measured errors are in :mod:`wae_fast.prior`'s docstring.  Runs on the reference
(PyTorch) path on any device; :func:`closed_form_cross` is also what
:func:`wae_fast.mmd_to_prior_distributed` adds per rank.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch

from ..contract import compute_dtype
from ..kernel_specs import KIND_IMQ, KIND_RBF
from ..pairsum import pair_count, self_sum

QUADRATURES = ("exp-sinh", "laguerre")
DEFAULT_NODES = {"exp-sinh": 201, "laguerre": 64}
_F64 = torch.float64


_RULES: dict = {}


def quadrature_rule(rule: str = "exp-sinh", nodes: Optional[int] = None):
    """(u, log W) float64 numpy arrays with int_0^inf f(u) du ~= sum_k exp(log W_k) f(u_k).

    ``"laguerre"``: Gauss-Laguerre, W = w e^u.  ``"exp-sinh"``: u = exp(pi/2 sinh(tau)),
    tau = -4..4 in ``nodes`` equal steps (u from 2e-19 to 4e18), W = u pi/2 cosh(tau) h."""
    if rule not in QUADRATURES:
        raise ValueError(f"quadrature: unknown rule {rule!r}; expected one of {QUADRATURES}")
    n = DEFAULT_NODES[rule] if nodes is None else nodes
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n > 1000:
        raise ValueError(f"quad_nodes must be an int in [2, 1000], got {nodes!r}")
    key = (rule, n)
    if key not in _RULES:
        if rule == "laguerre":
            u, w = np.polynomial.laguerre.laggauss(n)
            keep = w > 0
            u, logw = u[keep], np.log(w[keep]) + u[keep]
        else:
            h = 8.0 / (n - 1)
            tau = -4.0 + h * np.arange(n)
            lu = 0.5 * np.pi * np.sinh(tau)
            u, logw = np.exp(lu), lu + np.log(0.5 * np.pi * np.cosh(tau) * h)
        _RULES[key] = (u, logw)
    return _RULES[key]


def imq_gauss_expectation(s: torch.Tensor, C: float, var: float, d: int, rule: str = "exp-sinh",
                          nodes: Optional[int] = None, need_deriv: bool = False, chunk: int = 8192):
    """F(s) = E_{y ~ N(0, var I_d)} C / (C + ||x - y||^2) for points with s = ||x||^2 (float64
    tensor), and F'(s) when ``need_deriv``; by quadrature in u = t (C + s) of
    C int_0^inf e^{-tC} (1 + 2 t var)^(-d/2) exp(-t s/(1 + 2 t var)) dt."""
    u_np, lw_np = quadrature_rule(rule, nodes)
    u = torch.as_tensor(u_np, dtype=_F64, device=s.device)
    lw = torch.as_tensor(lw_np, dtype=_F64, device=s.device)
    s = s.to(_F64)
    F = torch.empty_like(s)
    dF = torch.empty_like(s) if need_deriv else None
    for i0 in range(0, s.shape[0], chunk):
        sc = s[i0:i0 + chunk, None]
        lam = C + sc
        t = u[None, :] / lam
        q = 1.0 + (2.0 * var) * t
        e = torch.exp(lw - t * C - (0.5 * d) * torch.log1p((2.0 * var) * t) - t * sc / q)
        F[i0:i0 + chunk] = (C / lam[:, 0]) * e.sum(1)
        if dF is not None:
            dF[i0:i0 + chunk] = -(C / lam[:, 0]) * (e * (t / q)).sum(1)
    return F, dF


@functools.lru_cache(maxsize=256)
def _imq_eyy(C: float, sigma2: float, d: int, rule: str, nodes: Optional[int]) -> float:
    """E_{y,y'} C/(C + ||y - y'||^2), y - y' ~ N(0, 2 sigma2 I_d) (cached: a constant)."""
    z = torch.zeros(1, dtype=_F64)
    return float(imq_gauss_expectation(z, C, 2.0 * sigma2, d, rule, nodes)[0][0])


@torch.compiler.assume_constant_result
def imq_eyy(C: float, sigma2: float, d: int, rule: str, nodes: Optional[int]) -> float:
    """:func:`_imq_eyy`, evaluated eagerly even under torch.compile (a constant of the graph)."""
    return _imq_eyy(C, sigma2, d, rule, nodes)


def gauss_expectations(s: torch.Tensor, kind: int, params, sigma2: float, d: int,
                       rule: str = "exp-sinh", nodes: Optional[int] = None, need_deriv: bool = False):
    """(E_y k(x, y) per point, its derivative w.r.t. s = ||x||^2 or None, E_{y,y'} k(y, y')),
    y, y' ~ N(0, sigma2 I_d), summed over the kernel scales; float64."""
    s = s.to(_F64)
    ek = torch.zeros_like(s)
    dk = torch.zeros_like(s) if need_deriv else None
    eyy = 0.0
    for p in params:
        p = float(p)
        if kind == KIND_RBF:
            a = 1.0 + 2.0 * sigma2 * p
            f = torch.exp(-0.5 * d * math.log1p(2.0 * sigma2 * p) - (p / a) * s)
            ek += f
            if dk is not None:
                dk -= (p / a) * f
            eyy += math.exp(-0.5 * d * math.log1p(4.0 * sigma2 * p))
        elif kind == KIND_IMQ:
            f, df = imq_gauss_expectation(s, p, sigma2, d, rule, nodes, need_deriv)
            ek += f
            if dk is not None:
                dk += df
            eyy += imq_eyy(p, float(sigma2), int(d), rule, nodes)
        else:
            raise ValueError(f"kind: unknown kernel kind {kind}")
    return ek, dk, eyy


def xx_term(x, kind, params, unbiased, block, need_grad):
    """(sum over xx pairs float64, d sum / dx float64 or None): shifted by the coordinate-wise
    median of x (one outlier code cannot pull it off the cluster, as it pulls a mean)."""
    ct = compute_dtype(x.dtype)
    xs = x.detach().to(ct)
    xs = xs - xs.median(0).values
    g = torch.zeros(xs.shape, dtype=_F64, device=x.device) if need_grad else None
    s, _ = self_sum(xs, kind, params, unbiased, block, g_acc=g)
    return s, (4.0 * g if need_grad else None)


def closed_form_cross(x, kind, params, sigma2, rule, nodes, need_grad):
    """(sum_i E_y k(x_i, y), d/dx of it or None, E_{y,y'} k), float64."""
    x64 = x.detach().to(_F64)
    ek, dk, eyy = gauss_expectations((x64 * x64).sum(1), kind, params, sigma2, x.shape[1], rule,
                                     nodes, need_grad)
    return ek.sum(), (2.0 * dk[:, None] * x64 if need_grad else None), eyy


class ClosedFormTerms(torch.autograd.Function):
    """The float64 (3,) closed-form terms; gradient to x fused into the forward (or recomputed)."""

    @staticmethod
    def forward(ctx, x, kind, params, sigma2, unbiased, block, rule, nodes, need_grad, recompute):
        n = x.shape[0]
        nxx = pair_count(n, unbiased)
        fused = need_grad and not recompute
        sxx, gxx = xx_term(x, kind, params, unbiased, block, fused)
        sxy, gxy, eyy = closed_form_cross(x, kind, params, sigma2, rule, nodes, fused)
        terms = torch.stack([sxx / nxx, torch.tensor(eyy, dtype=_F64, device=x.device), sxy / n])
        if fused:
            ctx.save_for_backward(gxx / nxx, gxy / n)
        elif need_grad:  # recompute in backward: keep only x
            ctx.save_for_backward(x)
        ctx.args = (kind, params, sigma2, unbiased, block, rule, nodes)
        ctx.recompute = recompute
        ctx.xdtype = x.dtype
        return terms

    @staticmethod
    def backward(ctx, grad_terms):
        g = grad_terms.to(_F64)
        if ctx.recompute:
            (x,) = ctx.saved_tensors
            kind, params, sigma2, unbiased, block, rule, nodes = ctx.args
            n = x.shape[0]
            nxx = pair_count(n, unbiased)
            gx = torch.zeros(x.shape, dtype=_F64, device=x.device)
            if float(g[0]) != 0.0:
                gx += (g[0] / nxx) * xx_term(x, kind, params, unbiased, block, True)[1]
            if float(g[2]) != 0.0:
                gx += (g[2] / n) * closed_form_cross(x, kind, params, sigma2, rule, nodes, True)[1]
        else:
            gxx, gxy = ctx.saved_tensors
            gx = g[0] * gxx + g[2] * gxy
        return (gx.to(ctx.xdtype),) + (None,) * 9


# The default rules exist from import on: filling the cache inside a torch.compile trace would
# invalidate the trace's own guards.
for _rule in QUADRATURES:
    quadrature_rule(_rule)
