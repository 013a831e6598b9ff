r"""MMD to the Gaussian prior N(0, sigma2 I_d), with or without prior samples.

A thin public module: the estimators live in :mod:`.closed_form`, :mod:`.sampled` and
:mod:`.linear`; :func:`mmd_to_prior` validates, asks :mod:`wae_fast.dispatch` for the backend
(family "prior", with the estimator as part of the request), and computes -- for "sampled"
through the contract's ``prior_fwd_<backend>`` op, the same hops as :func:`wae_fast.mmd`.

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
    memory-flat pair sum (:mod:`wae_fast.pairsum`: square blocks of ``block_size``, only the blocks
    on and above the diagonal) with its gradient fused into the forward (the loss is a scalar: the N x d gradient
    part is kept, never an N x N matrix; ``recompute_backward=True`` redoes the pass in backward
    instead).  Memory: O(N d + block_size^2 + chunk * nodes).

``"sampled"``
    The usual U/V-statistic against M = ``num_samples`` (default N) prior samples
    y_j[k] = sqrt(sigma2) * randn(seed, j * d + k), the contract's Philox stream
    (:mod:`wae_fast.philox`, Triton's ``tl.randn``), generated inside the chosen backend's
    ``prior_fwd/bwd`` ops (the reference: ``BLOCK_SIZE`` rows at a time in PyTorch; cpp: chunks of
    4096 rows; triton/cuda: tile by tile in registers) and never all stored; the backward
    regenerates them.  Every backend draws the same samples (to an ulp per draw), so the
    backends agree to rounding.  ``seed`` (or one drawn from ``generator``, in [0, 2^62))
    fixes them; :func:`prior_samples` materialises exactly the same y for checking against
    ``wae_fast.mmd(x, y)``.

``"linear"``
    The linear-time estimator of Gretton et al. (2012, sec. 6), see :func:`mmd_linear`, against N
    prior samples drawn as in ``"sampled"``.  Unbiased, O(N d) time, but its variance is O(1/N)
    instead of O(1/N^2) for the quadratic statistics near MMD = 0.
"""
from __future__ import annotations

import inspect
from typing import Optional, Union

import torch

from ..contract import PRECISIONS, compute_dtype
from ..dispatch import PRIOR_ESTIMATORS, Request, select_backend
from ..kernel_specs import IMQ, KernelSpec, resolve_shift_invariant_kernel
from ..pairsum import BLOCK_SIZE
from ..philox import resolve_seed
from ..validation import check_codes, check_count, check_rows_in_range, check_sigma2
from ..validation import check_finite as _check_finite
from .closed_form import (DEFAULT_NODES, QUADRATURES, ClosedFormTerms, gauss_expectations,
                          imq_gauss_expectation, quadrature_rule)
from .linear import mmd_linear
from .sampled import prior_samples, sampled_terms

__all__ = ["DEFAULT_NODES", "PRIOR_ESTIMATORS", "QUADRATURES", "gauss_expectations",
           "imq_gauss_expectation", "mmd_linear", "mmd_to_prior", "mmd_to_prior_terms",
           "prior_samples", "quadrature_rule"]

_DEFAULT_KERNEL = IMQ()
_F64 = torch.float64


def _check_range(x: torch.Tensor, m: Optional[int]) -> None:
    """check_finite's range check for the shifts the backends use: xx by median(x), and (sampled,
    m prior samples) xy by n/(n+m) median(x), as in the contract."""
    xm = x.detach().to(compute_dtype(x.dtype)).median(0).values
    check_rows_in_range("x", x, xm, "median(x)")
    if m is not None:
        check_rows_in_range("x", x, xm * (x.shape[0] / (x.shape[0] + m)), "n/(n+m) median(x)")


def mmd_to_prior_terms(x: torch.Tensor, kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
                       **options) -> torch.Tensor:
    """The float64 (3,) terms (mean k(x,x'), mean k(y,y'), mean k(x,y)) of :func:`mmd_to_prior`
    for the "closed_form" (prior means exact) and "sampled" estimators; differentiable w.r.t. x.
    Takes exactly :func:`mmd_to_prior`'s keyword arguments (one signature, written there)."""
    bound = inspect.signature(mmd_to_prior).bind(x, kernel, **options)
    bound.apply_defaults()
    return _terms(**bound.arguments)


