"""wae_fast: fused, memory-flat MMD and reparameterized sampling for Wasserstein Auto-Encoders.

Public API: :func:`mmd`, :func:`mmd_terms`, :class:`MMDLoss`, :class:`IMQ`, :class:`RBF`, :class:`Polynomial`,
:func:`mmd_batched`, :func:`mmd_terms_batched`, :func:`mmd_varlen` (many sets, ragged
sets, weighted samples), :func:`kernel_matmul`, :func:`kid`, :func:`mmd_test`, :func:`median_heuristic`,
:func:`reparameterize`, :func:`logvar_penalty`, :func:`available_backends`,
:func:`which_backend`; beyond one batch and one process: :func:`mmd_to_prior`,
:func:`mmd_linear`, :func:`mmd_distributed`, :func:`mmd_to_prior_distributed`.  Importing this package never needs Triton, a GPU or a compiled extension.
"""
from __future__ import annotations

from . import reference as _reference  # noqa: F401  (registers the reference ops)
from .dispatch import BACKENDS, available_backends, which_backend
from .distributed import mmd_distributed, mmd_to_prior_distributed, run_local_ranks
from .functional import logvar_penalty, mmd, mmd_terms, reparameterize
from .kernel_matmul import kernel_matmul
from .kernel_specs import IMQ, RBF, WAE_SCALES, Polynomial
from .kid import kid
from .losses import MMDLoss
from .segments import mmd_batched, mmd_terms_batched, mmd_varlen
from .prior import mmd_linear, mmd_to_prior, prior_samples
from .two_sample import MMDTestResult, median_heuristic, mmd_test

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "IMQ", "Polynomial", "RBF", "WAE_SCALES", "MMDLoss", "available_backends", "kernel_matmul", "kid", "logvar_penalty", "median_heuristic",
    "MMDTestResult", "mmd_test",
    "mmd", "mmd_batched", "mmd_distributed", "mmd_terms_batched", "mmd_varlen", "mmd_linear", "mmd_terms", "mmd_to_prior", "mmd_to_prior_distributed",
    "prior_samples", "reparameterize", "run_local_ranks", "which_backend", "__version__",
]
