"""mmd_distributed against the single-process MMD, with 2 and 3 gloo processes on CPU.

One spawn per world size runs every scenario (process start-up dominates on a shared CPU); the
workers write their results to a temporary directory and the test process compares them with
``wae_fast.mmd`` on the concatenated shards.
"""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist

import wae_fast
from wae_fast.distributed import assign_blocks, mmd_distributed, mmd_to_prior_distributed, run_local_ranks
from wae_fast.prior import mmd_to_prior
from wae_fast.pairsum import block_pairs, cross_blocks, sym_blocks

N, M, D = 23, 17, 3
BLOCK = 4
XSIZES = {2: [9, 14], 3: [5, 11, 7]}
YSIZES = {2: [17, 0], 3: [6, 0, 11]}  # an empty y shard on rank 1
KERNELS = {"imq": wae_fast.IMQ(), "rbf": wae_fast.RBF(bandwidth=(0.7, 1.5))}


def _data():
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N, D, generator=g, dtype=torch.float64) * 1.2 + 0.3
    y = torch.randn(M, D, generator=g, dtype=torch.float64)
    return x, y


def _shard(t, sizes, rank):
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def _worker(rank, world):
    res = {}
    x, y = _data()
    for kname, spec in KERNELS.items():
        for est in ("unbiased", "biased"):
            xl = _shard(x, XSIZES[world], rank).clone().requires_grad_(True)
            yl = _shard(y, YSIZES[world], rank).clone().requires_grad_(True)
            val, pairs = mmd_distributed(xl, yl, spec, estimator=est, block_size=BLOCK,
                                         return_pairs=True)
            val.backward()
            res[(kname, est)] = (val.detach(), xl.grad.clone(), yl.grad.clone(), pairs)
    # closed-form MMD to the prior over the sharded codes
    for kname, spec in KERNELS.items():
        for unb in (True, False):
            xl = _shard(x, XSIZES[world], rank).clone().requires_grad_(True)
            val, pairs = mmd_to_prior_distributed(xl, spec, unbiased=unb, sigma2=1.3,
                                                  block_size=BLOCK, return_pairs=True)
            val.backward()
            res[("prior", kname, unb)] = (val.detach(), xl.grad.clone(), pairs)
    xl = _shard(x, XSIZES[world], rank)
    if rank == 0:
        xl = xl[:, :2]
    try:
        mmd_to_prior_distributed(xl, block_size=BLOCK)
        res["prior_bad"] = None
    except ValueError as e:
        res["prior_bad"] = str(e)
    # DDP convention: gradients scaled by the world size, value unchanged
    xl = _shard(x, XSIZES[world], rank).clone().requires_grad_(True)
    yl = _shard(y, YSIZES[world], rank).clone()
    val = mmd_distributed(xl, yl, block_size=BLOCK, scale_grad_by_world_size=True)
    val.backward()
    res["ddp"] = (val.detach(), xl.grad.clone())
    # no gradient anywhere: plain collectives
    with torch.no_grad():
        res["nograd"] = mmd_distributed(_shard(x, XSIZES[world], rank),
                                        _shard(y, YSIZES[world], rank), block_size=BLOCK)
    # a bad shard on the last rank: the same ValueError everywhere, no hang ...
    xl = _shard(x, XSIZES[world], rank)
    if rank == world - 1:
        xl = torch.randn(xl.shape[0], D + 1, dtype=torch.float64)
    try:
        mmd_distributed(xl, _shard(y, YSIZES[world], rank), block_size=BLOCK)
        res["bad"] = None
    except ValueError as e:
        res["bad"] = str(e)
    # ... and the group still works afterwards
    res["after"] = mmd_distributed(_shard(x, XSIZES[world], rank),
                                   _shard(y, YSIZES[world], rank), block_size=BLOCK).detach()
    return res


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def world_results(request):
    world = request.param
    return world, run_local_ranks(_worker, world)


def _single(kname, est):
    x, y = _data()
    x.requires_grad_(True)
    y.requires_grad_(True)
    v = wae_fast.mmd(x, y, KERNELS[kname], estimator=est, backend="reference")
    gx, gy = torch.autograd.grad(v, (x, y))
    t = wae_fast.mmd_terms(x.detach(), y.detach(), KERNELS[kname], estimator=est, backend="reference")
    return v.detach(), gx, gy, float(t[0] + t[1] + 2 * t[2])


