"""Content-addressed artifact store: bytes kept under their SHA-256, verified on read.

Layout: ``<root>/sha256/<first two hex>/<full hex>``. Blobs are immutable and
written atomically (see :mod:`edgeops.fsutil`), so a crash leaves either the whole
blob or none of it, and the same content is stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactCorrupt, InvalidInput, NotFound, StoreError
from .fsutil import atomic_write, fsync_dir

__all__ = ["ArtifactStore", "StoredBlob", "sha256_file"]

_CHUNK = 1 << 20


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    created: bool  # False when identical content was already stored


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidInput(f"{sha256!r} is not a SHA-256 hex digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put_bytes(self, data: bytes) -> StoredBlob:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_for(digest)
        if target.is_file():
            return StoredBlob(digest, len(data), created=False)
        try:
            with atomic_write(target, mode=0o444) as fh:
                fh.write(data)
        except OSError as exc:
            raise StoreError(f"cannot write to the artifact store {self.root}: {exc}") from exc
        return StoredBlob(digest, len(data), created=True)

    def put_file(self, path: Path) -> StoredBlob:
        """Store a file's bytes, hashing them as they are copied (one read of the file)."""
        staging = self.root / "staging"
        try:
            staging.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="put-", suffix=".tmp", dir=staging)
        except OSError as exc:
            raise StoreError(f"cannot write to the artifact store {self.root}: {exc}") from exc
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            target = self.path_for(digest)
            if target.is_file():
                os.unlink(tmp)
                return StoredBlob(digest, size, created=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, FileNotFoundError):
                raise InvalidInput(f"{path} does not exist; check the path") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"cannot copy {path} into the artifact store: {exc}") from exc
            raise
        return StoredBlob(digest, size, created=True)

    def discard(self, blob: StoredBlob) -> None:
        """Undo a ``put`` that created a blob, when the record pointing at it failed."""
        if blob.created:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.path_for(blob.sha256), 0o644)
                os.unlink(self.path_for(blob.sha256))

    def read_bytes(self, sha256: str) -> bytes:
        """The stored bytes, after checking they still hash to ``sha256``."""
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(
                f"artifact {sha256[:12]} is missing from {self.root}; "
                "restore the artifact store from backup"
            ) from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactCorrupt(
                f"artifact {sha256[:12]} at {path} is corrupt (SHA-256 mismatch); "
                "restore it from backup"
            )
        return data

    def export(self, sha256: str, out: Path) -> int:
        """Write the verified bytes of ``sha256`` to ``out`` atomically; return the size."""
        data = self.read_bytes(sha256)
        with atomic_write(out) as fh:
            fh.write(data)
        return len(data)
