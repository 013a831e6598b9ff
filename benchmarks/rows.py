"""Named row sets of the benchmark matrix.

The full matrix is backend (naive, compiled, reference, cpp, triton, cuda, pykeops, geomloss)
x N = M in 1k..1M x d in {2, 8, 64, 256} x kernel (imq7: the WAE 7-scale IMQ; rbf: one
bandwidth) x dtype (fp32, bf16) x pass (fwd, fwdbwd), plus reparameterize. It is never run whole:
each set below names the rows that answer a question.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

WAE_BACKENDS = ("reference", "cpp", "triton", "cuda")
PEERS = ("naive", "compiled", "pykeops", "geomloss")
ALL_BACKENDS = ("naive", "compiled") + WAE_BACKENDS + ("pykeops", "geomloss")


@dataclasses.dataclass(frozen=True)
class Row:
    backend: str
    n: int
    d: int
    m: int = 0              # 0: M = N
    op: str = "mmd"         # "mmd", "reparam" (reparam: an (n, d) tensor) or one of SEG_OPS
    kernel: str = "imq7"    # "imq7" | "rbf"
    dtype: str = "fp32"     # "fp32" | "bf16"
    passes: str = "fwdbwd"  # "fwd" | "fwdbwd"
    estimator: str = "unbiased"
    precision: str = "ieee"
    set: str = ""
    max_reps: int = 0       # 0: the mode's default
    mem_probe: bool = False  # CPU: also measure live-allocation peak (MALLOC_MMAP_THRESHOLD_)
    graph: bool = False     # CUDA: time replays of the call (fwd + bwd) captured in a CUDA graph

    @property
    def mm(self) -> int:
        return self.m or self.n

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["m"] = self.mm
        if self.op == "reparam":  # no kernel, estimator or precision: shown as "-"
            d["kernel"] = d["estimator"] = d["precision"] = "-"
        return d


def _rows(set_name, backends, ns, ds, **kw):
    return [Row(backend=b, n=n, d=d, set=set_name, **kw) for n in ns for d in ds for b in backends]


# ---- CPU (2 cores, a few minutes) -------------------------------------------------------------

def cpu_targets() -> list[Row]:
    s = "cpu-targets"
    rows = []
    # T1 and T3: N=M=4096, d=64, 7-scale IMQ unbiased fp32 fwd+bwd, every backend and peer.
    rows += _rows(s, ("naive", "compiled", "reference", "cpp", "pykeops"), [4096], [64], mem_probe=True)
    # T2: peak extra memory at N=M=16384 (reference < 64 MB); the dense peers are skipped by the
    # memory prediction (that is the point).
    rows += _rows(s, ("reference", "cpp", "naive"), [16384], [64], max_reps=1, mem_probe=True)
    # T4: N=M=16384, d=8: cpp vs pykeops (cpp >= 5x faster); the rest for context.
    # (the reference is left out here: at d=8 its 7 elementwise passes per block take minutes on 2 cores)
    rows += _rows(s, ("cpp", "pykeops", "compiled"), [16384], [8], max_reps=2)
    return rows


def cpu_sweep() -> list[Row]:
    s = "cpu-sweep"
    rows = []
    rows += _rows(s, ("naive", "reference", "cpp"), [1024, 2048, 8192], [64], max_reps=3)  # + 4096 above
    rows += _rows(s, ("reference", "cpp"), [4096], [2, 8, 256], max_reps=3)   # d sweep
    rows += _rows(s, ("naive", "reference", "cpp"), [4096], [64], kernel="rbf")
    rows += _rows(s, ("naive", "reference", "cpp"), [4096], [64], dtype="bf16", passes="fwd")
    rows += _rows(s, ("naive", "reference", "cpp"), [1 << 18], [64], op="reparam")
    return rows


def cpu_all() -> list[Row]:
    return cpu_targets() + cpu_sweep()


# ---- GPU (about 30-40 rows; each subset fits one device call) -----------------------------------

GPU_MMD = ("naive", "compiled", "reference", "triton", "cuda", "pykeops", "geomloss")


def gpu_headline() -> list[Row]:
    # N=M=65536, d=64, 7-scale IMQ unbiased fp32 fwd+bwd: every backend and peer.
    return _rows("gpu-headline", GPU_MMD, [65536], [64])


def gpu_nsweep() -> list[Row]:
    s = "gpu-nsweep"
    rows = _rows(s, ("triton", "cuda"), [1024, 4096, 16384, 262144], [64])
    rows += _rows(s, ("naive", "compiled", "reference", "pykeops"), [4096, 16384], [64])
    return rows


def gpu_dsweep() -> list[Row]:
    return _rows("gpu-dsweep", ("triton", "cuda"), [65536], [2, 8, 256])


def gpu_1m() -> list[Row]:
    s = "gpu-1m"
    rows = _rows(s, ("cuda", "triton"), [1 << 20], [64], passes="fwd", max_reps=2)
    rows += _rows(s, ("cuda", "triton"), [1 << 20], [8], max_reps=2)
    return rows


def gpu_misc() -> list[Row]:
    s = "gpu-misc"
    rows = _rows(s, ("triton", "cuda"), [65536], [64], dtype="bf16")
    rows += _rows(s, ("triton", "cuda"), [65536], [64], precision="tf32")
    rows += _rows(s, ("triton", "cuda", "geomloss", "pykeops"), [65536], [64], kernel="rbf", estimator="biased")
    rows += _rows(s, ("naive", "reference", "triton", "cuda"), [1 << 20], [64], op="reparam")
    return rows


def gpu_first() -> list[Row]:
    """A first look that fits one short device call after the tests: the headline row of our two
    GPU backends (and the plain-PyTorch peers), the training regime (N = M = 256, d = 8 and
    1024, d = 64: host overhead and launches included; N = M = 100, d = 8 graph-replayed: the
    device time alone) and a short N / d sweep."""
    s = "gpu-first"
    rows = _rows(s, ("cuda", "triton"), [65536], [64])
    rows += _rows(s, ("cuda", "triton", "naive"), [256], [8])
    rows += _rows(s, ("cuda", "triton", "naive"), [1024], [64])
    rows += _rows(s, ("reference", "naive"), [65536], [64])
    rows += _rows(s, ("cuda", "triton"), [4096, 16384], [64])
    rows += _rows(s, ("cuda", "triton"), [65536], [8])
    rows += _rows(s, ("compiled",), [4096], [64])
    rows += gpu_small(s)
    return rows


def gpu_small(s: str = "gpu-small") -> list[Row]:
    """The WAE MNIST step (issue 15): N = M = 100, d = 8, fwd + bwd replayed from a CUDA graph
    (host overhead gone for every backend; the dense formula graph-replayed too).  Targets:
    <= 20 us per call, >= 5x the dense formula."""
    return _rows(s, ("triton", "cuda", "naive"), [100], [8], graph=True)


#: mmd_segments rows (op "seg_*"): "seg_batched" B = SEG_SETS sets of N = M = row.n points
#: (mmd_batched; backend "naive": the dense batched torch.cdist formula), "seg_batched_w" the same
#: weighted (weights in [0.5, 1.5]), "seg_loop" a Python loop of B single ``mmd`` calls on the
#: same sets; "seg_ragged" SEG_RAGGED_SETS sets with N_b, M_b drawn in [SEG_RAGGED_MIN, row.n]
#: (seed 0; mmd_varlen), "seg_ragged_loop" its Python loop.
SEG_OPS = ("seg_batched", "seg_batched_w", "seg_loop", "seg_ragged", "seg_ragged_loop")
SEG_SETS = 256
SEG_RAGGED_SETS = 64
SEG_RAGGED_MIN = 16


def gpu_segments() -> list[Row]:
    """Issue 16's GPU rows: B = 256 sets of 64 points and ragged sets of 16..512 points at d = 8
    and 64, one call (triton, cuda) against a Python loop of single calls and the dense batched
    formula (7-scale IMQ, unbiased, fp32, fwd+bwd)."""
    s = "gpu-segments"
    rows = []
    for d in (8, 64):
        for op in ("seg_batched", "seg_batched_w", "seg_loop"):
            rows += [Row(b, 64, d, op=op, set=s) for b in ("triton", "cuda")]
        rows.append(Row("naive", 64, d, op="seg_batched", set=s))
        for op in ("seg_ragged", "seg_ragged_loop"):
            rows += [Row(b, 512, d, op=op, set=s) for b in ("triton", "cuda")]
    return rows


def gpu_core() -> list[Row]:
    return gpu_headline() + gpu_nsweep() + gpu_dsweep() + gpu_misc() + gpu_1m()  # slowest last


# ---- tiny (tests, smoke) ------------------------------------------------------------------------

def tiny() -> list[Row]:
    s = "tiny"
    return [
        Row("reference", 64, 4, set=s),
        Row("naive", 64, 4, set=s, passes="fwd"),
        Row("reference", 64, 4, set=s, op="reparam"),
        Row("naive", 1 << 20, 64, set=s),          # predicted dense OOM: skipped, never run
        Row("cuda", 64, 4, set=s),                 # unavailable on CPU: skipped with its reason
    ]


ROW_SETS: dict[str, Callable[[], list[Row]]] = {
    "cpu": cpu_all, "cpu-targets": cpu_targets, "cpu-sweep": cpu_sweep,
    "gpu-core": gpu_core, "gpu-first": gpu_first, "gpu-small": gpu_small, "gpu-headline": gpu_headline,
    "gpu-nsweep": gpu_nsweep, "gpu-dsweep": gpu_dsweep, "gpu-1m": gpu_1m, "gpu-misc": gpu_misc,
    "gpu-segments": gpu_segments, "tiny": tiny,
}


def shrink(row: Row) -> Row:
    """The dry-run version of a row: same shape of question, tiny sizes (CPU, seconds)."""
    def small(v):
        return max(32, min(512, v // 128))
    return dataclasses.replace(row, n=small(row.n), m=small(row.m) if row.m else 0,
                               d=min(row.d, 64), max_reps=2)


def get_rows(names: str, dry_run: bool = False) -> list[Row]:
    rows: list[Row] = []
    for name in names.split(","):
        name = name.strip()
        if name not in ROW_SETS:
            raise SystemExit(f"unknown row set {name!r}; known: {', '.join(ROW_SETS)}")
        rows += ROW_SETS[name]()
    return [shrink(r) for r in rows] if dry_run else rows
