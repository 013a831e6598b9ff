"""Input checks shared by every public entry point: clear exceptions that name the argument."""
from __future__ import annotations

import math

import torch

from .contract import term_shifts
from .kernel_specs import KIND_IMQ, max_sq_norm

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ESTIMATORS = ("unbiased", "biased")


def check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has unsupported dtype {t.dtype}; expected one of float16, bfloat16, "
            "float32, float64"
        )


def check_points(x, y, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two point sets (N, d) and (M, d); returns them in their common dtype."""
    check_tensor("x", x)
    check_tensor("y", y)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    # the common case in a few attribute reads; anything else takes the checks below, which
    # raise the first error in their order
    xs, ys = x.shape, y.shape
    least = 2 if estimator == "unbiased" else 1
    if (len(xs) == 2 and len(ys) == 2 and xs[0] >= least and ys[0] >= least and xs[1] > 0
            and xs[1] == ys[1] and x.device == y.device):
        if x.dtype != y.dtype:
            common = torch.promote_types(x.dtype, y.dtype)
            x, y = x.to(common), y.to(common)
        return x, y
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (points, features), got shape {tuple(t.shape)}; "
                             "flatten multi-channel latents first, e.g. z.flatten(1)")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y has d={y.shape[1]} features but x has d={x.shape[1]}; they must match")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move both to one device")
    if estimator == "unbiased":
        for name, t in (("x", x), ("y", y)):
            if t.shape[0] < 2:
                raise ValueError(f"{name} has {t.shape[0]} point(s); the unbiased estimator needs "
                                 "at least 2 (use estimator='biased')")
    if x.dtype != y.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    return x, y


def check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def check_count(name: str, v, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


def check_codes(x, unbiased: bool, estimator: str) -> None:
    """Codes compared with a prior: a non-empty (N, d) floating tensor, N >= 2 where needed."""
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


def check_sigma2(sigma2) -> float:
    s2 = float(sigma2)
    if not math.isfinite(s2) or s2 <= 0:
        raise ValueError(f"sigma2 must be finite and > 0, got {sigma2!r}")
    return s2


def check_rows_in_range(name: str, t: torch.Tensor, offset: torch.Tensor, shift: str) -> None:
    """ValueError naming ``name`` when a row of ``t`` shifted by ``offset`` (described by
    ``shift``) is outside the supported magnitude range of the compute dtype, |p - offset|^2 <=
    MAX_SQ_NORM (:data:`wae_fast.kernel_specs.MAX_SQ_NORM`), where the backends return NaN.
    Data dependent: synchronises with the device (``check_finite=True`` only)."""
    ct = torch.float64 if t.dtype == torch.float64 else torch.float32
    lim = max_sq_norm(ct)
    limit = f"|point - {shift}| <= {math.sqrt(lim):.4g} for {str(ct)[6:]} compute"
    if not bool(torch.isfinite(offset).all()):
        raise ValueError(f"{name}: the shift {shift} every backend subtracts overflows "
                         f"{str(ct)[6:]}; the supported range is {limit}")
    worst = float((t.detach().double() - offset.double()).square().sum(1).max())
    if not worst <= lim:
        raise ValueError(f"{name}: a point lies {math.sqrt(worst):.4g} from {shift}, outside the "
                         f"supported magnitude range {limit} (the result would be NaN); rescale "
                         "the inputs" + ("" if ct == torch.float64 else " or pass float64 inputs"))


def check_in_range(x: torch.Tensor, y: torch.Tensor) -> None:
    """:func:`check_rows_in_range` for ``mmd`` (IMQ, RBF), on the coordinates every backend
    computes with: x shifted by median(x) (xx term) and y by median(y) (yy term), both by
    (N median(x) + M median(y)) / (N + M) (xy term), the shifts computed as the glue does
    (:func:`wae_fast.contract.term_shifts`, in the compute dtype)."""
    off = term_shifts(KIND_IMQ, x, y)
    pooled = "(N median(x) + M median(y)) / (N + M)"
    for name, t, row, shift in (("x", x, 0, "median(x)"), ("y", y, 1, "median(y)"),
                                ("x", x, 2, pooled), ("y", y, 2, pooled)):
        check_rows_in_range(name, t, off[row], shift)


def check_poly_in_range(terms: torch.Tensor, dtype: torch.dtype) -> None:
    """``check_finite`` for the polynomial kernel (finite inputs): ValueError naming the argument
    when a term overflowed the compute dtype (its value would be NaN).  The kernel is not a
    function of shifted distances, so its range is that of the values it computes:
    |gamma a.b + coef0|^degree (and the row sums) finite in the compute dtype."""
    ok = torch.isfinite(terms).tolist()
    if all(ok):
        return
    ct = "float64" if dtype == torch.float64 else "float32"
    name = "x" if not ok[0] else "y" if not ok[1] else "x and y"
    raise ValueError(f"{name}: the polynomial kernel (gamma a.b + coef0)^degree overflows {ct} "
                     f"compute (max {torch.finfo(getattr(torch, ct)).max:.4g}) for a pair of these "
                     "points, outside the supported range (the result would be NaN); rescale the "
                     "inputs or lower gamma" + ("" if ct == "float64" else " or pass float64 inputs"))
