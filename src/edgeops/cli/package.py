"""``edgeops package``: a container build context that serves one model version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import JSON_HELP, console, print_json, workspace


def package(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Model version: NAME@VERSION or NAME@ALIAS.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder to write (must not exist, or be empty).", show_default=False
        ),
    ],
    variant: Annotated[
        str | None,
        typer.Option(
            help="TFLite or ONNX variant to serve. Default: tflite-int8, tflite-f32, onnx-int8, "
            "onnx-f32, the first the version has whose runtime is installed here.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Port the container listens on.", min=1, max=65535)] = (
        8080
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUT if it is a non-empty folder.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write a container build context (Dockerfile, pinned requirements, model, server).

    The server in it answers GET /health and POST /predict like the API's predict
    endpoint, without the registry. Build it with `docker build -t IMAGE OUT`.

    Example: `edgeops package wrist@3 --out build/wrist --variant tflite-int8`
    """
    from ..serving import build_context

    result = build_context(workspace(ctx), ref, out, variant=variant, force=force, port=port)
    if json_out:
        print_json(result.to_dict())
        return
    console.print(
        f"Wrote the build context of [bold]{result.model}[/] ({result.variant}, "
        f"{result.runtime}) to {result.out}"
    )
    console.print(f"  build: docker build -t {result.image} {result.out}")
    console.print(f"  run:   docker run --rm -p {result.port}:{result.port} {result.image}")
