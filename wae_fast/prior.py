r"""MMD to the Gaussian prior N(0, sigma2 I_d), with or without prior samples.

:func:`mmd_to_prior` offers three estimators of MMD^2(Q, P), Q the empirical distribution of the
codes ``x`` (N, d) and P = N(0, sigma2 I_d):

``"closed_form"`` (sampling-free, DESIGN.md 5b)
    MMD^2 = T_xx + E_{y,y'~P} k(y, y') - 2/N sum_i E_{y~P} k(x_i, y), where T_xx is the U-statistic
    1/(N(N-1)) sum_{i!=j} k(x_i, x_j) (``unbiased=True``, an unbiased estimate of MMD^2(Q_true, P))
    or the V-statistic 1/N^2 sum_{i,j} (``unbiased=False``).  Per kernel scale, r = ||a - b||^2,
    s = ||x||^2:

    * RBF, k = exp(-gamma r) (h = 1/gamma)::

          E_y k(x, y)     = (1 + 2 sigma2 gamma)^(-d/2) exp(-gamma s / (1 + 2 sigma2 gamma))
          E_{y,y'} k      = (1 + 4 sigma2 gamma)^(-d/2)

      (the powers are evaluated as exp(-d/2 log1p(.)): they underflow for large d).
    * IMQ, k = C/(C + r) = C int_0^inf exp(-t (C + r)) dt, so with the Gaussian's Laplace transform::

          E_y k(x, y) = C int_0^inf e^{-tC} (1 + 2 t sigma2)^(-d/2) exp(-t s / (1 + 2 t sigma2)) dt
          E_{y,y'} k  = the same with s = 0 and sigma2 -> 2 sigma2.

      The 1-D integral is evaluated per point by quadrature in u = t (C + s): the integrand then
      decays like e^{-u} near 0 whatever the point's norm.  Two rules (``quadrature=``):
      ``"exp-sinh"`` (default; u = exp(pi/2 sinh(tau)), trapezoid in tau on [-4, 4], 201 nodes:
      worst absolute error 1.1e-16 for F and 2.1e-16 for C F' over d in {1, 2, 8, 64}, all seven
      WAE scales and ||x||^2 / (d sigma2) in {0, 0.5, 1, 5, 50}, against 30-digit mpmath; 161
      nodes: 6e-15, 121: 3e-12, 81: 7e-9) and ``"laguerre"`` (Gauss-Laguerre,
      :func:`numpy.polynomial.laguerre.laggauss`, 64 nodes: <= 2e-13 when
      C/(2 sigma2) = d * scale >= 1, but 7e-6 at d * scale = 0.1 (128 nodes: 9e-8), because the
      (1 + 2 t sigma2)^(-d/2) factor has a branch point at u = -(C + s)/(2 sigma2), close to the
      positive axis when C is small).  See the tests for the node/error table.

    The gradient w.r.t. x: d/dx_i E_y k(x_i, y) = 2 x_i F'(s_i) with F'(s) = -C int e^{-tC} t/(1+2t sigma2)
    (...) dt from the same nodes (RBF: F' = -gamma/(1 + 2 sigma2 gamma) F).  T_xx is a blocked,
    memory-flat pair sum (square blocks of ``block_size``, only the blocks on and above the
    diagonal) with its gradient fused into the forward (the loss is a scalar: the N x d gradient
    part is kept, never an N x N matrix; ``recompute_backward=True`` redoes the pass in backward
    instead).  Memory: O(N d + block_size^2 + chunk * nodes).

``"sampled"``
    The usual U/V-statistic against M = ``num_samples`` (default N) prior samples y, generated
    block by block: block b (rows b*block_size ...) comes from a ``torch.Generator`` seeded with
    splitmix64(seed, b), so any block can be regenerated and the M x d samples are never stored
    (memory O(N d + block_size d + block_size^2)).  The yy blocks are regenerated on the fly.
    The gradient (x only: the samples are not inputs) is accumulated in the forward pass over the
    blocks (Liger style, as the reference backend does: the loss is a scalar, so the N x d
    gradient is computed while each block is live and backward only scales it; this avoids a
    second pass that would regenerate every block), and only when x requires grad;
    ``recompute_backward=True`` instead keeps only x and the seed and regenerates every block in
    the backward.  ``seed`` (or one drawn from
    ``generator``) fixes the samples; :func:`prior_samples` materialises exactly the same y for
    checking against ``wae_fast.mmd(x, y)``.

``"linear"``
    The linear-time estimator of Gretton et al. (2012, sec. 6), see :func:`mmd_linear`, against N
    prior samples drawn as in ``"sampled"``.  Unbiased, O(N d) time, but its variance is O(1/N)
    instead of O(1/N^2) for the quadratic statistics near MMD = 0.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Union

import numpy as np
import torch

from .contract import PRECISIONS, compute_dtype
from .kernel_specs import IMQ, KIND_IMQ, KIND_RBF, KernelSpec, check_compute_range, resolve_kernel
from .reference import BLOCK_SIZE, _acc_rows, _sq_dist, _sym_block, kernel_and_derivative, self_sum
from .validation import check_finite as _check_finite
from .validation import check_points, check_tensor

_DEFAULT_KERNEL = IMQ()
PRIOR_ESTIMATORS = ("closed_form", "sampled", "linear")
QUADRATURES = ("exp-sinh", "laguerre")
DEFAULT_NODES = {"exp-sinh": 201, "laguerre": 64}
_F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Blocked pair sums (shared with wae_fast.distributed)
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# Seeded, block-regenerable prior samples
# ----------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def block_seed(seed: int, index: int) -> int:
    """Seed of prior block ``index``: splitmix64 of (seed, index), in [0, 2^63)."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ int(index)) >> 1


