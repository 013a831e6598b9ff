"""The VAE baseline, Fashion-MNIST lookup, the metric classifier's KID / Frechet distance and the
vae-wae experiment, on a small IDX fixture the tests write (nothing is downloaded)."""
from __future__ import annotations

import gzip
import json
import math
import os
import struct

import numpy as np
import pytest
import torch

from wae_fast.cli import main
from wae_fast.train import Trainer, preset
from wae_fast.train import data as data_mod
from wae_fast.train import quality as quality_mod
from wae_fast.train.data import DataError, find_fashion_mnist, load_dataset
from wae_fast.train.objectives import bernoulli_nll, kl_per_point, kl_to_gaussian_prior
from wae_fast.train.quality import QualityError, SampleQuality, frechet_distance, metric_classifier


def write_idx(path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def labelled_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images of 10 classes: class c is a bright horizontal bar at rows 2c+4..2c+6, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 60, (n, 28, 28))
    for i, c in enumerate(y):
        x[i, 2 * c + 4:2 * c + 7, 4:24] = rng.integers(180, 256)
    return x.astype(np.uint8), y.astype(np.uint8)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fashion")
    xtr, ytr = labelled_images(300, 1)
    xte, yte = labelled_images(100, 2)
    for name, a in (("train-images-idx3-ubyte.gz", xtr), ("train-labels-idx1-ubyte.gz", ytr),
                    ("t10k-images-idx3-ubyte.gz", xte), ("t10k-labels-idx1-ubyte.gz", yte)):
        write_idx(d / name, a)
    return d


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WAE_FAST_CLASSIFIER_CACHE", str(tmp_path / "cache"))


# -- the VAE objective ---------------------------------------------------------------------

def test_vae_terms_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    for s2 in (1.0, 2.0):
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * lv).exp()),
                                                torch.distributions.Normal(0.0, math.sqrt(s2))).sum(1)
        torch.testing.assert_close(kl_per_point(mu, lv, s2), ref)
        torch.testing.assert_close(kl_to_gaussian_prior(mu, lv, s2), ref.mean())
    x = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64)
    p = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 0.98 + 0.01
    ref = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1).mean()
    torch.testing.assert_close(bernoulli_nll(x, p), ref)
    assert torch.isfinite(bernoulli_nll(x, torch.zeros_like(x)))  # saturated sigmoid: clamped logs


def test_vae_refuses_deterministic_encoders_and_other_priors(capsys):
    cfg = preset("digits", "vae")
    assert (cfg.lam, cfg.encoder, cfg.logvar_penalty) == (1.0, "gaussian", "none")
    with pytest.raises(ValueError, match="--objective vae: needs --encoder gaussian"):
        preset("digits", "vae", encoder="deterministic").validate()
    with pytest.raises(ValueError, match="needs --prior gaussian"):
        preset("digits", "vae", prior="sphere").validate()
    with pytest.raises(ValueError, match="--logvar-penalty none"):
        preset("digits", "vae", logvar_penalty="l1").validate()
    with pytest.raises(SystemExit) as ei:
        main(["train", "--objective", "vae", "--encoder", "deterministic", "--no-progress"])
    assert ei.value.code == 2 and "needs --encoder gaussian" in capsys.readouterr().err


def test_vae_trains_with_quality_metrics(fashion_dir, tmp_path):
    cfg = preset("fashion-mnist", "vae", data_path=str(fashion_dir), arch="mlp", width=32, z_dim=4, lam=0.5,
                 epochs=2, batch_size=50, eval_samples=60, lr_schedule="constant")
    with Trainer(cfg, tmp_path / "run", progress=False, log=lambda s: None) as tr:
        hist = tr.fit()
        summary = tr.summary()
    first, last = hist[0], hist[-1]
    for k in ("kid", "frechet", "kl", "test_recon", "mmd_qz", "time_s"):
        assert math.isfinite(last[k]), k
    # the logged training loss is BCE + beta * KL, step by step, so also in the epoch means
    assert last["loss"] == pytest.approx(last["rec"] + 0.5 * last["dz"], rel=1e-5)
    assert last["rec"] > 0 and last["dz"] > 0 and "d_loss" not in last and "pen" not in last
    assert last["test_recon"] < first["test_recon"]
    assert "VAE (Bernoulli decoder)" in summary and "beta 0.5" in summary and "epoch time" in summary
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved["quality_floor"]) == {"kid", "frechet"} and saved["classifier_test_accuracy"] > 0.5
    assert "kid" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


