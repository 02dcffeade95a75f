"""Who owns a run directory: one run at a time (a lock held by rank 0 for the run's life), a used directory
only continued on purpose (``--resume``) or archived on purpose (``--overwrite``), never silently mixed.

The lock is ``RUN_DIR/.lock``, an ``flock`` the kernel drops when its process dies, with the holder's pid,
host and start time inside so a refused run can name it. A lock left by a dead process is taken over (and
said so). The lock file itself stays (unlinking it would let two runs lock two different files).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK = ".lock"
_RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "tensorboard")
"""Entries whose presence means a run has used the directory."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (one line: which directory, why, what to do)."""


def used(run_dir: str | Path) -> bool:
    """True when a run has written into ``run_dir`` (config, metrics, checkpoints or TensorBoard events)."""
    return any((Path(run_dir) / name).exists() for name in _RUN_FILES)


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a run directory that is a file, cannot be written, or holds another run
    while neither ``resume`` nor ``overwrite`` was asked for. Writes nothing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {run_dir}: exists and is not a directory")
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"--run-dir {run_dir}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only_fs(parent):
        raise RunDirError(f"--run-dir {run_dir}: {parent} is not writable")
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: continue the run or archive it")
    if used(run_dir) and not (resume or overwrite):
        raise RunDirError(
            f"--run-dir {run_dir} already holds a run: pass --resume to continue it, or --overwrite to move "
            "it aside and start over"
        )


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def archive(run_dir: str | Path) -> Path:
    """Move everything a previous run left in ``run_dir`` (except the lock) to a sibling
    ``RUN_DIR.archived-YYYYmmdd-HHMMSS``; returns it."""
    run_dir = Path(run_dir)
    target = run_dir.with_name(f"{run_dir.name}.archived-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = target.with_name(f"{run_dir.name}.archived-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    target.mkdir()
    for entry in run_dir.iterdir():
        if entry.name != LOCK:
            os.replace(entry, target / entry.name)
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirLock:
    """An exclusive lock on a run directory for the life of a run (``with RunDirLock(dir): ...``)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirError` naming the run that holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self._holder()
            who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started', '?')}"
            raise RunDirError(
                f"--run-dir {self.run_dir} is in use by another run ({who}); wait for it to end or use "
                "another directory"
            ) from None
        previous = self._holder()
        if previous.get("pid"):
            here = previous.get("host") == socket.gethostname()
            state = "is gone" if here and not _alive(int(previous["pid"])) else "released it"
            log.warning(
                "taking over the lock of %s left by pid %s on %s (the process %s)",
                self.run_dir,
                previous["pid"],
                previous.get("host", "?"),
                state,
            )
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Clear the holder record and drop the lock (the file stays: see the module doc)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
