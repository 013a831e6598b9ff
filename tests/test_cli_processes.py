"""The ``wae-fast`` command as a user runs it: real processes, tiny runs (a few steps on tiny data).

Covers the run-directory lock (two concurrent processes, release on SIGKILL), the checkpoint
digest (a flipped byte inside a tensor's data), up-front errors (exit code 2, one line, no
traceback), files following the umask, the progress bar only on a terminal, folder data sets
skipping hidden folders and run directories, the prior mode in the summary and run name, and
missing optional dependencies checked before training.
"""
from __future__ import annotations

import fcntl
import io
import os
import pty
import signal
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wae_fast.cli import main
from wae_fast.train.checkpoint import TRAILER_LEN, load_checkpoint, save_checkpoint
from wae_fast.train.rundir import LOCK_NAME, RunLock

TIMEOUT = 180


@pytest.fixture()
def npz(tmp_path):
    """A tiny MNIST-layout data set: 60 training and 20 held-out 28x28 images with labels."""
    rng = np.random.default_rng(0)
    p = tmp_path / "mnist.npz"
    np.savez(p, x_train=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
             x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             y_train=np.arange(60) % 10, y_test=np.arange(20) % 10)
    return p


def tiny(npz, *extra):
    return ["train", "--dataset", "mnist", "--data-path", str(npz), "--arch", "mlp", "--width", "8",
            "--batch-size", "20", "--epochs", "1", "--eval-samples", "20", "--lr-schedule", "constant", *extra]


def cli(args, cwd=None, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "wae_fast", *map(str, args)], cwd=cwd, text=True,
                          timeout=TIMEOUT, env=_env(), **kw)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, stderr exactly one line 'wae-fast <cmd>: error: ...', no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wae-fast ") and ": error: " in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(d: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


# -- lock ---------------------------------------------------------------------------------------