# -- Fashion-MNIST lookup ------------------------------------------------------------------

def test_fashion_mnist_lookup_order(fashion_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    for f in fashion_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    # dpkg -L: a stand-in dpkg on PATH lists the package's files
    bindir = tmp_path / "bin"
    bindir.mkdir()
    dpkg = bindir / "dpkg"
    dpkg.write_text("#!/bin/sh\n[ \"$2\" = dataset-fashion-mnist ] || exit 1\n"
                    f"echo {fashion_dir}\necho {fashion_dir}/train-images-idx3-ubyte.gz\n"
                    f"echo {fashion_dir}/t10k-images-idx3-ubyte.gz\n")
    dpkg.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("WAE_FAST_DATA", raising=False)
    assert find_fashion_mnist() == fashion_dir
    monkeypatch.setenv("WAE_FAST_DATA", str(tmp_path))          # holds no IDX files: falls through to dpkg
    assert find_fashion_mnist() == fashion_dir
    (tmp_path / "fashion-mnist").symlink_to(other)
    assert find_fashion_mnist() == tmp_path / "fashion-mnist"   # the environment before dpkg
    assert find_fashion_mnist(str(fashion_dir)) == fashion_dir  # --data-path first
    d = load_dataset("fashion-mnist")
    assert d.name == "fashion-mnist" and d.train.shape == (300, 1, 28, 28) and d.train.dtype == torch.uint8
    assert d.test_labels is not None and len(d.test_labels) == 100
    with pytest.raises(DataError, match="does not exist"):
        find_fashion_mnist(str(tmp_path / "missing"))


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dpkg
    monkeypatch.setenv("WAE_FAST_DATA", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        find_fashion_mnist()
    monkeypatch.setattr(data_mod, "_dpkg_dirs", lambda package: [])
    with pytest.raises(SystemExit) as ei:
        main(["train", "--dataset", "fashion-mnist", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "dataset-fashion-mnist" in err and "WAE_FAST_DATA" in err


# -- the metric classifier -----------------------------------------------------------------

def test_frechet_distance_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=g, dtype=torch.float64)
    b = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 0.3
    sa, sb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    ref = (np.sum((a.mean(0) - b.mean(0)).numpy() ** 2) + np.trace(sa) + np.trace(sb)
           - 2 * np.trace(linalg.sqrtm(sa @ sb).real))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_classifier_cached_and_reused(fashion_dir, monkeypatch):
    data = load_dataset("fashion-mnist", str(fashion_dir))
    net, acc, path = metric_classifier(data, log=lambda s: None)
    assert path.is_file() and acc >= 0.9  # the bars are easy: the classifier must learn them

    def refuse(*a, **k):
        raise AssertionError("retrained although cached")
    monkeypatch.setattr(quality_mod, "train_classifier", refuse)
    net2, acc2, path2 = metric_classifier(data, log=lambda s: None)
    assert (acc2, path2) == (acc, path)
    x = data.test[:20]
    torch.testing.assert_close(net2.features(x), net.features(x))
    with pytest.raises(QualityError, match="test accuracy"):
        metric_classifier(data, min_accuracy=1.01, log=lambda s: None)
    q = SampleQuality.build(data, n_floor=100, log=lambda s: None)
    # other training images score near the floor; noise images far worse
    real = q.scores(data.train[100:200], torch.Generator().manual_seed(0))
    noise = q.scores(torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(1)),
                     torch.Generator().manual_seed(0))
    assert noise["kid"] > 10 * abs(real["kid"]) and noise["kid"] > 10 * abs(q.floor["kid"])
    assert noise["frechet"] > 5 * real["frechet"] and noise["frechet"] > 5 * q.floor["frechet"]


# -- the experiment ------------------------------------------------------------------------

def test_vae_wae_experiment_resumes_and_reports(fashion_dir, tmp_path, capsys):
    out, rep = tmp_path / "exp", tmp_path / "report"
    base = ["experiment", "vae-wae", "--data-path", str(fashion_dir), "--z-dims", "2,3", "--seeds", "1",
            "--epochs", "1", "--eval-samples", "50", "--out", str(out), "--report-dir", str(rep)]
    assert main(base + ["--max-runs", "2"]) == 0
    md = (rep / "vae_wae.md").read_text()
    assert "PARTIAL: 2 of 12" in md and (out / "runs" / "mmd-det-z2-s0" / "checkpoint.pt").is_file()
    assert main(base) == 0
    md = (rep / "vae_wae.md").read_text()
    assert "PARTIAL" not in md and "Claim 1" in md and "Claim 2" in md and "Beta search" in md
    res = json.loads((rep / "vae_wae.json").read_text())
    assert res["finished_runs"] == 12
    keys = {(r["key"], r["z_dim"]) for r in res["runs"]}
    assert keys == {(k, z) for k in ("vae1", "vaem", "mmd-det", "mmd-gau", "gan-det", "gan-gau") for z in (2, 3)}
    for r in res["runs"]:
        assert r["images"] == 300 and math.isfinite(r["kid"]) and math.isfinite(r["frechet"])
        assert (r["kl"] is None) == (r["encoder"] == "deterministic")
    assert "| n/a |" in md  # the deterministic encoders' KL
    assert (rep / "vae_wae.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun reads every run back: no run directory is trained again
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoint.pt")}
    capsys.readouterr()
    assert main(base) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoint.pt")} == stamps


class _FakeRunner:
    """Stands in for the experiment's runner: the test reconstruction cost as a function of beta."""

    def __init__(self, cost):
        self.cost, self.calls = cost, []

    def run(self, m, lam, z, seed):
        self.calls.append(lam)
        return {"lam": lam, "test_recon": self.cost(lam), "z_dim": z, "seed": seed}


def test_beta_search_brackets_then_bisects():
    from wae_fast.train.vae_wae import match_beta
    cost = lambda b: 1.0 + 0.5 * math.log10(b)  # noqa: E731  (grows with beta)
    r = _FakeRunner(cost)
    res = match_beta(r, 8, 0.8, {"lam": 1.0, "test_recon": cost(1.0)})
    assert r.calls == [0.25, 0.5] and res["matched"] and res["lam"] == 0.5
    assert abs(res["test_recon"] / 0.8 - 1) <= 0.1 and [t[0] for t in res["trials"]] == [1.0, 0.25, 0.5]
    r = _FakeRunner(cost)  # the other direction: beta = 1 reconstructs too well
    res = match_beta(r, 8, 1.5, {"lam": 1.0, "test_recon": cost(1.0)})
    assert r.calls[0] == 4.0 and res["matched"] and res["lam"] > 1
    r = _FakeRunner(lambda b: 2.0)  # unreachable: stops after the allowed runs, says so
    res = match_beta(r, 8, 1.0, {"lam": 1.0, "test_recon": 2.0}, tries=3)
    assert len(r.calls) == 3 and not res["matched"] and res["lam"] == 1.0


def test_experiment_schedules():
    from wae_fast.train.vae_wae import METHODS, make_config, schedule
    cpu, paper = schedule(False, None), schedule(True, None)
    for m in METHODS:
        c = make_config(m, m.lam or 0.5, 8, 1, cpu, "auto", "cpu", 2000)
        assert (c.dataset, c.arch, c.width, c.epochs, c.lr_schedule, c.batch_size) == \
            ("fashion-mnist", "mlp", 256, 5, "cosine", 100)
        assert c.epochs * 60000 >= 300_000 and c.objective == m.objective and c.encoder == m.encoder
        assert c.logvar_penalty == ("none" if m.objective == "vae" else "l1")
        p = make_config(m, m.lam or 0.5, 8, 1, paper, "auto", "cuda", 2000)
        assert (p.arch, p.width, p.epochs, p.lr_schedule) == ("conv", 128, 100, "manual")
