"""Run directories: one writer at a time, and how to recognise one.

A training run or an experiment holds an OS file lock (``fcntl.flock``, exclusive, non-blocking)
on ``<run dir>/.wae-fast.lock`` while it may write the directory; the file holds the writer's
process id, which a second writer names in its error. The kernel drops the lock when the
process exits or is killed (even by SIGKILL), so a crash never leaves a directory locked.
A clean release removes the file; a stale file left by a crash holds no lock and is reused.
Where ``fcntl`` is missing (Windows) the directory is not locked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".wae-fast.lock"
#: files that only a wae-fast run or experiment writes: a folder holding one is a run directory
RUN_MARKERS = ("checkpoint.pt", "latent_dim.json", LOCK_NAME)


class RunDirError(ValueError):
    """The run directory cannot be used: not a directory, or locked by another process."""


def is_run_dir(path: Union[str, Path]) -> bool:
    """True if ``path`` is a directory that a wae-fast run or experiment wrote (or is writing)."""
    p = Path(path)
    return any((p / m).is_file() for m in RUN_MARKERS)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    if pid == str(os.getpid()):
        return f"pid {pid}, this process: a Trainer on this directory that is not closed yet; call its close()"
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


class RunLock:
    """Exclusive lock on the run directory ``out`` (created if missing, and removed again on
    release if it is still empty), held until :meth:`release`.

    ``flag`` names the option that chose the directory in error messages (``--out``).
    Raises :class:`RunDirError` if ``out`` is not a directory or another process holds the lock.
    """

    def __init__(self, out: Union[str, Path], flag: str = "--out") -> None:
        self.dir = Path(out)
        self.path = self.dir / LOCK_NAME
        self._fd: Optional[int] = None
        self._pid = os.getpid()
        self._created = False
        if self.dir.exists() and not self.dir.is_dir():
            raise RunDirError(f"{flag} {out}: exists and is not a directory; choose a directory")
        self._created = not self.dir.exists()  # removed again by release() if nothing was written
        if fcntl is None:  # pragma: no cover
            self.dir.mkdir(parents=True, exist_ok=True)
            return
        while True:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise RunDirError(f"{flag} {out}: cannot create the run directory or its lock file "
                                  f"({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirError(f"{flag} {out}: another wae-fast process ({_holder(self.path)}) is writing "
                                  "this run directory; wait for it to finish or choose another "
                                  f"{flag}") from None
            except BaseException:
                os.close(fd)
                raise
            # the holder may have removed the file between our open and our lock: retry on the new one
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)  # overwrite, then cut: a reader never sees an empty file
        os.ftruncate(fd, len(pid))
        self._fd, self._pid = fd, os.getpid()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._pid:  # a forked child must not release its parent's lock
            return
        try:
            os.unlink(self.path)  # while still locked, so no other process holds a lock on it
            if self._created:
                self.dir.rmdir()  # only if empty: a run that failed up front leaves no trace
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a lost reference must not keep the directory locked
        try:
            self.release()
        except Exception:
            pass
