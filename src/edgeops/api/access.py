"""Who may call what: a bearer token on every request but the public ones, and a minimum
role per route.

Each router declares the role its routes need (``APIRouter(dependencies=[VIEWER])``), and
a route that changes something adds a higher one (``dependencies=[OPERATOR]``); the
highest declared wins. :func:`check_routes` runs when the app is built and refuses a
route that declares none and is not in :data:`PUBLIC`, so a new endpoint cannot be
served unprotected by mistake.

``edgeops serve --no-auth`` (loopback only) builds the app with ``auth=False``: every
request then acts as an admin named after the local user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..auth import Forbidden, Role, Unauthenticated

__all__ = [
    "ADMIN",
    "OPERATOR",
    "PUBLIC",
    "VIEWER",
    "Endpoint",
    "Principal",
    "check_routes",
    "endpoints",
    "principal",
    "refuse_unauthorized",
    "require",
    "role_of",
]

#: routes anyone may call: the dashboard's static files and the liveness check
PUBLIC = frozenset({("GET", "/"), ("GET", "/static/{name}"), ("GET", "/api/health")})

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    bearerFormat="eo_…",
    description="An API token from `edgeops tokens create NAME --role ROLE`.",
)


@dataclass(frozen=True)
class Principal:
    """Who sent the request: the token's name and role."""

    name: str
    role: Role


def principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` (401 without a valid one)."""
    return _principal(request, None if credentials is None else credentials.credentials)


def _principal(request: Request, token: str | None) -> Principal:
    state = request.app.state
    if not state.auth:
        return state.no_auth_principal
    if not token:
        raise Unauthenticated(
            "this API needs a token: send Authorization: Bearer <token> "
            "(an admin creates one with `edgeops tokens create NAME --role viewer`)"
        )
    info = state.tokens.verify(token)
    return Principal(info.name, info.role)


def _forbidden(request: Request, role: Role, who: Principal) -> Forbidden:
    return Forbidden(
        f"{request.method} {request.url.path} needs the {role} role; "
        f"token {who.name!r} has the {who.role} role"
    )


def refuse_unauthorized(request: Request) -> None:
    """Raise what the route's role check would (:class:`Unauthenticated`, :class:`Forbidden`).

    For a request refused before that check ran: FastAPI reads and validates a JSON body
    before it calls dependencies, so without this a malformed body would get a 422 even
    without a token. Public routes, and routes that declare no role, pass."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    role = role_of(dependant) if dependant is not None else None
    if role is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    who = _principal(request, token.strip() if scheme.lower() == "bearer" else None)
    if who.role < role:
        raise _forbidden(request, role, who)


_REQUIRE: dict[Role, Callable[..., Principal]] = {}


def require(role: Role) -> Callable[..., Principal]:
    """The dependency that lets ``role`` and the roles above it through (403 below it)."""
    if role not in _REQUIRE:

        def check(request: Request, who: Principal = Depends(principal)) -> Principal:
            if who.role < role:
                raise _forbidden(request, role, who)
            return who

        check.min_role = role  # type: ignore[attr-defined]
        check.__name__ = f"require_{role}"
        _REQUIRE[role] = check
    return _REQUIRE[role]


VIEWER = Depends(require(Role.VIEWER))
OPERATOR = Depends(require(Role.OPERATOR))
ADMIN = Depends(require(Role.ADMIN))


class Endpoint(NamedTuple):
    method: str
    path: str
    role: Role | None  # None: declares none (public, or a route without dependencies)
    api: bool  # an API route; False for FastAPI's own /docs, /redoc, /openapi.json


def role_of(dependant: Any) -> Role | None:
    """The highest role a route's dependencies require (None: it declares none)."""
    found: list[Role] = []
    todo = list(dependant.dependencies)
    while todo:
        dep = todo.pop()
        role = getattr(dep.call, "min_role", None)
        if role is not None:
            found.append(role)
        todo.extend(dep.dependencies)
    return max(found) if found else None


def _flat(routes: Iterable[Any]) -> Iterable[Any]:
    try:  # FastAPI >= 0.13x keeps included routers as branches of app.routes
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies their routes into app.routes
        return routes
    return iter_route_contexts(list(routes))


def endpoints(routes: Iterable[Any]) -> list[Endpoint]:
    """Every method and path the app serves, with the role it requires."""
    out = []
    for r in _flat(routes):
        dependant = getattr(r, "dependant", None)
        role = role_of(dependant) if dependant is not None else None
        for method in sorted(r.methods or ()):
            out.append(Endpoint(method, r.path, role, dependant is not None))
    return out


def check_routes(routes: Iterable[Any]) -> None:
    """Refuse to serve a route that declares no role and is not public."""
    bare = [
        f"{e.method} {e.path}"
        for e in endpoints(routes)
        if e.api and e.role is None and (e.method, e.path) not in PUBLIC
    ]
    if bare:
        raise RuntimeError(
            f"routes without a role: {', '.join(bare)}; add dependencies=[VIEWER] "
            "(or OPERATOR, ADMIN) from edgeops.api.access, or list them in PUBLIC"
        )
