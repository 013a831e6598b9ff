"""The ``wae-fast`` command (also ``python -m wae_fast``).

Subcommands: ``demo`` (one timed MMD call), ``train`` (train a WAE; with no arguments WAE-MMD on
scikit-learn's 8x8 digits, about 30 s on 2 CPU cores) and ``experiment latent-dim``
(deterministic vs stochastic encoders on fading squares).

Errors found before any work (bad flags, paths, a locked or unusable run directory, missing
optional packages) print one line ``wae-fast <command>: error: ...`` and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Optional, Sequence

import torch

#: the main job's time (README and both help texts say the same; measured, see README)
MAIN_JOB_TIME = "about 30 s on 2 CPU cores"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show every option's default, except where there is none (None) or the help text says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


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
    msg = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())  # always one line
    print(f"wae-fast {cmd}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


#: optional packages: import name -> distribution name
_EXTRAS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn", "PIL": "pillow"}


def _missing_extras(cmd: str, needs: dict) -> None:
    """Fail up front, before any training, if an optional package is missing.
    ``needs``: import name (a key of _EXTRAS) -> what needs it."""
    missing = []
    for mod, why in needs.items():
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(f"{_EXTRAS[mod]} ({why})")
    if missing:
        _fail(cmd, "missing optional dependencies: " + ", ".join(missing)
              + "; install them with pip install 'wae_fast[train]'")


def _progress(args: argparse.Namespace) -> bool:
    """A progress bar only on a terminal: in a log, carriage-return updates are noise."""
    return not args.no_progress and sys.stderr.isatty()


_TRAIN_FIELDS = ("data_path", "objective", "kernel", "estimator", "encoder", "arch", "width", "z_dim",
                 "lam", "batch_size", "prior_samples", "mmd_prior", "epochs", "lr", "d_lr", "lr_schedule", "prior",
                 "prior_sigma2", "logvar_penalty", "logvar_weight", "device", "backend", "seed",
                 "eval_samples", "max_images", "image_size", "cost_scale", "threads", "logvar_init")


def _train(args: argparse.Namespace) -> int:
    import os
    from datetime import datetime

    from .train import CheckpointError, Trainer, preset
    from .train.config import run_name
    from .train.data import DataError

    errors = (DataError, CheckpointError, ValueError, RuntimeError, OSError, FloatingPointError)
    try:
        if args.dataset == "celeba" and not args.data_path:
            raise ValueError("--data-path: required for --dataset celeba (a directory of images such as "
                             "CelebA's img_align_celeba/); no data is downloaded at run time")
        cfg = preset(args.dataset, args.objective or "mmd",
                     **{k: getattr(args, k) for k in _TRAIN_FIELDS if k != "objective"}).validate()
        if args.resume and not args.out:
            raise ValueError("--resume: needs --out, the run directory holding checkpoint.pt")
        if args.stop_after is not None and args.stop_after < 0:
            raise ValueError(f"--stop-after: must be >= 0, got {args.stop_after}")
    except errors as exc:
        _fail("train", str(exc))
    needs = {}
    if not args.no_plots:
        needs["matplotlib"] = "the plots; or pass --no-plots"
    if cfg.dataset == "digits":
        needs["sklearn"] = "--dataset digits"
    if cfg.dataset == "folder":
        needs["PIL"] = f"--dataset {args.dataset}"
    _missing_extras("train", needs)
    out = args.out or os.path.join("runs", f"{run_name(cfg)}-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        trainer = Trainer(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=_progress(args),
                          quality=False if args.no_quality else None)
    except errors as exc:
        _fail("train", str(exc))
    except KeyboardInterrupt:
        print("\ninterrupted before training started", file=sys.stderr)
        return 130
    try:
        hist = trainer.fit(stop_after=args.stop_after)
        if not trainer.is_main:  # torchrun: rank 0 reports and writes, the other ranks stay silent
            return 0 if hist else 1
        return _report(args, trainer, cfg, out, hist)
    except errors as exc:
        _fail("train", str(exc))
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last finished epoch is saved: resume with --out {out} --resume",
              file=sys.stderr)
        return 130
    finally:
        trainer.close()  # unlocks the run directory


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
    _missing_extras("experiment", {"matplotlib": "the plot latent_dim.png"})
    try:
        run_latent_dim(args.out, args.z_dims, args.seeds, args.epochs, args.lam, args.logvar_weight,
                       args.backend, args.device, n_train=args.n_train, progress=_progress(args),
                       overwrite=args.overwrite)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        _fail("experiment", str(exc))
    return 0


def _vae_wae(args: argparse.Namespace) -> int:
    from .train.data import DataError
    from .train.quality import QualityError
    from .train.vae_wae import run_vae_wae

    if args.seeds < 1:
        _fail("experiment", f"--seeds: must be >= 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        _fail("experiment", f"--epochs: must be >= 1, got {args.epochs}")
    _missing_extras("experiment", {"matplotlib": "the figure vae_wae.png"})
    command = "wae-fast " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["experiment"] else \
        "wae-fast experiment vae-wae ..."
    try:
        run_vae_wae(args.out, args.report_dir, args.z_dims, args.seeds, args.epochs, args.paper, args.data_path,
                    args.backend, args.device, args.eval_samples, command=command, max_runs=args.max_runs)
    except (DataError, QualityError, ValueError, RuntimeError, OSError, ImportError) as exc:
        _fail("experiment", str(exc))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished epochs are saved: rerun the same command to resume ({args.out})",
              file=sys.stderr)
        return 130
    return 0


def _preset_default(field: str) -> str:
    """The default of a train option as the presets set it, e.g. '10 (digits, squares, mnist),
    100 (celeba); with --objective gan: 1'."""
    from .train.config import preset

    names = ("digits", "squares", "mnist", "celeba")

    def grouped(vals: dict) -> str:
        groups: dict = {}
        for ds, v in vals.items():
            groups.setdefault(v, []).append(ds)
        if len(groups) == 1 and len(vals) == len(names):
            return str(next(iter(groups)))
        return ", ".join(f"{v} ({', '.join(ds)})" for v, ds in groups.items())

    mmd = {ds: getattr(preset(ds, "mmd"), field) for ds in names}
    gan = {ds: getattr(preset(ds, "gan"), field) for ds in names}
    text = "default: " + grouped(mmd)
    changed = {ds: v for ds, v in gan.items() if v != mmd[ds]}
    if changed:
        text += "; with --objective gan: " + grouped(changed)
    return text


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train", formatter_class=_HelpFormatter,
        help=f"train a Wasserstein auto-encoder (default: WAE-MMD on 8x8 digits, {MAIN_JOB_TIME})",
        description="Train a WAE (on several processes: torchrun --nproc-per-node K -m wae_fast train ...; "
                    "--batch-size is then the global batch, split across the ranks). With no arguments: "
                    f"WAE-MMD on scikit-learn's 8x8 digits, {MAIN_JOB_TIME}. Unset flags take the "
                    "preset of --dataset and --objective (the WAE paper's "
                    "defaults: mnist z_dim 8, lambda 10, batch 100, Adam lr 1e-3 betas (0.5, 0.999); "
                    "celeba z_dim 64, lambda 100, lr 5e-4 (MMD) / 3e-4 (GAN); WAE-GAN lambda 1). Cost "
                    "c(x, y) = 0.05 ||x - y||^2 summed over pixels, averaged over the batch. The run directory "
                    "is locked while training writes it: a second writer fails at once.")

    def a(*flags, field=None, help="", **kw):
        if field is not None:  # the preset decides: say what it picks
            help = f"{help}; {_preset_default(field)}" if help else _preset_default(field)
        t.add_argument(*flags, help=help, **kw)

    a("--dataset", default="digits", choices=("digits", "squares", "mnist", "fashion-mnist", "folder", "celeba"),
      help="digits (sklearn 8x8, embedded), squares (synthetic fading squares), mnist (--data-path: IDX dir "
           "or .npz), fashion-mnist (--data-path, else $WAE_FAST_DATA, else the Debian package "
           "dataset-fashion-mnist), folder/celeba (--data-path: directory of images, cropped and resized "
           "to --image-size)")
    a("--data-path", help="local data for mnist, fashion-mnist, folder and celeba (required for mnist, folder "
                          "and celeba, refused for the built-in digits and squares); nothing is downloaded. A "
                          "folder is searched recursively, skipping hidden folders and wae-fast run "
                          "directories; default: none")
    a("--objective", choices=("mmd", "gan", "vae"),
      help="WAE-MMD, WAE-GAN (latent discriminator) or the VAE baseline (Bernoulli decoder, KL weighted by "
           "--lam = beta, default 1; Gaussian encoders only); default: mmd")
    a("--kernel", choices=("imq", "rbf"), field="kernel", help="MMD kernel, 7 scales tied to the prior")
    a("--estimator", choices=("unbiased", "biased"), field="estimator", help="MMD estimator")
    a("--encoder", choices=("deterministic", "gaussian"), field="encoder",
      help="deterministic, or Gaussian Q(z|x) sampled with the reparameterization")
    a("--arch", choices=("auto", "mlp", "conv"), field="arch",
      help="auto: mlp for digits/squares, conv for mnist/folder")
    a("--width", type=int, field="width",
      help="mlp hidden units or conv base channels (the paper used 128); 0: the arch's own (mlp 256, conv 64)")
    a("--z-dim", type=int, dest="z_dim", field="z_dim", help="latent dimension")
    a("--lam", type=float, field="lam",
      help="lambda, weight of D_Z(Q_Z, P_Z) (--objective vae: beta, weight of the KL term, default 1)")
    a("--batch-size", type=int, dest="batch_size", field="batch_size", help="images per step")
    a("--prior-samples", type=int, dest="prior_samples", field="prior_samples",
      help="prior samples M per step (0: same as the batch)")
    a("--mmd-prior", choices=("samples", "closed_form", "in_kernel"), dest="mmd_prior", field="mmd_prior",
      help="WAE-MMD against: samples (draw M prior samples per step), closed_form (no samples: "
           "exact Gaussian-prior expectations), in_kernel (M samples generated inside the kernels, never stored)")
    a("--epochs", type=int, field="epochs", help="passes over the training images")
    a("--lr", type=float, field="lr", help="Adam learning rate of the auto-encoder")
    a("--d-lr", type=float, dest="d_lr", field="d_lr", help="Adam learning rate of the WAE-GAN discriminator")
    a("--lr-schedule", choices=("manual", "constant", "cosine"), dest="lr_schedule", field="lr_schedule",
      help="manual (reference code: /2 at epoch 30, /10 at 50, /100 at 100), constant, cosine (to 1%%)")
    a("--prior", choices=("gaussian", "uniform", "sphere"), field="prior", help="the prior P_Z")
    a("--prior-sigma2", type=float, dest="prior_sigma2", field="prior_sigma2",
      help="prior variance sigma^2 (N(0, sigma^2 I))")
    a("--logvar-penalty", choices=("l1", "l2", "none"), dest="logvar_penalty", field="logvar_penalty",
      help="penalty on the Gaussian encoder's logvar")
    a("--logvar-weight", type=float, dest="logvar_weight", field="logvar_weight",
      help="weight of the logvar penalty")
    a("--logvar-init", type=float, dest="logvar_init", field="logvar_init",
      help="initial logvar of the Gaussian encoder")
    a("--cost-scale", type=float, dest="cost_scale", field="cost_scale", help="c(x,y) = cost_scale ||x-y||^2")
    a("--eval-samples", type=int, dest="eval_samples", field="eval_samples",
      help="held-out points for the per-epoch metrics")
    a("--max-images", type=int, dest="max_images",
      help="use at most this many training images (mnist/folder); default: all")
    a("--image-size", type=int, dest="image_size", field="image_size",
      help="folder: crop and resize images to this square size")
    a("--device", field="device", help="auto (cuda if available), cpu, cuda")
    a("--backend", field="backend", help="MMD/reparameterize backend: auto, reference, cpp, triton, cuda")
    a("--seed", type=int, field="seed", help="seed of the initialisation, data order and sampling")
    a("--threads", type=int, field="threads",
      help="CPU threads (0: 1 for MLPs, which is fastest for them, else torch's default)")
    a("--out", help="run directory; default: runs/<dataset>-<objective>[-<mmd prior>]-<encoder>-z<dim>-<time> "
                    "(the --mmd-prior mode is named unless it is samples)")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    a("--overwrite", action="store_true", help="start over even if --out holds a checkpoint")
    a("--stop-after", type=int, dest="stop_after",
      help="stop after this many epochs, as if interrupted; default: run all --epochs")
    a("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    a("--no-quality", action="store_true", dest="no_quality",
      help="mnist, fashion-mnist: skip KID and the Frechet distance in the metric classifier's features "
           "(the classifier is trained once per data set and cached in $WAE_FAST_CLASSIFIER_CACHE, $WAE_FAST_CACHE or ~/.cache/wae_fast)")
    a("--no-progress", action="store_true",
      help="no progress bar (there is none anyway when stderr is not a terminal)")
    t.set_defaults(func=_train)