@pytest.mark.parametrize("kname", list(KERNELS))
@pytest.mark.parametrize("est", ["unbiased", "biased"])
def test_value_and_grads_match_single_process(world_results, kname, est):
    world, out = world_results
    v, gx, gy, scale = _single(kname, est)
    gnorm = float(torch.cat([gx.flatten(), gy.flatten()]).abs().max())
    for r in range(world):
        val, gxl, gyl, _ = out[r][(kname, est)]
        assert val.dtype == torch.float64
        assert abs(float(val) - float(v)) <= 1e-14 * scale, (r, float(val), float(v))
        torch.testing.assert_close(gxl, _shard(gx, XSIZES[world], r), rtol=0, atol=1e-13 * gnorm)
        torch.testing.assert_close(gyl, _shard(gy, YSIZES[world], r), rtol=0, atol=1e-13 * gnorm)
    # the value is bit-identical on every rank (one all-reduce)
    assert len({float(out[r][(kname, est)][0]) for r in range(world)}) == 1


def test_work_split(world_results):
    world, out = world_results
    total = (sum(block_pairs(i, j, N, N, BLOCK) for i, j in sym_blocks(N, BLOCK))
             + sum(block_pairs(i, j, M, M, BLOCK) for i, j in sym_blocks(M, BLOCK))
             + sum(block_pairs(i, j, N, M, BLOCK) for i, j in cross_blocks(N, M, BLOCK)))
    pairs = [out[r][("imq", "unbiased")][3] for r in range(world)]
    assert sum(pairs) == total  # every block once: split, not repeated
    assert max(pairs) - min(pairs) <= 2 * BLOCK * BLOCK  # equal runs: within a block of total/K


def test_ddp_scaling_and_nograd(world_results):
    world, out = world_results
    v, gx, _, _ = _single("imq", "unbiased")
    for r in range(world):
        val, gxl = out[r]["ddp"]
        assert abs(float(val) - float(v)) <= 1e-13
        torch.testing.assert_close(gxl, world * _shard(gx, XSIZES[world], r), rtol=1e-12, atol=1e-15)
        assert abs(float(out[r]["nograd"]) - float(v)) <= 1e-13
        assert abs(float(out[r]["after"]) - float(v)) <= 1e-13


@pytest.mark.parametrize("kname", list(KERNELS))
@pytest.mark.parametrize("unbiased", [True, False])
def test_prior_closed_form_matches_single_process(world_results, kname, unbiased):
    world, out = world_results
    x, _ = _data()
    x.requires_grad_(True)
    v = mmd_to_prior(x, KERNELS[kname], unbiased=unbiased, sigma2=1.3)
    (gx,) = torch.autograd.grad(v, x)
    total = sum(block_pairs(i, j, N, N, BLOCK) for i, j in sym_blocks(N, BLOCK))
    pairs = []
    for r in range(world):
        val, gxl, p = out[r][("prior", kname, unbiased)]
        pairs.append(p)
        assert abs(val.item() - v.item()) <= 1e-14 * len(KERNELS[kname].lower(D)[1]) * 4
        torch.testing.assert_close(gxl, _shard(gx, XSIZES[world], r), rtol=0,
                                   atol=1e-13 * float(gx.abs().max()))
    assert sum(pairs) == total and max(pairs) - min(pairs) <= 2 * BLOCK * BLOCK
    msgs = [out[r]["prior_bad"] for r in range(world)]
    assert all(m is not None and "x_local on rank 1 has d=3" in m for m in msgs), msgs


def test_bad_shape_raises_on_every_rank(world_results):
    world, out = world_results
    msgs = [out[r]["bad"] for r in range(world)]
    assert all(m is not None for m in msgs), msgs
    for r, m in enumerate(msgs):
        assert f"rank {world - 1} has d={D + 1}" in m and "x_local" in m, m
        # identical apart from the "(rank r of K)" prefix
        assert m.split("): ", 1)[1] == msgs[0].split("): ", 1)[1]


def test_assign_blocks_balance_large():
    n, m, block, world = 4096, 3000, 256, 3
    parts = assign_blocks(n, m, block, world)
    assert [assign_blocks(n, m, block, world, r) for r in range(world)] == parts
    total = (sum(block_pairs(i, j, n, n, block) for i, j in sym_blocks(n, block))
             + sum(block_pairs(i, j, m, m, block) for i, j in sym_blocks(m, block))
             + n * m)
    pairs = [p[3] for p in parts]
    assert sum(pairs) == total
    assert max(pairs) / (total / world) < 1.01
    # every block exactly once
    for key, blocks in ((0, sym_blocks(n, block)), (1, sym_blocks(m, block)), (2, cross_blocks(n, m, block))):
        got = sorted(b for p in parts for b in p[key])
        assert got == sorted(blocks)


def test_requires_initialised_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised here")
    with pytest.raises(RuntimeError, match="init_process_group"):
        mmd_distributed(torch.randn(4, 2), torch.randn(4, 2))
