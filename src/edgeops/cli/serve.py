"""``edgeops serve``: the HTTP API and the dashboard."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from ._common import console, err_console, workspace


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8470,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Local development only: serve without tokens, every request acting as "
            "admin. Refused unless --host is a loopback address (127.0.0.1).",
        ),
    ] = False,
) -> None:
    """Serve the JSON API (OpenAPI at /docs) and the dashboard; requests need an API token.

    Example: `edgeops serve --port 8470`
    """
    from ..api import create_app
    from ..errors import InvalidInput, MissingExtra

    if no_auth and not is_loopback(host):
        raise InvalidInput(
            f"--no-auth is for local development on 127.0.0.1 only, not --host {host}; "
            "create tokens with `edgeops tokens create NAME --role viewer` instead"
        )
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise MissingExtra("uvicorn", "server") from exc
    ws = workspace(ctx)
    app = create_app(ws, auth=not no_auth)
    console.print(f"edgeops API on http://{host}:{port} (OpenAPI: /docs)")
    if no_auth:
        err_console.print(
            f"WARNING: AUTHENTICATION IS OFF (--no-auth). Anyone who can connect to {host}:{port} "
            "acts as admin. For local development only.",
            style="bold red",
            markup=False,
            highlight=False,
        )
    elif not [t for t in app.state.tokens.list() if t.status() == "active"]:
        err_console.print(
            "note: no active API token yet; create one with "
            "`edgeops tokens create NAME --role viewer` (see docs/security.md)",
            markup=False,
            highlight=False,
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")
