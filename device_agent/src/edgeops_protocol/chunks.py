"""Artifacts in chunks: splitting on the server, checking and reassembling on the device.

>>> parts = split_chunks(b"abcdefg", 3)
>>> parts
[b'abc', b'def', b'g']
>>> describe_chunks(b"abcdefg", 3)["chunks"] == [sha256_hex(p) for p in parts]
True
"""

from __future__ import annotations

import hashlib

__all__ = ["DEFAULT_CHUNK_SIZE", "describe_chunks", "sha256_hex", "split_chunks"]

DEFAULT_CHUNK_SIZE = 16 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_chunks(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


def describe_chunks(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict:
    """The manifest's ``artifact`` entry for ``data`` (without ``url``)."""
    return {
        "sha256": sha256_hex(data),
        "size": len(data),
        "chunk_size": chunk_size,
        "chunks": [sha256_hex(c) for c in split_chunks(data, chunk_size)],
    }
