"""Training configuration: one dataclass, the published defaults as presets.

Cost convention (as in the WAE reference code): ``c(x, y) = cost_scale * ||x - y||^2`` with
``cost_scale = 0.05``, the squared error *summed over pixels* and *averaged over the batch*;
pixels lie in [0, 1]. lambda is tied to this scaling: with a cost summed over 784 pixels a
lambda of 10 means something quite different than with a per-pixel mean, so lambdas are not
portable across scalings.

Presets (Tolstikhin et al. 2018, appendix; ``preset(dataset, objective)``):

* ``mnist``: z_dim 8, prior N(0, I), lambda 10 (MMD) / 1 (GAN), batch 100, Adam lr 1e-3
  betas (0.5, 0.999), adversary lr 5e-4, 100 epochs, DCGAN-style conv nets with batch norm.
* ``celeba`` (an image folder of 64x64 crops): z_dim 64, prior N(0, 2 I), lambda 100 (MMD) /
  1 (GAN), lr 5e-4 (MMD) / 3e-4 (GAN), adversary lr 1e-3, 50 epochs, conv nets.
* ``fashion-mnist``: the MNIST settings on Zalando's Fashion-MNIST (found locally, see
  :func:`wae_fast.train.data.find_fashion_mnist`).
* ``digits`` (scikit-learn's 8x8 digits, the default CPU job): MLP with 512 hidden units, 150
  epochs, cosine learning-rate schedule, otherwise the MNIST settings (about 30 seconds on 2 CPU
  cores, see README). ``squares`` (fading squares): MLP with 256 units, 20 epochs, MNIST settings.

Objective ``vae`` (the baseline of the WAE paper, Kingma & Welling 2014): a Bernoulli decoder
(binary cross-entropy summed over pixels in [0, 1], averaged over the batch) plus ``lam`` (beta,
default 1) times the mean per-point KL(Q(Z|x) || N(0, sigma^2 I)); Gaussian encoders only.

Learning-rate schedule (``lr_schedule``): ``manual`` (the reference code: lr / 2 from epoch 30,
/ 10 from epoch 50, / 100 from epoch 100), ``constant`` or ``cosine`` (to 1% over ``epochs``).
The schedule is a pure function of the epoch, so a resumed run follows it exactly.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

DATASETS = ("digits", "squares", "mnist", "fashion-mnist", "folder")
#: mmd, gan: WAE-MMD, WAE-GAN; vae: the VAE baseline (Bernoulli decoder, KL weighted by lam)
OBJECTIVES = ("mmd", "gan", "vae")
KERNELS = ("imq", "rbf")
ENCODERS = ("deterministic", "gaussian")
ARCHS = ("auto", "mlp", "conv")
PRIORS = ("gaussian", "uniform", "sphere")
SCHEDULES = ("manual", "constant", "cosine")
PENALTIES = ("l1", "l2", "none")
ESTIMATORS = ("unbiased", "biased")
#: How WAE-MMD compares the codes with the prior (see wae_fast.prior.mmd_to_prior):
#: "samples" draws M prior samples per step (the paper's way), "closed_form" uses the
#: sampling-free estimator (Gaussian prior only), "in_kernel" the sampled estimator whose
#: samples are generated inside the kernels (Triton/CUDA on a GPU) and never stored.
MMD_PRIORS = ("samples", "closed_form", "in_kernel")


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data_path: Optional[str] = None
    image_size: int = 64            # folder: images are center-cropped and resized to this
    max_images: Optional[int] = None  # folder/mnist: use at most this many training images
    # model
    arch: str = "auto"              # auto: mlp for digits/squares, conv for mnist/folder
    width: int = 0                  # 0: per arch default (mlp hidden 256; conv base channels 64)
    encoder: str = "deterministic"
    z_dim: int = 8
    logvar_min: float = -20.0
    logvar_max: float = 5.0
    logvar_init: float = -5.0       # initial bias of the logvar outputs (0 tends to collapse Q(z|x) onto the prior)
    logvar_penalty: str = "l1"
    logvar_weight: float = 0.01
    # objective
    objective: str = "mmd"
    kernel: str = "imq"
    estimator: str = "unbiased"
    lam: float = 10.0
    cost_scale: float = 0.05
    prior: str = "gaussian"
    prior_sigma2: float = 1.0
    prior_samples: int = 0          # M prior samples per step; 0 means M = batch size
    mmd_prior: str = "samples"      # samples | closed_form | in_kernel (MMD_PRIORS)
    # optimisation
    batch_size: int = 100
    epochs: int = 60
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    lr_schedule: str = "manual"
    d_lr: float = 5e-4              # WAE-GAN adversary
    d_width: int = 256
    # run
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    threads: int = 0                # CPU threads while training; 0: 1 for MLPs (fastest), torch's default for conv
    eval_samples: int = 1000        # held-out points used by the per-epoch metrics

    def validate(self) -> "TrainConfig":
        def choice(name, allowed):
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"--{name.replace('_', '-')}: unknown value {v!r}; expected one of {allowed}")
        for name, allowed in (("dataset", DATASETS), ("objective", OBJECTIVES), ("kernel", KERNELS),
                              ("encoder", ENCODERS), ("arch", ARCHS), ("prior", PRIORS),
                              ("lr_schedule", SCHEDULES), ("logvar_penalty", PENALTIES),
                              ("estimator", ESTIMATORS), ("mmd_prior", MMD_PRIORS)):
            choice(name, allowed)
        if self.objective == "vae":
            if self.encoder != "gaussian":
                raise ValueError(f"--objective vae: needs --encoder gaussian (got --encoder {self.encoder}): the "
                                 "KL(Q(Z|x) || P_Z) of a deterministic encoder is infinite")
            if self.prior != "gaussian":
                raise ValueError(f"--objective vae: needs --prior gaussian (got --prior {self.prior}): the KL term "
                                 "is the closed form against N(0, sigma^2 I)")
            if self.logvar_penalty != "none" and self.logvar_weight > 0:
                raise ValueError(f"--objective vae: the KL term already penalises the log-variances; pass "
                                 f"--logvar-penalty none (got {self.logvar_penalty} x{self.logvar_weight})")
        if self.mmd_prior != "samples" and (self.objective != "mmd" or self.prior != "gaussian"):
            raise ValueError(f"--mmd-prior {self.mmd_prior}: needs --objective mmd and --prior gaussian "
                             f"(got --objective {self.objective}, --prior {self.prior})")

        def positive(name, integer=True, allow_zero=False):
            v = getattr(self, name)
            ok = isinstance(v, int) if integer else isinstance(v, (int, float))
            if not ok or isinstance(v, bool) or not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
                kind = "an integer" if integer else "a number"
                bound = ">= 0" if allow_zero else "> 0"
                raise ValueError(f"--{name.replace('_', '-')}: must be {kind} {bound}, got {v!r}")
        for name in ("z_dim", "batch_size", "epochs", "eval_samples", "d_width", "image_size"):
            positive(name)
        for name in ("prior_samples", "width", "threads"):
            positive(name, allow_zero=True)
        for name in ("lr", "d_lr", "cost_scale", "prior_sigma2"):
            positive(name, integer=False)
        for name in ("lam", "logvar_weight"):
            positive(name, integer=False, allow_zero=True)
        if self.batch_size < 2:
            raise ValueError("--batch-size: must be >= 2 (the unbiased MMD needs two codes)")
        if self.prior_samples == 1:
            raise ValueError("--prior-samples: must be 0 (same as the batch) or >= 2")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"--beta1/--beta2: must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"logvar clip: need logvar_min < logvar_max, got [{self.logvar_min}, {self.logvar_max}]")
        if self.dataset in ("mnist", "folder") and not self.data_path:
            layout = ("a directory with train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz], "
                      "or an .npz file with x_train and x_test") if self.dataset == "mnist" else \
                "a directory of .png/.jpg images (searched recursively)"
            raise ValueError(f"--data-path: required for --dataset {self.dataset} ({layout}); "
                             "no data is downloaded at run time")
        if self.dataset in ("digits", "squares") and self.data_path:
            raise ValueError(f"--data-path {self.data_path}: --dataset {self.dataset} is built in and reads no "
                             "path; drop --data-path, or pick --dataset mnist, folder or celeba")
        if self.max_images is not None and self.max_images < 2:
            raise ValueError(f"--max-images: must be >= 2, got {self.max_images}")
        return self

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)

    #: fields that may differ between a run and its resumption (they do not change the math)
    RESUMABLE_CHANGES = ("epochs", "device", "backend", "data_path", "threads")

    def fingerprint(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed with this config."""
        d = self.to_dict()
        for k in self.RESUMABLE_CHANGES:
            if k == "epochs" and self.lr_schedule == "cosine":
                continue  # the cosine schedule depends on the total number of epochs
            d.pop(k, None)
        if d.get("mmd_prior") == "samples":
            d.pop("mmd_prior")  # the default: checkpoints written before the option resume
        return d

    def resolved_arch(self) -> str:
        if self.arch != "auto":
            return self.arch
        return "mlp" if self.dataset in ("digits", "squares") else "conv"

    def n_prior(self, n_codes: int) -> int:
        return self.prior_samples if self.prior_samples else n_codes


