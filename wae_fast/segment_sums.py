"""Weighted kernel sums over many point sets (the ``mmd_segments`` op family): the formulas every
backend follows (the reference's implementation, all sets at once: :mod:`wae_fast.segment_batch`)
and the task tables of the one-launch backends (:class:`Plan`).

Set b holds x rows ``x_offsets[b]:x_offsets[b+1]`` with weights w and y rows (its own range, or
all of y when y is shared) with weights v, both shifted by ``shifts[b]``.  Everything comes
from row passes over the set's pair matrices, with the column weights applied in the pass:

    s_i = sum_j v_j k(a_i, b_j)               (j != i on a self matrix under the U-statistic)
    G_i = sum_j v_j W_ij (a_i - b_j)          (polynomial: -sum_j v_j W_ij b_j; W = dk/dr)

Terms (float64): t_xx = sum_i w_i s^xx_i / D_x with D_x = (sum w)^2 (biased) or
sum_{i != j} w_i w_j = 2 sum_i w_i sum_{j<i} w_j (unbiased: exact for tiny weights, where
(sum w)^2 - sum w^2 cancels); t_yy likewise; t_xy = sum_i w_i s^xy_i / (sum w sum v).
Gradients, with g = d loss / d terms:

    d/dx_i = 4 g_xx w_i G^xx_i / D_x + 2 g_xy w_i G^xy_i / (sum w sum v)
    d/dw_i = g_xx (2 s^xx_i - t_xx dD_x/dw_i) / D_x + g_xy (s^xy_i / sum v - t_xy) / sum w

with dD_x/dw_i = 2 sum w (biased) or 2 (sum w - w_i) (unbiased); y and v alike.  A column with
weight 0 is zeroed before the pass (its coordinates never reach a sum); a row with weight 0
only feeds the gradient to its own weight (the true derivative, which reads that row).  A
negative or non-finite weight makes its set's denominators, hence the set, NaN.
"""
from __future__ import annotations

import torch

from .contract import segments_unfused
# the reference implementation: every set at once (also the one-launch backends' wide-d fallback)
from .segment_batch import segment_grads, segment_terms

__all__ = ["Plan", "get_plan", "plan_inputs", "plan_ops", "segment_grads", "segment_terms",
           "sum_chunks"]


# ---------------------------------------------------------------------------------------------
# One-launch schedule (triton, cuda, cuda_emu): host task tables over every set, built from the
# host offsets; the kernels compute the per-set sums and denominators themselves.


#: Sets per y-side backward task of a shared y (see :attr:`Plan.y_chunks`).
SHARED_Y_CHUNK = 8


def sum_chunks(g, chunks: int):
    """The y-side gradient of a chunked buffer: (chunks * M, ...) summed over the chunks."""
    return g if g is None or chunks == 1 else g.view(chunks, -1, *g.shape[1:]).sum(0)


class Plan:
    """Device layout of one ``mmd_segments`` call for the one-launch kernels: int64 offsets
    (``y_offsets`` is [0, M] for a shared y, whose rows every set reads in place), the forward
    task table ``[set, term, r0, r1]`` (term 0 xx, 1 yy, 2 xy; grouped by set, ``set_tasks`` the
    (B + 1,) start of each set's tasks; a shared y's yy tasks belong to set 0 alone, computed
    with set 0's shift, and every set's yy term is theirs) and, on demand, the backward table
    ``[side, b0, b1, r0, r1, o0]`` (side 0 x, 1 y; rows [r0, r1) of that side for the sets
    [b0, b1), their gradients written at output rows o0 + i - r0: a shared y's row tiles span a
    chunk of sets and write the chunk's slice of the buffer, see :attr:`y_chunks`)."""

    def __init__(self, x_offsets, y_offsets, block: int, device):
        xo, yo = [int(v) for v in x_offsets.tolist()], [int(v) for v in y_offsets.tolist()]
        self.nsets = len(xo) - 1
        self.shared_y = len(yo) == 2
        self.block, self.device = block, device
        self._xo, self._yo = xo, yo
        self._bwd: dict = {}
        self.x_offsets = torch.tensor(xo, dtype=torch.int64).to(device)
        self.y_offsets = torch.tensor(yo, dtype=torch.int64).to(device)
        tasks, starts = [], [0]
        for b in range(self.nsets):
            x0, x1 = xo[b], xo[b + 1]
            y0, y1 = self.y_range(b)
            # row tiles start at multiples of block from the set's first row: the kernels'
            # symmetric self tiles take a task's first column block as its diagonal block.
            # A shared y's yy term is the same for every set: only set 0 computes it (the
            # finalize gives every set set 0's yy partials), M^2 / 2 pair evaluations, not B times
            terms = [(0, (x0, x1)), (2, (x0, x1))]
            if b == 0 or not self.shared_y:
                terms.append((1, (y0, y1)))
            for term, (r0, r1) in terms:
                tasks.extend((b, term, i, min(i + block, r1)) for i in range(r0, r1, block))
            starts.append(len(tasks))
        self.fwd_tasks = torch.tensor(tasks, dtype=torch.int64).reshape(-1, 4).to(device)
        self.set_tasks = torch.tensor(starts, dtype=torch.int64).to(device)

    def y_range(self, b: int):
        return (self._yo[0], self._yo[1]) if self.shared_y else (self._yo[b], self._yo[b + 1])

    def bwd_tasks(self, x_side: bool, y_side: bool) -> torch.Tensor:
        key = (bool(x_side), bool(y_side))
        if key not in self._bwd:
            self._bwd[key] = self._build_bwd(*key)
        return self._bwd[key]

    @property
    def y_chunks(self) -> int:
        """Slices of the y-side gradient buffer: a shared y's row tiles are split over chunks of
        SHARED_Y_CHUNK sets (parallelism for large B), each chunk writing its own slice of a
        (y_chunks * M, ...) buffer that the host sums over the chunks (fixed order); 1 otherwise."""
        return -(-self.nsets // SHARED_Y_CHUNK) if self.shared_y else 1

    def _build_bwd(self, x_side: bool, y_side: bool) -> torch.Tensor:
        blk, rows = self.block, []
        if x_side:
            for b in range(self.nsets):
                x0, x1 = self._xo[b], self._xo[b + 1]
                rows.extend((0, b, b + 1, i, min(i + blk, x1), i) for i in range(x0, x1, blk))
        if y_side:
            m = self._yo[1] - self._yo[0]
            spans = [(b0, min(b0 + SHARED_Y_CHUNK, self.nsets), 0, m, c * m)
                     for c, b0 in enumerate(range(0, self.nsets, SHARED_Y_CHUNK))] if self.shared_y else [
                (b, b + 1, self._yo[b], self._yo[b + 1], self._yo[b]) for b in range(self.nsets)]
            for b0, b1, y0, y1, o0 in spans:
                rows.extend((1, b0, b1, i, min(i + blk, y1), o0 + i - y0) for i in range(y0, y1, blk))
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 6).to(self.device)


