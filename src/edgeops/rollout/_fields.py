"""Strict readers for the plain-JSON records a rollout is stored as.

A stored plan or state comes back from the database, so nothing in it is
trusted: every reader checks the type and range and raises
:class:`~edgeops.errors.InvalidInput` with a one-line reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInput


def mapping(obj: object, what: str) -> Mapping[str, Any]:
    """``obj`` if it is a mapping with string keys."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise InvalidInput(f"{what} must be a JSON object")
    return obj


def check_format(obj: Mapping[str, Any], what: str, current: int) -> None:
    """Refuse records of an unknown ``format`` number (newer ones say to upgrade)."""
    fmt = obj.get("format")
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise InvalidInput(f"{what} has no integer 'format' field")
    if fmt > current:
        raise InvalidInput(
            f"{what} has format {fmt}, newer than this edgeops reads ({current}); upgrade edgeops"
        )
    if fmt != current:
        raise InvalidInput(f"{what} has unknown format {fmt}; this edgeops reads {current}")


def text(obj: Mapping[str, Any], key: str, what: str, *, nonempty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or (nonempty and not value):
        raise InvalidInput(f"{what}: {key!r} must be a {'non-empty ' if nonempty else ''}string")
    return value


def integer(obj: Mapping[str, Any], key: str, what: str, lo: int = 0) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InvalidInput(f"{what}: {key!r} must be an integer >= {lo}")
    return value


def optional_integer(obj: Mapping[str, Any], key: str, what: str, lo: int = 0) -> int | None:
    return None if obj.get(key) is None else integer(obj, key, what, lo)


def number(obj: Mapping[str, Any], key: str, what: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{what}: {key!r} must be a finite number")
    return float(value)


def optional_number(obj: Mapping[str, Any], key: str, what: str) -> float | None:
    return None if obj.get(key) is None else number(obj, key, what)


def flag(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: {key!r} must be true or false")
    return value
