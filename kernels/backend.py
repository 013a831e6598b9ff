"""The Triton backend (``backend="triton"``): launch code and op registration.

Registers ``wae_fast::mmd_fwd_triton``, ``mmd_bwd_triton``, ``reparam_fwd_triton`` and
``reparam_bwd_triton`` through :func:`wae_fast.contract.define_backend_ops`:

* under the ``CUDA`` dispatch key when CUDA is available (compiled kernels);
* under the ``CPU`` dispatch key when ``TRITON_INTERPRET=1`` was set before this module was
  imported (the Triton interpreter: slow, for testing the kernels without a GPU).

The MMD backward is a separate recompute kernel (``fuses_grad=False``): the forward only
accumulates the three kernel sums (symmetric tiles visited once), and the backward visits every
tile of its row block, so neither pass needs atomics (see :mod:`wae_fast.kernels.mmd`).
Small calls (:func:`one_launch`: N, M <= 1024, d <= 64) take the contract's one-launch form
instead: the glue passes an empty offset, and one launch of :mod:`wae_fast.kernels.mmd_small`
computes the shifts, the terms and the fused gradient parts (the backward only scales them).

fp64 inputs run natively (fp64 compute and fp64 ``tl.dot``); set ``WAE_FAST_TRITON_FP64=reference``
to route them to the reference backend instead (with a warning).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from wae_fast.contract import (compute_dtype, define_backend_ops, per_term, PRECISIONS,
                               segments_unfused, term_shifts)
from wae_fast import segment_sums
from wae_fast.pairsum import pair_count

try:
    import triton

    from . import kmm as _kmm
    from . import mmd as _mmd
    from . import mmd_small as _small
    from . import prior as _prior
    from . import reparam as _rep
    from . import segments as _seg
    from .launch import device_guard, dot_precision, params_tensor, tl_compute_dtype
    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as exc:  # Triton missing or broken
    _IMPORT_ERROR = exc

#: True when this module's kernels were built for the Triton interpreter.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: How fp64 inputs are handled: "native" (fp64 kernels) or "reference" (warn and fall back).
FP64_MODE = os.environ.get("WAE_FAST_TRITON_FP64", "native")

REPARAM_BLOCK = 1024


def availability(device_type: str) -> Optional[str]:
    """None when the Triton backend runs on ``device_type``, else the reason it does not."""
    if _IMPORT_ERROR is not None:
        return f"triton could not be imported ({_IMPORT_ERROR}); install it with `pip install triton`"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available (torch.cuda.is_available() is False)"
        return None
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1" and INTERPRET:
            return None
        return ("Triton kernels run on CPU only under the Triton interpreter: set TRITON_INTERPRET=1 "
                "before wae_fast.kernels is imported (slow; meant for testing)")
    return f"the Triton backend does not support device type {device_type!r}"


# ----------------------------------------------------------------------------------------------
# checks


def _check_mmd_args(x, y, offset, kind, params, precision):
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd_fwd_triton: x {tuple(x.shape)} and y {tuple(y.shape)} must be (N, d), (M, d)")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError("mmd_fwd_triton: x and y must share dtype and device")
    if kind not in (_mmd.KIND_IMQ, _mmd.KIND_RBF, _mmd.KIND_POLY):
        raise ValueError(f"kind: unknown kernel kind {kind}")
    if len(params) == 0:
        raise ValueError("params must not be empty")
    if kind == _mmd.KIND_POLY and (len(params) != 3 or not 1 <= params[2] <= 64
                                   or params[2] != int(params[2])):
        raise ValueError("params: the polynomial kernel takes [gamma, coef0, degree], degree an "
                         "integer in [1, 64]")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: unknown precision {precision!r}; expected one of {PRECISIONS}")


def _fp64_to_reference(x) -> bool:
    if x.dtype == torch.float64 and FP64_MODE == "reference":
        warnings.warn("wae_fast triton backend: fp64 inputs are computed by the reference backend "
                      "(WAE_FAST_TRITON_FP64=reference)", RuntimeWarning, stacklevel=3)
        return True
    return False


# ----------------------------------------------------------------------------------------------
# MMD


def mmd_fwd(x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
    """Contract forward (see :mod:`wae_fast.contract`); returns empty gradient parts."""
    _check_mmd_args(x, y, offset, kind, params, precision)
    ct = compute_dtype(x.dtype)
    if _fp64_to_reference(x):
        from wae_fast.reference import mmd_terms_blocked
        return mmd_terms_blocked(x, y, offset, kind, params, unbiased, False, False)
    n, d = x.shape
    m = y.shape[0]
    x, y = x.contiguous(), y.contiguous()
    p = params_tensor(params, ct, x.device, kind)
    prec = dot_precision(x.dtype, precision)
    tct = tl_compute_dtype(x.dtype)
    if offset.numel() == 0:  # one_launch (small sets): shifts, terms and gradient parts in one launch
        with device_guard(x):
            return _small.launch_small(x, y, p, unbiased, kind, grad_x, grad_y, prec, ct, tct)
    off = per_term(offset).to(ct).contiguous()  # rows: the xx, yy and xy shifts
    bucket = _mmd.size_bucket(max(n, m))
    with device_guard(x):
        sxx = _mmd.launch_fwd(x, x, off[0], p, True, bool(unbiased), kind, prec, tct, bucket)
        syy = _mmd.launch_fwd(y, y, off[1], p, True, bool(unbiased), kind, prec, tct, bucket)
        sxy = _mmd.launch_fwd(x, y, off[2], p, False, bool(unbiased), kind, prec, tct, bucket)
    nxx, nyy = pair_count(n, unbiased), pair_count(m, unbiased)
    terms = torch.stack([sxx / nxx, syy / nyy, sxy / (n * m)])
    empty = x.new_empty((0,), dtype=ct)
    return terms, empty, empty.clone()


def mmd_bwd(grad_terms, x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
    """Contract backward: sum_t grad_terms[t] d terms[t]/dx (and /dy), in the input dtype."""
    _check_mmd_args(x, y, offset, kind, params, precision)
    ct = compute_dtype(x.dtype)
    if _fp64_to_reference(x):
        from wae_fast.reference import mmd_bwd as reference_bwd
        return reference_bwd(grad_terms, x, y, offset, kind, params, unbiased, grad_x, grad_y, precision)
    n, d = x.shape
    m = y.shape[0]
    x, y = x.contiguous(), y.contiguous()
    if offset.numel() == 0:  # a one-launch forward that returned no parts for this input
        offset = term_shifts(kind, x, y)
    off = per_term(offset).to(ct).contiguous()
    p = params_tensor(params, ct, x.device, kind)
    prec = dot_precision(x.dtype, precision)
    tct = tl_compute_dtype(x.dtype)
    bucket = _mmd.size_bucket(max(n, m))
    gt = grad_terms.to(device=x.device, dtype=torch.float64)
    nxx, nyy = pair_count(n, unbiased), pair_count(m, unbiased)
    # d r_ij / d a_i = 2 (a_i - b_j); each unordered self pair appears twice in the sum: 4 / nxx.
    gx = gy = None
    with device_guard(x):
        if grad_x:
            cx = torch.stack([gt[0] * (4.0 / nxx), gt[2] * (2.0 / (n * m))]).to(ct)
            gx = _mmd.launch_bwd(x, y, off[0], p, cx, kind, prec, tct, bucket, unbiased, off[2])
        if grad_y:
            cy = torch.stack([gt[1] * (4.0 / nyy), gt[2] * (2.0 / (n * m))]).to(ct)
            gy = _mmd.launch_bwd(y, x, off[1], p, cy, kind, prec, tct, bucket, unbiased, off[2])
    if gx is None:
        gx = x.new_empty((0,))
    if gy is None:
        gy = y.new_empty((0,))
    return gx, gy


# ----------------------------------------------------------------------------------------------
# Sampling


def reparam_fwd(mu, logvar, seed):
    """z = mu + exp(logvar / 2) * eps, eps = tl.randn(seed, flat index)."""
    mu, logvar = mu.contiguous(), logvar.contiguous()
    z = torch.empty_like(mu)
    n = mu.numel()
    if n:
        with device_guard(mu):
            _rep._reparam_fwd_kernel[(triton.cdiv(n, REPARAM_BLOCK),)](
                mu, logvar, z, n, int(seed), CT=tl_compute_dtype(mu.dtype), BLOCK=REPARAM_BLOCK)
    return z


def reparam_bwd(grad_z, logvar, seed):
    """grad_logvar = grad_z * eps * exp(logvar / 2) / 2 with eps regenerated from ``seed``."""
    grad_z, logvar = grad_z.contiguous(), logvar.contiguous()
    g = torch.empty_like(logvar)
    n = logvar.numel()
    if n:
        with device_guard(logvar):
            _rep._reparam_bwd_kernel[(triton.cdiv(n, REPARAM_BLOCK),)](
                grad_z, logvar, g, n, int(seed), CT=tl_compute_dtype(logvar.dtype), BLOCK=REPARAM_BLOCK)
    return g


def eps(shape, seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The noise the sampling kernels use for ``seed`` (z with mu = 0, logvar = 0)."""
    zero = torch.zeros(shape, dtype=dtype, device=device)
    return reparam_fwd(zero, zero, seed)


