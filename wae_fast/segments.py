r"""Many MMDs in one call: :func:`mmd_batched`, :func:`mmd_terms_batched`, :func:`mmd_varlen`,
and the weighted estimators behind ``x_weights=`` / ``y_weights=`` of :func:`wae_fast.mmd`.

Every entry point is one call of the ``mmd_segments`` op family (:mod:`wae_fast.contract`): set b
is rows ``x_offsets[b]:x_offsets[b+1]`` of a (sum_b N_b, d) x and its own y rows (or all of a
shared y), each set with its own shift.  A batched (B, N, d) input is a view of that form (no
copy); a plain weighted ``mmd`` is B = 1.

With w the weights of x and v those of y (reliability weights: weight 2 is not a duplicated
point), the estimators of each set are::

    biased:   sum_ij w_i w_j k(x_i,x_j) / (sum w)^2  +  (same for y, v)
              - 2 sum_ij w_i v_j k(x_i,y_j) / (sum w sum v)
    unbiased: sum_{i!=j} w_i w_j k(x_i,x_j) / sum_{i!=j} w_i w_j  +  (same for y, v)
              - 2 sum_ij w_i v_j k(x_i,y_j) / (sum w sum v)

Unit weights give the usual estimators.  Rows with weight 0 never contribute and their
coordinates are not read (padding may hold anything; only the gradient to such a weight, the true
derivative, reads its row).  A negative or non-finite weight, or weights that leave a zero
denominator, make that set's result NaN (``check_finite=True``: ValueError naming the argument
and the set).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import contract
from .dispatch import Request, select_backend
from .kernel_specs import IMQ, TRANSLATION_INVARIANT, KernelSpec, lower_checked, resolve_kernel
from .validation import ESTIMATORS, check_rows_in_range, check_tensor

Offsets = Union[torch.Tensor, Sequence[int]]
_DEFAULT_KERNEL = IMQ()


def host_offsets(name: str, offsets: Offsets, rows: int) -> list[int]:
    """Validated host copy of cumulative offsets (B + 1,): int64 values from 0, non-decreasing,
    ending at ``rows``.  A device tensor is copied to the host once."""
    if isinstance(offsets, torch.Tensor):
        if offsets.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got dtype {offsets.dtype}")
        if offsets.dim() != 1:
            raise ValueError(f"{name} must be 1-D (B + 1,), got shape {tuple(offsets.shape)}")
        values = offsets.tolist()
    else:
        try:
            values = [int(v) for v in offsets]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int64 tensor or a sequence of ints") from None
        if any(isinstance(v, bool) or float(v) != float(int(v)) for v in offsets):
            raise ValueError(f"{name} must hold integers")
    if len(values) < 2:
        raise ValueError(f"{name} must have B + 1 >= 2 entries (one set at least), got {len(values)}")
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]}")
    for b in range(len(values) - 1):
        if values[b + 1] < values[b]:
            raise ValueError(f"{name} decreases at set {b} ({values[b]} -> {values[b + 1]})")
    if values[-1] != rows:
        raise ValueError(f"{name} must end at the number of rows {rows}, got {values[-1]}")
    return values


def uniform_offsets(num_sets: int, n: int) -> Sequence[int]:
    """Offsets of ``num_sets`` sets of ``n`` rows each: a ``range`` (checked and turned into a
    tensor without a Python loop over the sets: 75 us of a 1.5 ms call at B = 256)."""
    return range(0, (num_sets + 1) * n, n) if n > 0 else [0] * (num_sets + 1)


def check_set_sizes(name: str, offsets: Sequence[int], unbiased: bool) -> None:
    need = 2 if unbiased else 1
    if isinstance(offsets, range) and offsets.step >= need:  # equal sets, large enough
        return
    for b in range(len(offsets) - 1):
        n = offsets[b + 1] - offsets[b]
        if n < need:
            raise ValueError(f"{name}: set {b} has {n} point(s); the "
                             f"{'unbiased' if unbiased else 'biased'} estimator needs at least "
                             f"{need}" + (" (use estimator='biased')" if unbiased and n == 1 else ""))


def check_weights(name: str, w, shape: tuple, points: torch.Tensor) -> Optional[torch.Tensor]:
    """None or the weights in the points' compute dtype (differentiable), checked for type,
    shape and device."""
    if w is None:
        return None
    check_tensor(name, w)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the point dimensions), got "
                         f"{tuple(w.shape)}")
    if w.device != points.device:
        raise ValueError(f"{name} is on {w.device} but the points are on {points.device}")
    ct = contract.compute_dtype(points.dtype)
    return w if w.dtype == ct else w.to(ct)


def _check_finite_sets(x, y, xo, yo, xw, yw, unbiased, kind) -> None:
    """check_finite=True: weights valid and points finite and in range, per set (syncs)."""
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])  # batched: the (rows, d) form
    shared = len(yo) == 2 and len(xo) > 2
    y_sets = [(0, yo[1])] if shared else list(zip(yo[:-1], yo[1:]))
    for pname, wname, w, offs in (("x", "x_weights", xw, list(zip(xo[:-1], xo[1:]))),
                                  ("y", "y_weights", yw, y_sets)):
        if w is None:
            continue
        for b, (s, e) in enumerate(offs):
            ws = w[s:e].detach().double()
            if not bool(torch.isfinite(ws).all()) or bool((ws < 0).any()):
                raise ValueError(f"{wname}: set {b} has a negative or non-finite weight")
            total = ws.sum()
            # unbiased: sum_{i != j} w_i w_j = 2 sum_i w_i sum_{j<i} w_j, as the backends form it
            # (no cancellation when one weight dominates, unlike (sum w)^2 - sum w^2)
            den = 2 * (ws[1:] * torch.cumsum(ws, 0)[:-1]).sum() if unbiased else total * total
            if not float(den) > 0:
                raise ValueError(f"{wname}: set {b}'s weights leave a zero denominator "
                                 + ("(fewer than two positive weights)" if unbiased else
                                    "(all weights are 0)"))
    for b in range(len(xo) - 1):
        ys, ye = y_sets[0] if shared else y_sets[b]
        xb, yb = x[xo[b]:xo[b + 1]], y[ys:ye]
        if xw is not None:
            xb = xb[xw[xo[b]:xo[b + 1]].detach() != 0]
        if yw is not None:
            yb = yb[yw[ys:ye].detach() != 0]
        for pname, t in (("x", xb), ("y", yb)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{pname}: set {b} contains non-finite values (NaN or Inf)")
        if kind in TRANSLATION_INVARIANT:  # translation invariant: shifted by the mean of the set's y rows
            ct = contract.compute_dtype(x.dtype)
            off = yb.detach().to(ct).mean(0)
            for pname, t in (("x", xb), ("y", yb)):
                check_rows_in_range(f"{pname} (set {b})", t, off, "the mean of the set's y")


def segment_terms(x, y, x_offsets: Sequence[int], y_offsets: Sequence[int], x_weights, y_weights, kernel,
                  estimator: str, backend: str, check_finite: bool, precision: str,
                  out_dtype: Optional[torch.dtype] = None, scalar: bool = False) -> torch.Tensor:
    """(B, 3) float64 terms of every set, or with ``out_dtype`` the (B,) MMD^2 in that dtype
    (``scalar``, one set: (3,) or 0-dim);
    x, y validated: (rows, d), or batched (B, N, d) and (B, M, d) or (M, d); offsets validated
    host lists (``y_offsets`` [0, M] for a shared y; a ``range`` for equal sets), weights
    checked by :func:`check_weights`."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    if precision not in contract.PRECISIONS:
        raise ValueError(f"precision: unknown precision {precision!r}; expected one of {contract.PRECISIONS}")
    unbiased = estimator == "unbiased"
    check_set_sizes("x", x_offsets, unbiased)
    check_set_sizes("y", y_offsets, unbiased)
    spec = resolve_kernel(kernel)
    kind, params, range_error = lower_checked(spec, x.shape[-1], x.dtype)
    name = select_backend(backend, x.device, Request("mmd_segments", kind, len(params), x.dtype,
                                                     estimator, precision))
    if range_error is not None:
        raise ValueError(range_error)
    if check_finite:
        _check_finite_sets(x, y, x_offsets, y_offsets, x_weights, y_weights, unbiased, kind)
    return contract.mmd_segments(name, x, y, x_offsets, y_offsets, x_weights, y_weights, kind,
                                 params, unbiased, precision, out_dtype, scalar)


