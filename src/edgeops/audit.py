"""The audit log: who changed the fleet, the registry or access, what, and when.

An entry is written by :func:`record` in the transaction of the change it describes, so
a change is never stored without its entry, nor an entry without its change. The actor
is the name set by :func:`acting_as` (an API route that changes something wraps the call
in ``acting_as(principal.name)``, the API token's name), else the CLI user
(:func:`edgeops.config.current_user`: ``EDGEOPS_USER`` or the login name).

Actions, with their subject and details::

    alias.move          NAME@ALIAS    from, to (version numbers; from is None for a new alias)
    rollout.create      rollout id    model, selector, devices, stages
    rollout.pause       rollout id    reason (also rollout.resume, .abort, .rollback)
    retrain.decision    model         id, trigger, decision, status, champion, challenger,
                                      rollout, reason
    key.generate        key id        public_key, force
    token.create        token name    role, expires_at
    token.revoke        token name    role
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from .config import CONFIG_NAME, current_user

__all__ = ["acting_as", "actor", "entries", "key_generated", "record"]

_ACTOR: ContextVar[str | None] = ContextVar("edgeops_audit_actor", default=None)


def actor() -> str:
    """Who is acting: the name :func:`acting_as` set, else the CLI user."""
    return _ACTOR.get() or current_user()


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Attribute the changes made inside the block to ``name`` (e.g. an API token's name)."""
    token = _ACTOR.set(name)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def record(session: Any, action: str, subject: str, details: dict[str, Any] | None = None) -> None:
    """Add an entry to ``session``'s transaction (committed, or rolled back, with it)."""
    from .store.schema import AuditEntry

    session.add(
        AuditEntry(actor=actor()[:128], action=action, subject=subject[:200], details=details or {})
    )


def entries(db: Any, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest first; ``action`` keeps one action (``alias.move``)
    or a family of them (``rollout``: every ``rollout.*``)."""
    from sqlalchemy import or_, select

    from .store.schema import AuditEntry

    q = select(AuditEntry)
    if action:
        q = q.where(or_(AuditEntry.action == action, AuditEntry.action.startswith(f"{action}.")))
    with db.session() as s:
        rows = s.execute(q.order_by(AuditEntry.id.desc()).limit(limit)).scalars()
        return [
            {
                "id": r.id,
                "at": r.at,
                "actor": r.actor,
                "action": r.action,
                "subject": r.subject,
                "details": r.details,
            }
            for r in rows
        ]


def key_generated(keys_dir: Path, key_id: str, public_key: str, force: bool) -> bool:
    """Record a new signing key in the store of the workspace that ``keys_dir`` belongs to
    (``<home>/.edgeops/keys``); False when it belongs to none (a bare folder: no store)."""
    home = keys_dir.parent.parent
    if (keys_dir.name, keys_dir.parent.name) != ("keys", ".edgeops"):
        return False
    if not (home / CONFIG_NAME).is_file():
        return False
    from .workspace import Workspace

    ws = Workspace.open(home)
    try:
        details = {"public_key": public_key, "force": force}
        ws.db.write(lambda s: record(s, "key.generate", key_id, details))
    finally:
        ws.close()
    return True