# ----------------------------------------------------------------------------------------------
# Registration

def prior_fwd(x, kind, params, sigma2, unbiased, num_samples, seed, precision):
    """wae_fast::prior_fwd_triton: the terms with the prior samples generated in-kernel."""
    return _prior.prior_terms_fwd(x, kind, params, sigma2, unbiased, num_samples, seed, precision)


def prior_bwd(grad_terms, x, kind, params, sigma2, unbiased, num_samples, seed, precision):
    """wae_fast::prior_bwd_triton: d/dx, the prior samples regenerated in-kernel."""
    return _prior.prior_terms_bwd(grad_terms, x, kind, params, sigma2, unbiased, num_samples,
                                  seed, precision)


# ----------------------------------------------------------------------------------------------
# kernel_matmul


def kernel_matmul_fwd(x, y, v, offset, kind, params, precision):
    """wae_fast::kernel_matmul_fwd_triton: K(x, y) @ v (see :mod:`wae_fast.kernels.kmm`)."""
    _check_mmd_args(x, y, offset, kind, params, precision)
    ct = compute_dtype(x.dtype)
    x, y, v = x.contiguous(), y.contiguous(), v.contiguous()
    with device_guard(x):
        return _kmm.launch_fwd(x, y, v, per_term(offset)[2].to(ct).contiguous(), params_tensor(params, ct, x.device, kind),
                               kind, dot_precision(x.dtype, precision), tl_compute_dtype(x.dtype))


