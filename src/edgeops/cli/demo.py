"""``edgeops demo``: the whole flow on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import console, kv_table


def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Workspace folder for the demo.")] = Path(
        "edgeops-demo"
    ),
    seed: Annotated[int, typer.Option(help="Random seed of the run.")] = 0,
) -> None:
    """Run the end-to-end demo in a fresh workspace and print the resulting model card.

    Example: `edgeops demo --dir /tmp/edgeops-demo`
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..demo import run_demo

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=None)

        def step(msg: str) -> None:
            progress.update(task, description=msg)
            progress.console.print(f"• {msg}")

        result = run_demo(folder, step=step, seed=seed)
        progress.update(task, description="done")
    console.print(
        kv_table(
            "Demo result",
            {
                "workspace": result.workspace,
                "dataset": result.dataset,
                "run": result.run_id,
                "model": f"{result.model} (production)",
                "accuracy": result.accuracy,
            },
        )
    )
    console.print(f"Next: [bold]edgeops -w {result.workspace} models show digits@production[/]")
