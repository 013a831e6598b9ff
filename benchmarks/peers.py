"""The code users write today for MMD, as benchmark peers of the wae_fast backends.

* ``naive``: dense PyTorch with ``torch.cdist`` (squared), the kernel applied per scale to the
  three Gram matrices, means; unbiased by masking the diagonal. O(N^2) memory, and the per-scale
  intermediates are kept for the backward.
* ``compiled``: the same in matmul form (r = |a|^2 + |b|^2 - 2 a.b, clamped at 0) under
  ``torch.compile``, which fuses the scales into one loop after the matmul; still O(N^2) memory.
* ``pykeops``: symbolic LazyTensor reductions (memory-flat), when pykeops is importable.
* ``geomloss``: ``SamplesLoss("gaussian")`` (a biased, single-bandwidth Gaussian kernel loss: only
  RBF rows with one bandwidth and the biased estimator), when geomloss is importable.

Each peer is built by :func:`make_peer(name, kind, params, unbiased)` and returns a callable
``f(x, y) -> 0-dim tensor``; :func:`peer_unavailable(name, ...)` says why one cannot run a row.
Kernel parameters are the lowered ones of :mod:`wae_fast.kernel_specs`: IMQ ``k = sum_s C_s/(C_s+r)``,
RBF ``k = sum_s exp(-gamma_s r)``.
"""
from __future__ import annotations

import importlib.util
from typing import Callable, Optional

import torch

KIND_IMQ, KIND_RBF = 0, 1
PEERS = ("naive", "compiled", "pykeops", "geomloss")


def _kernel(r: torch.Tensor, kind: int, params) -> torch.Tensor:
    if kind == KIND_IMQ:
        out = None
        for c in params:
            t = c / (c + r)
            out = t if out is None else out + t
        return out
    out = None
    for g in params:
        t = torch.exp(-g * r)
        out = t if out is None else out + t
    return out


def _mean_pairs(k: torch.Tensor, unbiased: bool, square: bool) -> torch.Tensor:
    if not (unbiased and square):
        return k.mean()
    n = k.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    return k.masked_fill(eye, 0).sum() / (n * (n - 1))


def naive_mmd(x, y, kind, params, unbiased):
    """torch.cdist + kernel + means (what most WAE code does)."""
    kxx = _kernel(torch.cdist(x, x).pow(2), kind, params)
    kyy = _kernel(torch.cdist(y, y).pow(2), kind, params)
    kxy = _kernel(torch.cdist(x, y).pow(2), kind, params)
    return _mean_pairs(kxx, unbiased, True) + _mean_pairs(kyy, unbiased, True) - 2 * kxy.mean()


def _sqdist_mm(a, b):
    r = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return r.clamp_min(0)


def dense_matmul_mmd(x, y, kind, params, unbiased):
    """Matmul-form dense MMD (the body that torch.compile fuses)."""
    kxx = _kernel(_sqdist_mm(x, x), kind, params)
    kyy = _kernel(_sqdist_mm(y, y), kind, params)
    kxy = _kernel(_sqdist_mm(x, y), kind, params)
    if unbiased:
        n, m = x.shape[0], y.shape[0]
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean(), kyy.mean()
    return sxx + syy - 2 * kxy.mean()


def pykeops_mmd_factory(kind, params, unbiased):
    from pykeops.torch import LazyTensor

    s = float(len(params))  # k(a, a) = number of scales for both kernels

    def ksum(a, b):
        ai, bj = LazyTensor(a[:, None, :]), LazyTensor(b[None, :, :])
        r = ((ai - bj) ** 2).sum(-1)
        k = None
        for p in params:
            t = (float(p) / (r + float(p))) if kind == KIND_IMQ else (-float(p) * r).exp()
            k = t if k is None else k + t
        return k.sum(dim=1).sum()

    def f(x, y):
        n, m = x.shape[0], y.shape[0]
        xc, yc = x.contiguous(), y.contiguous()
        sxx, syy, sxy = ksum(xc, xc), ksum(yc, yc), ksum(xc, yc)
        if unbiased:
            return (sxx - n * s) / (n * (n - 1)) + (syy - m * s) / (m * (m - 1)) - 2 * sxy / (n * m)
        return sxx / (n * n) + syy / (m * m) - 2 * sxy / (n * m)

    return f


def geomloss_factory(kind, params, unbiased):
    from geomloss import SamplesLoss

    gamma = float(params[0])
    blur = (1.0 / (2.0 * gamma)) ** 0.5  # geomloss gaussian: exp(-|x-y|^2 / (2 blur^2))
    loss = SamplesLoss("gaussian", blur=blur, backend="online" if importlib.util.find_spec("pykeops") else "tensorized")

    def f(x, y):
        return 2.0 * loss(x, y)  # geomloss returns half the (biased) squared MMD

    return f


def peer_unavailable(name: str, kind: int, params, unbiased: bool, device: str) -> Optional[str]:
    """None when peer ``name`` can run such a row, else the reason (for the skip line)."""
    if name == "naive":
        return None
    if name == "compiled":
        if not hasattr(torch, "compile"):
            return "torch.compile missing"
        return None
    if name == "pykeops":
        if importlib.util.find_spec("pykeops") is None:
            return "pykeops not installed"
        return None
    if name == "geomloss":
        if importlib.util.find_spec("geomloss") is None:
            return "geomloss not installed"
        if kind != KIND_RBF or len(params) != 1:
            return "geomloss has only single-bandwidth Gaussian/Laplacian/energy kernels (no multi-scale IMQ)"
        if unbiased:
            return "geomloss computes the biased estimator only"
        return None
    return f"unknown peer {name!r}"


def make_peer(name: str, kind: int, params, unbiased: bool) -> Callable:
    params = [float(p) for p in params]
    if name == "naive":
        return lambda x, y: naive_mmd(x, y, kind, params, unbiased)
    if name == "compiled":
        fn = torch.compile(lambda x, y: dense_matmul_mmd(x, y, kind, params, unbiased), dynamic=False)
        return fn
    if name == "pykeops":
        return pykeops_mmd_factory(kind, params, unbiased)
    if name == "geomloss":
        return geomloss_factory(kind, params, unbiased)
    raise ValueError(f"unknown peer {name!r}")


# ---- the sampling op ------------------------------------------------------------------------

def naive_reparam(mu, logvar):
    """What users write: eps stored by autograd for the backward."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def dense_memory_bytes(peer: str, n: int, m: int, nscales: int, passes: str, elem: int = 4) -> int:
    """Predicted peak extra memory of a dense peer (to skip rows that cannot fit), from the
    measured CPU numbers in KERNEL_NOTES.md: naive fwd+bwd holds about 3 (S + 2) N x M matrices
    (1.8 GB at N = 4096, S = 7), its forward about 4; the compiled code about 6."""
    big = max(n, m) ** 2 * elem
    if peer == "naive":
        return big * (3 * (nscales + 2) if passes == "fwdbwd" else 4)
    if peer == "compiled":
        return big * 6
    return 0
