"""``edgeops data``: immutable, content-addressed versions of tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import JSON_HELP, console, kv_table, print_json, table, when, workspace

app = typer.Typer(help="Version data sets: add, list, show, diff, get.", no_args_is_help=True)


def version_dict(dv: Any, with_profile: bool = False) -> dict[str, Any]:
    out = {
        "ref": dv.ref,
        "name": dv.dataset.name,
        "version": dv.version,
        "sha256": dv.sha256,
        "size": dv.size,
        "format": dv.format,
        "filename": dv.filename,
        "rows": dv.rows,
        "columns": len(dv.schema),
        "message": dv.message,
        "author": dv.author,
        "created_at": dv.created_at,
        "origin": dv.origin,
        "schema": dv.schema,
    }
    if with_profile:
        out["profile"] = dv.profile
    return out


@app.command("add")
def add(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A .csv or .parquet file.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Data set name.")],
    message: Annotated[str, typer.Option("--message", "-m", help="What changed.")] = "",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Register a file as the next version of a data set (same bytes: same version).

    Example: `edgeops data add readings.csv --name readings -m "March logs"`
    """
    result = workspace(ctx).data.add(path, name, message=message)
    dv = result.version
    if json_out:
        print_json({"created": result.created, **version_dict(dv)})
        return
    if result.created:
        console.print(
            f"Added [bold]{dv.ref}[/]: {dv.rows} rows, {len(dv.schema)} columns, "
            f"sha256 {dv.sha256[:12]}"
        )
    else:
        console.print(f"Unchanged: identical content is already [bold]{dv.ref}[/]")


@app.command("add-from-samples")
def add_from_samples(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Data set to extend (its latest version).")],
    since: Annotated[
        str | None, typer.Option(help="Only samples of the last DURATION, e.g. 7d.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only samples older than DURATION, e.g. 1d.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Only this model: NAME or NAME@VERSION.")] = (
        None
    ),
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    base: Annotated[
        str | None, typer.Option(help="Version to append to, NAME@VERSION (default: latest).")
    ] = None,
    label_column: Annotated[str, typer.Option(help="The table's label column.")] = "label",
    message: Annotated[str, typer.Option("--message", "-m", help="What changed.")] = "",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Append the fleet's labelled samples to a data set as its next version.

    Each sample's raw input becomes a row with the data set's columns (a window
    `ax` fills `ax_000..`); samples already in the base version are left out.

    Example: `edgeops data add-from-samples sensors --since 7d`
    """
    import time

    from ..data.from_samples import add_from_samples as add_samples
    from .rollout import parse_duration

    now = time.time()
    result = add_samples(
        workspace(ctx),
        name,
        since=now - parse_duration(since, "--since") if since else None,
        until=now - parse_duration(until, "--until") if until else None,
        model=model,
        device=device,
        base=base,
        message=message,
        label_column=label_column,
    )
    dv = result.version
    if json_out:
        print_json({"created": result.created, **version_dict(dv)})
        return
    if not result.created:
        console.print(f"Unchanged: identical content is already [bold]{dv.ref}[/]")
        return
    origin = dv.origin
    n = len(origin["devices"])
    console.print(
        f"Added [bold]{dv.ref}[/]: {origin['samples']} rows from {n} device{'s' * (n != 1)} "
        f"appended to {origin['base']} ({dv.rows} rows)"
    )
    if origin["skipped"]:
        counts = ", ".join(f"{k} {n}" for k, n in origin["skipped"].items())
        console.print(f"Skipped: {counts}")


@app.command("list")
def list_(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List data sets with their latest version.

    Example: `edgeops data list --json`
    """
    rows = workspace(ctx).data.names()
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            "Data sets",
            ["name", "versions", "latest", "rows", "columns", "created", "message"],
            [
                [
                    r["name"],
                    r["versions"],
                    r["latest"],
                    r["rows"],
                    r["columns"],
                    when(r["created_at"]),
                    r["message"],
                ]
                for r in rows
            ],
        )
    )


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: latest).")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show a data set version: provenance, schema and per-column profile.

    Example: `edgeops data show readings@2`
    """
    ws = workspace(ctx)
    dv = ws.data.get(ref)
    versions = ws.data.versions(dv.dataset.name)
    if json_out:
        out = version_dict(dv, with_profile=True)
        out["versions"] = [v.version for v in versions]
        print_json(out)
        return
    head = version_dict(dv)
    head.pop("schema")
    if "sample_ids" in head["origin"]:  # thousands of ids: --json has them
        ids = head["origin"]["sample_ids"]
        head["origin"] = {**head["origin"], "sample_ids": f"{len(ids)} ids (see --json)"}
    head["created_at"] = when(dv.created_at)
    head["versions"] = ", ".join(str(v.version) for v in versions)
    console.print(kv_table(f"Data set {dv.ref}", head))
    rows = []
    for col, p in dv.profile["columns"].items():
        rows.append(
            [
                col,
                p["kind"],
                p["missing"],
                p.get("min"),
                p.get("max"),
                p.get("mean"),
                p.get("std"),
                len(p["bin_edges"]) - 1 if "bin_edges" in p else p.get("distinct", ""),
            ]
        )
    console.print(
        table(
            "Profile",
            ["column", "kind", "missing", "min", "max", "mean", "std", "bins/distinct"],
            rows,
        )
    )


@app.command("diff")
def diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="From: NAME@VERSION.")],
    b: Annotated[str, typer.Argument(help="To: NAME@VERSION.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Compare two versions: schema changes and per-column statistics (with PSI drift).

    Example: `edgeops data diff readings@1 readings@2`
    """
    d = workspace(ctx).data.diff(a, b)
    if json_out:
        print_json(d)
        return
    console.print(
        f"[bold]{d['from']}[/] → [bold]{d['to']}[/]: rows {d['rows']['from']} → {d['rows']['to']}"
    )
    for label, key in (("added", "added"), ("removed", "removed")):
        if d[key]:
            console.print(f"columns {label}: {', '.join(d[key])}")
    for r in d["retyped"]:
        console.print(f"column {r['column']} changed kind: {r['from']} → {r['to']}")
    rows = [
        [
            c["column"],
            *(_change(c, s) for s in ("missing", "mean", "std", "min", "max")),
            c.get("psi"),
        ]
        for c in d["columns"]
    ]
    console.print(table("Columns", ["column", "missing", "mean", "std", "min", "max", "psi"], rows))


def _short(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _change(col: dict, stat: str) -> str:
    if stat not in col:
        return ""
    f, t = col[stat]["from"], col[stat]["to"]
    return _short(f) if f == t else f"{_short(f)} → {_short(t)}"


def _short(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@app.command("get")
def get(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (default: latest).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write the exact bytes to.")],
) -> None:
    """Restore the exact bytes of a version to a file (verified against its SHA-256).

    Example: `edgeops data get readings@1 --out readings-v1.csv`
    """
    dv = workspace(ctx).data.export(ref, out)
    console.print(f"Wrote {dv.ref} ({dv.size} bytes, sha256 {dv.sha256[:12]}) to {out}")
