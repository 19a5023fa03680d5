"""Registry resources: data sets, features, runs, models, versions, variants."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from ..registry import version_card
from ..runs import run_record
from .access import VIEWER
from .deps import workspace

router = APIRouter(tags=["registry"], dependencies=[VIEWER])


@router.get("/models")
def list_models(ws: Any = Depends(workspace)) -> list[dict[str, Any]]:
    """Every model with its latest version and aliases."""
    return ws.registry.models()


@router.get("/models/{name}/versions")
def list_versions(name: str, ws: Any = Depends(workspace)) -> list[dict[str, Any]]:
    """Every version of a model (the model card of each)."""
    aliases = ws.registry.aliases_of(name)
    return [
        version_card(mv, sorted(a for a, v in aliases.items() if v == mv.version))
        for mv in ws.registry.versions(name)
    ]


@router.get("/models/{name}/{ref}")
def get_version(name: str, ref: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """One version (``ref`` is a version number, an alias, or ``latest``)."""
    mv = ws.registry.get_version(f"{name}@{ref}")
    aliases = ws.registry.aliases_of(name)
    return version_card(mv, sorted(a for a, v in aliases.items() if v == mv.version))


@router.get("/models/{name}/{ref}/lineage")
def lineage(name: str, ref: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """Where a version came from (run, seeds, data, features) and its variants."""
    return ws.registry.lineage(f"{name}@{ref}")


@router.get("/datasets")
def list_datasets(ws: Any = Depends(workspace)) -> list[dict[str, Any]]:
    """Every data set with its latest version."""
    return ws.data.names()


@router.get("/datasets/{name}/{version}")
def get_dataset(name: str, version: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """One data version with its profile."""
    dv = ws.data.get(f"{name}@{version}")
    return {
        "ref": dv.ref,
        "sha256": dv.sha256,
        "rows": dv.rows,
        "format": dv.format,
        "schema": dv.schema,
        "profile": dv.profile,
        "message": dv.message,
        "author": dv.author,
        "created_at": dv.created_at,
    }


@router.get("/features")
def list_features(
    q: str | None = Query(None, description="Search text."), ws: Any = Depends(workspace)
) -> list[dict[str, Any]]:
    """Feature sets, or with ``q`` the feature versions matching a search."""
    return ws.features.search(q) if q else ws.features.sets()


@router.get("/runs")
def list_runs(
    limit: int = Query(50, ge=1, le=1000), status: str | None = None, ws: Any = Depends(workspace)
) -> list[dict[str, Any]]:
    """Training runs, newest first."""
    return [run_record(r, full=False) for r in ws.runs.list(limit=limit, status=status)]


@router.get("/runs/{run_id}")
def get_run(run_id: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """One run with everything recorded on it."""
    return run_record(ws.runs.get(run_id))
