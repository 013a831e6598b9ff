"""The benchmark harness (benchmarks/): tiny rows on CPU write their CSV/markdown, the skip, OOM
and timeout paths record a line instead of crashing, the peers compute the same MMD as the
reference, and the floor arithmetic matches a hand-computed example."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from benchmarks import bench_mmd, floor, peers, report
from benchmarks.rows import Row, get_rows, shrink
from wae_fast.kernel_specs import KIND_IMQ, KIND_RBF


# ---- floor arithmetic ------------------------------------------------------------------------

def test_pair_and_flop_counts_by_hand():
    # N = M = 4, d = 2: P_xx = P_yy = 4*5/2 = 10, P_xy = 16, P = 36
    assert floor.pair_counts(4, 4) == {"xx": 10, "yy": 10, "xy": 16, "total": 36}
    w = floor.mmd_work(4, 4, 2, "fp32", "fwd")
    assert w == {"pairs": 36, "flops": 2 * 2 * 36, "sfu": 36, "bytes": (4 + 4) * 2 * 4}
    w = floor.mmd_work(4, 4, 2, "fp32", "fwdbwd")
    # 2d P + 4d P_xx + 2d P_xy = 144 + 80 + 64; bytes + dx
    assert w["flops"] == 288 and w["sfu"] == 36 and w["bytes"] == 64 + 32


def test_floor_toy_machine():
    m = floor.Machine("toy", sms=2, clock_hz=1e9, fp32_fma_per_sm_clk=256, tf32_per_sm_clk=2048,
                      bf16_per_sm_clk=4096, sfu_per_sm_clk=16, mem_bw=1e12)
    # N = M = 1000, d = 64, fwd: P = 500500*2 + 1e6 = 2_001_000; FLOPs = 128 P = 256_128_000
    f = floor.row_floor("mmd", 1000, 1000, 64, "fp32", "fwd", "ieee", m)
    assert f["pairs"] == 2_001_000 and f["flops"] == 256_128_000
    assert f["t_flop"] == pytest.approx(256_128_000 / (256 * 2e9))      # 0.50025 ms
    assert f["t_sfu"] == pytest.approx(2_001_000 / (16 * 2e9))          # 0.0625 ms
    assert f["t_mem"] == pytest.approx(2000 * 64 * 4 / 1e12)
    assert f["bound"] == "fp32-fma" and f["floor_s"] == pytest.approx(f["t_flop"])
    # bf16 on tensor cores: FLOPs 16x faster -> the special-function term binds
    g = floor.row_floor("mmd", 1000, 1000, 64, "bf16", "fwd", "ieee", m)
    assert g["bound"] == "sfu" and g["floor_s"] == pytest.approx(2_001_000 / 32e9)
    # d = 2: the dot product is cheap, one reciprocal per pair binds
    h = floor.row_floor("mmd", 1000, 1000, 2, "fp32", "fwd", "ieee", m)
    assert h["bound"] == "sfu"


def test_floor_h100_headline():
    n = 65536
    p = n * (n + 1) // 2 * 2 + n * n
    assert p == 8_590_000_128
    flops = 2 * 64 * p + 4 * 64 * (n * (n + 1) // 2) + 2 * 64 * n * n
    peak = 132 * 1.98e9 * 256  # 66.9 TFLOP/s FP32 FMA
    f = floor.row_floor("mmd", n, n, 64, "fp32", "fwdbwd", "ieee", floor.H100_SXM)
    assert f["flops"] == flops
    assert f["floor_s"] == pytest.approx(flops / peak) and f["bound"] == "fp32-fma"
    assert f["floor_s"] * 1e3 == pytest.approx(32.87, abs=0.01)
    assert f["t_sfu"] * 1e3 == pytest.approx(p / (132 * 1.98e9 * 16) * 1e3)
    t = floor.row_floor("mmd", n, n, 64, "fp32", "fwdbwd", "tf32", floor.H100_SXM)
    assert t["bound"] == "tf32-tensor" and t["floor_s"] == pytest.approx(flops / (132 * 1.98e9 * 2048))
    r = floor.row_floor("reparam", 1 << 20, 0, 64, "fp32", "fwdbwd", "-", floor.H100_SXM)
    assert r["bound"] == "mem" and r["bytes"] == 7 * (1 << 20) * 64 * 4
    assert "floor  = max" in floor.explain("mmd", n, n, 64, "fp32", "fwdbwd", "ieee", floor.H100_SXM)


# ---- peers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_peers_match_reference(kernel, estimator):
    import wae_fast
    from wae_fast.kernel_specs import IMQ, RBF

    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 5, generator=g, dtype=torch.float64) + 0.3
    y = torch.randn(29, 5, generator=g, dtype=torch.float64)
    spec = IMQ() if kernel == "imq" else RBF()
    kind, params = spec.lower(5)
    ref = float(wae_fast.mmd(x, y, spec, estimator=estimator, backend="reference"))
    unb = estimator == "unbiased"
    assert float(peers.naive_mmd(x, y, kind, params, unb)) == pytest.approx(ref, abs=1e-10)
    assert float(peers.dense_matmul_mmd(x, y, kind, params, unb)) == pytest.approx(ref, abs=1e-10)


def test_peer_unavailable_reasons(monkeypatch):
    assert peers.peer_unavailable("naive", 0, [1.0], True, "cpu") is None
    # each reason for its own cause, whether or not the peers are installed here
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    assert peers.peer_unavailable("geomloss", 0, [1.0] * 7, True, "cpu") == "geomloss not installed"
    assert peers.peer_unavailable("pykeops", 0, [1.0], True, "cpu") == "pykeops not installed"
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: object())
    assert "no multi-scale IMQ" in peers.peer_unavailable("geomloss", KIND_IMQ, [1.0] * 7, False, "cpu")
    assert "no multi-scale IMQ" in peers.peer_unavailable("geomloss", KIND_RBF, [1.0, 2.0], False, "cpu")
    assert "biased estimator only" in peers.peer_unavailable("geomloss", KIND_RBF, [1.0], True, "cpu")
    assert peers.peer_unavailable("geomloss", KIND_RBF, [1.0], False, "cpu") is None
    assert peers.peer_unavailable("pykeops", KIND_IMQ, [1.0] * 7, True, "cpu") is None
    assert peers.peer_unavailable("nope", KIND_IMQ, [1.0], True, "cpu") == "unknown peer 'nope'"
    assert peers.dense_memory_bytes("naive", 4096, 4096, 7, "fwdbwd") == 4096 ** 2 * 4 * 27


# ---- the harness ------------------------------------------------------------------------------

def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def h100_floor(monkeypatch):
    # skip the CPU ceiling measurement (seconds): floors against the H100 table
    monkeypatch.setattr(bench_mmd, "_machine", lambda device, dry_run: floor.H100_SXM)


def test_harness_tiny_rows(tmp_path, h100_floor):
    rows = [
        Row("reference", 40, 3, m=24, set="t"),                       # ok, M != N, fwd+bwd
        Row("reference", 64, 4, op="reparam", set="t"),               # ok (sampling op)
        Row("naive", 1 << 20, 64, set="t"),                           # predicted OOM: not run
        Row("cuda", 48, 3, set="t"),                                  # unavailable on CPU: skip
        Row("geomloss", 48, 3, set="t"),                              # peer missing / no IMQ: skip
    ]
    res = bench_mmd.run_rows(rows, device="cpu", stem="t", results_dir=str(tmp_path), row_timeout=60,
                             row_budget=0.05, max_reps=2, log=lambda s: None)
    st = [r["status"] for r in res]
    assert st[:2] == ["ok", "ok"], res[:2]
    assert st[2] == "oom-predicted" and st[3] == "skip" and st[4] == "skip"
    got = _read(tmp_path / "t.csv")
    assert [r["status"] for r in got] == st
    assert float(got[0]["time_ms"]) > 0 and float(got[0]["floor_ms"]) > 0 and got[0]["bound"]
    assert math.isfinite(float(got[0]["value"])) and float(got[0]["peak_mem_mb"]) >= 0
    assert got[0]["m"] == "24" and got[1]["kernel"] == "-"
    md = (tmp_path / "t.md").read_text()
    assert report.MD_HEADER in md and md.count("\n| ") >= 1 + len(rows)
    assert "oom-predicted" in md and "skip" in md


def test_harness_timeout_and_budget(tmp_path, h100_floor):
    res = bench_mmd.run_rows([Row("reference", 64, 4, set="t")], device="cpu", stem="u",
                             results_dir=str(tmp_path), row_timeout=0.05, log=lambda s: None, plots=False)
    assert res[0]["status"] == "timeout"
    res = bench_mmd.run_rows([Row("reference", 64, 4, set="t")] * 2, device="cpu", stem="v",
                             results_dir=str(tmp_path), budget=1e-9, log=lambda s: None, plots=False)
    assert [r["status"] for r in res] == ["skip", "skip"] and "budget" in res[0]["reason"]
    assert len(_read(tmp_path / "u.csv")) == 1 and len(_read(tmp_path / "v.csv")) == 2


def test_worker_records_errors_instead_of_raising():
    # an unknown dtype/backend combination fails inside the worker and comes back as a status
    r = bench_mmd.run_worker({**Row("nonexistent", 8, 2).as_dict()}, "cpu", 0.01, 1)
    assert r["status"] == "error" and r["reason"]


def test_plot_and_targets_summary(tmp_path):
    pytest.importorskip("matplotlib")
    csv_path = tmp_path / "p.csv"
    for b, n, t, mem in [("reference", 1024, 10, 5), ("reference", 4096, 150, 6), ("naive", 1024, 40, 60),
                         ("naive", 4096, 900, 900)]:
        row = Row(b, n, 64).as_dict()
        row.update(status="ok", time_ms=t, peak_mem_mb=mem, floor_ms=t / 10, bound="fp32-fma")
        report.append_csv(str(csv_path), row)
    pngs = report.plot(str(csv_path), str(tmp_path / "p"))
    assert len(pngs) == 2 and all((tmp_path / f"p-{w}.png").stat().st_size > 1000 for w in ("time", "mem"))
    results = [dict(Row("reference", 4096, 64).as_dict(), status="ok", time_ms=100.0),
               dict(Row("naive", 4096, 64).as_dict(), status="ok", time_ms=500.0)]
    text = bench_mmd.cpu_targets_summary(results)
    assert "5.00x" in text and "MET" in text


def test_row_sets_and_dry_run_shrink():
    core = get_rows("gpu-core")
    assert 25 <= len(core) <= 60
    head = [r for r in core if r.set == "gpu-headline"]
    assert {r.backend for r in head} >= {"naive", "compiled", "reference", "triton", "cuda", "pykeops"}
    assert all((r.n, r.d, r.kernel, r.dtype, r.passes, r.estimator) == (65536, 64, "imq7", "fp32", "fwdbwd", "unbiased")
               for r in head)
    assert any(r.n == 1 << 20 for r in core)
    assert {r.d for r in core} >= {2, 8, 64, 256}
    assert all(r.n <= 512 for r in get_rows("gpu-core", dry_run=True))
    assert shrink(Row("cuda", 1 << 20, 64)).n == 512
    cpu = get_rows("cpu")
    assert any(r.backend == "reference" and r.n == 16384 for r in cpu)


def test_mem_probe_and_paired_in_process():
    row = Row("reference", 96, 4).as_dict()
    r = bench_mmd.run_mem_probe(row)
    assert r["mmap_peak_mem_mb"] is not None and r["mmap_peak_mem_mb"] >= 0
    p = bench_mmd.run_paired([Row("naive", 64, 4).as_dict(), row], "cpu", 0.01, 3)
    assert p["_reps"] == 3 and p["naive"] > 0 and p["reference"] > 0


def test_train_step_dense_peer_is_the_wae_formula_and_benchmarks_run_tiny(capsys):
    """The published WAE code's dense MMD (bench_train_step's peer) is wae_fast's unbiased
    7-scale IMQ MMD^2; both issue-15 benchmarks run end to end at a tiny size."""
    import torch

    import wae_fast
    from benchmarks import bench_overhead, bench_train_step

    g = torch.Generator().manual_seed(3)
    x = torch.randn(33, 5, dtype=torch.float64, generator=g)
    y = torch.randn(33, 5, dtype=torch.float64, generator=g) * 1.3
    assert torch.allclose(bench_train_step.dense_wae_mmd(x, y), wae_fast.mmd(x, y, backend="reference"),
                          rtol=1e-10, atol=1e-13)
    threads = torch.get_num_threads()  # the benchmarks pin one thread
    try:
        bench_overhead.main(["--n", "8", "--d", "3", "--runs", "1", "--calls", "3"])
        bench_overhead.main(["--sets", "--n", "8", "--d", "3", "--runs", "1", "--calls", "2"])
        bench_overhead.main(["--weights", "--d", "3", "--runs", "1", "--calls", "2"])
        bench_train_step.main(["--configs", "digits", "--runs", "1", "--steps", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "ratio" in out and "| digits (mlp) | 100 | 8 |" in out
    assert "| 32 |" in out  # the --sets table's last row
    assert "| 1024 |" in out  # the --weights table's last row


# ---- the honest CPU floor (benchmarks/floor.py cpu_floor) -----------------------------------

def test_cpu_pair_ops_by_hand():
    # IMQ 7 scales: 3 pairs (9 ops + 1 div each, 11 with dk/dr) + 1 single (3 ops + 1 div, 4 with
    # dk/dr) + 1 (r = inf map); the pair adds d (dot) + 3 (distance, clamp) + 1 (kernel sum) and
    # d + 1 per gradient side
    assert floor.kernel_eval_ops("imq", [1.0] * 7, False) == {"ops": 1 + 27 + 3, "div": 4, "exp": 0}
    assert floor.kernel_eval_ops("imq", [1.0] * 7, True) == {"ops": 1 + 33 + 4, "div": 4, "exp": 0}
    assert floor.cpu_pair_ops("imq", [1.0] * 7, 8, 2) == {"ops": 8 + 3 + 38 + 1 + 18, "div": 4, "exp": 0}
    # AVX-512 fp32: per scale add, rcp14, 2 Newton FMAs, mul, add (+ 1 FMA for dk/dr), no division
    assert floor.kernel_eval_ops("imq", [1.0] * 7, True, "rcp") == {"ops": 1 + 7 * 7, "div": 0, "exp": 0}
    assert floor.kernel_eval_ops("imq", [1.0] * 7, False, "rcp") == {"ops": 1 + 7 * 6, "div": 0, "exp": 0}
    # RBF: gamma ratios 4 and 4 (bandwidths 0.5, 1, 2): one exp and 2 + 2 squarings (mul, and a
    # compare + select flushing what would square to a subnormal)
    assert floor.rbf_exp_plan([2.0, 0.5, 0.125]) == [0, 2, 2]
    assert floor.rbf_exp_plan([5.5, 0.5, 0.0365]) == [0, 0, 0]
    assert floor.kernel_eval_ops("rbf", [2.0, 0.5, 0.125], True) == {"ops": 1 + 6 + 6 + 3 * 2, "div": 0, "exp": 1}
    assert floor.kernel_eval_ops("rbf", [5.5, 0.5, 0.0365], False) == {"ops": 3 + 3, "div": 0, "exp": 3}


def test_cpu_floor_toy_peak():
    pk = floor.CpuPeak(isa="toy", lanes=16, threads=1, fma_rate=1e11, div_rate=1e10, exp_rate=5e9, mem_bw=1e13)
    f = floor.cpu_floor(4, 4, 2, "imq", [1.0, 2.0], "fwdbwd", pk)
    # xx pair: 2 + 3 + (1 + 11) + 1 + 2 * 3 = 24; yy: 2 + 3 + (1 + 9) + 1 = 16; xy: 2 + 3 + 12 + 1 + 3 = 21
    assert [f["per_pair"][t]["ops"] for t in ("xx", "yy", "xy")] == [24, 16, 21]
    assert f["ops"] == 10 * 24 + 10 * 16 + 16 * 21 and f["div"] == 36
    assert f["t_pipe"] == pytest.approx(f["ops"] / 1e11) and f["t_div"] == pytest.approx(36 / 1e10)
    assert f["bound"] == "pipe" and f["floor_s"] == f["t_pipe"]


def test_cpu_peak_microbenchmark_runs():
    import shutil
    if shutil.which("g++") is None:
        pytest.skip("no g++")
    pk = floor.measure_cpu_peak(threads=1, seconds=0.01)
    assert pk.lanes in (4, 8, 16) and pk.fma_rate > 1e8 and pk.div_rate > 1e7 and pk.exp_rate > 1e7


def test_bench_cpu_floor_machine_note_and_fresh_peak():
    from benchmarks import bench_cpu_floor as b
    # the benchmark's own thread is not "other work": 1.6 on one thread is quiet, 5.2 is shared
    assert "was quiet" in b.machine_note([0.56, 1.6, 0.99], 1, 2)
    shared = b.machine_note([0.5, 5.2, 4.0], 1, 2)
    assert "was SHARED" in shared and "4.2 cores" in shared
    assert "not known" in b.machine_note([float("nan")], 1, 2)
    p = floor.CpuPeak(isa="toy", lanes=16, threads=1, fma_rate=1e11, div_rate=2e10, exp_rate=5e9, mem_bw=1e10)
    q = floor.CpuPeak(isa="toy", lanes=16, threads=1, fma_rate=2e11, div_rate=1e10, exp_rate=4e9, mem_bw=3e10)
    r = b.best_peak(p, q)
    assert (r.fma_rate, r.div_rate, r.exp_rate, r.mem_bw) == (2e11, 2e10, 5e9, 3e10)


def test_segment_rows_build_run_and_floor(monkeypatch):
    """gpu-segments: the issue's shapes; every seg_* op builds and runs (reference backend, tiny
    sets), the loop and dense rows give the one call's values, the floor sums the sets'."""
    rows = get_rows("gpu-segments")
    assert {(r.op, r.n, r.d) for r in rows if r.backend == "naive"} == {("seg_batched", 64, 8), ("seg_batched", 64, 64)}
    assert {r.d for r in rows} == {8, 64} and {r.backend for r in rows} == {"triton", "cuda", "naive"}
    assert bench_mmd.segment_sizes("seg_batched", 64) == [(64, 64)] * 256
    sizes = bench_mmd.segment_sizes("seg_ragged", 512)
    assert len(sizes) == 64 and min(min(s) for s in sizes) >= 16 and max(max(s) for s in sizes) <= 512
    m = floor.Machine("toy", sms=2, clock_hz=1e9, fp32_fma_per_sm_clk=256, tf32_per_sm_clk=2048,
                      bf16_per_sm_clk=4096, sfu_per_sm_clk=16, mem_bw=1e12)
    one = floor.row_floor("mmd", 64, 64, 8, "fp32", "fwdbwd", "ieee", m)["floor_s"]
    assert bench_mmd.segment_floor(Row("cuda", 64, 8, op="seg_batched"), m)["floor_s"] == pytest.approx(256 * one)
    from benchmarks import rows as rows_mod
    monkeypatch.setattr(rows_mod, "SEG_SETS", 5)          # tiny runs
    monkeypatch.setattr(rows_mod, "SEG_RAGGED_SETS", 4)
    vals = {}
    for op, be in (("seg_batched", "reference"), ("seg_batched", "naive"), ("seg_loop", "reference"),
                   ("seg_batched_w", "reference"), ("seg_ragged", "reference"),
                   ("seg_ragged_loop", "reference")):
        step, leaves = bench_mmd._build(dict(Row(be, 20 if "ragged" in op else 6, 2, op=op).as_dict()), "cpu")
        vals[(op, be)] = step().detach()
        assert leaves[0].grad is not None
    assert torch.allclose(vals[("seg_batched", "reference")], vals[("seg_loop", "reference")], atol=1e-5)
    assert torch.allclose(vals[("seg_batched", "reference")], vals[("seg_batched", "naive")], atol=1e-5)
    assert torch.allclose(vals[("seg_ragged", "reference")], vals[("seg_ragged_loop", "reference")], atol=1e-5)
