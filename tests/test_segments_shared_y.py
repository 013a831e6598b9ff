"""A y shared by every set (``y_offsets`` = [0, M], B > 1) in the one-launch ``mmd_segments``
forward (triton, cuda, cuda_emu): the yy term is computed once, by set 0's tasks
(wae_fast.segment_sums.Plan), and every set's finalize divides set 0's yy partials by the shared
y's denominator; checked against the dense float64 oracle (tests/oracle.py)."""
from __future__ import annotations

import math

import pytest
import torch

import wae_fast
from wae_fast import contract
from wae_fast.segment_sums import Plan

from .segment_cases import VAL_TOL, segment_data, segment_oracle, terms_scale

ONE_LAUNCH = ("triton", "cuda", "cuda_emu")
X_OFF = [0, 5, 75, 96]   # 5, 70 and 21 points: sets of one and of two row blocks of 64
M = 70                   # the shared y: two row blocks of 64 (one of 32-row blocks: three)


@pytest.mark.parametrize("block", [32, 64])
def test_plan_gives_a_shared_y_one_set_of_yy_tasks(block):
    """The task table of a shared y: yy tasks for set 0 only (one per row block of y), every
    set's xx and xy tasks as before; an own y per set keeps one yy term per set."""
    xo = torch.tensor(X_OFF)
    tiles = [math.ceil((X_OFF[b + 1] - X_OFF[b]) / block) for b in range(3)]
    ty = math.ceil(M / block)
    plan = Plan(xo, torch.tensor([0, M]), block, "cpu")
    t = plan.fwd_tasks
    yy = t[t[:, 1] == 1]
    assert yy.shape[0] == ty and bool((yy[:, 0] == 0).all()), yy
    assert yy[:, 2].tolist() == list(range(0, M, block)) and yy[-1, 3].item() == M
    for term in (0, 2):
        assert torch.bincount(t[t[:, 1] == term, 0], minlength=3).tolist() == tiles
    assert plan.set_tasks.tolist() == [0, 2 * tiles[0] + ty, 2 * (tiles[0] + tiles[1]) + ty,
                                       2 * sum(tiles) + ty]
    assert t.shape[0] == 2 * sum(tiles) + ty  # was 2 sum(tiles) + 3 ty: one yy term per set
    own = Plan(xo, torch.tensor([0, M, 2 * M, 3 * M]), block, "cpu").fwd_tasks
    assert torch.bincount(own[own[:, 1] == 1, 0], minlength=3).tolist() == [ty] * 3


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shared_y_yy_term_once_against_oracle(seg_backend, estimator, dtype):
    """terms[:, 1] of a shared y are bit-identical across the sets and match the oracle, weighted
    (zero weights over NaN padding) and unweighted, with the glue's shifts and with a different
    shift per set (the yy term is set 0's: translation invariant, so still the oracle's); every
    term of every set against the oracle.  A finalize reading another set's yy partials (none
    after set 0) gives 0 there and fails."""
    name, dev = seg_backend
    if name not in ONE_LAUNCH:
        pytest.skip("the one-launch schedule (triton, cuda, cuda_emu)")
    unbiased = estimator == "unbiased"
    yo = [0, M]
    x, y, xw, yw = segment_data(X_OFF, yo, 3, dtype, dev, seed=31 + unbiased)
    kind, params = wae_fast.IMQ().lower(3)
    fwd = contract.op(f"mmd_segments_fwd_{name}")
    xo_t, yo_t = torch.tensor(X_OFF, device=dev), torch.tensor(yo, device=dev)
    gt = torch.zeros(3, 3, dtype=torch.float64)
    empty = x.new_empty((0,))
    for weighted in (True, False):
        cx, cy = (x, y) if weighted else (x.nan_to_num(0.5), y.nan_to_num(-0.5))
        cxw, cyw = (xw, yw) if weighted else (empty, empty)
        want = segment_oracle(cx, cy, xw if weighted else None, yw if weighted else None,
                              X_OFF, yo, kind, params, unbiased, gt)[0]
        glue = contract.segment_shifts(kind, cy, yo, cyw, 3)
        moved = glue + 0.25 * torch.arange(3, dtype=glue.dtype, device=dev)[:, None]
        for shifts in (glue, moved):
            got = fwd(cx, cy, xo_t, yo_t, cxw, cyw, shifts, int(kind), [float(q) for q in params],
                      unbiased, False, False, False, False, "ieee")[0].cpu()
            what = f"{name} {estimator} {dtype} weighted={weighted}"
            assert torch.equal(got[:, 1], got[:1, 1].expand(3)), f"{what}: yy terms {got[:, 1]}"
            err = (got - want).abs() / terms_scale(want)[:, None]
            assert bool((err <= VAL_TOL[dtype]).all()), f"{what}: term errors {err}"
