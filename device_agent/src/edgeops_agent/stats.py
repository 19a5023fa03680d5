"""Counters of what an agent saw and did, and logging that cannot flood.

>>> s = Stats(); s.incr("malformed"); s.incr("malformed", 2); s.snapshot()
{'malformed': 3}
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog", "Stats"]


class Stats:
    """Named counters, safe to bump from paho's thread and the worker at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class RateLimitedLog:
    """At most one log line per ``key`` every ``interval`` seconds; says how many it held back."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return
            if len(self._last) > 1000:  # keys come from the network: keep the table small
                self._last.clear()
                self._held.clear()
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message += f" ({held} more like this not logged)"
        self._logger.warning(message, *args)
