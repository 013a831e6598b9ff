"""Kernel two-sample tests: :func:`mmd_test` (all permutations in one pass, never forming the
kernel matrix) and :func:`median_heuristic`."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

from . import contract
from .dispatch import Request, select_backend
from .functional import mmd
from .kernel_specs import IMQ, KIND_POLY, KernelSpec, check_compute_range, resolve_kernel
from .validation import check_points, check_tensor

_DEFAULT_KERNEL = IMQ()


class MMDTestResult(NamedTuple):
    statistic: torch.Tensor  #: mmd(x, y, kernel, estimator=...)
    p_value: float           #: (1 + #{null >= observed}) / (1 + P)
    null: torch.Tensor       #: (P,) permuted statistics (float64)


def _kernel_diag(z: torch.Tensor, kind: int, params: list[float]) -> torch.Tensor:
    """k(z_i, z_i) in float64: the number of scales for IMQ/RBF (k(r = 0) = 1 per scale), the
    polynomial (gamma |z_i|^2 + coef0)^degree."""
    if kind == KIND_POLY:
        g, c, p = params
        return (g * z.double().square().sum(1) + c) ** int(p)
    out = torch.full((z.shape[0],), float(len(params)), dtype=torch.float64, device=z.device)
    return out + 0.0 * z.double().sum(1)  # NaN points stay NaN


def mmd_test(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    num_permutations: int = 1000,
    estimator: str = "unbiased",
    generator: Optional[torch.Generator] = None,
    permutations: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> MMDTestResult:
    r"""Permutation two-sample test with the MMD statistic, every permutation from ONE kernel
    pass.

    Pool z = (x, y) (L = N + M points).  A permutation puts the points of its first N positions in
    the "x" group; u in {0, 1}^L is that membership.  With K0 = K - diag(K) (unbiased)::

        stat(u) = u'K0u / (N(N-1)) + (1-u)'K0(1-u) / (M(M-1)) - 2 u'K0(1-u) / (NM)

    (biased: K instead of K0, normalised by N^2, M^2, NM), and (1-u)'K0(1-u) = 1'K0 1 - 2 u'K0 1
    + u'K0u, u'K0(1-u) = u'K0 1 - u'K0u: every permuted statistic comes from K @ [U, 1] (U the
    L x P indicator matrix), computed by :func:`wae_fast.kernel_matmul` tile by tile: memory
    O(L (d + P)), never L x L.  The observed statistic is evaluated by the same formula (the
    identity membership) for the comparison, and p = (1 + #{null >= observed}) / (1 + P), where
    values within rounding of the observed one (8 ulps of the compute dtype times the kernel-mean
    scale) count as ties: a split and its complement give the same statistic when N = M.

    Args:
        x, y: (N, d) and (M, d) point sets (N, M >= 2 for the unbiased estimator).
        kernel: as for :func:`wae_fast.mmd` (IMQ, RBF, Polynomial).
        num_permutations: P >= 1 random permutations (``torch.randperm(L, generator=generator)``
            each, on the generator's device); ignored when ``permutations`` is given.
        estimator: "unbiased" or "biased".
        generator: torch.Generator for the permutations (None: the global CPU generator).
        permutations: optional (P, L) integer tensor of explicit permutations (or of any index
            sets whose first N entries are distinct), e.g. to enumerate all splits.
        backend: the kernel_matmul / mmd backend.

    Returns:
        MMDTestResult(statistic, p_value, null): ``statistic`` equals ``mmd(x, y, kernel,
        estimator=estimator)``; ``null`` the (P,) float64 permuted statistics.  No gradients.
    """
    x, y = check_points(x, y, estimator)
    spec = resolve_kernel(kernel)
    n, m = x.shape[0], y.shape[0]
    L = n + m
    if permutations is None:
        if isinstance(num_permutations, bool) or not isinstance(num_permutations, int) or num_permutations < 1:
            raise ValueError(f"num_permutations must be an int >= 1, got {num_permutations!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        gdev = generator.device if generator is not None else torch.device("cpu")
        perms = torch.stack([torch.randperm(L, generator=generator, device=gdev)[:n]
                             for _ in range(num_permutations)])
    else:
        check = isinstance(permutations, torch.Tensor) and permutations.dim() == 2 \
            and permutations.shape[1] >= n and not permutations.is_floating_point() and permutations.shape[0] >= 1
        if not check:
            raise ValueError(f"permutations must be a (P, L) integer tensor with L >= N = {n}")
        perms = permutations[:, :n].long()
        if bool(((perms < 0) | (perms >= L)).any()):
            raise ValueError(f"permutations: indices must lie in [0, {L})")
    P = perms.shape[0]
    kind, params = spec.lower(x.shape[1])
    name = select_backend(backend, x.device, Request("kernel_matmul", kind, len(params), x.dtype))
    check_compute_range(kind, params, x.dtype)
    unbiased = estimator == "unbiased"
    with torch.no_grad():
        statistic = mmd(x, y, spec, estimator=estimator, backend=backend)
        ct = contract.compute_dtype(x.dtype)
        z = torch.cat([x, y]).detach().to(ct)  # the indicators and K @ U in the compute dtype
        U = torch.zeros((L, P + 2), dtype=ct, device=z.device)
        U.scatter_(0, perms.t().to(z.device), 1.0)                  # the P permutations
        U[:n, P] = 1.0                                               # the observed split
        U[:, P + 1] = 1.0                                            # the all-ones column
        if bool((U[:, :P].sum(0) != n).any()):
            raise ValueError("permutations: the first N entries of each row must be distinct")
        KU = contract.kernel_matmul(name, z, z, U, kind, params).double()
        Ud = U.double()
        diag = _kernel_diag(z, kind, params)
        if unbiased:
            KU = KU - diag[:, None] * Ud                             # K0 [U, 1]
        k1 = KU[:, P + 1]                                            # K0 1 (or K 1)
        uKu = (Ud[:, :P + 1] * KU[:, :P + 1]).sum(0)
        uK1 = Ud[:, :P + 1].t() @ k1
        tot = k1.sum()
        A, B, C = uKu, tot - 2.0 * uK1 + uKu, uK1 - uKu
        na, nb = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
        stats = A / na + B / nb - 2.0 * C / (n * m)
        null, observed = stats[:P], stats[P]
        # exact ties (e.g. a split and its complement when N = M) must not be decided by
        # rounding: values within 8 ulps of the compute dtype times the kernel-mean scale tie
        scale = float((A[P].abs() / na + B[P].abs() / nb + 2.0 * C[P].abs() / (n * m)))
        tol = 8.0 * torch.finfo(ct).eps * scale
        p_value = (1.0 + float((null >= observed - tol).sum())) / (1.0 + P)
    return MMDTestResult(statistic, p_value, null)


def median_heuristic(
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    *,
    generator: Optional[torch.Generator] = None,
    max_points: int = 2048,
) -> float:
    r"""RBF bandwidth by the median heuristic: ``sqrt(med / 2)`` with ``med`` the lower median of
    the squared distances ||a - b||^2 over the distinct pairs of a uniform subsample (without
    replacement, ``torch.randperm(L, generator=generator)[:max_points]``) of the pooled points
    (x and y), so that ``exp(-r / (2 bw^2)) = exp(-r / med)`` (:class:`wae_fast.RBF` accepts it).

    No gradient flows through it (a bandwidth chosen with gradients through the median is biased,
    DESIGN.md 5.6).  Warning: the bandwidth depends on the sets it is computed from; computing it
    per batch, or on one set only, changes the metric being compared.  Fix it once (e.g. on
    held-out data) when comparing MMD values.

    Returns:
        The bandwidth as a Python float (> 0); ValueError when every sampled pair coincides.
    """
    check_tensor("x", x)
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"x must be 2-D (points, features), got shape {tuple(x.shape)}")
    pts = x.detach()
    if y is not None:
        check_tensor("y", y)
        if y.dim() != 2 or y.shape[1] != x.shape[1]:
            raise ValueError(f"y must be 2-D with d={x.shape[1]} features like x, got shape {tuple(y.shape)}")
        if y.device != x.device:
            raise ValueError(f"x is on {x.device} but y is on {y.device}")
        pts = torch.cat([pts.double(), y.detach().double()])
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an int >= 2, got {max_points!r}")
    L = pts.shape[0]
    if L < 2:
        raise ValueError(f"x (with y) has {L} point(s); the median heuristic needs at least 2")
    if L > max_points:
        gdev = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randperm(L, generator=generator, device=gdev)[:max_points].to(pts.device)
        pts = pts[idx]
    p = pts.double()
    iu = torch.triu_indices(p.shape[0], p.shape[0], offset=1, device=p.device)
    # direct differences (no ||a||^2 + ||b||^2 - 2 a.b cancellation), float64
    r = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist").square()[iu[0], iu[1]]
    if not bool(torch.isfinite(r).all()):
        raise ValueError("x (or y) contains non-finite values")
    med = float(r.median())  # the lower median for an even count
    if med <= 0.0:
        raise ValueError("x (with y): the median pairwise distance is 0 (too many repeated points)")
    return math.sqrt(med / 2.0)
