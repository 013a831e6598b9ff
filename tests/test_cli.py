"""The ``wae-fast`` command: train, resume, experiment latent-dim, clear errors; demo still works."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wae_fast.cli import main

PNG_SIG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def mnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "mnist.npz"
    np.savez(p, x_train=rng.integers(0, 256, (120, 28, 28), dtype=np.uint8),
             x_test=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
             y_train=np.arange(120) % 10, y_test=np.arange(40) % 10)
    return p


def tiny_args(npz, out, *extra):
    return ["train", "--dataset", "mnist", "--data-path", str(npz), "--arch", "mlp", "--width", "16",
            "--batch-size", "40", "--epochs", "2", "--eval-samples", "40", "--lr-schedule", "constant",
            "--out", str(out), "--no-progress", *extra]


def err_of(capsys, argv):
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    return capsys.readouterr().err


def test_demo_still_works(capsys):
    assert main(["demo", "--n", "64", "--d", "4"]) == 0
    assert "MMD^2=" in capsys.readouterr().out


def test_train_writes_everything_and_resumes(mnist_npz, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(tiny_args(mnist_npz, full, "--encoder", "gaussian", "--no-plots")) == 0
    assert main(tiny_args(mnist_npz, part, "--encoder", "gaussian", "--no-plots", "--stop-after", "1")) == 0
    assert "stopped after epoch 1 of 2" in capsys.readouterr().out
    assert main(tiny_args(mnist_npz, part, "--encoder", "gaussian", "--resume")) == 0
    out = capsys.readouterr().out
    assert "test_recon" in out and "sample_mmd" in out
    for name in ("checkpoint.pt", "metrics.csv", "metrics.json", "loss_curves.png", "reconstructions.png",
                 "samples.png", "interpolations.png", "latent_pca.png"):
        assert (part / name).is_file(), name
    for name in ("loss_curves.png", "samples.png"):
        assert (part / name).read_bytes()[:8] == PNG_SIG
    a = json.loads((full / "metrics.json").read_text())["history"]
    b = json.loads((part / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in b] == [0, 1, 2]
    for ha, hb in zip(a, b):
        for k in ha:
            if k != "time_s":
                assert ha[k] == pytest.approx(hb[k], abs=1e-6), k
    assert (part / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,loss")


def test_bad_flags(capsys, tmp_path, mnist_npz):
    with pytest.raises(SystemExit):
        main(["train", "--objective", "wgan"])
    assert "--objective" in capsys.readouterr().err
    assert "--z-dim" in err_of(capsys, ["train", "--z-dim", "0", "--out", str(tmp_path / "o")])
    assert "--lam" in err_of(capsys, ["train", "--lam", "-1", "--out", str(tmp_path / "o")])
    assert "--data-path: required for --dataset mnist" in err_of(capsys, ["train", "--dataset", "mnist"])
    missing = tmp_path / "no-such-dir"
    e = err_of(capsys, ["train", "--dataset", "mnist", "--data-path", str(missing), "--out", str(tmp_path / "o")])
    assert str(missing) in e and "train-images-idx3-ubyte" in e
    e = err_of(capsys, ["train", "--dataset", "folder", "--data-path", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "found 0 image" in e
    assert "--resume: needs --out" in err_of(capsys, ["train", "--resume"])
    assert "no checkpoint" in err_of(capsys, tiny_args(mnist_npz, tmp_path / "none", "--resume"))
    e = err_of(capsys, ["train", "--backend", "nosuch", "--epochs", "1", "--out", str(tmp_path / "b")])
    assert "nosuch" in e
    with pytest.raises(SystemExit):
        main(["experiment", "latent-dim", "--z-dims", "1,x"])
    assert "--z-dims" in capsys.readouterr().err


def test_corrupt_and_mismatched_checkpoint(mnist_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(mnist_npz, run, "--no-plots", "--epochs", "1")) == 0
    ck = run / "checkpoint.pt"
    good = ck.read_bytes()
    assert "already holds checkpoint.pt" in err_of(capsys, tiny_args(mnist_npz, run, "--epochs", "1"))
    e = err_of(capsys, tiny_args(mnist_npz, run, "--resume", "--z-dim", "3"))
    assert "different configuration" in e and "z_dim" in e
    ck.write_bytes(b"definitely not a checkpoint")
    e = err_of(capsys, tiny_args(mnist_npz, run, "--resume"))
    assert "corrupt" in e and str(ck) in e
    assert ck.read_bytes() == b"definitely not a checkpoint"  # never silently overwritten
    assert good[:2] == b"PK"  # torch.save's zip format


def test_experiment_latent_dim_tiny(tmp_path, capsys):
    out = tmp_path / "ld"
    assert main(["experiment", "latent-dim", "--z-dims", "1,2", "--seeds", "2", "--epochs", "1",
                 "--n-train", "200", "--out", str(out), "--no-progress"]) == 0
    md = (out / "latent_dim.md").read_text()
    assert "| deterministic | 2 |" in md and "| gaussian + L1 logvar | 1 |" in md
    rows = (out / "latent_dim.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("encoder,z_dim,n_seeds,mmd_qz_mean,mmd_qz_std")
    assert (out / "latent_dim.png").read_bytes()[:8] == PNG_SIG


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "wae_fast", "train", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--prior-samples" in r.stdout and "--resume" in r.stdout


def _all_parsers(parser):
    yield parser
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for sub in act.choices.values():
                yield from _all_parsers(sub)


def test_every_option_has_help_and_a_default():
    from wae_fast.cli import build_parser
    seen = 0
    for p in _all_parsers(build_parser()):
        fmt = p._get_formatter()
        for act in p._actions:
            if not act.option_strings or act.dest == "help":
                continue
            seen += 1
            text = fmt._get_help_string(act) % {"default": act.default}
            assert act.help and "default" in text, (p.prog, act.option_strings, text)
    assert seen > 45


def test_one_figure_for_the_main_job():
    from wae_fast.cli import MAIN_JOB_TIME, build_parser
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    p = build_parser()
    train = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    for text in (p.format_help(), train.format_help(), readme):
        flat = " ".join(text.split())
        assert MAIN_JOB_TIME in flat
        for other in ("couple of minutes", "2-3 min", "1-2 minutes", "30 seconds"):
            assert other not in flat, other


def test_experiment_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "ld"
    out.mkdir()
    (out / "latent_dim.json").write_text("{}")
    args = ["experiment", "latent-dim", "--z-dims", "1", "--seeds", "1", "--epochs", "1", "--n-train", "100",
            "--out", str(out), "--no-progress"]
    e = err_of(capsys, args)
    assert "latent_dim.json" in e and "--overwrite" in e and e.count("\n") == 1
    assert (out / "latent_dim.json").read_text() == "{}"
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((out / "latent_dim.json").read_text())["runs"]


def test_latent_pca_colours_are_distinct():
    """Prior samples and every class of held-out codes get a colour (and legend entry) of their own."""
    from matplotlib.colors import to_hex

    from wae_fast.train import ImageData, Trainer, preset
    from wae_fast.train.data import load_digits_data
    from wae_fast.train.plots import codes_figure

    d = load_digits_data()
    data = ImageData("digits", d.train[:200], d.test[:200], d.train_labels[:200], d.test_labels[:200])
    tr = Trainer(preset("digits", width=16, eval_samples=200), None, data=data, progress=False)
    fig = codes_figure(tr, torch.Generator().manual_seed(0))
    ax = fig.axes[0]
    colours = [{to_hex(c) for c in col.get_facecolors()} for col in ax.collections]
    assert all(len(c) == 1 for c in colours)  # one colour per scatter
    flat = [c.pop() for c in colours]
    assert len(flat) == 1 + 10 and len(set(flat)) == len(flat), flat
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "prior samples" and labels[1:] == [f"held-out codes, label {k}" for k in range(10)]
    import matplotlib.pyplot as plt
    plt.close(fig)
