"""``edgeops artifacts``: serve registered model variants to devices over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import console, workspace

app = typer.Typer(
    help="Model artifacts for devices: serve them over HTTP (the MQTT chunks' alternative).",
    no_args_is_help=True,
)


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8471,
) -> None:
    """Serve the registered model variants over HTTP, with ranges, until Ctrl-C.

    Devices with `artifact_transport = "http"` (or `"auto"`) download from it when a
    rollout was started with `--artifact-url http://HOST:PORT`. Only variants of
    registered model versions are served, at `/artifacts/SHA256`.

    Example: `edgeops artifacts serve --host 0.0.0.0 --port 8471`
    """
    from ..artifact_server import ArtifactServer, registered_variants

    ws = workspace(ctx)
    server = ArtifactServer(ws.artifacts, registered_variants(ws.db), host, port)
    console.print(
        f"serving registered model variants at {server.url}/artifacts/<sha256>; Ctrl-C to stop",
        markup=False,
        highlight=False,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.stop()
