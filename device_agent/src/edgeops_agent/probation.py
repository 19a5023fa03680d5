"""Probation: the first minutes of a newly activated model, watched prediction by prediction.

Until ``until`` (activation time + ``health.probation_s``) every prediction is
recorded. Once at least :data:`MIN_PREDICTIONS` were seen, the model fails
probation when its error rate (exceptions and non-finite outputs) is above
``max_error_rate`` or the median latency is above ``latency_budget_ms`` (0: no
budget). :meth:`Probation.record` returns the reason exactly once, the first time
the model fails, so the caller rolls back once.

>>> p = Probation(until=100.0, max_error_rate=0.1, latency_budget_ms=0, clock=lambda: 0.0)
>>> [p.record(error=i % 2 == 0, latency_ms=1.0) for i in range(20)][-1]
'error rate 0.50 over 20 predictions is above 0.1'
>>> p.record(error=True, latency_ms=1.0) is None  # reported once
True
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["MIN_PREDICTIONS", "Probation"]

MIN_PREDICTIONS = 20
_LATENCY_WINDOW = 1000


class Probation:
    """Counters of one model's probation; safe to call from many threads."""

    def __init__(
        self,
        until: float,
        *,
        max_error_rate: float,
        latency_budget_ms: float,
        min_predictions: int = MIN_PREDICTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.until = until
        self.max_error_rate = max_error_rate
        self.latency_budget_ms = latency_budget_ms
        self.min_predictions = min_predictions
        self._clock = clock
        self._lock = threading.Lock()
        self.count = 0
        self.errors = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.failed: str | None = None

    def active(self) -> bool:
        return self.failed is None and self._clock() < self.until

    def record(self, error: bool, latency_ms: float) -> str | None:
        """Count one prediction; the failure reason the first time the model fails, else None."""
        with self._lock:
            if self.failed is not None or self._clock() >= self.until:
                return None
            self.count += 1
            self.errors += int(bool(error))
            self._latencies.append(float(latency_ms))
            if self.count < self.min_predictions:
                return None
            rate = self.errors / self.count
            if rate > self.max_error_rate:
                self.failed = (
                    f"error rate {rate:.2f} over {self.count} predictions is above "
                    f"{self.max_error_rate:g}"
                )
                return self.failed
            if self.latency_budget_ms > 0:
                p50 = statistics.median(self._latencies)
                if p50 > self.latency_budget_ms:
                    self.failed = (
                        f"median latency {p50:.1f} ms over {self.count} predictions is above "
                        f"the budget of {self.latency_budget_ms:g} ms"
                    )
                    return self.failed
            return None
