"""Checkpoints: written atomically (temp file in the same directory, then ``os.replace``), read
with ``torch.load(weights_only=True)``; a corrupt file or one written by a different
configuration raises :class:`CheckpointError` and is never overwritten by the caller.

Digest: ``torch.load`` does not check the archive's CRCs, so a checkpoint with flipped bytes in a
weight tensor would load. The file is therefore torch.save's archive followed by a one-line
trailer ``\nwae_fast-sha256:<hex>\n``, the SHA-256 of the archive bytes, written in the same
atomic replace; :func:`load_checkpoint` verifies it before anything is unpickled and hands
``torch.load`` exactly the verified bytes. (``torch.load`` still reads the file directly: zip
readers ignore trailing bytes.) Checkpoints written before the digest are checked against the
archive's own CRC-32s instead.

Files written here follow the process umask (a temp file from ``tempfile`` would be 0600).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "wae_fast.train/1"
REQUIRED = ("format", "config", "fingerprint", "epoch", "encoder", "decoder", "opt_ae", "history")


DIGEST_PREFIX = b"\nwae_fast-sha256:"
TRAILER_LEN = len(DIGEST_PREFIX) + 64 + 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new file next to ``path``, created with mode 0666 & ~umask (as ``open`` would)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")  # pragma: no cover


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
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


def _trailer(archive: bytes) -> bytes:
    return DIGEST_PREFIX + hashlib.sha256(archive).hexdigest().encode("ascii") + b"\n"


def save_checkpoint(path, state: dict[str, Any]) -> None:
    """``torch.save(state)`` plus the SHA-256 trailer, atomically."""
    buf = io.BytesIO()
    torch.save(dict(state, format=FORMAT), buf)
    archive = buf.getvalue()

    def write(f):
        f.write(archive)
        f.write(_trailer(archive))
    _atomic_write(Path(path), write)


def _verified_archive(path: Path, blob: bytes) -> bytes:
    """The archive bytes of a checkpoint file, after checking its digest (or, for a checkpoint
    written before digests, the zip CRC-32s); raises CheckpointError on a mismatch."""
    untouched = "it was left untouched: delete it or choose another --out"
    if len(blob) >= TRAILER_LEN and blob[-TRAILER_LEN:].startswith(DIGEST_PREFIX):
        archive = blob[:-TRAILER_LEN]
        if _trailer(archive) != blob[-TRAILER_LEN:]:
            raise CheckpointError(f"checkpoint {path} fails its SHA-256 check (its bytes changed after it was "
                                  f"written: disk, copy or transfer damage); {untouched}")
        return archive
    try:  # no trailer: an older checkpoint, or a damaged one
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            bad = z.testzip()
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a wae_fast checkpoint (no SHA-256 trailer, "
                              f"and not a readable archive: {type(exc).__name__}: {exc}); {untouched}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} fails the CRC-32 check of its record {bad!r} (its bytes "
                              f"changed after it was written); {untouched}")
    return blob


def atomic_write_text(path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path} (train without --resume first, "
                              "or point --out at the run directory that holds checkpoint.pt)")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None
    archive = _verified_archive(path, blob)
    try:
        state = torch.load(io.BytesIO(archive), map_location="cpu", weights_only=True)
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