def _points(name: str, t, dims: tuple[int, ...]) -> None:
    check_tensor(name, t)
    if t.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if t.shape[-1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)})")


def _common(x, y):
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"y has d={y.shape[-1]} features but x has d={x.shape[-1]}; they must match")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move both to one device")
    if x.dtype != y.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    return x, y


def weighted_terms(x, y, x_weights, y_weights, kernel, *, estimator, backend, check_finite,
                   precision, value: bool = False) -> torch.Tensor:
    """(3,) terms of one weighted pair of sets (``mmd``/``mmd_terms`` with weights): B = 1;
    with ``value``, the 0-dim MMD^2 (float32, float64 for fp64 points).  x, y already checked
    2-D (and in their common dtype) by the caller."""
    xw = check_weights("x_weights", x_weights, x.shape[:1], x)
    yw = check_weights("y_weights", y_weights, y.shape[:1], y)
    # one set of each size, as equal sets: ranges (cached offset tensors, the one-set backward)
    return segment_terms(x, y, uniform_offsets(1, x.shape[0]), uniform_offsets(1, y.shape[0]), xw, yw,
                         kernel, estimator, backend, check_finite, precision,
                         contract.segments_value_dtype(x.dtype) if value else None, scalar=True)


def mmd_terms_batched(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    x_weights: Optional[torch.Tensor] = None,
    y_weights: Optional[torch.Tensor] = None,
    estimator: str = "unbiased",
    backend: str = "auto",
    check_finite: bool = False,
    precision: str = "ieee",
) -> torch.Tensor:
    """The (B, 3) float64 terms ``(mean k(x,x'), mean k(y,y'), mean k(x,y))`` of every set of
    :func:`mmd_batched` (weighted means with weights), so ``mmd = t[:, 0] + t[:, 1] - 2 t[:, 2]``."""
    return _batched(x, y, kernel, x_weights, y_weights, estimator, backend, check_finite,
                    precision, value=False)


