"""Kernel Inception Distance on features: :func:`kid` (Binkowski et al. 2018)."""
from __future__ import annotations

from typing import Optional

import torch

from .functional import mmd
from .kernel_specs import Polynomial
from .validation import check_finite as _check_finite
from .validation import check_tensor


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def kid(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    *,
    subset_size: Optional[int] = 1000,
    num_subsets: int = 100,
    generator: Optional[torch.Generator] = None,
    degree: int = 3,
    gamma: Optional[float] = None,
    coef0: float = 1.0,
    backend: str = "auto",
    check_finite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Kernel Inception Distance: the unbiased MMD^2 between feature sets with the polynomial
    kernel ``k(a, b) = (gamma a.b + coef0)^degree`` (defaults: ``(a.b / d + 1)^3``)::

        MMD_u^2 = 1/(m(m-1)) sum_{i!=j} k(r_i, r_j) + 1/(m(m-1)) sum_{i!=j} k(f_i, f_j)
                  - 2/m^2 sum_{i,j} k(r_i, f_j)

    Subset mode (``subset_size=m``, the metrics libraries' convention): for each of
    ``num_subsets`` subsets, ``randperm(N, generator=generator)[:m]`` selects the real features,
    then ``randperm(M, generator=generator)[:m]`` the fake ones (both drawn on the generator's
    device, the default CPU generator when None); returns the mean and the standard deviation
    (ddof 0) of the subset estimates.  With ``generator=None`` after ``torch.manual_seed(s)`` this
    draws the same subsets as torchmetrics' ``KernelInceptionDistance`` (and gives its values).

    Full mode (``subset_size=None``): the U-statistic over all N real and M fake features
    (sizes may differ; normalised by N(N-1), M(M-1), NM), memory-flat (no N x M matrix), with
    std 0 (one estimate).

    The kernel sums run on :func:`wae_fast.mmd`'s backends with exact ("ieee") fp32 dot products:
    KID values are ~1e-3 while the kernel means are 1 to 10, so TF32 rounding would dominate.

    Args:
        real_features, fake_features: (N, d) and (M, d) floating tensors (features, not images),
            on one device.
        subset_size: m, with 2 <= m <= min(N, M); None for the full statistic.
        num_subsets: number of subsets (>= 1); ignored in full mode.
        generator: torch.Generator for the permutations (None: the global CPU generator).
        degree, gamma, coef0: the polynomial kernel (gamma None: 1 / d).
        backend: as for :func:`wae_fast.mmd`.
        check_finite: raise ValueError on NaN/Inf features, and on features whose kernel
            powers overflow the compute dtype (otherwise both give NaN).

    Returns:
        (mean, std): 0-dim tensors, float64 for float64 features, float32 otherwise.  No
        gradients (a metric).
    """
    check_tensor("real_features", real_features)
    check_tensor("fake_features", fake_features)
    for name, t in (("real_features", real_features), ("fake_features", fake_features)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (samples, features), got shape {tuple(t.shape)}")
        if t.shape[0] < 2:
            raise ValueError(f"{name} has {t.shape[0]} sample(s); KID needs at least 2")
        if t.shape[1] == 0:
            raise ValueError(f"{name} has no features (shape {tuple(t.shape)})")
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(f"fake_features has d={fake_features.shape[1]} but real_features has "
                         f"d={real_features.shape[1]}; they must match")
    if real_features.device != fake_features.device:
        raise ValueError(f"real_features is on {real_features.device} but fake_features is on "
                         f"{fake_features.device}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    n, nf = real_features.shape[0], fake_features.shape[0]
    if subset_size is not None:
        _check_count("subset_size", subset_size, 2)
        if subset_size > min(n, nf):
            raise ValueError(f"subset_size={subset_size} is larger than a feature set "
                             f"(real: {n}, fake: {nf} samples)")
        _check_count("num_subsets", num_subsets, 1)
    spec = Polynomial(degree=degree, gamma=gamma, coef0=coef0)
    if check_finite:
        _check_finite("real_features", real_features)
        _check_finite("fake_features", fake_features)
    out_dtype = torch.float64 if torch.promote_types(real_features.dtype, fake_features.dtype) == torch.float64 \
        else torch.float32
    with torch.no_grad():
        if subset_size is None:
            value = mmd(real_features, fake_features, spec, estimator="unbiased", backend=backend)
            if check_finite:
                _check_kid_range(value, out_dtype)
            return value.to(out_dtype), torch.zeros((), dtype=out_dtype, device=value.device)
        gdev = generator.device if generator is not None else torch.device("cpu")
        dev = real_features.device
        scores = []
        for _ in range(num_subsets):
            pr = torch.randperm(n, generator=generator, device=gdev)[:subset_size].to(dev)
            pf = torch.randperm(nf, generator=generator, device=gdev)[:subset_size].to(dev)
            scores.append(mmd(real_features[pr], fake_features[pf], spec, estimator="unbiased",
                              backend=backend).to(torch.float64))
        s = torch.stack(scores)
        if check_finite:
            _check_kid_range(s, out_dtype)
        return s.mean().to(out_dtype), s.std(unbiased=False).to(out_dtype)


def _check_kid_range(scores: torch.Tensor, dtype: torch.dtype) -> None:
    """check_finite on finite features: a NaN score means a power of the polynomial kernel
    overflowed the compute dtype (outside its range, the hostile-input contract)."""
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"real_features, fake_features: the polynomial kernel (gamma a.b + coef0)^degree "
                         f"overflows {str(dtype)[6:]} compute for a pair of features, outside the "
                         "supported range (the result would be NaN); rescale the features")