def _add_experiment(sub) -> None:
    e = sub.add_parser("experiment", help="experiments (latent-dim, vae-wae)", formatter_class=_HelpFormatter)
    esub = e.add_subparsers(dest="experiment", required=True)
    ld = esub.add_parser("latent-dim", formatter_class=_HelpFormatter,
                         help="deterministic vs Gaussian(+L1 logvar) encoders over z_dim on fading "
                              "squares: MMD(Q_Z,P_Z), reconstruction, sample quality",
                         description="WAE-MMD on fading squares (intrinsic dimension 1) for every z_dim, "
                                     "encoder and seed; writes latent_dim.{md,csv,json,png} and "
                                     "latent_dim_runs.csv into --out, which is locked meanwhile.")
    a = ld.add_argument
    a("--z-dims", type=_int_list, default=[1, 2, 4, 8], dest="z_dims",
      help="comma-separated latent dimensions (default: 1,2,4,8)")
    a("--seeds", type=int, default=3, help="seeds per (z_dim, encoder)")
    a("--epochs", type=int, default=20, help="epochs per run")
    a("--lam", type=float, default=10.0, help="lambda, weight of MMD(Q_Z, P_Z)")
    a("--logvar-weight", type=float, default=0.01, dest="logvar_weight",
      help="weight of the L1 logvar penalty of the Gaussian encoders")
    a("--n-train", type=int, default=2000, dest="n_train", help="training images per run")
    a("--backend", default="auto", help="MMD/reparameterize backend: auto, reference, cpp, triton, cuda")
    a("--device", default="cpu", help="cpu, cuda or auto")
    a("--out", default="runs/latent-dim", help="directory of the results")
    a("--overwrite", action="store_true", help="replace the results of an earlier experiment in --out")
    a("--no-progress", action="store_true",
      help="no progress bar (there is none anyway when stderr is not a terminal)")
    ld.set_defaults(func=_experiment)
    vw = esub.add_parser("vae-wae", formatter_class=_HelpFormatter,
                         help="VAE (beta 1 and a matched beta) vs WAE-MMD and WAE-GAN, deterministic and "
                              "Gaussian encoders, on Fashion-MNIST: reconstruction, KID, Frechet, MMD(Q_Z, P_Z)",
                         description="Trains every method, z_dim and seed on Fashion-MNIST (one run directory "
                                     "each under --out/runs, checkpointed per epoch: rerunning the command "
                                     "resumes) and writes vae_wae.{md,json,png} and vae_wae_runs.csv into "
                                     "--report-dir after every run.")
    a = vw.add_argument
    a("--z-dims", type=_int_list, default=[8, 32], dest="z_dims", help="comma-separated latent dimensions")
    a("--seeds", type=int, default=3, help="seeds per method and z_dim")
    a("--epochs", type=int, help="epochs per run; default: 5 (CPU schedule) or 100 (--paper)")
    a("--paper", action="store_true",
      help="the WAE paper's MNIST schedule (conv nets with 128 base channels, 100 epochs, lr /2 at 30, /10 at 50): "
           "a GPU job; default: MLP nets, cosine schedule")
    a("--data-path", dest="data_path", help="Fashion-MNIST IDX directory; default: $WAE_FAST_DATA, else the "
                                            "Debian package dataset-fashion-mnist")
    a("--eval-samples", type=int, default=2000, dest="eval_samples", help="held-out images and samples per metric")
    a("--backend", default="auto", help="MMD/reparameterize backend: auto, reference, cpp, triton, cuda")
    a("--device", default="cpu", help="cpu, cuda or auto")
    a("--out", default="runs/vae-wae", help="directory of the run directories (resumed from)")
    a("--report-dir", default="docs/experiments", dest="report_dir", help="where the table and figure go")
    a("--max-runs", type=int, dest="max_runs", help="stop after this many runs; default: all")
    vw.set_defaults(func=_vae_wae)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wae-fast", description=__doc__.split("\n\n")[1].replace("``", ""),
                                formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="MMD between two sample sets with the chosen backend, timed",
                       formatter_class=_HelpFormatter,
                       description="One forward+backward 7-scale IMQ unbiased MMD^2 between two Gaussian "
                                   "sample sets, timed.")
    d.add_argument("--n", type=int, default=4096, help="points per sample set (N = M)")
    d.add_argument("--d", type=int, default=64, help="dimension")
    d.add_argument("--backend", default="auto", help="auto, reference, cpp, triton or cuda")
    d.add_argument("--seed", type=int, default=0, help="seed of the samples")
    d.set_defaults(func=_demo)
    _add_train(sub)
    _add_experiment(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