_PLANS: dict = {}


def get_plan(x_offsets, y_offsets, block: int, device) -> Plan:
    """The :class:`Plan` of these offsets, cached (a training loop repeats its set layout: the
    task tables are built and copied to the device once, not per call; ~1 ms of host time at
    B = 256 otherwise)."""
    key = (tuple(x_offsets.tolist()), tuple(y_offsets.tolist()), int(block), str(device))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 32:
            _PLANS.clear()
        plan = _PLANS[key] = Plan(x_offsets, y_offsets, block, device)
    return plan


def plan_inputs(x, y, x_weights, y_weights, shifts):
    """(X, Y, xw, yw, shifts) contiguous in the compute dtype (weights: empty when absent)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x_weights.to(ct).contiguous() if x_weights.numel() else x.new_empty((0,), dtype=ct)
    yw = y_weights.to(ct).contiguous() if y_weights.numel() else y.new_empty((0,), dtype=ct)
    return x.to(ct).contiguous(), y.to(ct).contiguous(), xw, yw, shifts.to(ct).contiguous()


def plan_ops(extension, block: int, max_d: int):
    """(forward, backward) implementations of the contract for a CUDA-style extension with
    ``seg_fwd`` / ``seg_bwd`` (csrc/cuda/segments_kernels.cu: one launch + one finalize forward,
    one launch backward, over :class:`Plan` tables of row tiles of ``block``); ``extension()``
    returns the built module.  Feature dimensions above ``max_d`` run the reference's passes."""

    def fwd(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased,
            grad_x, grad_y, grad_xw, grad_yw, precision, value_parts=False):
        # the gradients are the backward's: no fused parts (value_parts changes nothing then)
        if x.shape[1] > max_d:
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            return segments_unfused(segment_terms(x, y, x_offsets, y_offsets, x_weights, y_weights,
                                                  shifts, kind, params, unbiased, ct), x)
        X, Y, xw, yw, sh = plan_inputs(x, y, x_weights, y_weights, shifts)
        plan = get_plan(x_offsets, y_offsets, block, x.device)
        return segments_unfused(extension().seg_fwd(
            X, Y, xw, yw, plan.x_offsets, plan.y_offsets, plan.shared_y, sh,
            [float(p) for p in params], plan.fwd_tasks, plan.set_tasks, int(kind), bool(unbiased)), x)

    def bwd(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
            params, unbiased, grad_x, grad_y, grad_xw, grad_yw, precision):
        if x.shape[1] > max_d:
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            return segment_grads(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights,
                                 y_weights, shifts, kind, params, unbiased, grad_x, grad_y,
                                 grad_xw, grad_yw, ct)
        X, Y, xw, yw, sh = plan_inputs(x, y, x_weights, y_weights, shifts)
        plan = get_plan(x_offsets, y_offsets, block, x.device)
        gx, gy, gxw, gyw = extension().seg_bwd(
            grad_terms.double().contiguous(), terms.double().contiguous(), X, Y, xw, yw,
            plan.x_offsets, plan.y_offsets, plan.shared_y, sh, [float(p) for p in params],
            plan.bwd_tasks(grad_x or grad_xw, grad_y or grad_yw), int(kind), bool(unbiased),
            bool(grad_x), bool(grad_y), bool(grad_xw), bool(grad_yw), plan.y_chunks * Y.shape[0])
        gy, gyw = sum_chunks(gy, plan.y_chunks), sum_chunks(gyw, plan.y_chunks)
        empty = x.new_empty((0,))
        return (gx.to(x.dtype) if grad_x else empty, gy.to(y.dtype) if grad_y else empty,
                gxw.to(x_weights.dtype) if grad_xw else empty,
                gyw.to(y_weights.dtype) if grad_yw else empty)

    return fwd, bwd
