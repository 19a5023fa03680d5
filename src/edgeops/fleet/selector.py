"""Device selectors: which devices a rollout targets. Groups are tag selectors.

Grammar: ``all`` | ``tag:T[+tag:U...]`` (devices with every tag) | ``device:A[,B...]``.
A bare word ``T`` means ``tag:T``.

>>> Selector.parse("tag:lab+tag:floor2").matches("pi-1", {"lab", "floor2", "x"})
True
>>> Selector.parse("device:pi-1,pi-2").matches("pi-3", set())
False
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeops_protocol.topics import ProtocolError, validate_id

from ..errors import InvalidInput

__all__ = ["Selector"]


@dataclass(frozen=True)
class Selector:
    text: str
    tags: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    everything: bool = False

    @classmethod
    def parse(cls, text: str) -> Selector:
        t = (text or "").strip()
        if t in ("all", "*"):
            return cls(t, everything=True)
        try:
            if t.startswith("device:"):
                ids = [d.strip() for d in t[len("device:") :].split(",") if d.strip()]
                if not ids:
                    raise ProtocolError("no device ids")
                return cls(t, devices=frozenset(validate_id(d, "device") for d in ids))
            terms = [p.strip() for p in t.split("+")]
            tags = [p[len("tag:") :] if p.startswith("tag:") else p for p in terms]
            if not tags or not all(tags):
                raise ProtocolError("empty tag")
            return cls(t, tags=frozenset(validate_id(x, "tag") for x in tags))
        except ProtocolError as exc:
            raise InvalidInput(
                f"bad target selector {text!r} ({exc}); use all, tag:NAME[+tag:OTHER] "
                "or device:ID[,ID]"
            ) from exc

    def matches(self, device: str, tags: set[str]) -> bool:
        if self.everything:
            return True
        if self.devices:
            return device in self.devices
        return self.tags <= tags
