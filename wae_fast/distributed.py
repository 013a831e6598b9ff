r"""Squared MMD over point sets sharded across ``torch.distributed`` ranks.

:func:`mmd_distributed` gives, on every rank, the MMD^2 of the *concatenated* shards
(X = cat_r x_local_r, Y = cat_r y_local_r, in rank order) and gradients to each rank's own shard
equal to those of the single-process ``wae_fast.mmd(X, Y)``, while each rank evaluates only about
1/K of the kernel pairs:

1. metadata (shapes, dtypes, flags; one tiny int64 tensor per rank) is all-gathered first and
   validated *collectively*: a bad shard (wrong d, not 2-D, unsupported dtype, inconsistent
   estimator or requires_grad across ranks) raises the same ``ValueError`` on every rank instead
   of hanging in a later collective;
2. the shards are padded to the largest shard, all-gathered with the autograd-aware
   ``torch.distributed.nn.functional.all_gather`` (its backward sums the gradient contributions
   of every rank into the owner's shard) and sliced back, so every rank holds X (N, d), Y (M, d);
3. the pair blocks (square ``block_size`` tiles: the upper triangles of XX and YY, counted
   twice off the diagonal, and the full XY grid) are cut into K contiguous runs of equal pair
   count (:func:`assign_blocks`), each block to exactly one rank, independent of the shard sizes;
4. each rank computes its blocks' partial kernel sums (float64, gradient fused into the
   forward, memory O((N + M) d + block_size^2)), and the (3,) partial sums are combined with
   the autograd-aware ``all_reduce``.

:func:`mmd_to_prior_distributed` does the same for the sampling-free MMD^2 between the sharded
codes and the prior N(0, sigma2 I): the XX blocks are split as above, the prior terms are closed
forms (:mod:`wae_fast.prior.closed_form`) of each rank's own rows, so no prior sample exists anywhere.

Gradient convention.  Every rank holds the same loss; when every rank calls ``backward`` on it,
``x_local.grad`` is d MMD^2 / d x_local, exactly the single-process gradient of those rows
(torch.distributed.nn's all_reduce would sum the K identical upstream gradients, so this function
scales the gradient entering it by 1/K).  DistributedDataParallel *averages* parameter gradients
over ranks, which divides the encoder's MMD gradient by K: with DDP pass
``scale_grad_by_world_size=True`` (or multiply the MMD loss by the world size).  All ranks must
call ``backward`` (the backward runs collectives).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.distributed as dist

from .contract import compute_dtype, term_shifts
from .kernel_specs import IMQ, KernelSpec, resolve_shift_invariant_kernel
from .pairsum import BLOCK_SIZE, block_pairs, cross_sum, pair_count, self_sum
from .prior.closed_form import QUADRATURES, closed_form_cross, quadrature_rule
from .validation import ESTIMATORS, FLOAT_DTYPES

_DEFAULT_KERNEL = IMQ()
_F64 = torch.float64
# meta layout per input: [is tensor, dim, rows, d, dtype code, requires_grad]
_META = 6


def _meta(t) -> list[int]:
    if not isinstance(t, torch.Tensor):
        return [0, -1, -1, -1, -1, 0]
    code = FLOAT_DTYPES.index(t.dtype) if t.dtype in FLOAT_DTYPES else -1
    rows = t.shape[0] if t.dim() >= 1 else -1
    d = t.shape[1] if t.dim() == 2 else -1
    return [1, t.dim(), rows, d, code, int(bool(t.requires_grad) and torch.is_grad_enabled())]


def _collective_check(table: list[list[int]], estimator_code: int,
                      names: tuple = ("x_local", "y_local")) -> Optional[str]:
    """The first problem in the gathered metadata (identical on every rank), or None."""
    ests = {row[-1] for row in table}
    if len(ests) != 1 or -1 in ests:
        per = ", ".join(f"rank {r}: {ESTIMATORS[row[-1]] if row[-1] >= 0 else 'invalid'}"
                        for r, row in enumerate(table))
        return (f"estimator must be one of {ESTIMATORS} and the same on every rank; got {per}")
    for r, row in enumerate(table):
        for k, name in enumerate(names):
            is_t, dim, rows, d, code, _ = row[k * _META:(k + 1) * _META]
            if not is_t:
                return f"{name} on rank {r} is not a torch.Tensor"
            if code < 0:
                return (f"{name} on rank {r} has an unsupported dtype; expected one of float16, "
                        "bfloat16, float32, float64")
            if dim != 2:
                return (f"{name} on rank {r} must be 2-D (points, features), got {dim}-D; "
                        "flatten multi-channel latents first, e.g. z.flatten(1)")
            if d == 0:
                return f"{name} on rank {r} has d=0 features"
    d0 = table[0][3]
    for r, row in enumerate(table):
        for k, name in enumerate(names):
            d = row[k * _META + 3]
            if d != d0:
                return (f"{name} on rank {r} has d={d} features but x_local on rank 0 has d={d0}; "
                        "every shard must have the same d")
    for k, name in enumerate(names):
        flags = [row[k * _META + 5] for row in table]
        if len(set(flags)) != 1:
            return (f"{name} requires grad on ranks {[r for r, f in enumerate(flags) if f]} but not "
                    f"on ranks {[r for r, f in enumerate(flags) if not f]}; it must be the same on "
                    "every rank (the backward runs collectives)")
    need = 2 if ESTIMATORS[estimator_code] == "unbiased" else 1
    for k, name in enumerate(names):
        total = sum(row[k * _META + 2] for row in table)
        if total < need:
            return (f"{name}: the shards hold {total} point(s) in all; the {ESTIMATORS[estimator_code]} "
                    f"estimator needs at least {need}")
    return None


def _all_blocks(n: int, m: int, block: int):
    """(kind, i0, j0, pairs) for every block, in a fixed order: the upper XX blocks row by row,
    then the upper YY blocks, then the XY grid (a generator: nothing is stored)."""
    for kind, blocks, rows, cols in (("xx", _sym_iter(n, block), n, n),
                                     ("yy", _sym_iter(m, block), m, m),
                                     ("xy", _cross_iter(n, m, block), n, m)):
        for i0, j0 in blocks:
            yield kind, i0, j0, block_pairs(i0, j0, rows, cols, block)


def _sym_iter(n, block):
    for i0 in range(0, n, block):
        for j0 in range(i0, n, block):
            yield i0, j0


def _cross_iter(n, m, block):
    for i0 in range(0, n, block):
        for j0 in range(0, m, block):
            yield i0, j0


def assign_blocks(n: int, m: int, block: int, world: int, rank: Optional[int] = None):
    """Split the pair blocks among ``world`` ranks, each block to exactly one rank.

    The blocks are walked in a fixed order (upper XX, upper YY, XY grid) and cut into ``world``
    contiguous runs of equal pair count: a block goes to rank floor(K * midpoint / total) of its
    cumulative pair count, so every rank evaluates total/K pairs within one block's worth, and
    contiguous runs keep its rows together.  An off-diagonal XX/YY block costs rows x cols once
    (its mirror is counted twice but not computed).  Two passes over the block indices, no
    list of all blocks is kept.

    Returns (xx blocks, yy blocks, xy blocks, pairs) for ``rank``, or a list of them for every
    rank when ``rank`` is None; the blocks are (i0, j0) lists.
    """
    total = sum(c for _, _, _, c in _all_blocks(n, m, block))
    ranks = range(world) if rank is None else [rank]
    out = {r: {"xx": [], "yy": [], "xy": [], "pairs": 0} for r in ranks}
    done = 0
    for kind, i0, j0, c in _all_blocks(n, m, block):
        owner = min(world - 1, (world * (2 * done + c)) // (2 * total))
        done += c
        if owner in out:
            out[owner][kind].append((i0, j0))
            out[owner]["pairs"] += c
    res = [(o["xx"], o["yy"], o["xy"], o["pairs"]) for o in out.values()]
    return res if rank is None else res[0]


class _PartialSums(torch.autograd.Function):
    """Unnormalised float64 (sum k(x,x'), sum k(y,y'), sum k(x,y)) over the given blocks of the
    global X, Y; gradient fused into the forward."""

    @staticmethod
    def forward(ctx, X, Y, kind, params, unbiased, block, bxx, byy, bxy, need_x, need_y):
        ct = compute_dtype(X.dtype)
        # each term its own shift, as the mmd ops (the same on every rank: global X and Y)
        if X.shape[0] and Y.shape[0]:
            off = term_shifts(kind, X, Y)
        else:
            off = (Y if Y.shape[0] else X).detach().to(ct).median(0).values.expand(3, -1)
        xc, yc = X.detach().to(ct), Y.detach().to(ct)
        gxx = torch.zeros(xc.shape, dtype=_F64, device=X.device) if need_x and bxx else None
        gyy = torch.zeros(yc.shape, dtype=_F64, device=Y.device) if need_y and byy else None
        gxy_x = torch.zeros(xc.shape, dtype=_F64, device=X.device) if need_x and bxy else None
        gxy_y = torch.zeros(yc.shape, dtype=_F64, device=Y.device) if need_y and bxy else None
        sxx, _ = self_sum(xc - off[0], kind, params, unbiased, block, bxx, gxx)
        syy, _ = self_sum(yc - off[1], kind, params, unbiased, block, byy, gyy)
        sxy, _ = cross_sum(xc - off[2], yc - off[2], kind, params, block, bxy, gxy_x, gxy_y)
        ctx.parts = (gxx, gxy_x, gyy, gxy_y)
        ctx.shapes = ((X.shape, X.device), (Y.shape, Y.device))
        ctx.dtypes = (X.dtype, Y.dtype)
        return torch.stack([sxx, syy, sxy])

    @staticmethod
    def backward(ctx, g):
        gxx, gxy_x, gyy, gxy_y = ctx.parts
        (xshape, xdev), (yshape, ydev) = ctx.shapes
        g = g.to(_F64)
        gX = gY = None
        if ctx.needs_input_grad[0]:
            gX = torch.zeros(xshape, dtype=_F64, device=xdev)
            if gxx is not None:
                gX += (4.0 * g[0]) * gxx
            if gxy_x is not None:
                gX += (2.0 * g[2]) * gxy_x
            gX = gX.to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            gY = torch.zeros(yshape, dtype=_F64, device=ydev)
            if gyy is not None:
                gY += (4.0 * g[1]) * gyy
            if gxy_y is not None:
                gY += (2.0 * g[2]) * gxy_y
            gY = gY.to(ctx.dtypes[1])
        ctx.parts = None
        return gX, gY, None, None, None, None, None, None, None, None, None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, scale):
        ctx.scale = scale
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def _gather_rows(t: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Autograd-aware all-gather of row shards of different lengths (pad to the max, slice)."""
    from torch.distributed.nn.functional import all_gather

    nmax = max(sizes)
    if t.shape[0] < nmax:
        t = torch.cat([t, t.new_zeros((nmax - t.shape[0], t.shape[1]))])
    parts = all_gather(t.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _meta_device(group, x) -> torch.device:
    backend = dist.get_backend(group)
    if backend in ("nccl", "xccl") or str(backend).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_meta(tensors, est_code, group, like) -> list[list[int]]:
    meta = sum((_meta(t) for t in tensors), []) + [est_code]
    meta = torch.tensor(meta, dtype=torch.int64, device=_meta_device(group, like))
    gathered = [torch.empty_like(meta) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, meta, group=group)
    return [g.tolist() for g in gathered]


def _require_group():
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("wae_fast.distributed needs an initialised torch.distributed process "
                           "group (torch.distributed.init_process_group); use the single-process "
                           "functions otherwise")


def _combine(partial, group, world, scale_grad_by_world_size, differentiable):
    """All-reduce the (3,) partial sums; gradients as documented in the module docstring.
    ``differentiable`` must be the same on every rank (it is taken from the gathered flags)."""
    if differentiable:
        from torch.distributed.nn.functional import all_reduce

        total = all_reduce(partial, group=group)
        scale = 1.0 if scale_grad_by_world_size else 1.0 / world
        return _ScaleGrad.apply(total, scale)
    total = partial.detach().clone()
    dist.all_reduce(total, group=group)
    return total


def mmd_distributed(
    x_local: torch.Tensor,
    y_local: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    estimator: str = "unbiased",
    group=None,
    block_size: int = BLOCK_SIZE,
    scale_grad_by_world_size: bool = False,
    return_pairs: bool = False,
):
    r"""MMD^2 of the concatenated shards, identical on every rank (see the module docstring).

    Args:
        x_local: this rank's codes (n_r, d); n_r may differ per rank (0 allowed).
        y_local: this rank's prior samples (m_r, d).
        kernel: as in :func:`wae_fast.mmd` (the IMQ/RBF constants are tied to the global d).
        estimator: "unbiased" (U-statistic over the global sets) or "biased".
        group: process group (default: the world).
        block_size: side of the square pair blocks that are split among the ranks.
        scale_grad_by_world_size: multiply the gradients by the world size K (what DDP's
            gradient averaging expects); the value is unchanged.
        return_pairs: also return the number of kernel pairs this rank evaluated (an int; the
            ranks' counts sum to the work of one process using symmetry, each about 1/K of it).

    Returns:
        0-dim tensor (float64 for fp64 inputs, float32 otherwise), or (value, pairs).

    Raises:
        RuntimeError if torch.distributed is not initialised; ValueError, raised on *every*
        rank, if any rank's shard is invalid.
    """
    _require_group()
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    est_code = ESTIMATORS.index(estimator) if estimator in ESTIMATORS else -1
    table = _gather_meta([x_local, y_local], est_code, group, x_local)
    problem = _collective_check(table, est_code)
    if problem is not None:
        raise ValueError(f"mmd_distributed (rank {rank} of {world}): {problem}")

    spec = resolve_shift_invariant_kernel(kernel, "mmd_distributed")
    xsizes = [row[2] for row in table]
    ysizes = [row[_META + 2] for row in table]
    d = table[0][3]
    dtype = FLOAT_DTYPES[table[0][4]]
    for row in table:
        dtype = torch.promote_types(dtype, FLOAT_DTYPES[row[4]])
        dtype = torch.promote_types(dtype, FLOAT_DTYPES[row[_META + 4]])
    X = _gather_rows(x_local.to(dtype), xsizes, group)
    Y = _gather_rows(y_local.to(dtype), ysizes, group)
    n, m = X.shape[0], Y.shape[0]
    kind, params = spec.lower(d)
    unbiased = estimator == "unbiased"
    bxx, byy, bxy, pairs = assign_blocks(n, m, block_size, world, rank)
    need_x = bool(table[0][5])
    need_y = bool(table[0][_META + 5])
    partial = _PartialSums.apply(X, Y, kind, list(params), unbiased, block_size, bxx, byy, bxy,
                                 need_x, need_y)
    total = _combine(partial, group, world, scale_grad_by_world_size, need_x or need_y)
    nxx, nyy = pair_count(n, unbiased), pair_count(m, unbiased)
    value = total[0] / nxx + total[1] / nyy - 2.0 * total[2] / (n * m)
    value = value.to(_F64 if dtype == _F64 else torch.float32)
    return (value, pairs) if return_pairs else value


class _PriorCross(torch.autograd.Function):
    """sum_i E_{y ~ N(0, sigma2 I)} k(x_i, y) over this rank's rows (closed form), float64."""

    @staticmethod
    def forward(ctx, x, kind, params, sigma2, rule, nodes, need_grad):
        s, g, _ = closed_form_cross(x, kind, params, sigma2, rule, nodes, need_grad)
        if need_grad:
            ctx.save_for_backward(g)
        ctx.xdtype = x.dtype
        return s

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return (grad.to(_F64) * g).to(ctx.xdtype), None, None, None, None, None, None


def mmd_to_prior_distributed(
    x_local: torch.Tensor,
    kernel: Union[KernelSpec, str, None] = _DEFAULT_KERNEL,
    *,
    sigma2: Optional[float] = None,
    unbiased: bool = True,
    group=None,
    block_size: int = BLOCK_SIZE,
    quadrature: str = "exp-sinh",
    quad_nodes: Optional[int] = None,
    scale_grad_by_world_size: bool = False,
    return_pairs: bool = False,
):
    r"""Sampling-free MMD^2 between the concatenated code shards X and N(0, sigma2 I_d): the
    distributed form of ``wae_fast.prior.mmd_to_prior(X, estimator="closed_form")``.

    The XX pair blocks are split among the ranks as in :func:`mmd_distributed` (X all-gathered
    with the autograd-aware collective); the prior terms need no communication: each rank adds
    the closed-form E_y k(x_i, y) of its own rows, and E_{y,y'} k is a constant.  Same
    collective validation, gradient convention and return values as :func:`mmd_distributed`.
    """
    _require_group()
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if quadrature not in QUADRATURES:
        raise ValueError(f"quadrature: unknown rule {quadrature!r}; expected one of {QUADRATURES}")
    quadrature_rule(quadrature, quad_nodes)
    spec = resolve_shift_invariant_kernel(kernel, "mmd_to_prior_distributed")
    s2 = float(spec.sigma2 if sigma2 is None else sigma2)
    if not math.isfinite(s2) or s2 <= 0:
        raise ValueError(f"sigma2 must be finite and > 0, got {sigma2!r}")
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    est_code = 0 if unbiased else 1
    table = _gather_meta([x_local], est_code, group, x_local)
    problem = _collective_check(table, est_code, names=("x_local",))
    if problem is not None:
        raise ValueError(f"mmd_to_prior_distributed (rank {rank} of {world}): {problem}")
    xsizes = [row[2] for row in table]
    d = table[0][3]
    dtype = FLOAT_DTYPES[table[0][4]]
    for row in table:
        dtype = torch.promote_types(dtype, FLOAT_DTYPES[row[4]])
    xl = x_local.to(dtype)
    X = _gather_rows(xl, xsizes, group)
    n = X.shape[0]
    kind, params = spec.lower(d)
    bxx, _, _, pairs = assign_blocks(n, 0, block_size, world, rank)
    need = bool(table[0][5])
    pxx = _PartialSums.apply(X, X.detach()[:0], kind, list(params), unbiased, block_size, bxx,
                             [], [], need, False)
    cross = _PriorCross.apply(xl, kind, list(params), s2, quadrature, quad_nodes, need)
    partial = torch.stack([pxx[0], torch.zeros((), dtype=_F64, device=X.device), cross])
    total = _combine(partial, group, world, scale_grad_by_world_size, need)
    _, _, eyy = closed_form_cross(X.detach()[:1], kind, params, s2, quadrature, quad_nodes, False)
    nxx = pair_count(n, unbiased)
    value = total[0] / nxx + eyy - 2.0 * total[2] / n
    value = value.to(_F64 if dtype == _F64 else torch.float32)
    return (value, pairs) if return_pairs else value


# ----------------------------------------------------------------------------------------------
# Local multi-process runner (CPU tests and benchmarks of the code above)
# ----------------------------------------------------------------------------------------------

def _local_rank_main(rank, fn, world, init_file, outdir, args):
    import os
    import traceback

    res = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        torch.set_num_threads(1)
        res = {"result": fn(rank, world, *args)}
    except Exception:  # reported by the parent: a rank must never hang the others
        res = {"error": traceback.format_exc()}
    torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    if dist.is_initialized():
        # every rank leaves together: tearing gloo down while a peer still talks aborts
        dist.barrier()
        dist.destroy_process_group()


def run_local_ranks(fn, world: int, *args, timeout: float = 60.0) -> list:
    """Run ``fn(rank, world, *args)`` in ``world`` local processes joined in one gloo process
    group (file:// rendezvous in a temporary folder, one thread each) and return the list of
    their return values (which must be picklable by ``torch.save``). ``fn`` must be defined at
    module level (processes are spawned). A rank's exception is raised here as a RuntimeError with
    its traceback; ranks still running after ``timeout`` seconds are killed (TimeoutError)."""
    import os
    import tempfile
    import time

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_local_rank_main, args=(fn, world, os.path.join(tmp, "init"), tmp, args),
                                 nprocs=world, join=False, start_method="spawn")
        deadline = time.time() + timeout
        try:
            while not ctx.join(timeout=max(0.1, deadline - time.time())):
                if time.time() > deadline:
                    raise TimeoutError(f"{world} processes did not finish in {timeout} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        out = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world)]
    for r, res in enumerate(out):
        if "error" in res:
            raise RuntimeError(f"rank {r} of {world} failed:\n{res['error']}")
    return [res["result"] for res in out]
