"""Which predictions become samples: a random choice within a budget per hour.

The budget is ``per_hour`` messages and/or ``bytes_per_hour`` bytes (the agent's
``samples_per_hour`` / ``sample_bytes_per_hour``, or the manifest's
``serving.sampling`` = ``{"per_hour": N, "bytes_per_hour": B}``, which overrides
each key it gives; 0 means no limit of that kind, both 0 means no sampling).

Two token buckets hold the budget: one in messages, one in bytes, each refilled
continuously at its rate per second and holding at most one minute of budget
(``burst_s``). A prediction is a candidate with probability ``p``, and a candidate
becomes a sample when both buckets have tokens; a sample takes one message token
and its size in byte tokens (the byte bucket may go into debt by one message,
which the next samples wait out). So over any span of ``T`` seconds at most
``burst + rate * T`` messages (and ``burst + rate * T + one message`` bytes) are
sampled, whatever the traffic.

Candidates are drawn as gaps: the number of predictions before the next one is
drawn at once (geometric with ``p``, :meth:`Sampler.next_gap`), the same chance for
every prediction, and the predictions in between need no draw each (the agent's C
sink lets them pass and tells the sampler how many, :meth:`Sampler.skip`).

``p`` is twice the budget's rate over the observed prediction rate (measured in
:meth:`Sampler.observe`, which the agent calls every second), so every prediction
has the same chance and the samples are spread over the traffic rather than being
the first predictions after each refill (which would favour the start of every
burst); drawing twice the budget's rate of candidates leaves few tokens unused,
and the buckets, not ``p``, hold the budget.

>>> import random
>>> now = [0.0]
>>> s = Sampler(SamplingBudget(per_hour=3600), rng=random.Random(0), clock=lambda: now[0])
>>> taken = 0
>>> for i in range(100_000):                  # 100 predictions a second for 1000 s
...     now[0] = i / 100
...     if i % 100 == 0:
...         s.observe()
...     if s.want():
...         s.spend(500)
...         taken += 1
>>> 900 <= taken <= 1000 + 60                 # one a second, plus at most a minute of burst
True
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Sampler", "SamplingBudget", "budget_from"]

MAX_PER_HOUR = 1_000_000
OVERSAMPLE = 2.0  # candidates drawn per token earned
_NEVER = 2**62  # the gap when p is 0
MAX_BYTES_PER_HOUR = 10 * 1024**3


@dataclass(frozen=True)
class SamplingBudget:
    """Samples allowed per hour (0: no limit of that kind; both 0: no sampling)."""

    per_hour: float = 0.0
    bytes_per_hour: float = 0.0

    def __post_init__(self) -> None:
        for name, value, hi in (
            ("per_hour", self.per_hour, MAX_PER_HOUR),
            ("bytes_per_hour", self.bytes_per_hour, MAX_BYTES_PER_HOUR),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= hi
            ):
                raise ValueError(f"sampling {name} must be a number from 0 to {hi}")

    @property
    def enabled(self) -> bool:
        return self.per_hour > 0 or self.bytes_per_hour > 0


def budget_from(
    per_hour: float, bytes_per_hour: float, serving_sampling: Any = None
) -> SamplingBudget:
    """The agent's budget, with each key the manifest's ``serving.sampling`` gives instead.

    >>> budget_from(60, 0, {"bytes_per_hour": 10_000})
    SamplingBudget(per_hour=60, bytes_per_hour=10000)
    >>> budget_from(60, 0, {"per_hour": -1})
    Traceback (most recent call last):
    ...
    ValueError: sampling per_hour must be a number from 0 to 1000000
    """
    if serving_sampling is None:
        return SamplingBudget(per_hour, bytes_per_hour)
    if not isinstance(serving_sampling, Mapping) or set(serving_sampling) - {
        "per_hour",
        "bytes_per_hour",
    }:
        raise ValueError('serving.sampling must be {"per_hour": N, "bytes_per_hour": B}')
    return SamplingBudget(
        serving_sampling.get("per_hour", per_hour),
        serving_sampling.get("bytes_per_hour", bytes_per_hour),
    )


class Sampler:
    """Token buckets plus random candidates (drawn as gaps). Not thread-safe: the caller locks."""

    def __init__(
        self,
        budget: SamplingBudget,
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        burst_s: float = 60.0,
        size_guess: float = 1024.0,
        rate_time_constant_s: float = 60.0,
    ) -> None:
        self.budget = budget
        self._rng = rng
        self._clock = clock
        self._msg_rate = budget.per_hour / 3600.0
        self._byte_rate = budget.bytes_per_hour / 3600.0
        self._msg_cap = max(1.0, self._msg_rate * burst_s)
        self._byte_cap = self._byte_rate * burst_s
        self._msgs = 1.0  # one sample may go at once; the rest of the burst is earned
        self._bytes = self._byte_cap
        self._avg_size = size_guess
        self._tau = rate_time_constant_s
        self._last = clock()
        self._seen = 0
        self._obs_seen = 0
        self._obs_at = self._last
        self._pred_rate: float | None = None
        self.p = 1.0  # until the prediction rate is known
        self._gap: int | None = None  # non-candidates before the next candidate; None: draw
        self.taken = 0
        self.bytes_taken = 0

    @property
    def enabled(self) -> bool:
        return self.budget.enabled

    def want(self) -> bool:
        """Count one prediction; True if it is to be sampled (then call :meth:`spend`)."""
        self._seen += 1
        if not self.budget.enabled:
            return False
        gap = self.next_gap()
        if gap > 0:
            self._gap = gap - 1
            return False
        self._gap = None  # this one is the candidate; the next gap is drawn afresh
        self._refill()
        if self._msg_rate and self._msgs < 1.0:
            return False
        return not (self._byte_rate and self._bytes <= 0.0)

    def next_gap(self) -> int:
        """How many predictions pass before the next candidate (drawn when needed).

        Each prediction is a candidate with probability ``p``; the gap to the next one
        is drawn at once (geometric: the failures before the first success), which is
        the same distribution and lets a counter elsewhere (the C sink) let the
        predictions in between pass without a draw each (then call :meth:`skip`).
        A new ``p`` (:meth:`observe`) draws a new gap: the draws have no memory."""
        if self._gap is None:
            p = self.p
            if p >= 1.0:
                self._gap = 0
            elif p <= 0.0:
                self._gap = _NEVER
            else:  # u in [0, 1): log1p(-u) is finite
                gap = math.log1p(-self._rng.random()) / math.log1p(-p)
                self._gap = int(min(gap, _NEVER))
        return self._gap

    def skip(self, n: int) -> None:
        """``n`` predictions were let pass elsewhere, none a candidate (``n`` at most the
        gap that :meth:`next_gap` gave)."""
        if n > 0:
            self._seen += n
            self._gap = max(0, self.next_gap() - n)

    def spend(self, size: int) -> None:
        """Take the tokens of one sample of ``size`` bytes."""
        self._msgs -= 1.0
        self._bytes -= size
        self.taken += 1
        self.bytes_taken += size
        self._avg_size += 0.2 * (size - self._avg_size)

    def observe(self) -> None:
        """Measure the prediction rate and set ``p`` (call about once a second)."""
        now = self._clock()
        elapsed = now - self._obs_at
        if elapsed <= 0:
            return
        rate = (self._seen - self._obs_seen) / elapsed
        self._obs_at, self._obs_seen = now, self._seen
        if self._pred_rate is None:
            self._pred_rate = rate
        else:
            self._pred_rate += (1.0 - math.exp(-elapsed / self._tau)) * (rate - self._pred_rate)
        target = math.inf
        if self._msg_rate:
            target = self._msg_rate
        if self._byte_rate:
            target = min(target, self._byte_rate / max(self._avg_size, 1.0))
        p = min(1.0, OVERSAMPLE * target / self._pred_rate) if self._pred_rate else 1.0
        if p != self.p:
            self.p, self._gap = p, None

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed <= 0:  # the clock went back (wall clock set): earn nothing
            return
        self._msgs = min(self._msg_cap, self._msgs + elapsed * self._msg_rate)
        self._bytes = min(self._byte_cap, self._bytes + elapsed * self._byte_rate)
