"""The FastAPI application: one router per resource, library errors as HTTP statuses, the
dashboard's static files at ``/`` and ``/static/``, Prometheus metrics at ``/metrics``.

Every route but the public ones needs an API token with a role (:mod:`.access`)."""

from __future__ import annotations

from typing import Any

from ..errors import EdgeopsError, MissingExtra

__all__ = ["create_app"]


def create_app(ws: Any, *, auth: bool = True) -> Any:
    """The API for workspace ``ws`` (its stores are opened now, not on the first request).

    ``auth=False`` lets every request act as an admin: for ``edgeops serve --no-auth`` on
    the loopback interface only."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ModuleNotFoundError as exc:
        raise MissingExtra("fastapi", "server") from exc
    from .. import __version__, dashboard
    from ..auth import Role, TokenStore, Unauthenticated
    from ..config import current_user
    from . import access, fleet, metrics, monitoring, registry
    from . import audit as audit_api

    _ = ws.db, ws.registry, ws.data, ws.features, ws.runs  # open once, before threads start
    app = FastAPI(
        title="edgeops",
        version=__version__,
        description="Registry, fleet, rollouts, telemetry and drift of an edgeops workspace.",
    )
    app.state.ws = ws
    app.state.auth = auth
    app.state.tokens = TokenStore(ws.db)
    app.state.no_auth_principal = access.Principal(f"{current_user()} (no auth)", Role.ADMIN)

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        return JSONResponse(
            status_code=401,
            content={"error": str(exc), "kind": "Unauthenticated"},
            headers={"WWW-Authenticate": _challenge(request)},
        )

    @app.exception_handler(EdgeopsError)
    async def _edgeops_error(request: Request, exc: EdgeopsError) -> JSONResponse:
        if refused_value(exc):  # the request's fault, not the store's: 422, not 503
            message = (
                "the database refused a value of this request (e.g. text with a NUL "
                "character); remove it"
            )
            return JSONResponse(status_code=422, content={"error": message, "kind": "InvalidInput"})
        status = exc.http_status if exc.http_status != 500 else 400
        return JSONResponse(
            status_code=status, content={"error": str(exc), "kind": type(exc).__name__}
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:  # no token, or too low a role: say that, not what is wrong with the request
            access.refuse_unauthorized(request)
        except Unauthenticated as denied:
            return await _unauthenticated(request, denied)
        except EdgeopsError as denied:  # Forbidden, or the store failed checking the token
            return await _edgeops_error(request, denied)
        return JSONResponse(
            status_code=422, content={"error": validation_message(exc), "kind": "InvalidInput"}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not parse: the role comes first
            try:
                access.refuse_unauthorized(request)
            except Unauthenticated as denied:
                return await _unauthenticated(request, denied)
            except EdgeopsError as denied:
                return await _edgeops_error(request, denied)
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": str(exc.detail), "kind": "HTTPError"},
            headers=getattr(exc, "headers", None),
        )

    app.include_router(registry.router, prefix="/api")
    app.include_router(fleet.router, prefix="/api")
    app.include_router(monitoring.router, prefix="/api")
    from .serving import router as serving_router

    app.include_router(serving_router, prefix="/api")
    app.include_router(audit_api.router, prefix="/api")
    app.include_router(metrics.router)
    app.include_router(dashboard.router())

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness, the store's schema version, and whether requests need a token (public)."""
        return {"ok": True, "version": __version__, "schema": ws.db.schema_version(), "auth": auth}

    access.check_routes(app.routes)
    return app


def _challenge(request: Any) -> str:
    """``WWW-Authenticate`` of a 401 (RFC 6750): ``invalid_token`` when one was sent."""
    sent = request.headers.get("authorization", "").lower().startswith("bearer ")
    return 'Bearer realm="edgeops", error="invalid_token"' if sent else 'Bearer realm="edgeops"'


def refused_value(exc: BaseException) -> bool:
    """A store error caused by a value the database cannot hold (``sqlalchemy.exc.DataError``,
    e.g. PostgreSQL refuses a NUL character in text), not by the database being away."""
    from sqlalchemy.exc import DataError

    return isinstance(exc.__cause__, DataError)


def validation_message(exc: Any) -> str:
    """One line naming each bad parameter and what is wrong with it."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = f"{loc[0]} {'.'.join(loc[1:])}".strip() if loc else "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + "; see /docs for the parameters"
