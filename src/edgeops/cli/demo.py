"""``edgeops demo``: the whole flow on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import console


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
    from .train import RichReporter, _quiet_frameworks, native_stderr_silenced, variants_summary

    _quiet_frameworks()
    console.print(f"[bold]edgeops demo[/] in {folder.resolve()}")
    with RichReporter() as rep, native_stderr_silenced():
        r = run_demo(folder, rep, seed=seed)
    title = f"{r.model} (production): variants measured on the held-out split"
    console.print(variants_summary(title, r.metrics, r.variants))
    console.print(f"Next: [bold]cd {folder} && edgeops models show {r.model}[/]")
