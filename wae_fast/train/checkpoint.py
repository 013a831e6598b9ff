"""Checkpoints: written atomically (temp file in the same directory, then ``os.replace``), read
with ``torch.load(weights_only=True)``; a corrupt file or one written by a different
configuration raises :class:`CheckpointError` and is never overwritten by the caller."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "wae_fast.train/1"
REQUIRED = ("format", "config", "fingerprint", "epoch", "encoder", "decoder", "opt_ae", "history")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_checkpoint(path, state: dict[str, Any]) -> None:
    state = dict(state, format=FORMAT)
    _atomic_write(Path(path), lambda f: torch.save(state, f))


def atomic_write_text(path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path} (train without --resume first, "
                              "or point --out at the run directory that holds checkpoint.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a wae_fast checkpoint "
                              f"({type(exc).__name__}: {exc}); it was left untouched: delete it "
                              "or choose another --out") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} checkpoint; it was left untouched")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was left untouched")
    return state


def check_fingerprint(path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: {saved.get(k)!r} (checkpoint) vs {current.get(k)!r} (now)"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ("
                              + "; ".join(diffs) + "); resume with the same flags or use another --out. "
                              "The checkpoint was left untouched.")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)