def test_second_writer_fails_at_once_and_sigkill_releases_the_lock(npz, tmp_path, capsys):
    run = tmp_path / "run"
    lock = run / LOCK_NAME
    a = subprocess.Popen([sys.executable, "-m", "wae_fast", *tiny(npz, "--epochs", "100000", "--no-plots",
                                                                 "--out", run)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (lock.is_file() and lock.read_text().strip() == str(a.pid)):
            assert a.poll() is None, a.stderr.read()
            assert time.monotonic() < deadline, "the first process never locked its run directory"
            time.sleep(0.05)
        t0 = time.monotonic()
        b = cli(tiny(npz, "--out", run, "--overwrite"))
        assert_one_line_error(b, f"--out {run}", f"pid {a.pid}", "another wae-fast process")
        assert time.monotonic() - t0 < 60  # at once: it does not wait for the lock
        assert a.poll() is None  # the holder is untouched
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=TIMEOUT)
        assert a.returncode == -signal.SIGKILL
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert lock.read_text().strip() == str(a.pid)  # the stale file stays, but the kernel dropped the lock
    assert main(tiny(npz, "--out", str(run), "--overwrite", "--no-plots", "--no-progress")) == 0  # this process
    assert "epochs 1/1" in capsys.readouterr().out
    assert not lock.exists()  # a clean end removes it


def test_experiment_locks_its_directory(tmp_path):
    out = tmp_path / "ld"
    with RunLock(out):  # this test process writes the directory
        r = cli(["experiment", "latent-dim", "--out", out, "--z-dims", "1", "--seeds", "1", "--epochs", "1"])
    assert_one_line_error(r, f"pid {os.getpid()}", "another wae-fast process")
    assert not out.exists()  # created for the lock, removed with it: nothing was written


# -- checkpoint digest --------------------------------------------------------------------------

def _tensor_byte(archive: bytes) -> int:
    """Offset of a byte in the middle of the largest tensor record of a torch.save archive."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack("<HH", archive[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def _tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def test_flipped_byte_in_a_tensor_is_refused_and_nothing_changes(npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny(npz, "--out", str(run), "--no-plots", "--no-progress", "--epochs", "2", "--stop-after", "1")) == 0
    ck = run / "checkpoint.pt"
    good = ck.read_bytes()
    at = _tensor_byte(good[:-TRAILER_LEN])
    bad = bytearray(good)
    bad[at] ^= 0x10
    ck.write_bytes(bytes(bad))
    # torch.load alone accepts the damaged archive and returns different weights
    a = torch.load(io.BytesIO(good), weights_only=True)
    b = torch.load(io.BytesIO(bytes(bad)), weights_only=True)
    assert any(not torch.equal(x, y) for x, y in zip(_tensors(a), _tensors(b)))
    before = snapshot(run)
    r = cli(tiny(npz, "--out", run, "--resume", "--epochs", "2", "--no-plots"))
    assert_one_line_error(r, f"checkpoint {ck}", "SHA-256")
    assert snapshot(run) == before  # nothing in the run directory changed
    ck.write_bytes(good)  # the intact checkpoint resumes
    capsys.readouterr()
    assert main(tiny(npz, "--out", str(run), "--resume", "--epochs", "2", "--no-plots", "--no-progress")) == 0
    assert "epochs 2/2" in capsys.readouterr().out


def test_checkpoint_without_digest_is_checked_by_crc(tmp_path):
    """Checkpoints written before the digest still load, and their zip CRC-32s are verified."""
    path = tmp_path / "checkpoint.pt"
    state = {k: 0 for k in ("config", "fingerprint", "epoch", "opt_ae", "history")}
    state.update(encoder={"w": torch.arange(4096.0)}, decoder={})
    save_checkpoint(path, state)
    legacy = path.read_bytes()[:-TRAILER_LEN]
    path.write_bytes(legacy)
    assert torch.equal(load_checkpoint(path)["encoder"]["w"], torch.arange(4096.0))
    bad = bytearray(legacy)
    bad[_tensor_byte(legacy)] ^= 1
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="CRC-32"):
        load_checkpoint(path)


# -- up-front errors ----------------------------------------------------------------------------

def test_up_front_errors_are_one_line_with_exit_code_2(npz, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    assert_one_line_error(cli(["train", "--data-path", tmp_path]), f"--data-path {tmp_path}", "--dataset digits")
    assert_one_line_error(cli(["train", "--dataset", "celeba"]), "--data-path", "--dataset celeba")
    r = cli(tiny(npz, "--out", a_file))
    assert_one_line_error(r, f"--out {a_file}", "not a directory")
    assert r.stdout == "" and a_file.read_text() == "keep me"  # refused before loading data or training


def test_missing_matplotlib_is_reported_before_training(tmp_path, monkeypatch, capsys):
    """A base install (no [train] extra): simulated by making ``import matplotlib`` fail."""
    hide = ("import sys; sys.modules['matplotlib'] = None; from wae_fast.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", hide, "train", "--dataset", "squares", "--epochs", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert_one_line_error(r, "matplotlib", "--no-plots", "pip install")
    assert not out.exists()  # nothing trained or written
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the same, in this process
    with pytest.raises(SystemExit) as ei:
        main(["experiment", "latent-dim", "--out", str(out)])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wae-fast experiment: error: missing optional dependencies: matplotlib" in err
    assert not out.exists()


# -- outputs -------------------------------------------------------------------------------------

def test_files_follow_the_umask_and_no_progress_bar_in_a_log(npz, tmp_path):
    run = tmp_path / "run"
    r = cli(tiny(npz, "--out", run, "--epochs", "2"), preexec_fn=lambda: os.umask(0o027))
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in run.iterdir())
    assert {"checkpoint.pt", "metrics.csv", "metrics.json", "loss_curves.png", "latent_pca.png"} <= set(names)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir()}
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE(run.stat().st_mode) == 0o750
    # stderr is a pipe here, not a terminal: no progress bar
    assert "\r" not in r.stderr and len(r.stderr) < 200, r.stderr


def test_prior_mode_in_summary_and_run_name_and_progress_on_a_terminal(npz, tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        r = subprocess.run([sys.executable, "-m", "wae_fast", *tiny(npz, "--mmd-prior", "closed_form", "--no-plots")],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=TIMEOUT,
                           env=_env())
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    assert r.returncode == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("mnist-mmd-closed_form-deterministic-z8-"), run.name
    assert "prior closed_form (no samples)" in r.stdout and "prior samples" not in r.stdout
    tty = b"".join(chunks).decode(errors="replace")
    assert "WAE-MMD" in tty and "step" in tty  # the bar is still there on a terminal


def test_folder_skips_hidden_and_run_directories_and_says_what_it_read(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    rng = np.random.default_rng(0)

    def png(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)
    for i in range(12):
        png(data / f"img{i}.png")
    for i in range(8):
        png(data / "sub" / f"img{i}.jpg")
    png(data / ".thumbnails" / "hidden.png")
    png(data / ".hidden.png")
    earlier = data / "runs" / "old-run"  # an earlier run's plots
    png(earlier / "samples.png")
    (earlier / "checkpoint.pt").write_bytes(b"")
    out = data / "runs" / "new-run"  # this run writes inside the data path
    r = cli(["train", "--dataset", "folder", "--data-path", data, "--image-size", "8", "--arch", "mlp",
             "--width", "8", "--z-dim", "2", "--batch-size", "5", "--epochs", "1", "--out", out, "--no-plots"])
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("data: "))
    assert line.startswith(f"data: folder: 20 images from {data.resolve()} (18 training + 2 held-out"), line
    assert "2 run directories skipped" in line and "hidden" in line


def test_failed_start_leaves_no_directory(npz, tmp_path, capsys):
    out = tmp_path / "new"
    with pytest.raises(SystemExit):
        main(tiny(npz, "--out", str(out), "--resume"))
    assert "no checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_lock_held_by_this_process_says_so(tmp_path):
    from wae_fast.train.rundir import RunDirError
    with RunLock(tmp_path / "d") as held:
        assert held.held and (tmp_path / "d" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirError, match=r"this process: a Trainer on this directory .* close\(\)"):
            RunLock(tmp_path / "d")
    assert not (tmp_path / "d").exists()
    with RunLock(tmp_path / "d"):  # free again
        pass
