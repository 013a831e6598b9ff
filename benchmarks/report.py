"""Writing benchmark results: CSV (one line per row, appended as rows finish), a markdown report
(sections and table lines appended as they come, so a run cut short still leaves its rows) and
log-log PNG plots of time and memory vs N per backend (matplotlib, when installed)."""
from __future__ import annotations

import csv
import math
import os
import shutil
from collections import defaultdict
from typing import Iterable, Optional

CSV_FIELDS = [
    "set", "backend", "op", "device", "n", "m", "d", "kernel", "dtype", "passes", "estimator",
    "precision", "status", "reason", "time_ms", "time_min_ms", "time_max_ms", "reps", "first_call_s",
    "peak_mem_mb", "timed_peak_mem_mb", "mmap_peak_mem_mb", "floor_ms", "bound", "frac_floor", "value", "machine",
    "threads", "wall_s", "timestamp",
]

MD_HEADER = ("| backend | op | N | M | d | kernel | dtype | pass | est | prec | status | median ms | "
             "peak extra MB | floor ms (bound) | % of floor | note |")
MD_RULE = "|" + "---|" * 16
COLORS = {"naive": "tab:green", "compiled": "tab:purple", "reference": "tab:red", "cpp": "tab:orange",
          "triton": "tab:blue", "cuda": "tab:cyan", "pykeops": "tab:brown", "geomloss": "tab:pink"}


def _fmt(v, spec: str = ".3g") -> str:
    if v is None or v == "":
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return ""
    return format(f, spec)


def append_csv(path: str, row: dict) -> None:
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})


def read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_md(path: str, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")


def md_row(r: dict) -> str:
    pct = ""
    if r.get("frac_floor") not in (None, ""):
        pct = _fmt(100.0 * float(r["frac_floor"]), ".3g")
    floor = ""
    if r.get("floor_ms") not in (None, ""):
        floor = f"{_fmt(r['floor_ms'], '.4g')} ({r.get('bound', '')})"
    note = str(r.get("reason") or "").replace("|", "/").replace("\n", " ")[:160]
    if r.get("status") == "ok" and r.get("first_call_s") not in (None, ""):
        note = (note + " " if note else "") + f"first call {_fmt(r['first_call_s'], '.3g')} s, {r.get('reps')} reps"
    passes = f"{r['passes']} graph" if str(r.get("graph", "")) in ("True", "1", "true") else r["passes"]
    return (f"| {r['backend']} | {r['op']} | {r['n']} | {r['m']} | {r['d']} | {r['kernel']} | {r['dtype']} | "
            f"{passes} | {r['estimator']} | {r['precision']} | {r['status']} | {_fmt(r.get('time_ms'), '.4g')} | "
            f"{_fmt(r.get('peak_mem_mb'), '.4g')} | {floor} | {pct} | {note} |")


def mirror(paths: Iterable[str], out_dir: Optional[str]) -> None:
    """Copy result files to ``out_dir`` ($OUT on the GPU machine) when set."""
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    for p in paths:
        if p and os.path.exists(p):
            try:
                shutil.copy2(p, os.path.join(out_dir, os.path.basename(p)))
            except OSError:
                pass


def _num(v) -> Optional[float]:
    try:
        f = float(v)
        return None if math.isnan(f) else f
    except (TypeError, ValueError):
        return None


def plot(csv_path: str, png_stem: str) -> list[str]:
    """time-vs-N and memory-vs-N log-log plots, one panel per (op, d, kernel, dtype, pass, est,
    precision) group with at least two N values; one line per backend. Returns the PNGs written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    rows = [r for r in read_csv(csv_path) if r.get("status") == "ok" and _num(r.get("time_ms"))]
    groups: dict = defaultdict(lambda: defaultdict(list))
    floors: dict = defaultdict(dict)
    for r in rows:
        key = (r["op"], r["d"], r["kernel"], r["dtype"], r["passes"], r["estimator"], r["precision"])
        groups[key][r["backend"]].append(r)
        if _num(r.get("floor_ms")):
            floors[key][int(r["n"])] = float(r["floor_ms"])
    keys = [k for k, b in groups.items() if len({int(r["n"]) for rs in b.values() for r in rs}) >= 2]
    keys.sort(key=lambda k: -len({int(r["n"]) for rs in groups[k].values() for r in rs}))
    keys = keys[:6]
    written = []
    if not keys:
        return written
    for what, col, ylabel in (("time", "time_ms", "median time (ms)"), ("mem", "peak_mem_mb", "peak extra memory (MB)")):
        ncol = min(3, len(keys))
        nrow = (len(keys) + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.0 * nrow), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            for backend, rs in sorted(groups[key].items()):
                pts = sorted((int(r["n"]), _num(r.get(col))) for r in rs if _num(r.get(col)) is not None
                             and _num(r.get(col)) > 0)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=backend,
                            color=COLORS.get(backend))
            if what == "time" and floors[key]:
                fl = sorted(floors[key].items())
                ax.plot([p[0] for p in fl], [p[1] for p in fl], "k--", label="floor")
            ax.set_xscale("log")
            ax.set_yscale("log")
            op, d, kern, dt, ps, est, prec = key
            ax.set_title(f"{op} d={d} {kern} {dt} {ps} {est} {prec}", fontsize=9)
            ax.set_xlabel("N = M")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        path = f"{png_stem}-{what}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
