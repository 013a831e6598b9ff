"""One WAE training step for single-process and data-parallel runs.

:func:`train_step` takes a *sharding strategy*: :class:`SingleProcess` (the whole global batch,
no communication) or :class:`wae_fast.train.distributed_setup.DataParallel` (this rank's shard,
DDP-wrapped modules, the MMD penalty over all ranks).  A strategy provides ``world``, ``rank``,
``bounds(n)`` (the rows of a global batch of ``n`` this process takes), the modules to run
(``encoder``, ``decoder``, ``disc``), the WAE-MMD penalty against prior samples
(``mmd_to_samples``) and without them (``mmd_to_prior``), and ``reduce`` (the per-process logged
values -> the global-batch values).  The step itself is written once:

    loss = w_x * c(x, G(z)) + lambda * D_Z + logvar_weight * w_x * penalty(logvar)

(the VAE baseline: c is the Bernoulli negative log-likelihood and D_Z = w_x * the mean KL, a
per-point term like the cost.)

with w_x = K n_r / n (1 for one process): DDP averages gradients over the K ranks, so these
weights make the average the gradient of the global-batch mean even for uneven shards.
"""
from __future__ import annotations

from typing import Optional

import torch

from .data import to_float
from .objectives import (bernoulli_nll, encode, gan_discriminator_loss, gan_encoder_loss,
                         kl_to_gaussian_prior, mmd_to_prior_loss, penalty, recon_cost)

LOGGED = ("loss", "rec", "dz", "pen", "d_loss")


class SingleProcess:
    """Sharding strategy of one process: the whole batch, the trainer's own modules."""

    world = 1
    rank = 0

    def __init__(self, trainer) -> None:
        self.cfg = trainer.cfg
        self.encoder, self.decoder, self.disc = trainer.encoder, trainer.decoder, trainer.disc
        self.mmd_loss = trainer.mmd_loss

    def bounds(self, n: int) -> tuple[int, int]:
        return 0, n

    def mmd_to_samples(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.mmd_loss(z, p)

    def mmd_to_prior(self, z: torch.Tensor, g: Optional[torch.Generator]) -> torch.Tensor:
        c = self.cfg
        return mmd_to_prior_loss(z, c.kernel, c.prior_sigma2, c.estimator, c.mmd_prior,
                                 c.n_prior(len(z)), g, c.backend)

    def reduce(self, local: list[float]) -> dict[str, float]:
        return dict(zip(LOGGED, local))


def train_step(trainer, shard, batch: torch.Tensor, g: torch.Generator,
               noise_g: Optional[torch.Generator]) -> dict[str, float]:
    """One optimisation step on the global batch ``batch`` (images, a slice of the epoch's
    shuffled training tensor; this process takes its rows ``shard.bounds``); ``g`` draws the prior samples (the same global sample on every rank),
    ``noise_g`` the Gaussian encoder's noise.  Returns the global-batch loss, rec, dz, pen and
    d_loss (the same on every rank)."""
    c = trainer.cfg
    n = len(batch)
    lo, hi = shard.bounds(n)
    m = c.n_prior(n)
    plo, phi = shard.bounds(m)
    wx = shard.world * (hi - lo) / n
    wp = shard.world * (phi - plo) / m
    x = to_float(batch[lo:hi]).to(trainer.device)
    z, mu, logvar = encode(shard.encoder, x, noise_g, c.backend)
    xr = shard.decoder(z)
    rec = bernoulli_nll(x, xr) if c.objective == "vae" else recon_cost(x, xr, c.cost_scale)
    d_loss = torch.zeros((), device=trainer.device)
    if c.objective == "vae":
        dz = wx * kl_to_gaussian_prior(mu, logvar, c.prior_sigma2)
    elif c.objective == "mmd" and c.mmd_prior != "samples":
        dz = shard.mmd_to_prior(z, g)
    elif c.objective == "mmd":
        dz = shard.mmd_to_samples(z, trainer._prior(m, g)[plo:phi])
    else:
        p = trainer._prior(m, g)[plo:phi]   # the global prior sample, identical on every rank
        trainer.opt_d.zero_grad(set_to_none=True)
        d_loss = gan_discriminator_loss(shard.disc(p), shard.disc(z.detach()), wp, wx)
        d_loss.backward()
        trainer.opt_d.step()
        # the unwrapped discriminator: its own gradient from this term is discarded (no DDP sync)
        dz = wx * gan_encoder_loss(trainer.disc(z))
    pen = penalty(logvar, c.logvar_penalty) if hi > lo or logvar is None else logvar.sum() * 0.0
    loss = wx * rec + c.lam * dz + c.logvar_weight * wx * pen
    trainer.opt_ae.zero_grad(set_to_none=True)
    loss.backward()
    trainer.opt_ae.step()
    return shard.reduce([float(loss.detach()), wx * float(rec.detach()), float(dz.detach()),
                         wx * float(pen.detach()), float(d_loss.detach())])
