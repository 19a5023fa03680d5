"""Registry resources: data sets, features, runs, models, versions, variants."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from .deps import workspace

router = APIRouter(tags=["registry"])


def _version(mv: Any, aliases: list[str]) -> dict[str, Any]:
    return {
        "ref": mv.ref,
        "name": mv.model.name,
        "version": mv.version,
        "flavor": mv.flavor,
        "aliases": aliases,
        "created_at": mv.created_at,
        "author": mv.author,
        "description": mv.description,
        "run": mv.run_id,
        "dataset": mv.dataset_version.ref if mv.dataset_version else None,
        "features": mv.feature_ref or None,
        "labels": mv.labels,
        "params": mv.params,
        "metrics": mv.metrics,
        "variants": [
            {
                "name": v.name,
                "format": v.format,
                "size": v.size,
                "sha256": v.sha256,
                "metrics": v.metrics,
            }
            for v in mv.variants
        ],
    }


@router.get("/models")
def list_models(ws: Any = Depends(workspace)) -> list[dict[str, Any]]:
    """Every model with its latest version and aliases."""
    return ws.registry.models()


@router.get("/models/{name}/versions")
def list_versions(name: str, ws: Any = Depends(workspace)) -> list[dict[str, Any]]:
    """Every version of a model (the model card of each)."""
    aliases = ws.registry.aliases_of(name)
    return [
        _version(mv, sorted(a for a, v in aliases.items() if v == mv.version))
        for mv in ws.registry.versions(name)
    ]


@router.get("/models/{name}/{ref}")
def get_version(name: str, ref: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """One version (``ref`` is a version number, an alias, or ``latest``)."""
    mv = ws.registry.get_version(f"{name}@{ref}")
    aliases = ws.registry.aliases_of(name)
    return _version(mv, sorted(a for a, v in aliases.items() if v == mv.version))


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
    return [
        {
            "id": r.id,
            "name": r.name,
            "status": r.status,
            "reason": r.reason,
            "started_at": r.started_at,
            "metrics": r.metrics,
            "seeds": r.seeds,
        }
        for r in ws.runs.list(limit=limit, status=status)
    ]


@router.get("/runs/{run_id}")
def get_run(run_id: str, ws: Any = Depends(workspace)) -> dict[str, Any]:
    """One run with everything recorded on it."""
    r = ws.runs.get(run_id)
    return {
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "reason": r.reason,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "seeds": r.seeds,
        "params": r.params,
        "metrics": r.metrics,
        "config_text": r.config_text,
        "dataset": r.dataset_version.ref if r.dataset_version else None,
        "features": r.feature_ref or None,
        "packages": r.packages,
        "git_commit": r.git_commit,
        "git_dirty": r.git_dirty,
    }
