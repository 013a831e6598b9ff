r"""The "sampled" estimator: the U/V-statistic against M prior samples that are never stored.

Sample j is y_j[k] = sqrt(sigma2) * randn(seed, j * d + k), the contract's Philox stream
(:mod:`wae_fast.philox`, Triton's ``tl.randn``): every backend (reference, cpp, triton, cuda)
generates exactly these samples inside its ``prior_fwd/bwd`` ops, block by block or tile by
tile, so they agree to rounding.  :func:`prior_samples` materialises them for checking.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import contract
from ..dispatch import Request, select_backend
from ..kernel_specs import check_compute_range
from ..philox import prior_rows, resolve_seed
from ..validation import check_count, check_sigma2


def prior_samples(num_samples: int, d: int, *, sigma2: float = 1.0, seed: Optional[int] = None,
                  generator: Optional[torch.Generator] = None, block_size: int = 1024,
                  dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Materialise the (num_samples, d) prior samples that ``mmd_to_prior(...,
    estimator="sampled")`` (any backend) uses for the same seed (or the same ``generator``
    state) and compute dtype (fp64 for fp64 codes, fp32 otherwise), ``block_size`` rows at a
    time (the samples do not depend on it).  For tests and debugging."""
    check_count("num_samples", num_samples)
    check_count("d", d)
    check_count("block_size", block_size)
    s2 = check_sigma2(sigma2)
    s = resolve_seed(seed, generator)
    return torch.cat([prior_rows(j0, min(j0 + block_size, num_samples), d, s, s2, dtype, device)
                      for j0 in range(0, num_samples, block_size)])


def sampled_terms(x: torch.Tensor, kind: int, params: list[float], sigma2: float, unbiased: bool,
                  num_samples: int, seed: int, backend: str, precision: str) -> torch.Tensor:
    """float64 (3,) terms through the contract's prior op of the backend dispatch picks
    (gradient to x; the backward regenerates the samples).  ``x`` is validated."""
    name = select_backend(backend, x.device, Request("prior", kind, len(params), x.dtype,
                                                     "sampled", precision))
    check_compute_range(kind, params, x.dtype)
    return contract.prior_terms(name, x, kind, params, sigma2, unbiased, num_samples, seed,
                                precision)