def kernel_matmul_bwd(grad_out, x, y, v, offset, kind, params, grad_x, grad_y, precision):
    """wae_fast::kernel_matmul_bwd_triton: gradients of <grad_out, K(x, y) @ v> to x and y."""
    _check_mmd_args(x, y, offset, kind, params, precision)
    ct = compute_dtype(x.dtype)
    x, y, v, g = x.contiguous(), y.contiguous(), v.contiguous(), grad_out.contiguous()
    off = per_term(offset)[2].to(ct).contiguous()  # K(x, y) is a cross term
    p = params_tensor(params, ct, x.device, kind)
    prec, tct = dot_precision(x.dtype, precision), tl_compute_dtype(x.dtype)
    gx, gy = x.new_empty((0,)), y.new_empty((0,))
    with device_guard(x):
        if grad_x:
            gx = _kmm.launch_grad(x, y, g, v, off, p, kind, prec, tct)
        if grad_y:
            gy = _kmm.launch_grad(y, x, v, g, off, p, kind, prec, tct)
    return gx, gy


# ----------------------------------------------------------------------------------------------
# mmd_segments: every term of every set in one launch (+ one finalize), every gradient in one
# launch (kernels/segments.py); the task tables are wae_fast.segment_sums.Plan's


def mmd_segments_fwd(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased,
                     grad_x, grad_y, grad_xw, grad_yw, precision, value_parts=False):
    """wae_fast::mmd_segments_fwd_triton: (B, 3) terms (see :mod:`wae_fast.kernels.segments`);
    the gradients are the backward's (no fused parts)."""
    if x.shape[1] > _seg.MAX_D:
        return segments_unfused(segment_sums.segment_terms(
            x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased,
            compute_dtype(x.dtype)), x)
    X, Y, xw, yw, sh = segment_sums.plan_inputs(x, y, x_weights, y_weights, shifts)
    plan = segment_sums.get_plan(x_offsets, y_offsets, _seg.block_size(X.dtype), x.device)
    with device_guard(x):
        return segments_unfused(_seg.forward(X, Y, xw, yw, plan, sh, params, kind, unbiased,
                                             dot_precision(X.dtype, precision),
                                             tl_compute_dtype(X.dtype)), x)


