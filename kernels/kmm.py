"""Triton kernels of the kernel-matrix product family (``kernel_matmul``): K(x, y) @ v and its
gradients, never forming K.

Forward (``_kmm_fwd_kernel``): a program owns one row block of A (x) and one chunk of PB output
columns; it streams the column blocks of B (y): dot products by ``tl.dot`` over d-chunks
(:func:`wae_fast.kernels.mmd.dot_tile`, points shifted by ``offset`` on load), the kernel in
registers (``pair_kw``: the same epilogue as the MMD tiles), then ``acc += K_tile @ V_tile``.

Backward (``_kmm_bwd_kernel``, recompute): a program owns a row block of A and a chunk of DP
gradient columns; per column block of B it recomputes the weight w of the pairs, forms
W = w * (U_blk @ V_blk^T) (the P-dimension streamed in chunks of PB) and accumulates
rs += rowsum(W), acc += W @ B_blk; then G = 2 (rs a - acc) (the polynomial has no rs term).
gx is (A, B, U, V) = (x, y, grad_out, v); gy the same kernel with (y, x, v, grad_out), as k is
symmetric.  Every output row is written by one program: no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .mmd import (INTERPRET, INTERPRET_BLOCK, chunk_dim, dot_tile, grad_chunk, load_off, load_rows, pair_kw,
                  row_norms)


def p_chunk(p: int) -> int:
    """Width of the chunk of v's columns a program holds (>= 16 for tl.dot, <= 64)."""
    return max(16, min(64, triton.next_power_of_2(int(p))))


@triton.jit
def _load_cols(ptr, rows, pc, N, PV, CT: tl.constexpr):
    """Rows ``rows``, columns ``pc`` of the (N, PV) matrix at ``ptr`` in CT (0 outside)."""
    p = ptr + rows.to(tl.int64)[:, None] * PV + pc[None, :]
    v = tl.load(p, mask=(rows < N)[:, None] & (pc < PV)[None, :], other=0.0)
    return v.to(CT)


@triton.jit
def _kmm_fwd_kernel(
    A, B, V, OFF, P, OUT,
    NA, NB, D, PV,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, BK: tl.constexpr, PB: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_K: tl.constexpr,
):
    """OUT[rows, pc] = sum_j k(a_i, b_j) V[j, pc]."""
    idx = tl.arange(0, BLOCK)
    rows = tl.program_id(0) * BLOCK + idx
    pc = tl.program_id(1) * PB + tl.arange(0, PB)
    na = row_norms(A, OFF, rows, NA, D, CT, BLOCK, BK, EVEN_A, EVEN_K)
    acc = tl.zeros((BLOCK, PB), dtype=CT)
    for jb in range(0, tl.cdiv(NB, BLOCK)):
        cols = jb * BLOCK + idx
        ab, nb = dot_tile(A, B, OFF, rows, cols, NA, NB, D, CT, PRECISION, BLOCK, BK, EVEN_A, EVEN_B, EVEN_K)
        k, _w = pair_kw(ab, na, nb, 0, P, KIND, NUM_SCALES, False, False)
        if not EVEN_B:
            k = tl.where((cols < NB)[None, :], k, 0.0)
        v = _load_cols(V, cols, pc, NB, PV, CT)
        acc = tl.dot(k, v, acc, input_precision=PRECISION, out_dtype=CT)
    op = OUT + rows.to(tl.int64)[:, None] * PV + pc[None, :]
    tl.store(op, acc.to(OUT.dtype.element_ty), mask=(rows < NA)[:, None] & (pc < PV)[None, :])