def prior_block(index: int, num_samples: int, d: int, *, seed: int, sigma2: float = 1.0,
                block_size: int = BLOCK_SIZE, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Rows [index * block_size, min((index + 1) * block_size, num_samples)) of the prior
    samples sqrt(sigma2) * eps, eps ~ N(0, I), regenerated from (seed, index) alone."""
    g = torch.Generator(device=device)
    g.manual_seed(block_seed(seed, index))
    rows = min(block_size, num_samples - index * block_size)
    eps = torch.randn((rows, d), generator=g, dtype=dtype, device=device)
    return eps * math.sqrt(sigma2) if sigma2 != 1.0 else eps


def _draw_seed(generator: Optional[torch.Generator]) -> int:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    dev = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())


def _resolve_seed(seed, generator) -> int:
    if seed is None:
        return _draw_seed(generator)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return seed


def prior_samples(num_samples: int, d: int, *, sigma2: float = 1.0, seed: Optional[int] = None,
                  generator: Optional[torch.Generator] = None, block_size: int = BLOCK_SIZE,
                  dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Materialise the (num_samples, d) prior samples that ``mmd_to_prior(...,
    estimator="sampled")`` uses for the same seed (or the same ``generator`` state), block size
    and compute dtype (fp64 for fp64 codes, fp32 otherwise).  For tests and debugging."""
    _check_count("num_samples", num_samples)
    _check_count("d", d)
    _check_count("block_size", block_size)
    s = _resolve_seed(seed, generator)
    nb = -(-num_samples // block_size)
    return torch.cat([prior_block(b, num_samples, d, seed=s, sigma2=float(sigma2),
                                  block_size=block_size, dtype=dtype, device=device)
                      for b in range(nb)])


# ----------------------------------------------------------------------------------------------
# Quadrature for the IMQ expectations
# ----------------------------------------------------------------------------------------------

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
            eyy += _imq_eyy(p, float(sigma2), int(d), rule, nodes)
        else:
            raise ValueError(f"kind: unknown kernel kind {kind}")
    return ek, dk, eyy


# ----------------------------------------------------------------------------------------------
# autograd Functions
# ----------------------------------------------------------------------------------------------

def _xx_term(x, kind, params, unbiased, block, need_grad):
    """(sum over xx pairs float64, d sum / dx float64 or None): shifted by the mean of x."""
    ct = compute_dtype(x.dtype)
    xs = x.detach().to(ct)
    xs = xs - xs.mean(0)
    g = torch.zeros(xs.shape, dtype=_F64, device=x.device) if need_grad else None
    s, _ = self_sum(xs, kind, params, unbiased, block, g_acc=g)
    return s, (4.0 * g if need_grad else None)


def _closed_form_cross(x, kind, params, sigma2, rule, nodes, need_grad):
    """(sum_i E_y k(x_i, y), d/dx of it or None, E_{y,y'} k), float64."""
    x64 = x.detach().to(_F64)
    ek, dk, eyy = gauss_expectations((x64 * x64).sum(1), kind, params, sigma2, x.shape[1], rule,
                                     nodes, need_grad)
    return ek.sum(), (2.0 * dk[:, None] * x64 if need_grad else None), eyy


class _ClosedFormTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, params, sigma2, unbiased, block, rule, nodes, need_grad, recompute):
        n = x.shape[0]
        nxx = n * (n - 1) if unbiased else n * n
        fused = need_grad and not recompute
        sxx, gxx = _xx_term(x, kind, params, unbiased, block, fused)
        sxy, gxy, eyy = _closed_form_cross(x, kind, params, sigma2, rule, nodes, fused)
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
            nxx = n * (n - 1) if unbiased else n * n
            gx = torch.zeros(x.shape, dtype=_F64, device=x.device)
            if float(g[0]) != 0.0:
                gx += (g[0] / nxx) * _xx_term(x, kind, params, unbiased, block, True)[1]
            if float(g[2]) != 0.0:
                gx += (g[2] / n) * _closed_form_cross(x, kind, params, sigma2, rule, nodes, True)[1]
        else:
            gxx, gxy = ctx.saved_tensors
            gx = g[0] * gxx + g[2] * gxy
        return (gx.to(ctx.xdtype),) + (None,) * 9


def _sampled_yy(kind, params, unbiased, gen, nb):
    """sum over yy pairs of the regenerated prior blocks (upper blocks only)."""
    syy = torch.zeros((), dtype=_F64, device=gen["device"])
    for bi in range(nb):
        a = prior_block(bi, **gen)
        na = (a * a).sum(1)
        for bj in range(bi, nb):
            diag = bi == bj
            b = a if diag else prior_block(bj, **gen)  # block a is kept along its row
            s, _ = _sym_block(a, b, na, na if diag else (b * b).sum(1), diag, kind, params,
                              unbiased, False)
            syy += s
    return syy


def _sampled_xy(x, kind, params, block, gen, nb, need_grad):
    """(sum_{i,j} k(x_i, y_j), d/dx of it or None) over the regenerated prior blocks."""
    ct = compute_dtype(x.dtype)
    xs = x.detach().to(ct)
    sx = (xs * xs).sum(1)
    gxy = torch.zeros(xs.shape, dtype=_F64, device=x.device) if need_grad else None
    sxy = torch.zeros((), dtype=_F64, device=x.device)
    for bj in range(nb):
        b = prior_block(bj, **gen)
        nbb = (b * b).sum(1)
        for i0 in range(0, x.shape[0], block):
            a = xs[i0:i0 + block]
            r = _sq_dist(a, b, sx[i0:i0 + block], nbb, False)
            k, w = kernel_and_derivative(r, kind, params, need_grad)
            sxy += k.sum(dtype=_F64)
            if need_grad:
                _acc_rows(gxy, i0, w, a, b)
    return sxy, (2.0 * gxy if need_grad else None)


class _SampledTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, params, sigma2, unbiased, block, m, seed, need_grad, recompute):
        n, d = x.shape
        nxx = n * (n - 1) if unbiased else n * n
        nyy = m * (m - 1) if unbiased else m * m
        fused = need_grad and not recompute
        gen = dict(num_samples=m, d=d, seed=seed, sigma2=sigma2, block_size=block,
                   dtype=compute_dtype(x.dtype), device=x.device)
        nb = -(-m // block)
        sxx, gxx = _xx_term(x, kind, params, unbiased, block, fused)
        syy = _sampled_yy(kind, params, unbiased, gen, nb)
        sxy, gxy = _sampled_xy(x, kind, params, block, gen, nb, fused)
        terms = torch.stack([sxx / nxx, syy / nyy, sxy / (n * m)])
        if fused:
            ctx.save_for_backward(gxx / nxx, gxy / (n * m))
        elif need_grad:  # recompute in backward: keep x and the seed, regenerate the blocks
            ctx.save_for_backward(x)
        ctx.args = (kind, params, unbiased, block, gen, nb, nxx, n * m)
        ctx.recompute = recompute
        ctx.xdtype = x.dtype
        return terms

    @staticmethod
    def backward(ctx, grad_terms):
        g = grad_terms.to(_F64)
        if ctx.recompute:
            (x,) = ctx.saved_tensors
            kind, params, unbiased, block, gen, nb, nxx, nxy = ctx.args
            gx = torch.zeros(x.shape, dtype=_F64, device=x.device)
            if float(g[0]) != 0.0:
                gx += (g[0] / nxx) * _xx_term(x, kind, params, unbiased, block, True)[1]
            if float(g[2]) != 0.0:
                gx += (g[2] / nxy) * _sampled_xy(x, kind, params, block, gen, nb, True)[1]
        else:
            gxx, gxy = ctx.saved_tensors
            gx = g[0] * gxx + g[2] * gxy
        return (gx.to(ctx.xdtype),) + (None,) * 9


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def _check_count(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


def _check_codes(x, unbiased: bool, estimator: str):
    check_tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (points, features), got shape {tuple(x.shape)}; "
                         "flatten multi-channel latents first, e.g. z.flatten(1)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)})")
    if estimator == "linear" and x.shape[0] < 2:
        raise ValueError(f"x has {x.shape[0]} point(s); the linear estimator needs at least 2")
    if unbiased and x.shape[0] < 2:
        raise ValueError(f"x has {x.shape[0]} point(s); the unbiased estimator needs at least 2 "
                         "(use unbiased=False)")


#: Backends of the sampled estimator: "reference" (torch.Generator blocks) and the kernel
#: backends that generate the samples in-kernel (family "prior" of :mod:`wae_fast.dispatch`).
PRIOR_BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")


def _check_prior_backend(backend, estimator: str):
    if not isinstance(backend, str) or backend not in PRIOR_BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r} for mmd_to_prior; expected one of "
                         f"{PRIOR_BACKENDS}")
    if backend not in ("auto", "reference") and estimator != "sampled":
        raise ValueError(f"backend={backend!r} implements only estimator='sampled' (prior samples "
                         f"generated in-kernel), got estimator={estimator!r}")


