"""Public functional API: :func:`mmd`, :func:`mmd_terms`, :func:`reparameterize`,
:func:`logvar_penalty`."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import contract
from .dispatch import Request, select_backend, select_mmd_backend
from .kernel_specs import IMQ, KIND_POLY, RBF, KernelSpec, lower_checked, resolve_kernel
from .philox import resolve_seed
from .segments import weighted_terms
from .validation import check_finite as _check_finite
from .validation import check_in_range, check_points, check_poly_in_range, check_tensor

_DEFAULT_KERNEL = IMQ()
def mmd_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    estimator: str = "unbiased",
    backend: str = "auto",
    check_finite: bool = False,
    precision: str = "ieee",
    x_weights: Optional[torch.Tensor] = None,
    y_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The three kernel means ``(mean k(x,x'), mean k(y,y'), mean k(x,y))`` as a float64 (3,)
    tensor (differentiable), so that ``mmd = terms[0] + terms[1] - 2 * terms[2]``.

    Their sum ``terms[0] + terms[1] + 2 * terms[2]`` is the natural scale against which to judge
    the absolute error of MMD^2 (a small difference of large sums). Arguments as in :func:`mmd`.
    """
    x, y = check_points(x, y, estimator)
    if x_weights is not None or y_weights is not None:  # the weighted estimators: one set pair
        return weighted_terms(x, y, x_weights, y_weights, kernel, estimator=estimator,
                              backend=backend, check_finite=check_finite, precision=precision)
    name, kind, params = _resolve(x, y, kernel, estimator, backend, check_finite, precision)
    terms = contract.mmd_terms(name, x, y, kind, params, estimator == "unbiased", precision)
    if check_finite and kind == KIND_POLY:
        check_poly_in_range(terms, x.dtype)
    return terms