@triton.jit
def _kmm_bwd_kernel(
    A, B, U, V, OFF, P, G,
    NA, NB, D, PV,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, BK: tl.constexpr, PB: tl.constexpr, DP: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr,
):
    """G[i, dims] = 2 sum_j w(a_i, b_j) (U_i . V_j) (a_i - b_j)[dims]  (polynomial: -b_j only)."""
    idx = tl.arange(0, BLOCK)
    rows = tl.program_id(0) * BLOCK + idx
    dims = tl.program_id(1) * DP + tl.arange(0, DP)
    kp = tl.arange(0, PB)
    na = row_norms(A, OFF, rows, NA, D, CT, BLOCK, BK, EVEN_A, EVEN_K)
    off = load_off(OFF, dims, D, CT, EVEN_D)
    rs = tl.zeros((BLOCK,), dtype=CT)
    acc = tl.zeros((BLOCK, DP), dtype=CT)
    for jb in range(0, tl.cdiv(NB, BLOCK)):
        cols = jb * BLOCK + idx
        ab, nb = dot_tile(A, B, OFF, rows, cols, NA, NB, D, CT, PRECISION, BLOCK, BK, EVEN_A, EVEN_B, EVEN_K)
        _k, w = pair_kw(ab, na, nb, 0, P, KIND, NUM_SCALES, True, False)
        uv = tl.zeros((BLOCK, BLOCK), dtype=CT)
        for p0 in range(0, PV, PB):
            u = _load_cols(U, rows, p0 + kp, NA, PV, CT)
            v = _load_cols(V, cols, p0 + kp, NB, PV, CT)
            uv = tl.dot(u, tl.trans(v), uv, input_precision=PRECISION, out_dtype=CT)
        w = w * uv
        if not EVEN_B:
            w = tl.where((cols < NB)[None, :], w, 0.0)
        if KIND != 2:
            rs += tl.sum(w, 1)
        b = load_rows(B, cols, dims, NB, D, off, CT, EVEN_B, EVEN_D)
        acc = tl.dot(w, b, acc, input_precision=PRECISION, out_dtype=CT)
    a = load_rows(A, rows, dims, NA, D, off, CT, EVEN_A, EVEN_D)
    g = 2.0 * (rs[:, None] * a - acc)
    gp = G + rows.to(tl.int64)[:, None] * D + dims[None, :]
    tl.store(gp, g.to(G.dtype.element_ty), mask=(rows < NA)[:, None] & (dims < D)[None, :])


# ----------------------------------------------------------------------------------------------
# host launchers


def tile_config(fp64: bool) -> tuple[int, int]:
    """(BLOCK, num_warps) on the GPU: 64 x 64 tiles with 8 warps (fp32), 32 x 32 with 4 (fp64);
    the AOT report (``python -m wae_fast.kernels.aot``) lists their registers and spills."""
    return (32, 4) if fp64 else (64, 8)


def _block(dtype: torch.dtype) -> tuple[int, int]:
    if INTERPRET:
        return INTERPRET_BLOCK, 4
    return tile_config(dtype == torch.float64)


def launch_fwd(x, y, v, off, p, kind, prec, ct):
    """out = K(x, y) @ v in x's dtype (x, y, v contiguous; off, p in the compute dtype)."""
    na, d = x.shape
    nb, pv = v.shape
    out = torch.empty((na, pv), dtype=x.dtype, device=x.device)
    (block, warps), pb, bk = _block(x.dtype), p_chunk(pv), chunk_dim(d)
    _kmm_fwd_kernel[(triton.cdiv(na, block), triton.cdiv(pv, pb))](
        x, y, v, off, p, out, na, nb, d, pv, KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=ct,
        BLOCK=block, BK=bk, PB=pb, EVEN_A=na % block == 0, EVEN_B=nb % block == 0, EVEN_K=d % bk == 0,
        num_warps=warps)
    return out


def launch_grad(a, b, u, w, off, p, kind, prec, ct):
    """The gradient to a of <u, K(a, b) @ w>, in a's dtype."""
    na, d = a.shape
    nb, pv = w.shape
    g = torch.empty_like(a)
    (block, warps), pb, bk, dp = _block(a.dtype), p_chunk(pv), chunk_dim(d), grad_chunk(d)
    _kmm_bwd_kernel[(triton.cdiv(na, block), triton.cdiv(d, dp))](
        a, b, u, w, off, p, g, na, nb, d, pv, KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec,
        CT=ct, BLOCK=block, BK=bk, PB=pb, DP=dp, EVEN_A=na % block == 0, EVEN_B=nb % block == 0,
        EVEN_K=d % bk == 0, EVEN_D=d % dp == 0, num_warps=warps)
    return g