def _kernel_prior_terms(backend, x, kind, params, sigma2, unbiased, m, seed, precision):
    from . import contract
    from .dispatch import resolve_backend
    name = resolve_backend(backend, x.device, "prior")
    if name == "reference":  # "auto" found no in-kernel sampler for this device
        return None
    if isinstance(seed, bool) or not (0 <= int(seed) < 2**63):
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
    check_compute_range(kind, params, x.dtype)
    return contract.prior_terms(name, x, kind, params, sigma2, unbiased, m, seed, precision)


def mmd_to_prior_terms(
    x: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    sigma2: Optional[float] = None,
    estimator: str = "closed_form",
    unbiased: bool = True,
    num_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    block_size: int = BLOCK_SIZE,
    quadrature: str = "exp-sinh",
    quad_nodes: Optional[int] = None,
    recompute_backward: bool = False,
    check_finite: bool = False,
    backend: str = "reference",
    precision: str = "ieee",
) -> torch.Tensor:
    """The float64 (3,) terms (mean k(x,x'), mean k(y,y'), mean k(x,y)) of :func:`mmd_to_prior`
    for the "closed_form" (prior means exact) and "sampled" estimators; differentiable w.r.t. x."""
    if estimator not in ("closed_form", "sampled"):
        raise ValueError(f"estimator: {estimator!r} has no terms; expected 'closed_form' or 'sampled'")
    _check_prior_backend(backend, estimator)
    _check_codes(x, unbiased, estimator)
    spec = resolve_kernel(kernel)
    s2 = float(spec.sigma2 if sigma2 is None else sigma2)
    if not math.isfinite(s2) or s2 <= 0:
        raise ValueError(f"sigma2 must be finite and > 0, got {sigma2!r}")
    _check_count("block_size", block_size)
    if check_finite:
        _check_finite("x", x)
    n, d = x.shape
    kind, params = spec.lower(d)
    need_grad = torch.is_grad_enabled() and x.requires_grad
    if estimator == "closed_form":
        if quadrature not in QUADRATURES:
            raise ValueError(f"quadrature: unknown rule {quadrature!r}; expected one of {QUADRATURES}")
        quadrature_rule(quadrature, quad_nodes)  # validates quad_nodes
        return _ClosedFormTerms.apply(x, kind, params, s2, bool(unbiased), block_size, quadrature,
                                      quad_nodes, need_grad, bool(recompute_backward))
    m = n if num_samples is None else num_samples
    _check_count("num_samples", m, 2 if unbiased else 1)
    s = _resolve_seed(seed, generator)
    if backend != "reference":
        # Prior samples generated tile by tile inside the kernels (never stored); block_size
        # and recompute_backward do not apply (the backward always recomputes).
        if precision not in PRECISIONS:
            raise ValueError(f"precision: unknown precision {precision!r}; expected one of {PRECISIONS}")
        t = _kernel_prior_terms(backend, x, kind, params, s2, bool(unbiased), m, s, precision)
        if t is not None:
            return t
    return _SampledTerms.apply(x, kind, params, s2, bool(unbiased), block_size, m, s, need_grad,
                               bool(recompute_backward))


