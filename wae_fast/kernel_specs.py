"""Kernel specifications: small frozen objects that lower to (kind, params) for the backends.

Conventions (DESIGN.md section 2), with r = ||a - b||^2:

* IMQ:  k(a, b) = sum_s C_s / (C_s + r).  Tied to the prior N(0, sigma2 I_d):
  C_s = s * C_base with C_base = 2 * d * sigma2 (the expected r of two prior samples).
* RBF:  k(a, b) = sum_s exp(-r / (2 bw_s^2)), bw_s the bandwidth.  Tied to the prior:
  2 bw_s^2 = s * C_base.
* Polynomial: k(a, b) = (gamma a.b + coef0)^degree, gamma = 1/d by default (with degree 3, KID's
  kernel).  Not translation invariant: points are never shifted for it.

Lowered form (the backend contract, see ``wae_fast.contract``): IMQ -> ``KIND_IMQ`` with
params = [C_1, ..., C_S]; RBF -> ``KIND_RBF`` with params = [gamma_1, ..., gamma_S],
gamma_s = 1 / (2 bw_s^2), so that k = sum_s exp(-gamma_s * r); Polynomial -> ``KIND_POLY`` with
params = [gamma, coef0, degree] (degree an integer stored as a float).

Validation happens after derivation: :meth:`IMQ.lower` / :meth:`RBF.lower` reject a derived
constant that is not finite and > 0, :func:`check_compute_range` one outside
:data:`PARAM_RANGE` of the compute dtype, both with a ValueError naming the user's arguments.
:data:`MAX_SQ_NORM` is the supported magnitude range of the (shifted) points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch

KIND_IMQ = 0
KIND_RBF = 1
KIND_POLY = 2

#: Kinds that depend on r = ||a - b||^2 only: the backends may shift both sets by one offset.
TRANSLATION_INVARIANT = (KIND_IMQ, KIND_RBF)

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

    def origin(self, d: int) -> str:
        """The arguments the constants come from (named by validation errors)."""
        if self.C is not None:
            return f"C={self.C!r}"
        return f"sigma2={self.sigma2!r}, scales={self.scales!r} (C_s = s * 2 * d * sigma2, d={d})"

    def lower(self, d: int) -> tuple[int, list[float]]:
        params = list(self.constants(d))
        _check_derived(KIND_IMQ, params, self.origin(d))
        return KIND_IMQ, params


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
        """gamma_s = 1 / (2 bw_s^2) for points of dimension ``d`` (inf where that overflows or
        the denominator underflows to 0; :meth:`lower` rejects it)."""
        if self.bandwidth is not None:
            # 0.5 / bw / bw: no intermediate bw^2 that underflows to 0 (ZeroDivisionError)
            return tuple(_div(_div(0.5, bw), bw) for bw in self.bandwidth)  # type: ignore[union-attr]
        base = 2.0 * d * float(self.sigma2)
        return tuple(_div(_div(1.0, s), base) for s in self.scales)

    def origin(self, d: int) -> str:
        """The arguments the gammas come from (named by validation errors)."""
        if self.bandwidth is not None:
            return f"bandwidth={self.bandwidth!r} (gamma = 1 / (2 bandwidth^2))"
        return (f"sigma2={self.sigma2!r}, scales={self.scales!r} "
                f"(gamma_s = 1 / (s * 2 * d * sigma2), d={d})")

    def lower(self, d: int) -> tuple[int, list[float]]:
        params = list(self.gammas(d))
        _check_derived(KIND_RBF, params, self.origin(d))
        return KIND_RBF, params


@dataclass(frozen=True)
class Polynomial:
    """Polynomial kernel ``k(a, b) = (gamma * a.b + coef0)^degree``.

    Args:
        degree: integer >= 1 (3 with the defaults is the kernel of KID, Binkowski et al. 2018).
        gamma: the dot-product scale; None means ``1 / d`` for points of dimension ``d``.
        coef0: the additive constant (finite).

    Not translation invariant, so the backends never shift the points for it; a power that
    overflows the compute dtype is NaN on every backend (never inf, never a finite wrong value);
    ``check_finite=True`` raises a ValueError instead.
    """

    degree: int = 3
    gamma: Union[float, None] = None
    coef0: float = 1.0

    def __post_init__(self) -> None:
        deg = self.degree
        if isinstance(deg, bool) or not isinstance(deg, (int, float)) or deg != int(deg) or deg < 1:
            raise ValueError(f"degree must be an integer >= 1, got {deg!r}")
        if int(deg) > 64:
            raise ValueError(f"degree must be at most 64, got {deg!r}")
        object.__setattr__(self, "degree", int(deg))
        if self.gamma is not None:
            object.__setattr__(self, "gamma", _as_tuple("gamma", self.gamma)[0])
        c = self.coef0
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ValueError(f"coef0 must be a finite number, got {c!r}")
        object.__setattr__(self, "coef0", float(c))

    def lower(self, d: int) -> tuple[int, list[float]]:
        gamma = 1.0 / d if self.gamma is None else float(self.gamma)
        return KIND_POLY, [gamma, self.coef0, float(self.degree)]


KernelSpec = Union[IMQ, RBF, Polynomial]

def _div(a: float, b: float) -> float:
    """a / b for a, b > 0, inf where the quotient overflows or b underflowed to 0."""
    try:
        return a / b
    except (ZeroDivisionError, OverflowError):
        return math.inf


def _check_derived(kind: int, params: list[float], origin: str) -> None:
    """Every derived constant finite and > 0, else ValueError naming the user's arguments."""
    for p in params:
        if not (math.isfinite(p) and p > 0.0):
            what = "IMQ constant C" if kind == KIND_IMQ else "RBF gamma"
            raise ValueError(f"kernel: {what}={p:g} derived from {origin} is not a finite "
                             "positive number")


