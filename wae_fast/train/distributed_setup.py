"""Multi-process WAE training (``torchrun --nproc-per-node K -m wae_fast train ...``).

When the environment holds ``WORLD_SIZE > 1`` (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), or a process group is already initialised with more than one rank, the
:class:`~wae_fast.train.trainer.Trainer` trains data-parallel: its steps are
:func:`wae_fast.train.step.train_step` with the :class:`DataParallel` sharding strategy (the
single-process run uses the same step with :class:`wae_fast.train.step.SingleProcess`):

* process group: gloo on CPU, nccl on CUDA (device ``cuda:LOCAL_RANK``); an existing group is
  reused (and then not destroyed by :meth:`DistContext.close`);
* encoder, decoder (and the WAE-GAN discriminator) are wrapped in DistributedDataParallel; the
  optimisers act on the same parameters, checkpoints hold the unwrapped modules;
* every rank draws the same permutation and the same global prior sample from the epoch's
  generator (seeded by ``(seed, epoch)``, so identical on every rank) and takes its slice of each
  global batch of ``--batch-size`` images: rank r gets rows [lo_r, hi_r) of :func:`shard_bounds`
  (sizes differ by at most one); the Gaussian encoder's noise comes from a per-rank generator
  seeded by ``(seed, epoch, 2, rank)``;
* the WAE-MMD penalty is :func:`wae_fast.mmd_distributed` of the code and prior shards (with
  ``--mmd-prior closed_form``: :func:`wae_fast.mmd_to_prior_distributed` of the code shards, no
  prior sample; ``in_kernel`` is single-process) with ``scale_grad_by_world_size=True``: its value is the MMD^2 of the *global* batch, identical on
  every rank, each rank evaluating ~1/K of the kernel pairs. The per-batch means (reconstruction
  cost, logvar penalty, GAN terms) are weighted by ``K n_r / n`` so that DDP's gradient average
  is the gradient of the global-batch mean even for uneven shards; for a deterministic encoder a
  step equals the single-process step on the global batch (up to float rounding);
* the logged running means are global-batch means (one small all-reduce per step, which also
  stops every rank together on a non-finite loss); evaluation runs on rank 0 and its metrics are
  broadcast; only rank 0 writes checkpoints, metrics and plots and shows the progress bar.

The MMD collectives run in their own process group, the metric/evaluation messages in a gloo
group, so they never interleave with DDP's gradient all-reduces. BatchNorm layers (conv
architectures) use per-rank batch statistics (DDP broadcasts rank 0's running statistics).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from wae_fast import mmd_distributed, mmd_to_prior_distributed

from .objectives import make_kernel


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of ``n`` that rank ``rank`` of ``world`` takes: contiguous
    slices in rank order, the first ``n % world`` ranks one row longer."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    mmd_group: Any = None
    ctrl_group: Any = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Barrier, then destroy the process group if :func:`setup` created it (every rank leaves
        together: tearing gloo down while a peer still talks aborts)."""
        if dist.is_available() and dist.is_initialized():
            dist.barrier(group=self.ctrl_group)
            if self.owns_group:
                dist.destroy_process_group()
                self.owns_group = False

    # -- small collectives on the gloo control group ----------------------------------------------
    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.ctrl_group)
        return box[0]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.ctrl_group)
        return t.tolist()


def setup(device: torch.device) -> Optional[DistContext]:
    """The distributed context, or None for a single process. Initialises the default process
    group from the torchrun environment (env://) unless one is initialised already; ``device`` is
    the resolved single-process device (cuda becomes cuda:LOCAL_RANK)."""
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and env_world_size() <= 1:
        return None
    if initialised and dist.get_world_size() <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    # wae_fast.distributed uses the autograd-aware torch.distributed.nn collectives, which this
    # torch marks deprecated on every call site: say it once in the report, not per rank per run
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.\w+ is deprecated",
                            category=FutureWarning)
    owns = False
    if not initialised:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", **kw)
        owns = True
    backend = dist.get_backend()
    ctx = DistContext(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                      device=device, owns_group=owns)
    # every rank creates the groups in the same order
    ctx.mmd_group = dist.new_group(backend=backend)
    ctx.ctrl_group = dist.new_group(backend="gloo")
    return ctx


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ctx.device.type == "cuda":
        return DDP(module, device_ids=[ctx.device.index], output_device=ctx.device.index)
    return DDP(module)


class DataParallel:
    """Sharding strategy of a data-parallel run (see :mod:`wae_fast.train.step`): this rank's
    shard of each global batch, DDP-wrapped modules (the trainer keeps the unwrapped ones), the
    WAE-MMD penalty over all ranks' shards, and the logged values all-reduced."""

    def __init__(self, trainer, ctx: DistContext) -> None:
        c = trainer.cfg
        if c.batch_size < ctx.world:
            raise ValueError(f"--batch-size {c.batch_size}: the global batch must give every one of the "
                             f"{ctx.world} ranks at least one image")
        if c.mmd_prior == "in_kernel":
            raise ValueError("--mmd-prior in_kernel is single-process; under torchrun use closed_form "
                             "(sampling-free, distributed) or samples")
        self.cfg = c
        self.ctx = ctx
        self.world, self.rank = ctx.world, ctx.rank
        self.encoder = wrap(trainer.encoder, ctx)
        self.decoder = wrap(trainer.decoder, ctx)
        self.disc = wrap(trainer.disc, ctx) if trainer.disc is not None else None
        self.kernel = make_kernel(c.kernel, c.prior_sigma2)

    def bounds(self, n: int) -> tuple[int, int]:
        return shard_bounds(n, self.world, self.rank)

    def mmd_to_samples(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """MMD^2 of the global batch's codes and prior samples (this rank holds its shards)."""
        return mmd_distributed(z, p.to(z.dtype), self.kernel, estimator=self.cfg.estimator,
                               group=self.ctx.mmd_group, scale_grad_by_world_size=True)

    def mmd_to_prior(self, z: torch.Tensor, g) -> torch.Tensor:
        """Sampling-free MMD^2 of the global batch's codes and the prior (closed form)."""
        return mmd_to_prior_distributed(z, self.kernel, sigma2=self.cfg.prior_sigma2,
                                        unbiased=self.cfg.estimator == "unbiased",
                                        group=self.ctx.mmd_group, scale_grad_by_world_size=True)

    def reduce(self, local: list[float]) -> dict[str, float]:
        """The global-batch means (one small all-reduce, which also stops every rank together
        on a non-finite loss)."""
        bad = 0.0 if all(math.isfinite(v) for v in local) else 1.0
        tot = self.ctx.all_reduce_sum([v / self.world if math.isfinite(v) else 0.0 for v in local] + [bad])
        vals = dict(zip(("loss", "rec", "dz", "pen", "d_loss"), tot[:5]))
        if tot[5]:
            vals["loss"] = float("nan")
        return vals


def evaluate(trainer, epoch: int) -> dict[str, float]:
    """Rank 0 evaluates (unwrapped modules, no collectives inside); every rank gets its metrics."""
    ctx = trainer.dist
    out = trainer.evaluate(epoch) if ctx.is_main else None
    return ctx.broadcast_object(out)
