"""WAE objectives on top of the public API (:func:`wae_fast.mmd`, :class:`wae_fast.MMDLoss`,
:func:`wae_fast.reparameterize`, :func:`wae_fast.logvar_penalty`).

``D_WAE = E c(x, G(z)) + lambda * D_Z(Q_Z, P_Z)`` with ``c(x, y) = cost_scale * ||x - y||^2``
summed over pixels and averaged over the batch (``cost_scale`` 0.05 by default, the WAE
reference code's scaling; lambda is not portable across scalings).

The VAE baseline (``--objective vae``): ``BCE(x, G(z)) + beta * KL(Q(Z|x) || P_Z)``, both per
point and averaged over the batch (:func:`bernoulli_nll`, :func:`kl_to_gaussian_prior`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from wae_fast import IMQ, RBF, WAE_SCALES, MMDLoss, logvar_penalty, mmd_to_prior, reparameterize


def recon_cost(x: torch.Tensor, y: torch.Tensor, scale: float = 0.05) -> torch.Tensor:
    """``scale * ||x - y||^2`` summed over all but the batch dimension, averaged over the batch
    (0, with the graph kept, for an empty batch: a rank's empty shard)."""
    if x.shape[0] == 0:
        return scale * (x - y).pow(2).sum()
    return scale * (x - y).pow(2).flatten(1).sum(1).mean()


def bernoulli_nll(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The Bernoulli decoder's negative log-likelihood: ``-sum_pixels [x log p + (1 - x) log(1 - p)]``
    for pixels x in [0, 1] (the usual likelihood for these images), averaged over the batch.
    Logs are clamped at -100 (torch's binary_cross_entropy), so a saturated sigmoid stays finite."""
    if x.shape[0] == 0:
        return probs.sum() * 0.0
    return F.binary_cross_entropy(probs, x, reduction="none").flatten(1).sum(1).mean()


def kl_per_point(mu: torch.Tensor, logvar: torch.Tensor, sigma2: float = 1.0) -> torch.Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, sigma2 I))`` for each row:
    ``0.5 * sum_k (exp(logvar_k) / sigma2 + mu_k^2 / sigma2 - 1 - logvar_k + log sigma2)``."""
    return 0.5 * ((logvar.exp() + mu.pow(2)) / sigma2 - 1.0 - logvar + math.log(sigma2)).sum(1)


def kl_to_gaussian_prior(mu: torch.Tensor, logvar: torch.Tensor, sigma2: float = 1.0) -> torch.Tensor:
    """Mean over the batch of :func:`kl_per_point` (0, with the graph kept, for an empty batch)."""
    if mu.shape[0] == 0:
        return (mu.sum() + logvar.sum()) * 0.0
    return kl_per_point(mu, logvar, sigma2).mean()


def sample_prior(kind: str, n: int, z_dim: int, sigma2: float, generator: torch.Generator,
                 device) -> torch.Tensor:
    """``n`` samples of the prior: ``gaussian`` N(0, sigma2 I); ``uniform`` on [-a, a]^d with the
    same per-coordinate variance (a = sqrt(3 sigma2)); ``sphere``: uniform on the sphere of radius
    sqrt(d sigma2). Drawn on the CPU from ``generator`` (reproducible), then moved."""
    if kind == "gaussian":
        z = torch.randn(n, z_dim, generator=generator) * math.sqrt(sigma2)
    elif kind == "uniform":
        a = math.sqrt(3.0 * sigma2)
        z = (torch.rand(n, z_dim, generator=generator) * 2.0 - 1.0) * a
    elif kind == "sphere":
        z = torch.randn(n, z_dim, generator=generator)
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12) * math.sqrt(z_dim * sigma2)
    else:
        raise ValueError(f"--prior: unknown prior {kind!r}; expected gaussian, uniform or sphere")
    return z.to(device)


def make_kernel(name: str, sigma2: float):
    """The training kernel tied to the prior: 7-scale IMQ (WAE paper) or 7-scale RBF."""
    if name == "imq":
        return IMQ(sigma2=sigma2)
    if name == "rbf":
        return RBF(scales=WAE_SCALES, sigma2=sigma2)
    raise ValueError(f"--kernel: unknown kernel {name!r}; expected 'imq' or 'rbf'")


def make_mmd_loss(name: str, sigma2: float, estimator: str = "unbiased", backend: str = "auto") -> MMDLoss:
    return MMDLoss(make_kernel(name, sigma2), estimator=estimator, backend=backend)


def mmd_to_prior_loss(z: torch.Tensor, kernel: str, sigma2: float, estimator: str, mode: str,
                      num_samples: int, generator: Optional[torch.Generator], backend: str = "auto"
                      ) -> torch.Tensor:
    """WAE-MMD penalty against N(0, sigma2 I) without a prior sample tensor (``--mmd-prior``):
    ``closed_form`` (exact prior expectations, only the z-z pairs are summed) or ``in_kernel``
    (``num_samples`` prior samples regenerated from a seed drawn from ``generator``; generated
    inside the kernels of ``backend``, the one dispatch picks for "auto")."""
    spec = make_kernel(kernel, sigma2)
    unbiased = estimator == "unbiased"
    if mode == "closed_form":
        return mmd_to_prior(z, spec, sigma2=sigma2, estimator="closed_form", unbiased=unbiased)
    if mode != "in_kernel":
        raise ValueError(f"--mmd-prior: unknown value {mode!r}")
    return mmd_to_prior(z, spec, sigma2=sigma2, estimator="sampled", unbiased=unbiased,
                        num_samples=num_samples, generator=generator, backend=backend)


def encode(encoder, x: torch.Tensor, generator: Optional[torch.Generator], backend: str = "auto"
           ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Codes ``z`` (sampled through :func:`wae_fast.reparameterize` for a Gaussian encoder), mu
    and logvar (None for a deterministic encoder)."""
    mu, logvar = encoder(x)
    if logvar is None:
        return mu, mu, None
    return reparameterize(mu, logvar, generator=generator, backend=backend), mu, logvar


def penalty(logvar: Optional[torch.Tensor], kind: str) -> torch.Tensor:
    if logvar is None or kind == "none":
        return torch.zeros((), device=logvar.device if logvar is not None else "cpu")
    return logvar_penalty(logvar, kind)


def _bce_mean(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean BCE-with-logits against a constant label (0, with the graph kept, when empty)."""
    if logits.numel() == 0:
        return logits.sum()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def gan_discriminator_loss(d_prior: torch.Tensor, d_codes: torch.Tensor, w_prior: float = 1.0,
                           w_codes: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy on logits: prior samples labelled 1, codes 0 (each mean weighted: a
    rank's shard weight under data parallelism, 1 otherwise)."""
    return w_prior * _bce_mean(d_prior, 1.0) + w_codes * _bce_mean(d_codes, 0.0)


def gan_encoder_loss(d_codes: torch.Tensor) -> torch.Tensor:
    """Non-saturating encoder term ``-log D(z)`` (codes labelled as prior)."""
    return _bce_mean(d_codes, 1.0)