def _resolve(x: torch.Tensor, y: torch.Tensor, kernel, estimator: str, backend: str,
             check_finite: bool, precision: str) -> tuple[str, int, list[float]]:
    """Backend name and lowered kernel of a validated unweighted call; runs the data checks
    of ``check_finite`` (IMQ, RBF: before any work)."""
    spec = resolve_kernel(kernel)
    if precision not in contract.PRECISIONS:
        raise ValueError(f"precision: unknown precision {precision!r}; expected one of {contract.PRECISIONS}")
    kind, params, range_error = lower_checked(spec, x.shape[1], x.dtype)
    name = select_mmd_backend(backend, x.device, kind, len(params), x.dtype, estimator, precision)
    if range_error is not None:
        raise ValueError(range_error)
    if check_finite:
        _check_finite("x", x)
        _check_finite("y", y)
        if kind != KIND_POLY:
            check_in_range(x, y)
    return name, kind, params


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    estimator: str = "unbiased",
    backend: str = "auto",
    check_finite: bool = False,
    precision: str = "ieee",
    x_weights: Optional[torch.Tensor] = None,
    y_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""Squared maximum mean discrepancy between point sets ``x`` (N, d) and ``y`` (M, d).

    unbiased (U-statistic, Gretton et al. 2012)::

        MMD^2 = 1/(N(N-1)) sum_{i!=j} k(x_i,x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i,y_j)
                - 2/(NM) sum_{i,j} k(x_i,y_j)

    (can be slightly negative: never take its log or sqrt); biased (V-statistic): the means of
    the full Gram matrices, diagonals included (>= 0).

    Args:
        x, y: 2-D floating tensors (fp16, bf16, fp32 or fp64) on one device with the same d.
        kernel: :class:`~wae_fast.IMQ` (default: the WAE paper's 7-scale IMQ tied to N(0, I)),
            :class:`~wae_fast.RBF`, or the names ``"imq"``/``"rbf"``.
        estimator: ``"unbiased"`` (needs N, M >= 2) or ``"biased"``.
        backend: ``"auto"`` (fastest available, see :func:`wae_fast.which_backend`),
            ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.
        check_finite: raise ``ValueError`` naming the argument on NaN/Inf inputs and on points
            outside the supported magnitude range (IMQ, RBF: ``|p - shift| <= 2^30`` for fp32
            compute, ``2^248`` for fp64, :data:`wae_fast.kernel_specs.MAX_SQ_NORM`, with the
            shifts median(x) and median(y) of the xx and yy terms and their size-weighted mean
            of the xy term; Polynomial: every power finite in the compute dtype); syncs
            with the
            device. When off, such inputs give NaN (value and the gradient rows paired with
            them) on every backend, never a finite wrong value.
        precision: fp32 dot-product precision for backends that use tensor cores
            (``"ieee"`` exact, ``"tf32x3"``, ``"tf32"``); exact backends ignore it.
        x_weights, y_weights: optional (N,) / (M,) reliability weights (either or both): the
            weighted estimators of :mod:`wae_fast.segments` (biased: sum_ij w_i w_j k_ij /
            (sum w)^2; unbiased self terms over i != j divided by (sum w)^2 - sum w^2; cross
            term sum_ij w_i v_j k_ij / (sum w sum v)), computed by the ``mmd_segments`` op
            family (backends that implement it).  Weight-0 rows are never read; a negative or
            non-finite weight or a zero denominator gives NaN (ValueError under check_finite).

    Returns:
        0-dim tensor, float32 for fp16/bf16/fp32 inputs and float64 for fp64 inputs. Gradients
        flow to ``x`` and ``y`` in their own dtype; double backward is not supported.
    """
    if x_weights is not None or y_weights is not None:  # the weighted estimators: one set pair
        x, y = check_points(x, y, estimator)
        return weighted_terms(x, y, x_weights, y_weights, kernel, estimator=estimator,
                              backend=backend, check_finite=check_finite, precision=precision,
                              value=True)
    if check_finite and not isinstance(kernel, (IMQ, RBF)):  # a polynomial range check on the terms
        terms = mmd_terms(x, y, kernel, estimator=estimator, backend=backend,
                          check_finite=check_finite, precision=precision)
        out_dtype = torch.float64 if torch.promote_types(x.dtype, y.dtype) == torch.float64 else torch.float32
        # one dot with (1, 1, -2) instead of three selects (each a zeros + copy in backward)
        return torch.dot(terms, contract.mmd_weights(terms.device)).to(out_dtype)
    x, y = check_points(x, y, estimator)
    name, kind, params = _resolve(x, y, kernel, estimator, backend, check_finite, precision)
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # eagerly one autograd node: the value formed in the op's forward, the fused parts scaled
    return contract.mmd_value(name, x, y, kind, params, estimator == "unbiased", precision, out_dtype)


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    seed: Union[int, torch.Tensor, None] = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Reparameterized Gaussian sample ``z = mu + exp(logvar / 2) * eps``, eps ~ N(0, I).

    eps comes from a counter-based stream keyed by a seed in [0, 2^62) drawn from ``generator``
    (the global CPU generator when None, :func:`wae_fast.philox.draw_seed`), so the same generator state gives the same z. The backward
    regenerates eps from the seed instead of storing it:
    ``dmu = dz``, ``dlogvar = dz * eps * exp(logvar / 2) / 2``.  An explicit ``seed`` (an int in
    [0, 2^63) or a 0-dim integer tensor) wins over ``generator``; pass one under torch.compile
    (generators do not trace).
    """
    check_tensor("mu", mu)
    check_tensor("logvar", logvar)
    if mu.shape != logvar.shape:
        raise ValueError(f"logvar has shape {tuple(logvar.shape)} but mu has {tuple(mu.shape)}; they must match")
    if mu.device != logvar.device:
        raise ValueError(f"mu is on {mu.device} but logvar is on {logvar.device}")
    if mu.dtype != logvar.dtype:
        common = torch.promote_types(mu.dtype, logvar.dtype)
        mu, logvar = mu.to(common), logvar.to(common)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    name = select_backend(backend, mu.device, Request("reparam", dtype=mu.dtype))
    return contract.reparam(name, mu, logvar, resolve_seed(seed, generator))


def logvar_penalty(logvar: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    r"""Log-variance penalty of Rubenstein, Schoelkopf & Tolstikhin (2018) that keeps a
    stochastic encoder from collapsing to zero variance:

    ``l1``: mean_i sum_k |logvar_ik|;  ``l2``: mean_i sum_k logvar_ik^2
    (the first dimension indexes points; the others are summed).
    """
    check_tensor("logvar", logvar)
    if logvar.dim() < 1 or logvar.shape[0] == 0:
        raise ValueError(f"logvar must have a non-empty batch dimension, got shape {tuple(logvar.shape)}")
    flat = logvar.reshape(logvar.shape[0], -1)
    if kind == "l1":
        per = flat.abs().sum(1)
    elif kind == "l2":
        per = flat.pow(2).sum(1)
    else:
        raise ValueError(f"kind: unknown penalty {kind!r}; expected 'l1' or 'l2'")
    return per.mean()
