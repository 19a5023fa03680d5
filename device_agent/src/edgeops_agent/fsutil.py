"""Files that survive power loss: atomic replace with fsync, and advisory locks.

A file written with :func:`atomic_write` is either its old content or its new
content after a crash, never a mix: the bytes go to a temporary file in the same
folder, which is flushed to disk and renamed over the target; the folder is then
flushed so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux: locks become no-ops
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock", "atomic_write", "fsync_dir", "kill_point", "temp_file"]

# Fault injection for the kill-point sweep (tests/faults/test_kill_points.py), off unless
# EDGEOPS_AGENT_KILL_AT is set: =N makes the process SIGKILL itself just before its N-th
# durable operation (every write, fsync and rename of the agent's files, counted from the
# start of the process), =0 only counts them. Each one is traced on stderr as
# "edgeops-agent kill point <n> <op> <path>". Unset, kill_point returns at its first line.
_KILL_AT: int | None = None
if os.environ.get("EDGEOPS_AGENT_KILL_AT", "").strip().isdigit():
    _KILL_AT = int(os.environ["EDGEOPS_AGENT_KILL_AT"])
_kill_count = 0


def kill_point(op: str, path: object) -> None:
    """``op`` ("write", "fsync" or "rename") of ``path`` comes next: see ``_KILL_AT``."""
    global _kill_count
    if _KILL_AT is None:
        return
    _kill_count += 1
    os.write(2, f"edgeops-agent kill point {_kill_count} {op} {path}\n".encode())
    if _kill_count == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(folder: Path) -> None:
    """Make renames and new files in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory fds
        return
    try:
        kill_point("fsync", folder)
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_file(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file beside ``target``; removed unless the caller renamed it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(target: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace ``target`` with ``data`` atomically and durably."""
    with temp_file(target) as (f, tmp):
        kill_point("write", tmp)
        f.write(data)
        f.flush()
        kill_point("fsync", tmp)
        os.fsync(f.fileno())
        f.close()
        kill_point("rename", target)
        os.replace(tmp, target)
    if sync_dir:
        fsync_dir(target.parent)


class FileLock:
    """An exclusive ``flock`` on a file (released by the OS when the process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is None:  # pragma: no cover
            self._fd = fd
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
