"""Network impairments: what a lossy link does to each packet, as a pure function.

An :class:`Impairment` is what a targets file's ``netem = {...}`` says, in
netem's terms: ``loss`` (per cent of packets dropped), ``delay_ms`` with
``jitter_ms`` (each packet waits ``delay ± jitter``, uniformly), and ``reorder``
(per cent of packets sent at once, without the delay, so they overtake the ones
waiting: netem's ``reorder``). :class:`Schedule` decides, packet by packet, when a
packet leaves or that it never does; the userspace link (:mod:`hil.wire`) and the
tests use the same object.

>>> imp = Impairment(loss=20, delay_ms=50, jitter_ms=20, reorder=25)
>>> imp.describe()
'20% loss, 50±20 ms, reorder 25%'
>>> imp.netem_args()
['loss', '20%', 'delay', '50ms', '20ms', 'reorder', '25%']
>>> import random
>>> s = Schedule(imp, random.Random(1))
>>> due = [s.due(0.0) for _ in range(10_000)]
>>> dropped = sum(d is None for d in due)
>>> 1800 < dropped < 2200, max(d for d in due if d is not None) <= 0.070
(True, True)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["Impairment", "Schedule"]

_KEYS = ("loss", "delay_ms", "jitter_ms", "reorder")


def _number(text: float) -> str:
    return f"{text:g}"


@dataclass(frozen=True)
class Impairment:
    """Loss and reorder in per cent, delay and jitter in milliseconds (netem's units)."""

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0

    def __post_init__(self) -> None:
        for key in _KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"netem {key} must be a number >= 0, not {value!r}")
        if self.loss > 100 or self.reorder > 100:
            raise ValueError("netem loss and reorder are per cent: 0..100")
        if self.jitter_ms > self.delay_ms:
            raise ValueError("netem jitter_ms must not exceed delay_ms")
        if self.reorder and not self.delay_ms:
            raise ValueError("netem reorder needs a delay (packets overtake delayed ones)")
        if self.delay_ms > 10_000:
            raise ValueError("netem delay_ms must be at most 10000")

    @classmethod
    def from_dict(cls, data: Any) -> Impairment:
        if not isinstance(data, dict):
            raise ValueError("netem must be a table, e.g. {loss = 20, delay_ms = 50}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown netem key {unknown[0]!r}; known: {', '.join(_KEYS)}")
        return cls(**data)

    @property
    def none(self) -> bool:
        return not (self.loss or self.delay_ms or self.reorder)

    def describe(self) -> str:
        if self.none:
            return "no impairment"
        parts = []
        if self.loss:
            parts.append(f"{_number(self.loss)}% loss")
        if self.delay_ms:
            jitter = f"±{_number(self.jitter_ms)}" if self.jitter_ms else ""
            parts.append(f"{_number(self.delay_ms)}{jitter} ms")
        if self.reorder:
            parts.append(f"reorder {_number(self.reorder)}%")
        return ", ".join(parts)

    def netem_args(self) -> list[str]:
        """The arguments of ``tc qdisc add dev DEV root netem ...``."""
        args: list[str] = []
        if self.loss:
            args += ["loss", f"{_number(self.loss)}%"]
        if self.delay_ms:
            args += ["delay", f"{_number(self.delay_ms)}ms"]
            if self.jitter_ms:
                args.append(f"{_number(self.jitter_ms)}ms")
        if self.reorder:
            args += ["reorder", f"{_number(self.reorder)}%"]
        return args

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in _KEYS}


class Schedule:
    """When each packet leaves: ``due(now)`` is a time, or None for a packet lost."""

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.imp = impairment
        self.rng = rng

    def due(self, now: float) -> float | None:
        imp = self.imp
        if imp.loss and self.rng.random() * 100 < imp.loss:
            return None
        if imp.reorder and self.rng.random() * 100 < imp.reorder:
            return now  # sent at once: overtakes the packets that wait
        delay = imp.delay_ms
        if imp.jitter_ms:
            delay += self.rng.uniform(-imp.jitter_ms, imp.jitter_ms)
        return now + max(delay, 0.0) / 1000.0
