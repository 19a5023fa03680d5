"""The dashboard: three static files (``index.html``, ``dashboard.js``, ``dashboard.css``)
that ``edgeops serve`` serves at ``/`` and ``/static/``, drawn in the browser from the JSON
API with no other source; and :mod:`.sample_data`, a demo fleet for screenshots and tests.

The page is served with a Content-Security-Policy that allows this origin only, so the
browser itself refuses anything fetched from elsewhere and any inline script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CSP", "FILES", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent
#: what /static/ serves, and nothing else from this folder
FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def router() -> Any:
    """The routes of the page and its two assets (FastAPI is imported here)."""
    from fastapi import APIRouter
    from fastapi.responses import FileResponse

    from ..errors import NotFound

    r = APIRouter(include_in_schema=False)

    @r.get("/")
    def index() -> Any:
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS
        )

    @r.get("/static/{name}")
    def static(name: str) -> Any:
        if name not in FILES:
            raise NotFound(f"no dashboard file {name!r}; the dashboard is at /")
        return FileResponse(STATIC_DIR / name, media_type=FILES[name], headers=_HEADERS)

    return r
