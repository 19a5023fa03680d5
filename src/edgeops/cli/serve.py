"""``edgeops serve``: the HTTP API and the dashboard."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import console, workspace


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8470,
) -> None:
    """Serve the JSON API (OpenAPI at /docs) and the dashboard.

    Example: `edgeops serve --port 8470`
    """
    from ..api import create_app
    from ..errors import MissingExtra

    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise MissingExtra("uvicorn", "server") from exc
    app = create_app(workspace(ctx))
    console.print(f"edgeops API on http://{host}:{port} (OpenAPI: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
