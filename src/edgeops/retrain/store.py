"""Retraining policies kept in the metadata store, one per model."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import InvalidInput, NotFound
from ..store.schema import RetrainPolicy as PolicyRow
from .policy import RetrainPolicy, parse_policy

__all__ = ["list_policies", "load_policy", "set_policy"]


def read_policy_text(text: str, where: str = "policy") -> RetrainPolicy:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where} is not valid YAML: {exc}".splitlines()[0]) from None
    return parse_policy(raw)


def set_policy(ws: Any, path: Path | str, author: str = "") -> RetrainPolicy:
    """Store the policy in ``path`` for its model (the model must exist)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read policy file {path}: {exc.strerror}") from None
    policy = read_policy_text(text, str(path))
    ws.registry.versions(policy.model)  # NotFound for an unknown model, before writing
    doc = yaml.safe_load(text)

    def write(s: Session) -> None:
        row = s.get(PolicyRow, policy.model)
        if row is None:
            s.add(PolicyRow(model=policy.model, text=text, doc=doc, author=author))
        else:
            row.text, row.doc, row.author = text, doc, author
            row.updated_at = datetime.now(timezone.utc)

    ws.db.write(write)
    return policy


def load_policy(ws: Any, model: str, missing_ok: bool = False) -> RetrainPolicy | None:
    with ws.db.session() as s:
        row = s.get(PolicyRow, model)
        text = None if row is None else row.text
    if text is None:
        if missing_ok:
            return None
        raise NotFound(
            f"{model} has no retraining policy; set one with "
            f"`edgeops retrain policy set {model} POLICY.yaml`"
        )
    return read_policy_text(text, f"the stored policy of {model}")


def list_policies(ws: Any) -> list[tuple[RetrainPolicy, str]]:
    with ws.db.session() as s:
        q = select(PolicyRow).order_by(PolicyRow.model)
        rows = [(r.model, r.text) for r in s.execute(q).scalars()]
    return [(read_policy_text(text, f"the stored policy of {m}"), text) for m, text in rows]
