"""The chunks of one artifact, checked one by one and kept on disk until assembled.

A chunk is written (``<index>.chunk``: temporary file, then rename) only after
its SHA-256 matched ``artifact.chunks[index]``, so a corrupted chunk is never
stored. Chunk files are not fsynced: a restarted agent hashes every chunk file it
finds again (:meth:`Download.resume`) and drops any that a power cut damaged, so
durability costs nothing per chunk and resuming never trusts a bad file.
Memory stays bounded: chunks go straight to disk and assembly streams them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

from .errors import DeployFailed
from .fsutil import kill_point, temp_file

__all__ = ["BAD", "DUPLICATE", "OUT_OF_RANGE", "STORED", "Download"]

STORED, DUPLICATE, BAD, OUT_OF_RANGE = "stored", "duplicate", "bad", "out_of_range"


class Download:
    """Collects the chunks of ``artifact`` (a manifest's ``artifact`` entry) in ``folder``."""

    def __init__(self, artifact: dict[str, Any], folder: Path) -> None:
        self.sha256: str = artifact["sha256"]
        self.size: int = artifact["size"]
        self.chunk_size: int = artifact["chunk_size"]
        self.hashes: list[str] = list(artifact["chunks"])
        self.folder = folder
        self.held: set[int] = set()
        self.bad_indexes: set[int] = set()

    @property
    def total(self) -> int:
        return len(self.hashes)

    @property
    def complete(self) -> bool:
        return len(self.held) == self.total

    @property
    def progress(self) -> float:
        return len(self.held) / self.total

    def missing(self) -> list[int]:
        return [i for i in range(self.total) if i not in self.held]

    def _path(self, index: int) -> Path:
        return self.folder / f"{index}.chunk"

    def resume(self) -> int:
        """Take the valid chunk files already in ``folder``; returns how many there were."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.iterdir():
            stem = path.name[: -len(".chunk")] if path.name.endswith(".chunk") else ""
            index = int(stem) if stem.isdigit() and len(stem) <= 9 else -1
            try:
                ok = 0 <= index < self.total and self._matches(index, path.read_bytes())
            except OSError:
                ok = False
            if ok:
                self.held.add(index)
            else:  # a temporary file, a damaged chunk, or one of another layout
                with contextlib.suppress(OSError):
                    path.unlink()
        return len(self.held)

    def _matches(self, index: int, data: bytes) -> bool:
        return (
            len(data) <= self.chunk_size and hashlib.sha256(data).hexdigest() == self.hashes[index]
        )

    def add(self, index: int, data: bytes) -> str:
        """Check and store chunk ``index``: :data:`STORED`, :data:`DUPLICATE`, :data:`BAD`
        (hash or size mismatch: dropped, never written) or :data:`OUT_OF_RANGE`."""
        if not 0 <= index < self.total:
            return OUT_OF_RANGE
        if index in self.held:
            return DUPLICATE
        if not self._matches(index, data):
            self.bad_indexes.add(index)
            return BAD
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self._path(index)
        with temp_file(target) as (f, tmp):
            kill_point("write", tmp)
            f.write(data)
            f.close()
            kill_point("rename", target)
            os.replace(tmp, target)
        self.held.add(index)
        return STORED

    def assemble(self, target: Path) -> None:
        """Write the artifact to ``target`` (fsynced), checking its size and SHA-256."""
        digest = hashlib.sha256()
        size = 0
        try:
            with target.open("wb") as out:
                for index in range(self.total):
                    data = self._path(index).read_bytes()
                    digest.update(data)
                    size += len(data)
                    kill_point("write", target)
                    out.write(data)
                out.flush()
                kill_point("fsync", target)
                os.fsync(out.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                target.unlink()
            raise DeployFailed("verify", f"cannot assemble the artifact: {exc}") from exc
        problem = None
        if size != self.size:
            problem = f"artifact has {size} bytes, the manifest says {self.size}"
        elif digest.hexdigest() != self.sha256:
            problem = f"artifact SHA-256 is {digest.hexdigest()[:16]}…, not {self.sha256[:16]}…"
        if problem:
            with contextlib.suppress(OSError):
                target.unlink()
            raise DeployFailed("verify", problem)
