"""The FastAPI application: one router per resource, library errors as HTTP statuses, the
dashboard's static files at ``/`` and ``/static/``, Prometheus metrics at ``/metrics``."""

from __future__ import annotations

from typing import Any

from ..errors import EdgeopsError, MissingExtra

__all__ = ["create_app"]


def create_app(ws: Any) -> Any:
    """The API for workspace ``ws`` (its stores are opened now, not on the first request)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
    except ModuleNotFoundError as exc:
        raise MissingExtra("fastapi", "server") from exc
    from .. import __version__, dashboard
    from . import fleet, metrics, monitoring, registry

    _ = ws.db, ws.registry, ws.data, ws.features, ws.runs  # open once, before threads start
    app = FastAPI(
        title="edgeops",
        version=__version__,
        description="Registry, fleet, rollouts, telemetry and drift of an edgeops workspace.",
    )
    app.state.ws = ws

    @app.exception_handler(EdgeopsError)
    async def _edgeops_error(request: Request, exc: EdgeopsError) -> JSONResponse:
        status = exc.http_status if exc.http_status != 500 else 400
        return JSONResponse(
            status_code=status, content={"error": str(exc), "kind": type(exc).__name__}
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422, content={"error": validation_message(exc), "kind": "InvalidInput"}
        )

    app.include_router(registry.router, prefix="/api")
    app.include_router(fleet.router, prefix="/api")
    app.include_router(monitoring.router, prefix="/api")
    from .serving import router as serving_router

    app.include_router(serving_router, prefix="/api")
    app.include_router(metrics.router)
    app.include_router(dashboard.router())

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness and the store's schema version."""
        return {"ok": True, "version": __version__, "schema": ws.db.schema_version()}

    return app


def validation_message(exc: Any) -> str:
    """One line naming each bad parameter and what is wrong with it."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = f"{loc[0]} {'.'.join(loc[1:])}".strip() if loc else "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + "; see /docs for the parameters"