def mmd_segments_bwd(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
                     params, unbiased, grad_x, grad_y, grad_xw, grad_yw, precision):
    """wae_fast::mmd_segments_bwd_triton: gradients to x, y and the weights (recompute, one launch)."""
    if x.shape[1] > _seg.MAX_D:
        return segment_sums.segment_grads(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights,
                                          y_weights, shifts, kind, params, unbiased, grad_x, grad_y,
                                          grad_xw, grad_yw, compute_dtype(x.dtype))
    X, Y, xw, yw, sh = segment_sums.plan_inputs(x, y, x_weights, y_weights, shifts)
    plan = segment_sums.get_plan(x_offsets, y_offsets, _seg.block_size(X.dtype), x.device)
    with device_guard(x):
        gx, gy, gxw, gyw = _seg.backward(
            grad_terms.double().contiguous(), terms.double().contiguous(), X, Y, xw, yw, plan, sh,
            params, kind, unbiased, (grad_x, grad_y, grad_xw, grad_yw),
            dot_precision(X.dtype, precision), tl_compute_dtype(X.dtype))
    empty = x.new_empty((0,))
    return (gx.to(x.dtype) if grad_x else empty, gy.to(y.dtype) if grad_y else empty,
            gxw.to(x_weights.dtype) if grad_xw else empty,
            gyw.to(y_weights.dtype) if grad_yw else empty)


_IMPLS = dict(fuses_grad=False, mmd_fwd=mmd_fwd, mmd_bwd=mmd_bwd,
              reparam_fwd=reparam_fwd, reparam_bwd=reparam_bwd,
              prior_fwd=prior_fwd, prior_bwd=prior_bwd,
              kernel_matmul_fwd=kernel_matmul_fwd, kernel_matmul_bwd=kernel_matmul_bwd,
              mmd_segments_fwd=mmd_segments_fwd, mmd_segments_bwd=mmd_segments_bwd)



def one_launch(x, y, kind) -> bool:
    """The calls :mod:`wae_fast.kernels.mmd_small` computes in one launch (N, M <= 1024,
    d <= 64; not fp64 routed to the reference)."""
    return (_small.fits(x.shape[0], y.shape[0], x.shape[1])
            and not (x.dtype == torch.float64 and FP64_MODE == "reference"))


define_backend_ops("triton", fuses_grad=False)  # schemas, fakes and autograd, always
if _IMPORT_ERROR is None:
    if torch.cuda.is_available():
        define_backend_ops("triton", dispatch_key="CUDA", one_launch=one_launch, **_IMPLS)
    if INTERPRET:
        define_backend_ops("triton", dispatch_key="CPU", one_launch=one_launch, **_IMPLS)