def prior_mode(cfg: TrainConfig) -> str:
    """How the codes meet the prior, for summaries: 'prior samples M' or the --mmd-prior mode."""
    m = cfg.n_prior(cfg.batch_size)
    if cfg.objective == "vae":
        return "KL to N(0, sigma^2 I) in closed form"
    if cfg.objective != "mmd" or cfg.mmd_prior == "samples":
        return f"prior samples {m}"
    if cfg.mmd_prior == "closed_form":
        return "prior closed_form (no samples)"
    return f"prior in_kernel ({m} samples generated in the kernels)"


def run_name(cfg: TrainConfig) -> str:
    """The default run directory's name without the time stamp:
    ``<dataset>-<objective>[-<mmd prior>]-<encoder>-z<dim>`` (the prior mode only when not 'samples')."""
    mode = f"-{cfg.mmd_prior}" if cfg.objective == "mmd" and cfg.mmd_prior != "samples" else ""
    return f"{cfg.dataset}-{cfg.objective}{mode}-{cfg.encoder}-z{cfg.z_dim}"


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate during (0-based) ``epoch``."""
    if schedule == "constant":
        return 1.0
    if schedule == "manual":
        f = 1.0
        if epoch >= 30:
            f /= 2.0
        if epoch >= 50:
            f /= 5.0
        if epoch >= 100:
            f /= 10.0
        return f
    if schedule == "cosine":
        t = min(epoch / max(epochs - 1, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"--lr-schedule: unknown schedule {schedule!r}; expected one of {SCHEDULES}")


_PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(z_dim=8, lam=10.0, batch_size=100, lr=1e-3, d_lr=5e-4, epochs=150, prior_sigma2=1.0,
                   width=512, lr_schedule="cosine"),
    "squares": dict(z_dim=8, lam=10.0, batch_size=100, lr=1e-3, d_lr=5e-4, epochs=20, prior_sigma2=1.0),
    "mnist": dict(z_dim=8, lam=10.0, batch_size=100, lr=1e-3, d_lr=5e-4, epochs=100, prior_sigma2=1.0),
    "fashion-mnist": dict(z_dim=8, lam=10.0, batch_size=100, lr=1e-3, d_lr=5e-4, epochs=100, prior_sigma2=1.0),
    "folder": dict(z_dim=64, lam=100.0, batch_size=100, lr=5e-4, d_lr=1e-3, epochs=50, prior_sigma2=2.0),
}
_PRESETS["celeba"] = dict(_PRESETS["folder"], dataset="folder")


def preset(dataset: str = "digits", objective: str = "mmd", **overrides: Any) -> TrainConfig:
    """The published defaults for ``dataset`` (digits, squares, mnist, fashion-mnist, folder/celeba)
    and ``objective`` (mmd, gan, vae), with ``overrides`` applied (None values are ignored).
    ``vae``: beta (``lam``) 1, a Gaussian encoder and no logvar penalty (the KL term covers it)."""
    if dataset not in _PRESETS:
        raise ValueError(f"--dataset: unknown dataset {dataset!r}; expected one of {DATASETS} (or 'celeba')")
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective: unknown objective {objective!r}; expected one of {OBJECTIVES}")
    kw: dict[str, Any] = dict(dataset=dataset, objective=objective)
    kw.update(_PRESETS[dataset])
    if objective == "gan":
        kw["lam"] = 1.0                       # the paper's WAE-GAN lambda on MNIST and CelebA
        if kw["dataset"] == "folder":
            kw["lr"] = 3e-4
    elif objective == "vae":
        kw.update(lam=1.0, encoder="gaussian", logvar_penalty="none")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(kw) - names
    if bad:
        raise ValueError(f"unknown config fields {sorted(bad)}")
    return TrainConfig(**kw)
