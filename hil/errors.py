"""The harness's one error: a message that tells the operator what to do."""

from __future__ import annotations

__all__ = ["HilError"]


class HilError(Exception):
    """The campaign cannot go on (bad targets file, missing tool, unreachable device)."""
