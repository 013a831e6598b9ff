"""Data-parallel WAE training on 2 gloo processes (CPU): the torchrun CLI end to end, and a
distributed run against the single-process run on the same global batches.

With a deterministic encoder, a distributed step (each rank a shard of the global batch, the
penalty ``mmd_distributed`` of the shards, DDP averaging the weighted per-rank losses) is the
single-process step on the global batch up to float rounding, so the logged per-epoch means of
the penalty, the reconstruction cost and the loss must agree. The global batch of 41 splits
unevenly (21 + 20), which exercises the ``K n_r / n`` weighting.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import torch

from wae_fast.distributed import run_local_ranks
from wae_fast.train import ImageData, Trainer, preset
from wae_fast.train.data import load_digits_data
from wae_fast.train.distributed_setup import shard_bounds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data():
    d = load_digits_data()
    return ImageData("digits", d.train[:82], d.test[:60], d.train_labels[:82], d.test_labels[:60])


def _cfg(**kw):
    base = dict(width=32, epochs=1, eval_samples=60, lr_schedule="constant", batch_size=41, device="cpu")
    base.update(kw)
    return preset("digits", base.pop("objective", "mmd"), **base)


def _worker(rank, world, outdir):
    res = {}
    tr = Trainer(_cfg(), os.path.join(outdir, "run"), data=_data(), progress=False)
    res["is_main"] = tr.is_main
    res["mmd"] = tr.fit()
    # WAE-GAN with a Gaussian encoder and M != N prior samples (uneven prior shards): it runs
    tr = Trainer(_cfg(objective="gan", encoder="gaussian", prior_samples=30), None,
                 data=_data(), progress=False)
    res["gan"] = tr.fit()
    # WAE-MMD with the sampling-free penalty (mmd_to_prior_distributed of the code shards)
    res["closed_form"] = Trainer(_cfg(mmd_prior="closed_form"), None, data=_data(), progress=False).fit()
    return res


def _spawn(world, tmp_path, timeout=90.0):
    return run_local_ranks(_worker, world, str(tmp_path), timeout=timeout)


def test_shard_bounds():
    for n in (2, 5, 41, 100):
        for k in (1, 2, 3, 4):
            b = [shard_bounds(n, k, r) for r in range(k)]
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(b[r][1] == b[r + 1][0] for r in range(k - 1))
            sizes = [hi - lo for lo, hi in b]
            assert max(sizes) - min(sizes) <= 1


def test_two_ranks_match_single_process(tmp_path):
    out = _spawn(2, tmp_path)
    assert [o["is_main"] for o in out] == [True, False]
    single = Trainer(_cfg(), None, data=_data(), progress=False)
    torch.set_num_threads(1)
    ref = single.fit()
    for o in out:
        hist = o["mmd"]
        assert len(hist) == len(ref) == 2
        for row, r in zip(hist[1:], ref[1:]):
            for k in ("loss", "rec", "dz"):  # global-batch means, the penalty = MMD of the global batch
                assert math.isclose(row[k], r[k], rel_tol=1e-5, abs_tol=1e-7), (k, row[k], r[k])
            for k in ("train_recon", "test_recon", "mmd_qz", "sample_mmd"):
                assert math.isclose(row[k], r[k], rel_tol=1e-3, abs_tol=1e-5), (k, row[k], r[k])
    for a, b in zip(out[0]["mmd"], out[1]["mmd"]):  # the same history on every rank (time_s is local)
        assert {k: v for k, v in a.items() if k != "time_s"} == {k: v for k, v in b.items() if k != "time_s"}
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.json"]
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2
    gan = out[0]["gan"]
    assert len(gan) == 2 and all(math.isfinite(gan[1][k]) for k in ("loss", "rec", "dz", "d_loss", "pen"))
    # --mmd-prior closed_form: the distributed penalty is the single-process closed form of the global batch
    ref_cf = Trainer(_cfg(mmd_prior="closed_form"), None, data=_data(), progress=False).fit()
    for o in out:
        for row, r in zip(o["closed_form"][1:], ref_cf[1:]):
            for k in ("loss", "rec", "dz"):
                assert math.isclose(row[k], r[k], rel_tol=1e-5, abs_tol=1e-7), (k, row[k], r[k])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_cli(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "wae_fast", "train", "--epochs", "1", "--width", "32",
           "--batch-size", "41", "--eval-samples", "60", "--out", str(run),
           "--no-plots", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("metrics: ") == 1, proc.stdout   # rank 0 reports, rank 1 is silent
    assert proc.stdout.count("WAE-MMD on digits") == 1
    assert "over 2 processes" in proc.stdout
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[1].startswith("0,") and rows[2].startswith("1,")
