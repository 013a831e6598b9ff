"""Kernel specifications: small frozen objects that lower to (kind, params) for the backends.

Conventions (DESIGN.md section 2), with r = ||a - b||^2:

* IMQ:  k(a, b) = sum_s C_s / (C_s + r).  Tied to the prior N(0, sigma2 I_d):
  C_s = s * C_base with C_base = 2 * d * sigma2 (the expected r of two prior samples).
* RBF:  k(a, b) = sum_s exp(-r / (2 bw_s^2)), bw_s the bandwidth.  Tied to the prior:
  2 bw_s^2 = s * C_base.

Lowered form (the backend contract, see ``wae_fast.contract``): IMQ -> ``KIND_IMQ`` with
params = [C_1, ..., C_S]; RBF -> ``KIND_RBF`` with params = [gamma_1, ..., gamma_S],
gamma_s = 1 / (2 bw_s^2), so that k = sum_s exp(-gamma_s * r).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch

KIND_IMQ = 0
KIND_RBF = 1

#: The WAE paper's multi-scale set (Tolstikhin et al. 2018, reference code).
WAE_SCALES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

Number = Union[int, float]


def _as_tuple(name: str, value: Union[Number, Sequence[Number]]) -> tuple[float, ...]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive number or a sequence of them, got {value!r}")
    if isinstance(value, (int, float)):
        vals = (float(value),)
    else:
        if isinstance(value, str):
            raise TypeError(f"{name} must be a positive number or a sequence of them, got {value!r}")
        try:
            vals = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a positive number or a sequence of them, got {value!r}"
            ) from None
    if not vals:
        raise ValueError(f"{name} must not be empty")
    for v in vals:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return vals


@dataclass(frozen=True)
class IMQ:
    """Inverse multiquadratic kernel ``k(a, b) = sum_s C_s / (C_s + ||a - b||^2)``.

    Args:
        C: explicit constant(s). When given, ``scales`` and ``sigma2`` are ignored.
        scales: multipliers of ``C_base = 2 * d * sigma2`` used when ``C`` is None.
            The default is the WAE paper's (0.1, 0.2, 0.5, 1, 2, 5, 10).
        sigma2: variance of the prior N(0, sigma2 I) the constants are tied to.

    The multi-scale kernel is an unweighted sum, so its MMD is the sum of per-scale MMDs.
    """

    C: Union[float, tuple[float, ...], None] = None
    scales: tuple[float, ...] = WAE_SCALES
    sigma2: float = 1.0

    def __post_init__(self) -> None:
        if self.C is not None:
            object.__setattr__(self, "C", _as_tuple("C", self.C))
        object.__setattr__(self, "scales", _as_tuple("scales", self.scales))
        _as_tuple("sigma2", self.sigma2)

    def constants(self, d: int) -> tuple[float, ...]:
        """The C_s for points of dimension ``d``."""
        if self.C is not None:
            return self.C  # type: ignore[return-value]
        base = 2.0 * d * float(self.sigma2)
        return tuple(s * base for s in self.scales)

    def lower(self, d: int) -> tuple[int, list[float]]:
        return KIND_IMQ, list(self.constants(d))


@dataclass(frozen=True)
class RBF:
    """Gaussian kernel ``k(a, b) = sum_s exp(-||a - b||^2 / (2 bw_s^2))``.

    Args:
        bandwidth: explicit bandwidth(s) ``bw_s`` (the standard deviation ``s`` of the
            Gaussian). When given, ``scales`` and ``sigma2`` are ignored.
        scales: when ``bandwidth`` is None, ``2 bw_s^2 = scale * 2 * d * sigma2`` (tied to the
            prior like the IMQ constants). Default (1.0,): ``2 bw^2 = 2 d sigma2``.
        sigma2: prior variance for the tied form.
    """

    bandwidth: Union[float, tuple[float, ...], None] = None
    scales: tuple[float, ...] = (1.0,)
    sigma2: float = 1.0

    def __post_init__(self) -> None:
        if self.bandwidth is not None:
            object.__setattr__(self, "bandwidth", _as_tuple("bandwidth", self.bandwidth))
        object.__setattr__(self, "scales", _as_tuple("scales", self.scales))
        _as_tuple("sigma2", self.sigma2)

    def gammas(self, d: int) -> tuple[float, ...]:
        """gamma_s = 1 / (2 bw_s^2) for points of dimension ``d``."""
        if self.bandwidth is not None:
            return tuple(1.0 / (2.0 * bw * bw) for bw in self.bandwidth)  # type: ignore[union-attr]
        base = 2.0 * d * float(self.sigma2)
        return tuple(1.0 / (s * base) for s in self.scales)

    def lower(self, d: int) -> tuple[int, list[float]]:
        return KIND_RBF, list(self.gammas(d))


KernelSpec = Union[IMQ, RBF]

#: Range of IMQ constants the fp32 kernels accept: they evaluate two scales per reciprocal,
#: 1/((C1 + r)(C2 + r)), whose product must stay a normal fp32 number (the GPU flushes
#: subnormals to zero) and finite for the pairs that matter.
FP32_IMQ_RANGE = (1e-18, 1e18)


def check_compute_range(kind: int, params: list[float], dtype: torch.dtype) -> None:
    """Raise ValueError when an IMQ constant is outside :data:`FP32_IMQ_RANGE` for fp32 compute
    (fp16/bf16/fp32 inputs); fp64 inputs accept any positive constant."""
    if kind != KIND_IMQ or dtype == torch.float64:
        return
    lo, hi = FP32_IMQ_RANGE
    for c in params:
        if not lo <= c <= hi:
            raise ValueError(
                f"kernel: IMQ constant C={c:g} is outside [{lo:g}, {hi:g}], where the fp32 kernels "
                "(two scales per reciprocal) lose range; rescale the codes (C scales with their "
                "squared distances) or pass float64 inputs")


def resolve_kernel(kernel: Union[KernelSpec, str, None]) -> KernelSpec:
    """Accept a spec object, the names "imq"/"rbf" (their defaults), or None (the default IMQ)."""
    if kernel is None:
        return IMQ()
    if isinstance(kernel, (IMQ, RBF)):
        return kernel
    if isinstance(kernel, str):
        key = kernel.lower()
        if key == "imq":
            return IMQ()
        if key in ("rbf", "gaussian"):
            return RBF()
        raise ValueError(f"kernel: unknown kernel {kernel!r}; expected 'imq', 'rbf', IMQ(...) or RBF(...)")
    raise TypeError(f"kernel must be an IMQ or RBF spec or a name, got {type(kernel).__name__}")