def _batched(x, y, kernel, x_weights, y_weights, estimator, backend, check_finite, precision,
             value: bool) -> torch.Tensor:
    """:func:`mmd_terms_batched` (``value`` False) or :func:`mmd_batched` (True)."""
    _points("x", x, (3,))
    _points("y", y, (2, 3))
    x, y = _common(x, y)
    nsets, n = x.shape[0], x.shape[1]
    if nsets == 0:
        raise ValueError(f"x has no sets (shape {tuple(x.shape)})")
    shared = y.dim() == 2
    if not shared and y.shape[0] != nsets:
        raise ValueError(f"y has B={y.shape[0]} sets but x has B={nsets}; they must match "
                         "(or pass a 2-D y shared by every set)")
    m = y.shape[-2]
    xw = check_weights("x_weights", x_weights, x.shape[:2], x)
    yw = check_weights("y_weights", y_weights, y.shape[:-1], y)
    xo = uniform_offsets(nsets, n)
    yo = [0, m] if shared else uniform_offsets(nsets, m)
    # the varlen form of the batched one: the points go down as they are (the contract flattens
    # them; a reshape here would put a view node per input in the autograd graph)
    return segment_terms(x, y, xo, yo, None if xw is None else xw.reshape(-1),
                         None if yw is None else yw.reshape(-1), kernel, estimator, backend,
                         check_finite, precision,
                         contract.segments_value_dtype(x.dtype) if value else None)


def mmd_batched(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    x_weights: Optional[torch.Tensor] = None,
    y_weights: Optional[torch.Tensor] = None,
    estimator: str = "unbiased",
    backend: str = "auto",
    check_finite: bool = False,
    precision: str = "ieee",
) -> torch.Tensor:
    r"""Squared MMD of B pairs of sets in one call: entry b equals ``mmd(x[b], y[b])``.

    Args:
        x: (B, N, d) floating tensor (fp16, bf16, fp32 or fp64).
        y: (B, M, d), or (M, d) shared by every set.
        kernel, estimator, backend, check_finite, precision: as in :func:`wae_fast.mmd`
            (``backend`` among those implementing the ``mmd_segments`` family).
        x_weights: optional (B, N) reliability weights of x; ``y_weights``: (B, M), or (M,) for
            a shared y (see :mod:`wae_fast.segments` for the weighted estimators).

    Returns:
        (B,) tensor, float32 (float64 for fp64 inputs).  Gradients flow to x, y and the
        weights; each set uses its own shift (the mean of its y rows).
    """
    return _batched(x, y, kernel, x_weights, y_weights, estimator, backend, check_finite,
                    precision, value=True)


def mmd_varlen(
    x: torch.Tensor,
    y: torch.Tensor,
    x_offsets: Offsets,
    y_offsets: Optional[Offsets],
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    x_weights: Optional[torch.Tensor] = None,
    y_weights: Optional[torch.Tensor] = None,
    estimator: str = "unbiased",
    backend: str = "auto",
    check_finite: bool = False,
    precision: str = "ieee",
) -> torch.Tensor:
    r"""Squared MMD of B ragged pairs of sets in one call (the cu_seqlens convention of
    variable-length attention): set b is ``x[x_offsets[b]:x_offsets[b+1]]`` against
    ``y[y_offsets[b]:y_offsets[b+1]]``.

    Args:
        x: (sum_b N_b, d); y: (sum_b M_b, d).
        x_offsets, y_offsets: int64 (B + 1,) cumulative offsets from 0, non-decreasing, ending
            at the row count; a CPU tensor or a sequence of ints (validated on host values; a
            device tensor is copied to the host once, a synchronisation; pass a Python list
            under torch.compile).  ``y_offsets=None``: y is shared by every set.
        x_weights: optional (sum_b N_b,) weights; ``y_weights`` (sum_b M_b,) (or (M,) shared).
        kernel, estimator, backend, check_finite, precision: as in :func:`wae_fast.mmd`.

    Returns:
        (B,) tensor, float32 (float64 for fp64 inputs); differentiable in x, y and the weights.
    """
    _points("x", x, (2,))
    _points("y", y, (2,))
    x, y = _common(x, y)
    xo = host_offsets("x_offsets", x_offsets, x.shape[0])
    if y_offsets is None:
        yo = [0, y.shape[0]]
    else:
        yo = host_offsets("y_offsets", y_offsets, y.shape[0])
        if len(yo) != len(xo):
            raise ValueError(f"y_offsets has B={len(yo) - 1} sets but x_offsets has "
                             f"B={len(xo) - 1}; they must match")
    xw = check_weights("x_weights", x_weights, x.shape[:1], x)
    yw = check_weights("y_weights", y_weights, y.shape[:1], y)
    return segment_terms(x, y, xo, yo, xw, yw, kernel, estimator, backend, check_finite, precision,
                         contract.segments_value_dtype(x.dtype))