def _terms(x, kernel, *, sigma2, estimator, unbiased, num_samples, generator, seed, block_size,
           quadrature, quad_nodes, recompute_backward, check_finite, backend, precision):
    if estimator not in ("closed_form", "sampled"):
        raise ValueError(f"estimator: {estimator!r} has no terms; expected 'closed_form' or 'sampled'")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: unknown precision {precision!r}; expected one of {PRECISIONS}")
    check_codes(x, unbiased, estimator)
    spec = resolve_shift_invariant_kernel(kernel, "mmd_to_prior")
    s2 = check_sigma2(spec.sigma2 if sigma2 is None else sigma2)
    check_count("block_size", block_size)
    n, d = x.shape
    kind, params = spec.lower(d)
    if estimator == "closed_form":
        if quadrature not in QUADRATURES:
            raise ValueError(f"quadrature: unknown rule {quadrature!r}; expected one of {QUADRATURES}")
        quadrature_rule(quadrature, quad_nodes)  # validates quad_nodes
        # only the reference implements it; asked so that other backends raise the same error
        select_backend(backend, x.device, Request("prior", kind, len(params), x.dtype, estimator,
                                                  precision))
        if check_finite:
            _check_finite("x", x)
            _check_range(x, None)
        need_grad = torch.is_grad_enabled() and x.requires_grad
        return ClosedFormTerms.apply(x, kind, params, s2, bool(unbiased), block_size, quadrature,
                                     quad_nodes, need_grad, bool(recompute_backward))
    m = n if num_samples is None else num_samples
    check_count("num_samples", m, 2 if unbiased else 1)
    s = resolve_seed(seed, generator)
    if check_finite:
        _check_finite("x", x)
        _check_range(x, m)
    return sampled_terms(x, kind, params, s2, bool(unbiased), m, s, backend, precision)


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
            samples from the Philox stream, generated inside the backend, never stored) or
            ``"linear"`` (Gretton et al. 2012 linear-time estimator against N prior samples).
            See the module docstring for the formulas.
        unbiased: U-statistics (i == j excluded) for the xx (and sampled yy) sums; False gives
            V-statistics. Ignored by "linear" (always unbiased).
        num_samples: prior sample count M for "sampled" (default N); "linear" uses N.
        generator / seed: where the prior samples' seed comes from (seed wins, an int in
            [0, 2^63); otherwise one int in [0, 2^62) is drawn from ``generator``, the global
            CPU generator when None).
        block_size: side of the square pair blocks of the closed form's xx sum (and the rows
            :func:`prior_samples` draws at a time for "linear"); the sampled estimator's blocks
            are its backend's.
        quadrature / quad_nodes: IMQ quadrature rule ("exp-sinh", 201 nodes, or "laguerre", 64).
        recompute_backward: closed form: False (default) accumulates the x gradient during the
            forward pass over the blocks when x requires grad (one pass, O(N d) extra memory);
            True computes values only and redoes the xx pass in backward.  The sampled estimator
            always recomputes in backward (the contract's prior ops keep only x and the seed).
        check_finite: raise ValueError on NaN/Inf in x, or on a point outside the supported
            magnitude range (README "Hostile input"; the default path returns NaN there).
        backend: ``"reference"`` (default: PyTorch, every estimator), ``"cpp"``, ``"triton"``,
            ``"cuda"`` (only ``estimator="sampled"``: the samples are generated tile by tile
            inside the kernels, see :mod:`wae_fast.kernels.prior`, csrc/cuda/prior_kernels.cu and
            csrc/cpu/mmd_cpu.cpp) or ``"auto"`` (the fastest backend for x's device that can
            run the request: cuda > triton on a GPU, cpp on CPU, else the reference).  A named
            backend that cannot run the request raises ValueError naming the limit.
        precision: dot-product precision of the kernel backends ("ieee", "tf32x3", "tf32").

    Returns:
        0-dim tensor, float64 for fp64 x, float32 otherwise. The closed-form unbiased value can
        be slightly negative (never take its log or sqrt).
    """
    options = dict(locals())  # every argument, for the estimators' shared path
    if estimator not in PRIOR_ESTIMATORS:
        raise ValueError(f"estimator: unknown estimator {estimator!r}; expected one of {PRIOR_ESTIMATORS}")
    out_dtype = _F64 if (isinstance(x, torch.Tensor) and x.dtype == _F64) else torch.float32
    if estimator == "linear":
        check_codes(x, False, "linear")
        if num_samples is not None and num_samples != x.shape[0]:
            raise ValueError(f"num_samples: the linear estimator pairs x with N = {x.shape[0]} prior "
                             f"samples; got num_samples={num_samples!r} (leave it None)")
        spec = resolve_shift_invariant_kernel(kernel, "mmd_to_prior")
        s2 = check_sigma2(spec.sigma2 if sigma2 is None else sigma2)
        check_count("block_size", block_size)
        kind, params = spec.lower(x.shape[1])
        select_backend(backend, x.device, Request("prior", kind, len(params), x.dtype, estimator))
        y = prior_samples(x.shape[0], x.shape[1], sigma2=s2, seed=resolve_seed(seed, generator),
                          block_size=block_size, dtype=compute_dtype(x.dtype), device=x.device)
        return mmd_linear(x, y, spec, check_finite=check_finite)
    t = _terms(**options)
    return (t[0] + t[1] - 2.0 * t[2]).to(out_dtype)
