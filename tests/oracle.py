"""Independent float64 brute force, the oracle every backend is compared with.

Dense on purpose (small N only): r_ij = sum_k (a_ik - b_jk)^2 by direct differences, no matmul
expansion, no clamping, no shift, so it shares no numerics with the kernels.
"""
from __future__ import annotations

import torch

from wae_fast.kernel_specs import KIND_IMQ, KIND_POLY, KIND_RBF


def kernel_matrix(a: torch.Tensor, b: torch.Tensor, kind: int, params) -> torch.Tensor:
    a, b = a.double(), b.double()
    if kind == KIND_POLY:
        # dot products by broadcast products (no matmul), power by torch.pow
        gamma, coef0, degree = params
        t = (a[:, None, :] * b[None, :, :]).sum(-1)
        return torch.pow(gamma * t + coef0, int(degree))
    r = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    k = torch.zeros_like(r)
    for p in params:
        k = k + (p / (p + r) if kind == KIND_IMQ else torch.exp(-p * r))
    assert kind in (KIND_IMQ, KIND_RBF)
    return k


def mmd_terms(x, y, kind, params, unbiased: bool) -> torch.Tensor:
    """(mean k(x,x'), mean k(y,y'), mean k(x,y)) in float64; differentiable."""
    kxx, kyy, kxy = (kernel_matrix(x, x, kind, params), kernel_matrix(y, y, kind, params),
                     kernel_matrix(x, y, kind, params))
    n, m = x.shape[0], y.shape[0]
    if unbiased:
        # mask, not subtract: sum - trace cancels when off-diagonal values are tiny
        offx = ~torch.eye(n, dtype=torch.bool, device=kxx.device)
        offy = ~torch.eye(m, dtype=torch.bool, device=kyy.device)
        txx = kxx[offx].sum() / (n * (n - 1))
        tyy = kyy[offy].sum() / (m * (m - 1))
    else:
        txx, tyy = kxx.mean(), kyy.mean()
    return torch.stack([txx, tyy, kxy.mean()])


def mmd(x, y, kind, params, unbiased: bool) -> torch.Tensor:
    t = mmd_terms(x, y, kind, params, unbiased)
    return t[0] + t[1] - 2 * t[2]


def mmd_and_grads(x, y, kind, params, unbiased: bool, grad_out: float = 1.0):
    """MMD^2, d/dx and d/dy of grad_out * MMD^2, all float64, plus the error scale
    sum(terms) + terms[2] (= mean Kxx + mean Kyy + 2 mean Kxy) of DESIGN.md 5b."""
    xd = x.detach().double().requires_grad_(True)
    yd = y.detach().double().requires_grad_(True)
    t = mmd_terms(xd, yd, kind, params, unbiased)
    val = t[0] + t[1] - 2 * t[2]
    gx, gy = torch.autograd.grad(val * grad_out, (xd, yd))
    scale = float((t[0] + t[1] + 2 * t[2]).detach())
    return val.detach(), gx, gy, scale


def kernel_matmul(x, y, v, kind, params) -> torch.Tensor:
    """K(x, y) @ v in float64 from the dense kernel matrix; differentiable."""
    return kernel_matrix(x, y, kind, params) @ v.double()


def weighted_mmd_terms(x, y, kind, params, unbiased: bool, xw=None, yw=None,
                       drop_zero: bool = True) -> torch.Tensor:
    """Weighted (reliability weights) terms in float64 from the dense matrices; differentiable.
    ``drop_zero``: rows with weight 0 are dropped by boolean indexing before anything reads them
    (else kept: the gradient to a zero weight is then the true derivative).  Self terms:
    sum_{i != j} w_i w_j k_ij / ((sum w)^2 - sum w^2) (unbiased) or sum_ij w_i w_j k_ij / (sum w)^2;
    cross: sum_ij w_i v_j k_ij / (sum w sum v).  None: unit weights."""
    xw = torch.ones(x.shape[0], dtype=torch.float64) if xw is None else xw.double()
    yw = torch.ones(y.shape[0], dtype=torch.float64) if yw is None else yw.double()
    if drop_zero:
        kx, ky = xw != 0, yw != 0
        x, y, xw, yw = x[kx], y[ky], xw[kx], yw[ky]
    x, y = x.double(), y.double()

    def self_term(p, w):
        k = kernel_matrix(p, p, kind, params) * (w[:, None] * w[None, :])
        if unbiased:
            off = ~torch.eye(p.shape[0], dtype=torch.bool)
            # sum_{i != j} w_i w_j from the weight matrix (non-negative products: exact where
            # (sum w)^2 - sum w^2 cancels, one dominant weight)
            return k[off].sum() / (w[:, None] * w[None, :])[off].sum()
        return k.sum() / w.sum() ** 2

    kxy = kernel_matrix(x, y, kind, params) * (xw[:, None] * yw[None, :])
    return torch.stack([self_term(x, xw), self_term(y, yw), kxy.sum() / (xw.sum() * yw.sum())])
