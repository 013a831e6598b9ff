"""The WAE trainer: WAE-MMD and WAE-GAN, deterministic and Gaussian encoders, per-epoch metrics,
atomic checkpoints and exact resumption.

Reproducibility: the model is initialised from ``torch.manual_seed(seed)``; every epoch's
randomness (data order, prior samples, the seeds :func:`wae_fast.reparameterize` draws) comes
from a CPU ``torch.Generator`` seeded by ``(seed, epoch)``, and the evaluation after epoch ``e``
from one seeded by ``(seed, e, "eval")``. A checkpoint holds the models, optimisers (the
learning-rate schedule is a pure function of the epoch), the torch global RNG state and the
metric history, so a resumed run ends with the same metrics as an uninterrupted one.

Per-epoch metrics (``metrics.csv`` / ``metrics.json`` in the run directory; epoch 0 is the
untrained model), all on up to ``eval_samples`` points with the models in eval mode:

* ``train_recon``, ``test_recon``: the cost ``c(x, G(z))`` (z sampled from Q(z|x) for a Gaussian
  encoder), on training and held-out images;
* ``mmd_qz``: unbiased MMD^2(Q_Z, P_Z) between held-out codes and as many prior samples, with the
  7-scale IMQ kernel tied to the prior (whatever the training kernel);
* ``sample_mmd``: unbiased MMD^2 in pixel space between decoded prior samples and held-out images,
  7-scale IMQ with C_base = the mean squared distance between held-out images (a sample-quality
  score that needs no downloaded network; lower is better, ``data_mmd`` is the floor: the same
  score for training images against the held-out ones);
* ``kid``, ``frechet`` (MNIST and Fashion-MNIST with labels; see :mod:`wae_fast.train.quality`):
  KID and Frechet distance between decoded prior samples and the held-out images in the features
  of a small classifier trained once per data set (cached); ``quality_floor`` in metrics.json
  holds the same scores for training images;
* ``kl`` (Gaussian encoders, Gaussian prior): mean per-point KL(Q(Z|x) || P_Z) on held-out images;
* ``loss``, ``rec``, ``dz``, ``pen``, ``d_loss``: running means over the epoch's training steps
  (for the VAE, ``rec`` is the Bernoulli negative log-likelihood and ``dz`` the mean KL);
* ``time_s``: the epoch's wall time (training and evaluation; the summary gives the mean).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from wae_fast import IMQ, WAE_SCALES, mmd, which_backend

from .checkpoint import (CheckpointError, atomic_write_text, check_fingerprint, load_checkpoint,
                         save_checkpoint)
from . import distributed_setup
from .config import TrainConfig, lr_factor, prior_mode
from .data import ImageData, load_dataset, to_float
from .models import LatentDiscriminator, build_autoencoder
from .rundir import RunLock
from .objectives import encode, kl_per_point, make_mmd_loss, recon_cost, sample_prior
from .quality import SampleQuality
from .step import SingleProcess, train_step

CHECKPOINT = "checkpoint.pt"
METRIC_KEYS = ("epoch", "lr", "loss", "rec", "dz", "pen", "d_loss", "train_recon", "test_recon",
               "mmd_qz", "sample_mmd", "kid", "frechet", "kl", "mean_logvar", "time_s")
#: data sets whose samples are also scored in a metric classifier's features (when labelled)
QUALITY_DATASETS = ("mnist", "fashion-mnist")


def stream_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _silent(msg: str) -> None:
    pass


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device: cannot parse {device!r} ({exc}); expected auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return dev


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Optional[str] = None, *, data: Optional[ImageData] = None,
                 resume: bool = False, overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print,
                 quality: Union[None, bool, SampleQuality] = None) -> None:
        """``quality``: score samples in a metric classifier's features (kid, frechet): None for
        MNIST and Fashion-MNIST with labels, True to require it, False to skip it, or a built
        :class:`SampleQuality` to share one across runs."""
        self.cfg = cfg.validate()
        self._quality_opt = quality
        self.device = resolve_device(cfg.device)
        # several processes (torchrun, WORLD_SIZE > 1): see distributed_setup; None otherwise
        self.dist = distributed_setup.setup(self.device)
        if self.dist is not None:
            self.device = self.dist.device
            out = self.dist.broadcast_object(None if out is None else str(out))  # rank 0's run directory
            if not self.dist.is_main:
                log = _silent
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.log = log
        self.ckpt_path = self.out / CHECKPOINT if self.out is not None else None
        self.lock = None
        try:
            # one writer per run directory: held from here until close() (or the process ends)
            self.lock = RunLock(self.out) if self.out is not None and self.is_main else None
            self._setup(data, resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _setup(self, data: Optional[ImageData], resume: bool, overwrite: bool) -> None:
        cfg = self.cfg
        state = None
        if resume:
            if self.ckpt_path is None:
                raise ValueError("--resume needs --out (the run directory holding checkpoint.pt)")
            state = load_checkpoint(self.ckpt_path)
            check_fingerprint(self.ckpt_path, state["fingerprint"], cfg.fingerprint())
        elif self.ckpt_path is not None and self.ckpt_path.exists() and not overwrite:
            raise CheckpointError(f"--out {self.out}: already holds {CHECKPOINT}; pass --resume to continue "
                                  "that run, --overwrite to start over, or another --out")

        if data is None:
            data = load_dataset(cfg.dataset, cfg.data_path, image_size=cfg.image_size,
                                max_images=cfg.max_images, skip=self.out)
            self.log(f"data: {data.source}")
        self.data = data
        if len(self.data.train) < 2 or len(self.data.test) < 2:
            raise ValueError("the data set needs at least 2 training and 2 held-out images")
        self.shape = self.data.shape

        torch.manual_seed(cfg.seed)
        stochastic = cfg.encoder == "gaussian"
        self.encoder, self.decoder = build_autoencoder(cfg.resolved_arch(), self.shape, cfg.z_dim, stochastic,
                                                       cfg.width, cfg.logvar_min, cfg.logvar_max,
                                                       cfg.logvar_init)
        self.encoder.to(self.device)
        self.decoder.to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_ae = torch.optim.Adam(list(self.encoder.parameters()) + list(self.decoder.parameters()),
                                       lr=cfg.lr, betas=betas)
        self.disc = self.opt_d = None
        if cfg.objective == "gan":
            self.disc = LatentDiscriminator(cfg.z_dim, cfg.d_width).to(self.device)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.d_lr, betas=betas)
        self.mmd_loss = make_mmd_loss(cfg.kernel, cfg.prior_sigma2, cfg.estimator, cfg.backend)
        self.metric_kernel = IMQ(sigma2=cfg.prior_sigma2)

        n_eval = min(cfg.eval_samples, len(self.data.test))
        self.eval_test = self.data.test[:n_eval]
        self.eval_train = self.data.train[:min(cfg.eval_samples, len(self.data.train))]
        xt = to_float(self.eval_test).flatten(1).double()
        sq = (xt * xt).sum(1)
        r = (sq[:, None] + sq[None, :] - 2 * xt @ xt.T).clamp_min(0)
        c_base = float(r.sum() / max(n_eval * (n_eval - 1), 1)) or 1.0
        self.pixel_kernel = IMQ(C=tuple(s * c_base for s in WAE_SCALES))
        self.data_mmd = float(mmd(to_float(self.eval_train).flatten(1).to(self.device),
                                  to_float(self.eval_test).flatten(1).to(self.device),
                                  self.pixel_kernel, backend=cfg.backend))

        self.quality = self._quality_opt if isinstance(self._quality_opt, SampleQuality) else None
        want = self._quality_opt
        if want is None:
            want = (self.data.name in QUALITY_DATASETS and self.data.train_labels is not None
                    and self.data.test_labels is not None)
        if want and self.quality is None and self.is_main:
            self.quality = SampleQuality.build(self.data, str(self.device), n_floor=len(self.eval_test),
                                               log=self.log)
            self.log(self.quality.source)

        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        if state is not None:
            self._restore(state)
            self.log(f"resumed from {self.ckpt_path} after epoch {self.epoch}")
        # how a step shards the global batch: one process, or this rank's part under DDP
        self.shard = (distributed_setup.DataParallel(self, self.dist) if self.dist is not None
                      else SingleProcess(self))

    @property
    def is_main(self) -> bool:
        """True on the process that writes (always, unless training on several processes)."""
        return self.dist is None or self.dist.is_main

    def close(self) -> None:
        """Unlock the run directory and leave the process group (several processes only).
        A trainer with a run directory holds its lock until closed (or garbage-collected)."""
        if self.lock is not None:
            self.lock.release()
        if self.dist is not None:
            self.dist.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        st = {
            "config": self.cfg.to_dict(), "fingerprint": self.cfg.fingerprint(), "epoch": self.epoch,
            "encoder": self.encoder.state_dict(), "decoder": self.decoder.state_dict(),
            "opt_ae": self.opt_ae.state_dict(), "history": self.history,
            "torch_rng": torch.get_rng_state(), "data_mmd": self.data_mmd,
        }
        if self.disc is not None:
            st["disc"] = self.disc.state_dict()
            st["opt_d"] = self.opt_d.state_dict()
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        return st

    def _restore(self, st: dict[str, Any]) -> None:
        try:
            self.encoder.load_state_dict(st["encoder"])
            self.decoder.load_state_dict(st["decoder"])
            self.opt_ae.load_state_dict(st["opt_ae"])
            if self.disc is not None:
                self.disc.load_state_dict(st["disc"])
                self.opt_d.load_state_dict(st["opt_d"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.ckpt_path} does not fit this model ({exc}); "
                                  "it was left untouched") from None
        self.epoch = int(st["epoch"])
        self.history = list(st["history"])
        torch.set_rng_state(st["torch_rng"])
        if "cuda_rng" in st and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(st["cuda_rng"])
            except Exception:
                pass

    def save(self) -> None:
        if self.out is None or not self.is_main:
            return
        save_checkpoint(self.ckpt_path, self.state_dict())
        self.write_metrics()

    def write_metrics(self) -> None:
        if self.out is None or not self.is_main:
            return
        buf = io.StringIO()
        keys = [k for k in METRIC_KEYS if any(k in h for h in self.history)]
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for h in self.history:
            w.writerow({k: h.get(k, "") for k in keys})
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())
        extra = {}
        if self.quality is not None:
            extra = {"quality_floor": self.quality.floor, "classifier_test_accuracy": self.quality.test_accuracy}
        atomic_write_text(self.out / "metrics.json", json.dumps(
            {"config": self.cfg.to_dict(), "data_mmd": self.data_mmd, **extra, "history": self.history},
            indent=2))

    # -- training ----------------------------------------------------------------------------
    def _set_train(self, flag: bool) -> None:
        for m in (self.encoder, self.decoder, self.disc):
            if m is not None:
                m.train(flag)

    def _prior(self, n: int, g: torch.Generator) -> torch.Tensor:
        c = self.cfg
        return sample_prior(c.prior, n, c.z_dim, c.prior_sigma2, g, self.device)

    def train_epoch(self, epoch: int, bar=None) -> dict[str, float]:
        c = self.cfg
        lr_f = lr_factor(c.lr_schedule, epoch, c.epochs)
        for grp in self.opt_ae.param_groups:
            grp["lr"] = c.lr * lr_f
        if self.opt_d is not None:
            for grp in self.opt_d.param_groups:
                grp["lr"] = c.d_lr * lr_f
        g = torch.Generator().manual_seed(stream_seed(c.seed, epoch, 0))
        n = len(self.data.train)
        perm = torch.randperm(n, generator=g)
        self._set_train(True)
        sums = {"loss": 0.0, "rec": 0.0, "dz": 0.0, "pen": 0.0, "d_loss": 0.0}
        steps = 0
        # the Gaussian encoder's noise: the epoch generator, or a per-rank one under DDP
        gr = (torch.Generator().manual_seed(stream_seed(c.seed, epoch, 2, self.shard.rank))
              if self.dist is not None else g)
        shuffled = self.data.train[perm]  # one gather per epoch; the batches are slices of it
        for start in range(0, n, c.batch_size):
            batch = shuffled[start:start + c.batch_size]
            if len(batch) < 2:
                break
            vals = train_step(self, self.shard, batch, g, gr)
            self._check_finite(epoch, vals)
            for k, v in vals.items():
                sums[k] += v
            steps += 1
            if bar is not None:
                bar.update(1)
                post = {"ep": epoch + 1, "loss": f"{sums['loss'] / steps:.4g}", "rec": f"{sums['rec'] / steps:.4g}",
                        "dz": f"{sums['dz'] / steps:.3g}"}
                if c.objective == "gan":
                    post["d"] = f"{sums['d_loss'] / steps:.3g}"
                bar.set_postfix(post, refresh=False)
        out = {k: v / max(steps, 1) for k, v in sums.items()}
        if c.objective != "gan":
            out.pop("d_loss")
        if c.encoder == "deterministic" or c.objective == "vae":  # the VAE has no logvar penalty
            out.pop("pen")
        out["lr"] = c.lr * lr_f
        return out

    @staticmethod
    def _check_finite(epoch: int, vals: dict[str, float]) -> None:
        if not math.isfinite(vals["loss"]):
            raise FloatingPointError(f"epoch {epoch + 1}: the loss became {vals['loss']} "
                                     f"(rec {vals['rec']}, dz {vals['dz']}); lower --lr or --lam")

    def _evaluate(self, epoch: int) -> dict[str, float]:
        return self.evaluate(epoch) if self.dist is None else distributed_setup.evaluate(self, epoch)

    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, g: Optional[torch.Generator], sample: bool = True, bs: int = 500
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Codes of ``x`` (sampled when ``sample`` and the encoder is Gaussian) and the logvars."""
        self._set_train(False)
        zs, lvs = [], []
        for i in range(0, len(x), bs):
            xb = to_float(x[i:i + bs]).to(self.device)
            if sample:
                z, _, lv = encode(self.encoder, xb, g, self.cfg.backend)
            else:
                z, lv = self.encoder(xb)
            zs.append(z)
            if lv is not None:
                lvs.append(lv)
        return torch.cat(zs), (torch.cat(lvs) if lvs else None)

    @torch.no_grad()
    def decode_all(self, z: torch.Tensor, bs: int = 500) -> torch.Tensor:
        self._set_train(False)
        return torch.cat([self.decoder(z[i:i + bs]) for i in range(0, len(z), bs)])

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        c = self.cfg
        g = torch.Generator().manual_seed(stream_seed(c.seed, epoch, 1))
        out: dict[str, float] = {}
        for name, xs in (("train_recon", self.eval_train), ("test_recon", self.eval_test)):
            z, lv = self.encode_all(xs, g)
            xr = self.decode_all(z)
            out[name] = float(recon_cost(to_float(xs).to(self.device), xr, c.cost_scale))
        # z, lv: the held-out codes
        p = self._prior(len(z), g)
        out["mmd_qz"] = float(mmd(z, p, self.metric_kernel, backend=c.backend))
        gen = self.decode_all(self._prior(len(self.eval_test), g))
        out["sample_mmd"] = float(mmd(gen.flatten(1), to_float(self.eval_test).flatten(1).to(self.device),
                                      self.pixel_kernel, backend=c.backend))
        if lv is not None:
            out["mean_logvar"] = float(lv.mean())
            if c.prior == "gaussian":
                mu, lv = self.encode_all(self.eval_test, None, sample=False)
                out["kl"] = float(kl_per_point(mu, lv, c.prior_sigma2).mean())
        if self.quality is not None:
            # its own generator: the scores never shift the other metrics' random draws
            out.update(self.quality.scores(gen, torch.Generator().manual_seed(stream_seed(c.seed, epoch, 3))))
        return out

    def fit(self, stop_after: Optional[int] = None) -> list[dict[str, Any]]:
        """Train up to ``cfg.epochs`` (or, with ``stop_after``, until that many epochs are done,
        as if interrupted), checkpointing after each epoch. Returns the metric history."""
        t_start = time.perf_counter()
        with self.threads():
            return self._fit(stop_after, t_start)

    @contextlib.contextmanager
    def threads(self):
        """CPU thread count for this model while inside (restored after): ``cfg.threads``, or 1 for
        MLPs, which run far faster without OpenMP hand-offs (above all on a busy CPU)."""
        before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads or (1 if self.cfg.resolved_arch() == "mlp" else before))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _fit(self, stop_after, t_start):
        c = self.cfg
        if self.epoch == 0 and not self.history:
            row = {"epoch": 0, **self._evaluate(0), "time_s": 0.0}
            self.history.append(row)
        last = c.epochs if stop_after is None else min(c.epochs, stop_after)
        n = len(self.data.train)
        steps_per_epoch = sum(1 for s in range(0, n, c.batch_size) if n - s >= 2)
        bar = None
        if self.progress and self.is_main and last > self.epoch:
            from tqdm.auto import tqdm
            bar = tqdm(total=(last - self.epoch) * steps_per_epoch, desc=f"WAE-{c.objective.upper()}",
                       unit="step", dynamic_ncols=True, leave=True)
        try:
            while self.epoch < last:
                t0 = time.perf_counter()
                row: dict[str, Any] = {"epoch": self.epoch + 1}
                row.update(self.train_epoch(self.epoch, bar))
                row.update(self._evaluate(self.epoch + 1))
                row["time_s"] = round(time.perf_counter() - t0, 3)
                self.history.append(row)
                self.epoch += 1
                self.save()
                if bar is not None:
                    post = {"ep": self.epoch, "test_rec": f"{row['test_recon']:.4g}",
                            "mmd_qz": f"{row['mmd_qz']:.3g}", "smp": f"{row['sample_mmd']:.3g}"}
                    if "kid" in row:
                        post.update(kid=f"{row['kid']:.3g}", fd=f"{row['frechet']:.3g}")
                    bar.set_postfix(post)
        finally:
            if bar is not None:
                bar.close()
        if self.out is not None and self.epoch == 0:
            self.save()
        self.wall_s = time.perf_counter() - t_start
        return self.history

    def summary(self) -> str:
        c = self.cfg
        first, last = self.history[0], self.history[-1]
        enc = c.encoder + (f" (+{c.logvar_penalty} logvar penalty x{c.logvar_weight})"
                           if c.encoder == "gaussian" and c.logvar_penalty != "none" else "")
        name = "VAE (Bernoulli decoder)" if c.objective == "vae" else f"WAE-{c.objective.upper()}"
        lam = f"beta {c.lam}" if c.objective == "vae" else f"lambda {c.lam}"
        lines = [
            f"{name} on {c.dataset} {self.shape}: arch {c.resolved_arch()}, encoder {enc}, "
            f"z_dim {c.z_dim}, {lam}, kernel {c.kernel if c.objective == 'mmd' else '-'}, "
            f"batch {c.batch_size}, {prior_mode(c)}, epochs {self.epoch}/{c.epochs}, "
            f"device {self.device}, MMD backend {self._backend_name()}",
            f"{'metric':<14}{'epoch 0':>12}{'epoch ' + str(last['epoch']):>12}",
        ]
        for k in ("train_recon", "test_recon", "mmd_qz", "sample_mmd", "kid", "frechet", "kl"):
            if k in first and k in last:
                lines.append(f"{k:<14}{first[k]:>12.5g}{last[k]:>12.5g}")
        lines.append(f"(sample_mmd floor, training vs held-out images: {self.data_mmd:.5g})")
        if self.quality is not None:
            fl = self.quality.floor
            lines.append(f"(kid / frechet floor, training vs held-out images: {fl['kid']:.5g} / "
                         f"{fl['frechet']:.5g}; {self.quality.source})")
        timed = [h for h in self.history[1:] if "time_s" in h]
        if timed:
            t = sum(h["time_s"] for h in timed) / len(timed)
            lines.append(f"epoch time: {t:.2f} s (training and evaluation), mean over {len(timed)} epoch(s)")
        if self.out is not None:
            lines.append(f"run directory: {self.out}")
        return "\n".join(lines)

    def _backend_name(self) -> str:
        if self.dist is not None:
            return (f"mmd_distributed over {self.dist.world} processes" if self.cfg.objective == "mmd"
                    else f"- (WAE-GAN, {self.dist.world} processes)")
        try:
            return which_backend(self.device, self.cfg.backend)
        except Exception as exc:  # pragma: no cover
            return f"? ({exc})"
