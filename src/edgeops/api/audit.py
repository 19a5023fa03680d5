"""``GET /api/audit``: the audit log, for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from .. import audit
from .access import ADMIN
from .deps import workspace

router = APIRouter(tags=["audit"], dependencies=[ADMIN])


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="The CLI user, or the API token's name.")
    action: str = Field(description="e.g. alias.move, rollout.create, key.generate.")
    subject: str = Field(description="What changed: NAME@ALIAS, a rollout id, a model, ...")
    details: dict[str, Any]


@router.get("/audit", response_model=list[AuditEntryOut])
def list_audit(
    limit: int = Query(100, ge=1, le=10_000, description="At most this many, newest first."),
    action: str | None = Query(
        None, description="One action (alias.move) or a family (rollout: every rollout.*)."
    ),
    ws: Any = Depends(workspace),
) -> list[dict[str, Any]]:
    """Who changed what and when: rollouts and their requests, alias moves, retraining
    decisions, signing keys and API tokens; newest first."""
    return audit.entries(ws.db, limit=limit, action=action)
