"""``edgeops features``: the feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import JSON_HELP, console, kv_table, print_json, table, when, workspace

app = typer.Typer(
    help="Feature definitions: add, list, search, show, revert, materialize.",
    no_args_is_help=True,
)


def version_dict(fv: Any, models: list[str] | None = None) -> dict[str, Any]:
    out = {
        "ref": fv.ref,
        "name": fv.feature_set.name,
        "version": fv.version,
        "current": fv.feature_set.current_version == fv.version,
        "definition_hash": fv.definition_hash,
        "description": fv.description,
        "tags": fv.tags,
        "columns": fv.columns,
        "author": fv.author,
        "created_at": fv.created_at,
        "spec": fv.spec,
    }
    if models is not None:
        out["models"] = models
    return out


@app.command("add")
def add(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Feature spec, YAML or JSON.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Register a feature definition (same definition: same version) and make it current.

    Example: `edgeops features add features/wrist.yaml`
    """
    fv, created = workspace(ctx).features.add(spec)
    if json_out:
        print_json({"created": created, **version_dict(fv)})
    elif created:
        console.print(f"Added [bold]{fv.ref}[/] (current); inputs: {len(fv.columns)} columns")
    else:
        console.print(f"Unchanged definition: [bold]{fv.ref}[/] (now current)")


@app.command("list")
def list_(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List feature sets with their current version.

    Example: `edgeops features list`
    """
    rows = workspace(ctx).features.sets()
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            "Feature sets",
            ["name", "current", "versions", "tags", "inputs", "description"],
            [
                [
                    r["name"],
                    r["current"],
                    r["versions"],
                    ", ".join(r["tags"]),
                    len(r["columns"]),
                    r["description"],
                ]
                for r in rows
            ],
        )
    )


@app.command("search")
def search(
    ctx: typer.Context,
    text: Annotated[
        str, typer.Argument(help="Text to find in names, descriptions, tags, columns.")
    ],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Find feature versions by name, description, tag or input column.

    Example: `edgeops features search accelerometer`
    """
    rows = workspace(ctx).features.search(text)
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            f"Feature versions matching {text!r}",
            ["ref", "current", "matched", "tags", "description"],
            [
                [
                    r["ref"],
                    "yes" if r["current"] else "",
                    ", ".join(r["matched"]),
                    ", ".join(r["tags"]),
                    r["description"],
                ]
                for r in rows
            ],
        )
    )


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME (current), NAME@VERSION or NAME@latest.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show a feature version: its definition and the model versions trained with it.

    Example: `edgeops features show wrist@2`
    """
    fs = workspace(ctx).features
    fv = fs.get(ref)
    d = version_dict(fv, fs.models_using(fv.ref))
    if json_out:
        print_json(d)
        return
    head = {k: d[k] for k in ("ref", "current", "definition_hash", "description", "author")}
    head.update(
        tags=", ".join(d["tags"]),
        created_at=when(fv.created_at),
        models=", ".join(d["models"]) or "(none)",
    )
    console.print(kv_table(f"Features {fv.ref}", head))
    console.print(
        table(
            "Steps",
            ["#", "op", "settings"],
            [
                [i, st["op"], {k: v for k, v in st.items() if k != "op"}]
                for i, st in enumerate(fv.spec["steps"])
            ],
        )
    )


@app.command("history")
def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Feature set name.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show every change of a feature set's current version (adds and reverts).

    Example: `edgeops features history wrist`
    """
    rows = [
        {
            "action": e.action,
            "from": e.from_version,
            "to": e.to_version,
            "author": e.author,
            "at": e.at,
        }
        for e in workspace(ctx).features.history(name)
    ]
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            f"History of {name}",
            ["at", "action", "from", "to", "by"],
            [[when(r["at"]), r["action"], r["from"], r["to"], r["author"]] for r in rows],
        )
    )


@app.command("revert")
def revert(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Feature set name.")],
    to: Annotated[int, typer.Option("--to", help="Version to make current again.", min=1)],
) -> None:
    """Make an earlier version current again; history keeps every change.

    Example: `edgeops features revert wrist --to 1`
    """
    before, after = workspace(ctx).features.revert(name, to)
    console.print(f"{name}: current version {before} → {after}")


@app.command("materialize")
def materialize(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Feature version, NAME@VERSION.")],
    data: Annotated[str, typer.Option("--data", help="Data version, NAME@VERSION.")],
    out: Annotated[Path | None, typer.Option("--out", help="Also write the table as CSV.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Compute the feature table of a data version once (reused afterwards).

    Example: `edgeops features materialize wrist@2 --data sensors@1 --out wrist.csv`
    """
    ws = workspace(ctx)
    dv = ws.data.get(data)
    with console.status(f"materializing {ref} on {dv.ref}"):
        m = ws.features.materialize(ref, dv, ws.data.load_frame(dv.ref))
    info = {
        "features": m.record.feature_version.ref,
        "data": dv.ref,
        "cached": m.cached,
        "rows": m.record.rows,
        "columns": m.record.n_features,
        "sha256": m.record.sha256,
        "feature_names": list(m.fitted.feature_names),
    }
    if out is not None:
        import pandas as pd

        from ..datasets import write_table

        write_table(pd.DataFrame(m.X, columns=list(m.fitted.feature_names)), out)
        info["out"] = str(out)
    if json_out:
        print_json(info)
        return
    verb = "Reused cached" if m.cached else "Computed"
    console.print(
        f"{verb} {info['features']} on {dv.ref}: {info['rows']} rows × "
        f"{info['columns']} features (sha256 {m.record.sha256[:12]})"
    )
