"""End-of-run PNG plots (matplotlib, Agg backend): loss curves, reconstructions, samples from
the prior, latent interpolations and a 2-D PCA projection of the codes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch


#: prior samples in the PCA plot: a light gray that no class colour (CLASS_COLOURS) or viridis uses
PRIOR_COLOUR = "#d0d0d0"
#: one colour per class label: tab10 with its gray (#7f7f7f, too close to the prior's) replaced by black
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#000000",
                 "#bcbd22", "#17becf")
#: held-out codes without labels
CODE_COLOUR = "#1f77b4"


def require_matplotlib(what: str) -> None:
    """Raise ImportError with the install hint if matplotlib is missing (``what`` says who needs it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} with matplotlib, which is not installed: "
                          "pip install 'wae_fast[train]' (or pip install matplotlib)") from None


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


#: ``matplotlib.pyplot`` on the non-interactive Agg backend, for the other plotting code.
agg_pyplot = _plt


def image_grid(x: torch.Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> an (rows*(H+pad), nrow*(W+pad)[, 3]) array."""
    x = x.detach().float().cpu().clamp(0, 1)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    return grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()


def _show(plt, arr: np.ndarray, title: str, path: Path) -> Path:
    h, w = arr.shape[:2]
    scale = max(4.0 / max(w, h) * 100, 1.0) if max(w, h) < 400 else 1.0
    fig = plt.figure(figsize=(max(w * scale / 100, 3), max(h * scale / 100, 2) + 0.4), dpi=100)
    ax = fig.add_axes([0, 0, 1, 0.9])
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def _yscale(ax, vals) -> None:
    """log scale when all values are positive, else symlog (unbiased MMD^2 can be < 0)."""
    if min(vals) > 0:
        ax.set_yscale("log")
    else:
        ax.axhline(0, color="k", lw=0.5)
        ax.set_yscale("symlog", linthresh=1e-3)


def plot_curves(history: list[dict], path: Path, data_mmd: Optional[float] = None, title: str = "") -> Path:
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))

    def series(k):
        return [(h["epoch"], h[k]) for h in history if k in h]

    ax = axes[0, 0]
    for k, lab in (("loss", "total loss"), ("rec", "recon cost"), ("dz", "D_Z term (unweighted)"),
                   ("pen", "logvar penalty"), ("d_loss", "discriminator loss")):
        s = series(k)
        if s:
            ax.plot(*zip(*s), label=lab)
    ax.set_title("training (epoch means)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for k in ("train_recon", "test_recon"):
        ax.plot(ep, [h[k] for h in history], marker=".", label=k)
    ax.set_title("reconstruction cost c(x, G(z))")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    ax.plot(ep, [h["mmd_qz"] for h in history], marker=".")
    _yscale(ax, [h["mmd_qz"] for h in history])
    ax.set_title("MMD^2(Q_Z, P_Z), held-out codes")
    ax = axes[1, 1]
    ax.plot(ep, [h["sample_mmd"] for h in history], marker=".", label="G(z), z ~ P_Z vs held-out")
    if data_mmd is not None:
        ax.axhline(data_mmd, color="g", ls="--", label="floor: train vs held-out images")
    _yscale(ax, [h["sample_mmd"] for h in history] + ([data_mmd] if data_mmd is not None else []))
    ax.set_title("sample quality: pixel-space MMD^2 (lower is better)")
    ax.legend(fontsize=8)
    for a in axes.flat:
        a.set_xlabel("epoch")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(trainer, out: Path) -> list[Path]:
    """All end-of-run plots for a :class:`~wae_fast.train.Trainer` into ``out``."""
    with trainer.threads():
        return _write_plots(trainer, out)


def _write_plots(trainer, out: Path) -> list[Path]:
    plt = _plt()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = trainer.cfg
    title = (f"VAE {c.dataset} z_dim={c.z_dim} beta={c.lam}" if c.objective == "vae" else
             f"WAE-{c.objective.upper()} {c.dataset} z_dim={c.z_dim} {c.encoder} lambda={c.lam}")
    paths = [plot_curves(trainer.history, out / "loss_curves.png", trainer.data_mmd, title)]
    g = torch.Generator().manual_seed(12345 + c.seed)
    xs = trainer.eval_test
    n = min(16, len(xs))
    x = xs[:n]
    z, _ = trainer.encode_all(x, g)
    xr = trainer.decode_all(z).cpu()
    from .data import to_float
    xf = to_float(x)
    pair = torch.cat([xf[:8], xr[:8], xf[8:16], xr[8:16]]) if n >= 16 else torch.cat([xf, xr])
    paths.append(_show(plt, image_grid(pair, min(8, n)), "held-out (rows 1, 3), reconstructed (2, 4)",
                       out / "reconstructions.png"))
    zp = trainer._prior(64, g)
    paths.append(_show(plt, image_grid(trainer.decode_all(zp).cpu(), 8), "samples G(z), z ~ prior",
                       out / "samples.png"))
    m = min(len(xs), 12)
    if m >= 2:
        zz, _ = trainer.encode_all(xs[:m], None, sample=False)
        steps = torch.linspace(0, 1, 10, device=zz.device)
        rows = []
        for i in range(m // 2):
            a, b = zz[2 * i], zz[2 * i + 1]
            rows.append(a[None] * (1 - steps[:, None]) + b[None] * steps[:, None])
        zi = torch.cat(rows)
        paths.append(_show(plt, image_grid(trainer.decode_all(zi).cpu(), 10),
                           "interpolations (encoder means)",
                           out / "interpolations.png"))
    paths.append(plot_codes(trainer, out / "latent_pca.png", g))
    return paths


def plot_codes(trainer, path: Path, g: Optional[torch.Generator] = None) -> Path:
    plt = _plt()
    fig = codes_figure(trainer, g)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def codes_figure(trainer, g: Optional[torch.Generator] = None):
    """Held-out codes against prior samples: a histogram for z_dim 1, else the codes' top-2
    principal axes, coloured by class label (one legend entry each) or by a known factor."""
    plt = _plt()
    xs = trainer.eval_test
    z, _ = trainer.encode_all(xs, g)
    z = z.detach().double().cpu()
    p = trainer._prior(len(z), g if g is not None else torch.Generator().manual_seed(0)).double().cpu()
    labels = trainer.data.test_labels
    if labels is None and trainer.data.latent is not None:
        labels = trainer.data.latent
    if labels is not None:
        labels = labels[:len(z)].numpy()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if z.shape[1] == 1:
        ax.hist(p[:, 0].numpy(), bins=40, density=True, alpha=0.4, label="prior samples")
        ax.hist(z[:, 0].numpy(), bins=40, density=True, alpha=0.6, label="held-out codes")
        ax.set_xlabel("z")
        ax.legend(fontsize=8)
        ax.set_title("codes vs prior (z_dim = 1)")
    else:
        mean = z.mean(0, keepdim=True)
        v = torch.linalg.svd(z - mean, full_matrices=False).Vh[:2].T  # top-2 principal axes
        zp, pp = ((z - mean) @ v).numpy(), ((p - mean) @ v).numpy()
        ax.scatter(pp[:, 0], pp[:, 1], s=4, c=PRIOR_COLOUR, label="prior samples")
        if trainer.data.test_labels is not None:  # a legend entry and a colour of its own per class
            for k in np.unique(labels):
                sel = labels == k
                ax.scatter(zp[sel, 0], zp[sel, 1], s=5, c=CLASS_COLOURS[int(k) % len(CLASS_COLOURS)],
                           label=f"held-out codes, label {k}")
        elif labels is not None:  # a continuous factor (squares: intensity)
            sc = ax.scatter(zp[:, 0], zp[:, 1], s=5, c=labels, cmap="viridis", label="held-out codes")
            fig.colorbar(sc, ax=ax, label="intensity")
        else:
            ax.scatter(zp[:, 0], zp[:, 1], s=5, c=CODE_COLOUR, label="held-out codes")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=2)
        ax.set_title(f"codes on their top-2 principal axes (z_dim = {z.shape[1]})", fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.tight_layout()
    return fig
