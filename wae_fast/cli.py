"""The ``wae-fast`` command (also ``python -m wae_fast``).

Subcommands: ``demo`` (one timed MMD call), ``train`` (train a WAE; with no arguments WAE-MMD on
scikit-learn's 8x8 digits, a couple of minutes on a 2-core CPU) and ``experiment latent-dim``
(deterministic vs stochastic encoders on fading squares).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import torch


def _demo(args: argparse.Namespace) -> int:
    import wae_fast

    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.n, args.d, generator=g) * 1.1 + 0.1
    y = torch.randn(args.n, args.d, generator=g)
    x.requires_grad_(True)
    backend = wae_fast.which_backend(x, args.backend)
    t0 = time.perf_counter()
    val = wae_fast.mmd(x, y, backend=args.backend)
    val.backward()
    dt = time.perf_counter() - t0
    print(f"backend={backend}  N=M={args.n}  d={args.d}  7-scale IMQ unbiased MMD^2={val.item():.6g}  "
          f"forward+backward {dt * 1e3:.1f} ms  |grad x|={x.grad.norm().item():.4g}")
    return 0


def _fail(cmd: str, msg: str) -> "NoReturn":  # noqa: F821
    print(f"wae-fast {cmd}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


_TRAIN_FIELDS = ("data_path", "objective", "kernel", "estimator", "encoder", "arch", "width", "z_dim",
                 "lam", "batch_size", "prior_samples", "mmd_prior", "epochs", "lr", "d_lr", "lr_schedule", "prior",
                 "prior_sigma2", "logvar_penalty", "logvar_weight", "device", "backend", "seed",
                 "eval_samples", "max_images", "image_size", "cost_scale", "threads", "logvar_init")


def _train(args: argparse.Namespace) -> int:
    import os
    from datetime import datetime

    from .train import CheckpointError, Trainer, preset
    from .train.data import DataError

    out = args.out
    try:
        cfg = preset(args.dataset, args.objective or "mmd",
                     **{k: getattr(args, k) for k in _TRAIN_FIELDS if k != "objective"}).validate()
        if args.resume and not args.out:
            raise ValueError("--resume: needs --out, the run directory holding checkpoint.pt")
        if args.stop_after is not None and args.stop_after < 0:
            raise ValueError(f"--stop-after: must be >= 0, got {args.stop_after}")
        out = args.out or os.path.join(
            "runs", f"{cfg.dataset}-{cfg.objective}-{cfg.encoder}-z{cfg.z_dim}-{datetime.now():%Y%m%d-%H%M%S}")
        trainer = Trainer(cfg, out, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.no_progress)
        hist = trainer.fit(stop_after=args.stop_after)
    except (DataError, CheckpointError, ValueError, RuntimeError) as exc:
        _fail("train", str(exc))
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last finished epoch is saved: resume with --out {out} --resume",
              file=sys.stderr)
        return 130
    if not trainer.is_main:  # torchrun: rank 0 reports and writes, the other ranks stay silent
        trainer.close()
        return 0 if hist else 1
    try:
        return _report(args, trainer, cfg, out, hist)
    finally:
        trainer.close()


def _report(args: argparse.Namespace, trainer, cfg, out: str, hist: list) -> int:
    from .train.plots import write_plots

    print(trainer.summary())
    if trainer.epoch < cfg.epochs:
        print(f"stopped after epoch {trainer.epoch} of {cfg.epochs}; continue with: "
              f"wae-fast train ... --out {out} --resume")
    if not args.no_plots:
        paths = write_plots(trainer, trainer.out)
        print("plots: " + ", ".join(str(p) for p in paths))
    print(f"metrics: {trainer.out / 'metrics.csv'}, {trainer.out / 'metrics.json'}; "
          f"checkpoint: {trainer.ckpt_path}; wall time {trainer.wall_s:.1f} s")
    return 0 if hist else 1


def _int_list(text: str) -> list:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _experiment(args: argparse.Namespace) -> int:
    from .train.experiment import run_latent_dim

    if args.seeds < 1:
        _fail("experiment", f"--seeds: must be >= 1, got {args.seeds}")
    if args.n_train < 2:
        _fail("experiment", f"--n-train: must be >= 2, got {args.n_train}")
    if args.epochs < 1:
        _fail("experiment", f"--epochs: must be >= 1, got {args.epochs}")
    try:
        run_latent_dim(args.out, args.z_dims, args.seeds, args.epochs, args.lam, args.logvar_weight,
                       args.backend, args.device, n_train=args.n_train, progress=not args.no_progress)
    except (ValueError, RuntimeError) as exc:
        _fail("experiment", str(exc))
    return 0


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train", help="train a Wasserstein auto-encoder (default: WAE-MMD on 8x8 digits, ~2-3 min on 2 CPU cores)",
        description="Train a WAE (on several processes: torchrun --nproc-per-node K -m wae_fast train ...; "
                    "--batch-size is then the global batch, split across the ranks). Unset flags take the "
                    "preset of --dataset and --objective (the WAE paper's "
                    "defaults: mnist z_dim 8, lambda 10, batch 100, Adam lr 1e-3 betas (0.5, 0.999); "
                    "celeba z_dim 64, lambda 100, lr 5e-4 (MMD) / 3e-4 (GAN); WAE-GAN lambda 1). Cost "
                    "c(x, y) = 0.05 ||x - y||^2 summed over pixels, averaged over the batch.")
    a = t.add_argument
    a("--dataset", default="digits", choices=("digits", "squares", "mnist", "folder", "celeba"),
      help="digits (sklearn 8x8, embedded), squares (synthetic fading squares), mnist (--data-path: IDX dir "
           "or .npz), folder/celeba (--data-path: directory of images, cropped and resized to --image-size)")
    a("--data-path", help="local data for mnist/folder; nothing is downloaded")
    a("--objective", choices=("mmd", "gan"), help="WAE-MMD (default) or WAE-GAN (latent discriminator)")
    a("--kernel", choices=("imq", "rbf"), help="MMD kernel, 7 scales tied to the prior (default imq)")
    a("--estimator", choices=("unbiased", "biased"), help="MMD estimator (default unbiased)")
    a("--encoder", choices=("deterministic", "gaussian"), help="default deterministic")
    a("--arch", choices=("auto", "mlp", "conv"), help="auto: mlp for digits/squares, conv for mnist/folder")
    a("--width", type=int, help="mlp hidden units (256) or conv base channels (64; the paper used 128)")
    a("--z-dim", type=int, dest="z_dim")
    a("--lam", type=float, help="lambda, weight of D_Z(Q_Z, P_Z)")
    a("--batch-size", type=int, dest="batch_size")
    a("--prior-samples", type=int, dest="prior_samples", help="prior samples M per step (0: same as the batch)")
    a("--mmd-prior", choices=("samples", "closed_form", "in_kernel"), dest="mmd_prior",
      help="WAE-MMD against: samples (draw M prior samples per step, default), closed_form (no samples: "
           "exact Gaussian-prior expectations), in_kernel (M samples generated inside the kernels, never stored)")
    a("--epochs", type=int)
    a("--lr", type=float, help="Adam learning rate of the auto-encoder")
    a("--d-lr", type=float, dest="d_lr", help="Adam learning rate of the WAE-GAN discriminator")
    a("--lr-schedule", choices=("manual", "constant", "cosine"), dest="lr_schedule",
      help="manual (reference code: /2 at epoch 30, /10 at 50, /100 at 100), constant, cosine")
    a("--prior", choices=("gaussian", "uniform", "sphere"))
    a("--prior-sigma2", type=float, dest="prior_sigma2", help="prior variance sigma^2 (N(0, sigma^2 I))")
    a("--logvar-penalty", choices=("l1", "l2", "none"), dest="logvar_penalty",
      help="penalty on the Gaussian encoder's logvar (default l1)")
    a("--logvar-weight", type=float, dest="logvar_weight", help="weight of the logvar penalty (default 0.01)")
    a("--logvar-init", type=float, dest="logvar_init", help="initial logvar of the Gaussian encoder (default -5)")
    a("--cost-scale", type=float, dest="cost_scale", help="c(x,y) = cost_scale ||x-y||^2 (default 0.05)")
    a("--eval-samples", type=int, dest="eval_samples", help="held-out points for the metrics (1000)")
    a("--max-images", type=int, dest="max_images", help="use at most this many training images (mnist/folder)")
    a("--image-size", type=int, dest="image_size", help="folder: resize to this square size (64)")
    a("--device", help="auto (default), cpu, cuda")
    a("--backend", help="MMD/reparameterize backend: auto (default), reference, cpp, triton, cuda")
    a("--seed", type=int)
    a("--threads", type=int, help="CPU threads (0: 1 for MLPs, which is fastest for them, else torch's default)")
    a("--out", help="run directory (default runs/<dataset>-<objective>-<encoder>-z<dim>-<time>)")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    a("--overwrite", action="store_true", help="start over even if --out holds a checkpoint")
    a("--stop-after", type=int, dest="stop_after", help="stop after this many epochs, as if interrupted")
    a("--no-plots", action="store_true")
    a("--no-progress", action="store_true")
    t.set_defaults(func=_train)


def _add_experiment(sub) -> None:
    e = sub.add_parser("experiment", help="experiments (latent-dim)")
    esub = e.add_subparsers(dest="experiment", required=True)
    ld = esub.add_parser("latent-dim", help="deterministic vs Gaussian(+L1 logvar) encoders over z_dim on fading "
                                            "squares: MMD(Q_Z,P_Z), reconstruction, sample quality")
    ld.add_argument("--z-dims", type=_int_list, default=[1, 2, 4, 8], dest="z_dims")
    ld.add_argument("--seeds", type=int, default=3)
    ld.add_argument("--epochs", type=int, default=20)
    ld.add_argument("--lam", type=float, default=10.0)
    ld.add_argument("--logvar-weight", type=float, default=0.01, dest="logvar_weight",
                    help="weight of the L1 logvar penalty of the Gaussian encoders (0.01)")
    ld.add_argument("--n-train", type=int, default=2000, dest="n_train", help="training images per run")
    ld.add_argument("--backend", default="auto")
    ld.add_argument("--device", default="cpu")
    ld.add_argument("--out", default="runs/latent-dim")
    ld.add_argument("--no-progress", action="store_true")
    ld.set_defaults(func=_experiment)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wae-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="MMD between two sample sets with the chosen backend, timed")
    d.add_argument("--n", type=int, default=4096)
    d.add_argument("--d", type=int, default=64)
    d.add_argument("--backend", default="auto")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    _add_train(sub)
    _add_experiment(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
