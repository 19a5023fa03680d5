"""``edgeops demo``: the whole flow on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import console, table


def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Workspace folder for the demo.")] = Path(
        "edgeops-demo"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the generated data set.")] = 0,
) -> None:
    """Run the end-to-end demo in a workspace: data, features, training, quantization,
    registry.

    Example: `edgeops demo --dir /tmp/edgeops-demo`
    """
    from ..demo import run_demo
    from .train import RichReporter, _quiet_frameworks, native_stderr_silenced

    _quiet_frameworks()
    console.print(f"[bold]edgeops demo[/] in {folder.resolve()}")
    with RichReporter() as rep, native_stderr_silenced():
        r = run_demo(folder, rep, seed=seed)
    rows = [
        [
            "original",
            r.metrics["accuracy"],
            "",
            r.metrics["size_bytes"],
            r.metrics["latency_ms_p50"],
        ]
    ]
    rows += [
        [n, m["accuracy"], m["agreement"], m["size_bytes"], m["latency_ms_p50"]]
        for n, m in r.variants.items()
    ]
    console.print(
        table(
            f"{r.model} (production): variants measured on the held-out split",
            ["variant", "accuracy", "agreement", "bytes", "p50 ms"],
            rows,
        )
    )
    console.print(f"Next: [bold]cd {folder} && edgeops models show {r.model}[/]")
