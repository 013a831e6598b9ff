"""``wae-fast experiment latent-dim``: deterministic vs stochastic encoders on fading squares.

The data have intrinsic dimension 1. With a deterministic encoder Q_Z is the push-forward of a
1-D distribution, a curve in R^z_dim, which a Gaussian prior cannot match once z_dim > 1:
MMD(Q_Z, P_Z) should grow with z_dim. A Gaussian encoder with the L1 log-variance penalty
(Rubenstein, Schoelkopf & Tolstikhin 2018) can fill the unused directions with noise and should
fare better. For each z_dim, encoder and seed we train WAE-MMD and record the final held-out
MMD^2(Q_Z, P_Z), reconstruction cost and sample-quality score (pixel-space MMD^2 between decoded
prior samples and held-out images).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

from .checkpoint import atomic_write_text
from .config import preset
from .data import load_squares_data
from .plots import require_matplotlib
from .rundir import RunLock
from .trainer import Trainer

METRICS = ("mmd_qz", "test_recon", "sample_mmd")
ENCODERS = ("deterministic", "gaussian")
#: what an experiment writes into its directory
OUTPUTS = ("latent_dim.json", "latent_dim.md", "latent_dim.csv", "latent_dim_runs.csv", "latent_dim.png")


def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    s = math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def run_latent_dim(out: str, z_dims: Sequence[int] = (1, 2, 4, 8), seeds: int = 3, epochs: int = 20,
                   lam: float = 10.0, logvar_weight: float = 0.01, backend: str = "auto",
                   device: str = "cpu", n_train: int = 2000, progress: bool = True,
                   log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Train every (seed, encoder, z_dim) and write OUTPUTS into ``out``, which stays locked
    meanwhile. Refuses (ValueError) a directory holding an earlier experiment's results unless
    ``overwrite``, and checks for matplotlib before training."""
    require_matplotlib("wae-fast experiment writes latent_dim.png")
    with RunLock(out):
        earlier = [n for n in OUTPUTS if (Path(out) / n).exists()]
        if earlier and not overwrite:
            raise ValueError(f"--out {out}: already holds an earlier experiment's results ({', '.join(earlier)}); "
                             "pass --overwrite to replace them, or choose another --out")
        return _run(Path(out), z_dims, seeds, epochs, lam, logvar_weight, backend, device, n_train, progress, log)


def _run(out_p: Path, z_dims, seeds, epochs, lam, logvar_weight, backend, device, n_train, progress, log) -> dict:
    data = load_squares_data(n_train=n_train)
    runs = []
    jobs = [(s, enc, z) for s in range(seeds) for enc in ENCODERS for z in z_dims]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="latent-dim", unit="run", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for s, enc, z in jobs:
            cfg = preset("squares", "mmd", z_dim=z, encoder=enc, epochs=epochs, seed=s, lam=lam,
                         logvar_weight=logvar_weight, logvar_penalty="l1", backend=backend, device=device,
                         lr_schedule="constant", eval_samples=500, batch_size=min(100, n_train))
            tr = Trainer(cfg, None, data=data, progress=False, log=log)
            last = tr.fit()[-1]
            row = {"z_dim": z, "encoder": enc, "seed": s, **{k: last[k] for k in METRICS}}
            if "mean_logvar" in last:
                row["mean_logvar"] = last["mean_logvar"]
            runs.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({"z": z, "enc": enc[:3], "mmd_qz": f"{last['mmd_qz']:.3g}"})
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0

    table = []
    for enc in ENCODERS:
        for z in z_dims:
            sel = [r for r in runs if r["encoder"] == enc and r["z_dim"] == z]
            row = {"encoder": enc + (" + L1 logvar" if enc == "gaussian" else ""), "z_dim": z, "n_seeds": len(sel)}
            for k in METRICS:
                row[k + "_mean"], row[k + "_std"] = _mean_std([r[k] for r in sel])
            table.append(row)

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    atomic_write_text(out_p / "latent_dim.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["z_dim", "encoder", "seed", *METRICS, "mean_logvar"],
                       lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(runs)
    atomic_write_text(out_p / "latent_dim_runs.csv", buf.getvalue())
    md = [f"Fading squares (16x16, intrinsic dim 1), WAE-MMD, lambda {lam}, {epochs} epochs, "
          f"{seeds} seeds (mean ± std); Gaussian encoders with L1 logvar penalty x{logvar_weight}.", "",
          "| encoder | z_dim | MMD²(Q_Z, P_Z) | test recon | sample MMD² |", "|---|---|---|---|---|"]
    for r in table:
        md.append(f"| {r['encoder']} | {r['z_dim']} | " + " | ".join(
            f"{r[k + '_mean']:.4g} ± {r[k + '_std']:.2g}" for k in METRICS) + " |")
    md_text = "\n".join(md) + "\n"
    atomic_write_text(out_p / "latent_dim.md", md_text)
    atomic_write_text(out_p / "latent_dim.json", json.dumps({"runs": runs, "table": table, "wall_s": wall,
                                                             "epochs": epochs, "seeds": seeds, "lam": lam,
                                                             "logvar_weight": logvar_weight}, indent=2))
    plot = _plot(table, z_dims, out_p / "latent_dim.png")
    log(md_text)
    log(f"wrote {out_p / 'latent_dim.md'}, latent_dim.csv, latent_dim_runs.csv, {plot.name} ({wall:.0f} s)")
    return {"runs": runs, "table": table, "markdown": md_text, "wall_s": wall, "plot": str(plot)}


def _plot(table, z_dims, path: Path) -> Path:
    from .plots import agg_pyplot
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = {"mmd_qz": "MMD²(Q_Z, P_Z), held-out codes", "test_recon": "test reconstruction cost",
              "sample_mmd": "sample quality (pixel MMD², lower better)"}
    for ax, k in zip(axes, METRICS):
        for enc in sorted({r["encoder"] for r in table}):
            rows = [r for r in table if r["encoder"] == enc]
            ax.errorbar([r["z_dim"] for r in rows], [r[k + "_mean"] for r in rows],
                        yerr=[r[k + "_std"] for r in rows], marker="o", capsize=3, label=enc)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(z_dims))
        ax.set_xticklabels([str(z) for z in z_dims])
        ax.set_xlabel("z_dim")
        ax.set_title(titles[k], fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
