"""Fleet resources: devices and rollouts (read-only here; rollouts start from the CLI)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from .access import VIEWER
from .deps import workspace

router = APIRouter(tags=["fleet"], dependencies=[VIEWER])


def _fleet(ws: Any) -> Any:
    from ..fleet.store import FleetStore

    return FleetStore(ws.db, ws.settings.fleet)


@router.get("/fleet/devices")
def list_devices(
    target: str | None = Query(None, description="Selector, e.g. tag:lab."),
    ws: Any = Depends(workspace),
) -> list[dict[str, Any]]:
    """Devices as they last reported themselves."""
    from ..fleet.store import device_summary as device_dict

    return [device_dict(d) for d in _fleet(ws).devices(target)]


@router.get("/fleet/devices/{device}")
def get_device(device: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """One device with its recent deployment events."""
    from ..fleet.store import device_summary as device_dict

    fs = _fleet(ws)
    out = device_dict(fs.get(device))
    out["events"] = [
        {"at": e.at, "seq": e.seq, "event": e.event, "reason": e.reason, "rollout": e.rollout_id}
        for e in fs.events(device=device, limit=50)
    ]
    return out


@router.get("/rollouts")
def list_rollouts(ws: Any = Depends(workspace)) -> list[dict[str, Any]]:
    """Rollouts of the fleet, newest first."""
    from ..fleet.controller import RolloutController

    return RolloutController(ws, key=None).list()


@router.get("/rollouts/{rollout_id}")
def get_rollout(rollout_id: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """A rollout's progress and each device's state."""
    from ..fleet.controller import RolloutController

    return RolloutController(ws, key=None).status(rollout_id)
