"""One WAE-MMD training step (issue 15): time per step and the MMD's share, one thread.

Configurations (wae_fast.train.config): ``mnist`` (28x28, batch 100, z_dim 8, DCGAN-style conv
nets, width 64 = the trainer's default; the paper used 128) and ``digits`` (8x8, batch 100,
z_dim 8, MLP with 512 hidden units).  Step: encode, decode, loss = summed squared error averaged
over the batch * 0.05 + 10 * MMD^2(z, p) with p ~ N(0, I), backward, Adam step.  The MMD is
``wae_fast.mmd`` (7-scale IMQ, unbiased, backend "auto") or the dense formula as the published
WAE code writes it (Tolstikhin et al., ``wae.py``: pairwise squared distances from norms and dot
products, 7 IMQ scales C = 2 z_dim sigma2 s, diagonal removed), or absent ("none", to get the
MMD's share by difference: (t_mmd - t_none) / t_mmd, noisy on a shared machine).  The MMD
alone (forward + backward on the step's code shape, prior draw included) is timed too: its
share is alone / step.  Medians of ``--runs`` runs of ``--steps`` steps, variants alternated in
one process.

    python -m benchmarks.bench_train_step [--configs mnist digits] [--runs 5] [--steps 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import wae_fast
from wae_fast.train.models import build_autoencoder

SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
CONFIGS = {"mnist": ("conv", (1, 28, 28), 0, 100, 8), "digits": ("mlp", (1, 8, 8), 512, 100, 8)}


def dense_wae_mmd(qz: torch.Tensor, pz: torch.Tensor, sigma2: float = 1.0) -> torch.Tensor:
    """MMD^2 with the 7-scale IMQ kernel, written as the published WAE code writes it."""
    n, d = qz.shape
    nf = float(n)
    norms_pz = (pz * pz).sum(1, keepdim=True)
    norms_qz = (qz * qz).sum(1, keepdim=True)
    dist_pz = norms_pz + norms_pz.t() - 2.0 * pz @ pz.t()
    dist_qz = norms_qz + norms_qz.t() - 2.0 * qz @ qz.t()
    dist = norms_pz + norms_qz.t() - 2.0 * pz @ qz.t()
    off_diag = 1.0 - torch.eye(n, dtype=qz.dtype)
    stat = qz.new_zeros(())
    for s in SCALES:
        c = 2.0 * d * sigma2 * s
        res1 = (c / (c + dist_qz) + c / (c + dist_pz)) * off_diag
        res1 = res1.sum() / (nf * nf - nf)
        res2 = (c / (c + dist)).sum() * 2.0 / (nf * nf)
        stat = stat + res1 - res2
    return stat


MMDS = {"wae_fast": lambda z, p: wae_fast.mmd(z, p), "dense": dense_wae_mmd, "none": None}


def _steps(enc, dec, opt, images, mmd_fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        z, _ = enc(images)
        recon = dec(z)
        loss = 0.05 * ((recon - images) ** 2).flatten(1).sum(1).mean()
        if mmd_fn is not None:
            loss = loss + 10.0 * mmd_fn(z, torch.randn_like(z))
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def _mmd_alone(mmd_fn, z: torch.Tensor, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        z.grad = None
        mmd_fn(z, torch.randn_like(z)).backward()
    return (time.perf_counter() - t0) / calls


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"threads=1 torch={torch.__version__} backend={wae_fast.which_backend('cpu')} "
          f"runs={a.runs}x{a.steps} steps")
    print("| config | batch | z_dim | step, wae_fast (ms) | step, dense (ms) | step, no MMD (ms) "
          "| MMD share by difference, wae_fast / dense | MMD alone (ms), wae_fast / dense "
          "| MMD alone / step, wae_fast / dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cfg in a.configs:
        arch, shape, width, batch, z_dim = CONFIGS[cfg]
        torch.manual_seed(0)
        enc, dec = build_autoencoder(arch, shape, z_dim, False, width)
        opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3, betas=(0.5, 0.999))
        images = torch.rand(batch, *shape)
        times = {k: [] for k in MMDS}
        for f in MMDS.values():
            _steps(enc, dec, opt, images, f, 3)  # warm-up
        for _ in range(a.runs):
            for k, f in MMDS.items():
                times[k].append(_steps(enc, dec, opt, images, f, a.steps))
        z = torch.randn(batch, z_dim, requires_grad=True)
        alone = {k: statistics.median(_mmd_alone(MMDS[k], z, 200) for _ in range(a.runs))
                 for k in ("wae_fast", "dense")}
        med = {k: statistics.median(v) for k, v in times.items()}
        share = {k: max(0.0, med[k] - med["none"]) / med[k] for k in ("wae_fast", "dense")}
        print(f"| {cfg} ({arch}) | {batch} | {z_dim} | {med['wae_fast'] * 1e3:.2f} | {med['dense'] * 1e3:.2f} "
              f"| {med['none'] * 1e3:.2f} | {share['wae_fast']:.1%} / {share['dense']:.1%} "
              f"| {alone['wae_fast'] * 1e3:.3f} / {alone['dense'] * 1e3:.3f} "
              f"| {alone['wae_fast'] / med['wae_fast']:.1%} / {alone['dense'] / med['dense']:.1%} |")


if __name__ == "__main__":
    main()
