"""The pipeline's step cache: outputs of a step by the hash of everything that went into it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.orm import Session

from ..store import Database
from ..store.schema import StepCache

__all__ = ["CACHE_VERSION", "StepCacheStore", "cache_key"]

# Bump when a step's code changes what it produces, so old entries are not reused.
CACHE_VERSION = 1


def cache_key(step: str, **inputs: Any) -> str:
    """SHA-256 of the step name, the cache version and the canonical JSON of ``inputs``."""
    doc = json.dumps({"step": step, "v": CACHE_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


class StepCacheStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, key: str) -> StepCache | None:
        with self.db.session() as s:
            return s.get(StepCache, key)

    def put(
        self, key: str, step: str, sha256: str = "", value: dict[str, Any] | None = None
    ) -> None:
        def write(s: Session) -> None:
            if s.get(StepCache, key) is None:  # a concurrent run may have stored it already
                s.add(StepCache(key=key, step=step, sha256=sha256, value=value or {}))

        self.db.write(write)
