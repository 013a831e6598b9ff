"""Kernel-matrix products without the kernel matrix: :func:`kernel_matmul`."""
from __future__ import annotations

from typing import Union

import torch

from . import contract
from .dispatch import Request, select_backend
from .kernel_specs import IMQ, TRANSLATION_INVARIANT, KernelSpec, check_compute_range, resolve_kernel
from .validation import check_finite as _check_finite
from .validation import check_rows_in_range, check_tensor

_DEFAULT_KERNEL = IMQ()


def kernel_matmul(
    x: torch.Tensor,
    y: torch.Tensor,
    v: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    backend: str = "auto",
    check_finite: bool = False,
    precision: str = "ieee",
) -> torch.Tensor:
    r"""``K(x, y) @ v`` without forming the (N, M) kernel matrix::

        out_ip = sum_j k(x_i, y_j) v_jp

    computed tile by tile (memory O((N + M)(d + P)) plus one tile per thread or program).

    Args:
        x: (N, d) floating tensor (fp16, bf16, fp32 or fp64).
        y: (M, d), same device and d as ``x``.
        v: (M, P) or (M,) (then the result is (N,)).
        kernel: :class:`~wae_fast.IMQ` (default), :class:`~wae_fast.RBF`,
            :class:`~wae_fast.Polynomial` or their names.
        backend: ``"auto"``, ``"reference"``, ``"cpp"``, ``"triton"`` (see
            :func:`wae_fast.available_backends` with ``family="kernel_matmul"``).
        check_finite: raise ``ValueError`` on NaN/Inf inputs, on points outside the supported
            magnitude range (IMQ, RBF: ``|p - median(y)| <= 2^30`` for fp32 compute, ``2^248``
            for fp64) and on an overflowed polynomial kernel (syncs with the device); when off,
            such inputs give NaN in the rows/columns paired with them.
        precision: fp32 dot-product precision for tensor-core backends ("ieee" exact, the
            default, "tf32x3", "tf32"); exact backends ignore it.

    Returns:
        (N, P) (or (N,)) in the common dtype of the inputs, accumulated in fp32 (fp64 for fp64
        inputs).  Differentiable in ``x``, ``y`` and ``v``
        (dv = K(y, x) @ grad, dx_i = sum_j grad_i . v_j * dk(x_i, y_j)/dx_i); double backward is
        not supported.
    """
    for name, t in (("x", x), ("y", y), ("v", v)):
        check_tensor(name, t)
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (points, features), got shape {tuple(t.shape)}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y has d={y.shape[1]} features but x has d={x.shape[1]}; they must match")
    if v.dim() not in (1, 2) or v.shape[0] != y.shape[0]:
        raise ValueError(f"v must be (M,) or (M, P) with M = {y.shape[0]} (the rows of y), "
                         f"got shape {tuple(v.shape)}")
    if v.dim() == 2 and v.shape[1] == 0:
        raise ValueError(f"v is empty (shape {tuple(v.shape)})")
    if not (x.device == y.device == v.device):
        raise ValueError(f"x, y and v must be on one device, got {x.device}, {y.device}, {v.device}")
    if precision not in contract.PRECISIONS:
        raise ValueError(f"precision: unknown precision {precision!r}; expected one of {contract.PRECISIONS}")
    spec = resolve_kernel(kernel)
    common = torch.promote_types(torch.promote_types(x.dtype, y.dtype), v.dtype)
    x, y, v = x.to(common), y.to(common), v.to(common)
    kind, params = spec.lower(x.shape[1])
    name = select_backend(backend, x.device, Request("kernel_matmul", kind, len(params), x.dtype,
                                                     precision=precision))
    if check_finite:
        for n_, t in (("x", x), ("y", y), ("v", v)):
            _check_finite(n_, t)
    check_compute_range(kind, params, x.dtype)
    if check_finite:
        if kind in TRANSLATION_INVARIANT:  # the range on the coordinates the backends use
            off = contract.shift_for(kind, y)
            check_rows_in_range("x", x, off, "median(y)")
            check_rows_in_range("y", y, off, "median(y)")
    vec = v.dim() == 1
    out = contract.kernel_matmul(name, x, y, v[:, None] if vec else v, kind, params, precision)
    if check_finite and kind not in TRANSLATION_INVARIANT and not bool(torch.isfinite(out).all()):
        raise ValueError("x, y: the polynomial kernel (gamma a.b + coef0)^degree (or a sum of it "
                         f"times v) overflows {str(contract.compute_dtype(x.dtype))[6:]} compute, "
                         "outside the supported range (the result would be NaN); rescale the inputs")
    return out[:, 0] if vec else out
