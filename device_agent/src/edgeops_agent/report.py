"""What a device says: the fields of its ``state`` and ``event`` messages (docs/protocol.md).

Pure functions of the stored state and the facts of the device, so what is
published and what ``GET /state`` shows come from one place.

>>> state = {"active": None, "accepted_seq": 0, "slots": {"a": None, "b": None}}
>>> fields = state_fields(state, fleet="lab", device="pi", boot="1-ab", ts=5.0, hardware="rpi4",
...                       runtimes=["onnxruntime"], tags=[])
>>> fields["model"], fields["previous"], fields["online"]
(None, None, True)
>>> event_fields({"seq": "x"}, "rejected", fleet="lab", device="pi", boot="1-ab", ts=5.0)["seq"]
0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import __version__
from .store import other_slot

__all__ = ["event_fields", "state_fields"]

_REF_KEYS = ("name", "version", "variant", "sha256", "seq")


def _ref(meta: dict[str, Any] | None, with_time: bool) -> dict[str, Any] | None:
    if not meta:
        return None
    out = {k: meta[k] for k in _REF_KEYS}
    if with_time and meta.get("activated_at") is not None:
        out["activated_at"] = meta["activated_at"]
    return out


def state_fields(
    state: dict[str, Any],
    *,
    fleet: str,
    device: str,
    boot: str,
    ts: float,
    hardware: str,
    runtimes: Sequence[str],
    tags: Sequence[str],
    outbox_dropped: int = 0,
) -> dict[str, Any]:
    """The online state message of a device whose ``state.json`` is ``state``;
    ``outbox_dropped`` counts the monitoring messages its full outbox ever dropped."""
    active = state["active"]
    slots = state["slots"]
    return {
        "fleet": fleet,
        "device": device,
        "online": True,
        "boot": boot,
        "ts": ts,
        "agent": f"edgeops-agent {__version__}",
        "hardware": hardware,
        "runtimes": list(runtimes),
        "accepted_seq": state["accepted_seq"],
        "model": _ref(slots.get(active) if active else None, True),
        "previous": _ref(slots.get(other_slot(active)) if active else None, False),
        "tags": list(tags),
        "outbox_dropped": outbox_dropped,
    }


def event_fields(
    manifest: dict[str, Any],
    event: str,
    *,
    fleet: str,
    device: str,
    boot: str,
    ts: float,
    progress: float | None = None,
    reason: str = "",
    step: str | None = None,
) -> dict[str, Any]:
    """An event about ``manifest`` (or a slot meta, which has the same ids); the values a
    malformed manifest holds are never trusted: wrong types become 0 / null."""
    seq = manifest.get("seq")
    fields: dict[str, Any] = {
        "fleet": fleet,
        "device": device,
        "boot": boot,
        "ts": ts,
        "seq": seq
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= 2**53
        else 0,
        "deployment": _short(manifest.get("deployment"), 160),
        "rollout": _short(manifest.get("rollout"), 64),
        "event": event,
        "reason": reason[:1024],
    }
    if progress is not None:
        fields["progress"] = progress
    if step is not None:
        fields["step"] = step
    return fields


def _short(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None
