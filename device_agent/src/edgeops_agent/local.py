"""What the CLI does on a state directory without going through a running agent.

``rollback`` works offline: it switches the active slot in ``state.json`` and
keeps a ``rolled_back`` event there, which the agent publishes on its next
connection (a running agent notices the change within a second and reloads).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from .config import AgentConfig
from .errors import AgentError, StoreError
from .fsutil import FileLock
from .runtime import load_runner
from .serve import LoadedModel, Predictor
from .store import StateStore, other_slot

__all__ = ["agent_running", "load_predictor", "rollback", "status", "status_lines"]


def agent_running(config: AgentConfig) -> bool:
    """Whether an agent holds the state directory's ``agent.lock``."""
    lock = FileLock(config.state_dir / "agent.lock")
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def status(config: AgentConfig) -> dict[str, Any]:
    """``state.json`` plus whether an agent is running on it."""
    state = StateStore(config.state_dir, create=False).snapshot()
    state["agent_running"] = agent_running(config)
    return state


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _slot_line(label: str, slot: str, meta: dict[str, Any] | None) -> str:
    if not meta:
        return f"{label}: slot {slot} empty"
    line = (
        f"{label}: slot {slot} {meta['name']} v{meta['version']} {meta['variant']} "
        f"seq {meta['seq']} sha256 {meta['sha256'][:12]} "
        f"activated {_when(meta.get('activated_at'))}"
    )
    if meta.get("rolled_back"):
        line += f" (rolled back: {meta['rolled_back']})"
    return line


def status_lines(config: AgentConfig, state: dict[str, Any]) -> list[str]:
    """A short human summary of :func:`status`."""
    active = state["active"]
    running = "running" if state["agent_running"] else "not running"
    lines = [
        f"device: {config.fleet}/{config.device}  boot {state['boot']}  "
        f"accepted_seq {state['accepted_seq']}  agent {running}",
        _slot_line("active", active, state["slots"].get(active)) if active else "active: none",
    ]
    if active:
        lines.append(_slot_line("previous", other_slot(active), state["slots"][other_slot(active)]))
    if state.get("deploying"):
        dep = state["deploying"]
        lines.append(f"deploying: seq {dep['seq']} artifact {dep['sha256'][:12]}")
    if state.get("pending_events"):
        lines.append(f"events waiting for a connection: {len(state['pending_events'])}")
    return lines


def rollback(
    config: AgentConfig, reason: str = "local rollback"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Switch to the previous slot; ``(rolled back from, now active)`` slot metas."""
    store = StateStore(config.state_dir, create=False)
    current = store.slot_meta(store.active)
    target = store.slot_meta(other_slot(store.active))
    if current is None:
        raise AgentError("no model is active; nothing to roll back")
    if target is None:
        raise AgentError("the previous slot is empty; there is no model to roll back to")
    store.switch_back(reason)
    store.add_pending_event(
        {
            "fleet": config.fleet,
            "device": config.device,
            "boot": f"{store.state['boot']}-cli",
            "ts": time.time(),
            "seq": current["seq"],
            "deployment": current.get("deployment"),
            "rollout": current.get("rollout"),
            "event": "rolled_back",
            "reason": reason,
        }
    )
    return current, target


def load_predictor(config: AgentConfig) -> Predictor:
    """A predictor with the active model of the state directory (no agent needed)."""
    store = StateStore(config.state_dir, create=False)
    if store.active is None:
        raise AgentError("no model is active on this device yet")
    try:
        data, manifest = store.read_slot(store.active)
    except StoreError as exc:
        raise AgentError(str(exc)) from exc
    try:
        runner = load_runner(manifest["model"]["format"], data)
    except (ValueError, RuntimeError) as exc:
        raise AgentError(f"the active model does not load: {exc}") from exc
    predictor = Predictor()
    predictor.load(LoadedModel.build(runner, manifest))
    return predictor