def mmd_to_prior(
    x: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    sigma2: Optional[float] = None,
    estimator: str = "closed_form",
    unbiased: bool = True,
    num_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    block_size: int = BLOCK_SIZE,
    quadrature: str = "exp-sinh",
    quad_nodes: Optional[int] = None,
    recompute_backward: bool = False,
    check_finite: bool = False,
    backend: str = "reference",
    precision: str = "ieee",
) -> torch.Tensor:
    r"""Squared MMD between the codes ``x`` (N, d) and the prior N(0, sigma2 I_d).

    Args:
        x: 2-D floating tensor (fp16/bf16/fp32/fp64); gradients flow to it.
        kernel: :class:`~wae_fast.IMQ` (default, the 7-scale WAE kernel) or
            :class:`~wae_fast.RBF`, or "imq"/"rbf".
        sigma2: prior variance; None takes the kernel spec's ``sigma2`` (the variance its
            constants are tied to, 1.0 by default).
        estimator: ``"closed_form"`` (no prior samples: E_{y,y'} k and E_y k(x_i, y) exact, by
            formula for RBF and by quadrature for IMQ), ``"sampled"`` (``num_samples`` prior
            samples regenerated block by block from a seed, never stored) or ``"linear"``
            (Gretton et al. 2012 linear-time estimator against N prior samples). See the module
            docstring for the formulas.
        unbiased: U-statistics (i == j excluded) for the xx (and sampled yy) sums; False gives
            V-statistics. Ignored by "linear" (always unbiased).
        num_samples: prior sample count M for "sampled" (default N); "linear" uses N.
        generator / seed: where the prior samples' base seed comes from (seed wins; otherwise
            one int is drawn from ``generator``, the global CPU generator when None).
        block_size: side of the square pair blocks (and the prior sample blocks).
        quadrature / quad_nodes: IMQ quadrature rule ("exp-sinh", 201 nodes, or "laguerre", 64).
        recompute_backward: False (default): the x gradient is accumulated during the forward
            pass over the blocks when x requires grad (one pass, O(N d) extra memory); True: the
            forward computes values only and the backward redoes the xx pass and regenerates the
            prior blocks from the seed (two passes; for forwards that are rarely differentiated).
        check_finite: raise ValueError on NaN/Inf in x.
        backend: ``"reference"`` (default: the PyTorch paths above), ``"triton"``, ``"cuda"``
            or ``"cpp"`` (only with ``estimator="sampled"``: the M prior samples y_j =
            sqrt(sigma2) * randn(seed, j * d + k), Triton's ``tl.randn`` stream, are generated
            tile by tile inside the kernels (the CPU backend: in chunks of 4096 rows) and never
            all stored, see :mod:`wae_fast.kernels.prior`, csrc/cuda/prior_kernels.cu and
            csrc/cpu/mmd_cpu.cpp; they draw the same samples, up to an ulp per draw between host
            and GPU math; ``block_size`` and ``recompute_backward`` do not apply, the backward
            recomputes), or ``"auto"`` (the fastest in-kernel sampler for x's device with
            "sampled": cuda > triton on a GPU, cpp on CPU; else the reference). The reference
            draws different samples for the same seed (same law).
        precision: dot-product precision of the kernel backends ("ieee", "tf32x3", "tf32").

    Returns:
        0-dim tensor, float64 for fp64 x, float32 otherwise. The closed-form unbiased value can
        be slightly negative (never take its log or sqrt).
    """
    if estimator not in PRIOR_ESTIMATORS:
        raise ValueError(f"estimator: unknown estimator {estimator!r}; expected one of {PRIOR_ESTIMATORS}")
    _check_prior_backend(backend, estimator)
    out_dtype = _F64 if (isinstance(x, torch.Tensor) and x.dtype == _F64) else torch.float32
    if estimator == "linear":
        _check_codes(x, False, "linear")
        if num_samples is not None and num_samples != x.shape[0]:
            raise ValueError(f"num_samples: the linear estimator pairs x with N = {x.shape[0]} prior "
                             f"samples; got num_samples={num_samples!r} (leave it None)")
        spec = resolve_kernel(kernel)
        s2 = float(spec.sigma2 if sigma2 is None else sigma2)
        if not math.isfinite(s2) or s2 <= 0:
            raise ValueError(f"sigma2 must be finite and > 0, got {sigma2!r}")
        _check_count("block_size", block_size)
        y = prior_samples(x.shape[0], x.shape[1], sigma2=s2, seed=_resolve_seed(seed, generator),
                          block_size=block_size, dtype=compute_dtype(x.dtype), device=x.device)
        return mmd_linear(x, y, spec, check_finite=check_finite)
    t = mmd_to_prior_terms(x, kernel, sigma2=sigma2, estimator=estimator, unbiased=unbiased,
                           num_samples=num_samples, generator=generator, seed=seed,
                           block_size=block_size, quadrature=quadrature, quad_nodes=quad_nodes,
                           recompute_backward=recompute_backward, check_finite=check_finite,
                           backend=backend, precision=precision)
    return (t[0] + t[1] - 2.0 * t[2]).to(out_dtype)


def _kernel_values(a, b, kind, params):
    """Differentiable k(a_i, b_i) for paired rows, from direct differences."""
    r = ((a - b) ** 2).sum(1)
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
    h = (_kernel_values(x1, x2, kind, params) + _kernel_values(y1, y2, kind, params)
         - _kernel_values(x1, y2, kind, params) - _kernel_values(x2, y1, kind, params)).to(_F64)
    out = h.mean().to(_F64 if x.dtype == _F64 else torch.float32)
    if not return_std:
        return out
    if h.shape[0] < 2:
        raise ValueError("return_std needs at least 2 pairs (N >= 4)")
    return out, (h.detach().std() / math.sqrt(h.shape[0])).to(out.dtype)