#: Range of IMQ constants the fp32 kernels accept: they evaluate two scales per reciprocal,
#: 1/((C1 + r)(C2 + r)), whose product must stay a normal fp32 number (the GPU flushes
#: subnormals to zero) and finite for every pair inside :data:`MAX_SQ_NORM`.
FP32_IMQ_RANGE = (1e-18, 1e18)

#: Supported range of every kernel constant (IMQ C_s and RBF gamma_s = 1/(2 bw^2)) per compute
#: dtype.  With the coordinates inside :data:`MAX_SQ_NORM` (r <= 4 MAX_SQ_NORM), the paired
#: reciprocal's (C1 + r)(C2 + r), its inverse, g r and the gradient's W x products stay finite
#: and normal: fp32 (5.6e18)^2 = 3e37, fp64 (1.8e150)^2 = 3e300.
PARAM_RANGE: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: FP32_IMQ_RANGE,
    torch.float64: (1e-150, 1e150),
}

#: Supported magnitude range of the points, per compute dtype (fp32 also for fp16/bf16 inputs):
#: every shifted point a - offset (each term its own shift: mmd's xx term by median(x), yy by
#: median(y), xy by their size-weighted mean, ``wae_fast.contract.term_shifts``) must have a squared norm
#: <= MAX_SQ_NORM, i.e. |a - offset| <= 2^30 ~ 1.07e9 (fp32) or 2^248 ~ 4.5e74 (fp64).  Every
#: backend (reference, cpp, triton, cuda; csrc/include/wae_fast/tile_math.h holds the same
#: numbers) makes the pairs of a point outside it NaN; ``check_finite=True`` raises instead.
MAX_SQ_NORM: dict[torch.dtype, float] = {torch.float32: 2.0**60, torch.float64: 2.0**496}


def max_sq_norm(dtype: torch.dtype) -> float:
    """:data:`MAX_SQ_NORM` of the compute dtype of inputs of ``dtype``."""
    return MAX_SQ_NORM[torch.float64 if dtype == torch.float64 else torch.float32]


def check_compute_range(kind: int, params: list[float], dtype: torch.dtype,
                        spec: "KernelSpec | None" = None, d: int = 0) -> None:
    """Raise ValueError, before any work, when a lowered constant is not finite and inside
    :data:`PARAM_RANGE` of the compute dtype of ``dtype`` (fp32 for fp16/bf16/fp32 inputs);
    ``spec`` (and ``d``) name the arguments the constants were derived from."""
    if kind == KIND_POLY:  # validated by Polynomial; overflow gives inf, never a finite value
        return
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    lo, hi = PARAM_RANGE[ct]
    what = "IMQ constant C" if kind == KIND_IMQ else "RBF gamma"
    origin = f" derived from {spec.origin(d)}" if spec is not None else ""
    for c in params:
        if not (math.isfinite(c) and lo <= c <= hi):
            raise ValueError(
                f"kernel: {what}={c:g}{origin} is outside [{lo:g}, {hi:g}], the range "
                f"{str(ct)[6:]} compute supports (two IMQ scales per reciprocal, "
                "1/((C1 + r)(C2 + r)), must stay finite and normal); rescale the codes (C and "
                "1/gamma scale with their squared distances)"
                + ("" if ct == torch.float64 else " or pass float64 inputs"))


_LOWERED: dict = {}


def lower_checked(spec: "KernelSpec", d: int, dtype: torch.dtype) -> tuple[int, list[float], "str | None"]:
    """``spec.lower(d)`` (params as floats) and the message of :func:`check_compute_range` for
    ``dtype`` (None when in range), cached per (spec, d, dtype) (specs are frozen, hashable
    dataclasses): a training loop pays one lookup.  The params list is shared: never modify it."""
    key = (spec, d, dtype)
    hit = _LOWERED.get(key)
    if hit is None:
        kind, params = spec.lower(d)
        params = [float(p) for p in params]
        try:
            check_compute_range(kind, params, dtype, spec, d)
            err = None
        except ValueError as exc:
            err = str(exc)
        hit = (kind, params, err)
        if not torch.compiler.is_compiling():  # filling a dict inside a trace breaks its guards
            _LOWERED[key] = hit
    return hit


def resolve_kernel(kernel: Union[KernelSpec, str, None]) -> KernelSpec:
    """Accept a spec object, the names "imq"/"rbf" (their defaults), or None (the default IMQ)."""
    if kernel is None:
        return IMQ()
    if isinstance(kernel, (IMQ, RBF, Polynomial)):
        return kernel
    if isinstance(kernel, str):
        key = kernel.lower()
        if key == "imq":
            return IMQ()
        if key in ("rbf", "gaussian"):
            return RBF()
        if key in ("poly", "polynomial"):
            return Polynomial()
        raise ValueError(f"kernel: unknown kernel {kernel!r}; expected 'imq', 'rbf', 'polynomial', "
                         "IMQ(...), RBF(...) or Polynomial(...)")
    raise TypeError(f"kernel must be an IMQ, RBF or Polynomial spec or a name, got {type(kernel).__name__}")


def resolve_shift_invariant_kernel(kernel: Union[KernelSpec, str, None], where: str) -> Union[IMQ, RBF]:
    """:func:`resolve_kernel` for the entry points built on distances only (prior closed forms,
    shifted distributed sums): a Polynomial spec gets a ValueError naming ``kernel``."""
    spec = resolve_kernel(kernel)
    if isinstance(spec, Polynomial):
        raise ValueError(f"kernel: {where} supports the IMQ and RBF kernels only (functions of "
                         "||a - b||^2); use mmd/mmd_terms/kid for the Polynomial kernel")
    return spec
