"""``edgeops runs``: the metadata store of training runs."""

from __future__ import annotations

from typing import Annotated

import typer

from ..runs import run_record as run_dict
from ._common import JSON_HELP, console, kv_table, print_json, table, when, workspace

app = typer.Typer(help="Inspect training runs: list, show, compare.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 50,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    name: Annotated[str | None, typer.Option(help="Only runs with this name.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List training runs, newest first.

    Example: `edgeops runs list --status gated`
    """
    runs = workspace(ctx).runs.list(limit=limit, status=status, name=name)
    if json_out:
        print_json([run_dict(r, full=False) for r in runs])
        return
    rows = []
    for r in runs:
        metric = next(iter(r.metrics.items()), ("", ""))
        rows.append(
            [
                r.id,
                r.name,
                r.status,
                when(r.started_at),
                r.dataset_version.ref if r.dataset_version else "",
                f"{metric[0]}={metric[1]:.4g}" if isinstance(metric[1], float) else "",
                r.reason[:60],
            ]
        )
    console.print(
        table("Runs", ["id", "name", "status", "started", "dataset", "metric", "reason"], rows)
    )


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix of it).")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show one run: seeds, hyper-parameters, metrics, config file, data, environment.

    Example: `edgeops runs show 3f9a`
    """
    run = workspace(ctx).runs.get(run_id)
    d = run_dict(run)
    if json_out:
        print_json(d)
        return
    head = {
        k: d[k]
        for k in (
            "id",
            "name",
            "kind",
            "status",
            "reason",
            "dataset",
            "features",
            "git_commit",
            "git_dirty",
            "author",
            "config_name",
        )
    }
    head["started_at"], head["finished_at"] = when(run.started_at), when(run.finished_at)
    console.print(kv_table(f"Run {run.id}", head))
    for part in ("seeds", "params", "metrics", "packages"):
        if d[part]:
            console.print(kv_table(part.capitalize(), d[part]))
    if run.config_text:
        console.rule(f"config: {run.config_name or '(inline)'}")
        console.print(run.config_text, markup=False, highlight=False)


@app.command("compare")
def compare(
    ctx: typer.Context,
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Put runs side by side: seeds, hyper-parameters and metrics (differences marked *).

    Example: `edgeops runs compare 3f9a 7c21`
    """
    cmp = workspace(ctx).runs.compare(run_ids)
    if json_out:
        print_json(cmp)
        return
    for part in ("seeds", "params", "metrics"):
        differ = set(cmp[f"{part}_differ"])
        rows = [[("* " if k in differ else "  ") + k, *vals] for k, vals in cmp[part].items()]
        console.print(table(part.capitalize(), ["key", *cmp["runs"]], rows))
