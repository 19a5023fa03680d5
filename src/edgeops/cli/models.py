"""``edgeops models``: the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..registry import version_card as version_dict
from ._common import JSON_HELP, console, kv_table, print_json, table, when, workspace

app = typer.Typer(
    help="The model registry: register, list, show, alias, lineage, get.", no_args_is_help=True
)


@app.command("register")
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    file: Annotated[Path, typer.Option("--file", "-f", help=".skops, .keras, .onnx or .tflite")],
    run: Annotated[
        str | None, typer.Option(help="Run that trained it (params, metrics, data).")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Training data set, NAME@VERSION.")] = None,
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Register a model file as the next version of a model.

    Example: `edgeops models register wrist --file model.skops --run 3f9a`
    """
    ws = workspace(ctx)
    run_id = ws.runs.get(run).id if run else None
    dv_id = ws.data.get(data).id if data else None
    mv = ws.registry.register_file(
        name, file, run_id=run_id, dataset_version_id=dv_id, description=description
    )
    if json_out:
        print_json(version_dict(mv, []))
    else:
        console.print(f"Registered [bold]{mv.ref}[/]")


@app.command("list")
def list_(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List models with their latest version and aliases.

    Example: `edgeops models list`
    """
    rows = workspace(ctx).registry.models()
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            "Models",
            ["name", "versions", "latest", "aliases", "updated"],
            [
                [
                    r["name"],
                    r["versions"],
                    r["latest"],
                    ", ".join(f"{a}→{v}" for a, v in sorted(r["aliases"].items())),
                    when(r["updated_at"]),
                ]
                for r in rows
            ],
        )
    )


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show a model card: lineage, hyper-parameters, metrics and variants.

    Example: `edgeops models show wrist@production`
    """
    reg = workspace(ctx).registry
    mv = reg.get_version(ref)
    aliases = sorted(a for a, v in reg.aliases_of(mv.model.name).items() if v == mv.version)
    d = version_dict(mv, aliases)
    if json_out:
        print_json(d)
        return
    head = {
        k: d[k]
        for k in (
            "ref",
            "flavor",
            "aliases",
            "author",
            "description",
            "run",
            "dataset",
            "features",
            "labels",
        )
    }
    head["created_at"] = when(mv.created_at)
    head["aliases"] = ", ".join(aliases)
    console.print(kv_table(f"Model {mv.ref}", head))
    if mv.params:
        console.print(kv_table("Hyper-parameters", mv.params))
    if mv.metrics:
        console.print(kv_table("Metrics", mv.metrics))
    console.print(variants_table(d["variants"], mv.metrics))
    footprints = footprint_table(d["variants"])
    if footprints is not None:
        console.print(footprints)


def _short_toolchain(text: str) -> str:
    """``arm-none-eabi-gcc (15:12.2.rel1-1) 12.2.1 20221205`` -> ``arm-none-eabi-gcc 12.2.1``."""
    import re

    m = re.match(r"(\S+).*?\s(\d+\.\d+(?:\.\d+)?)(?:\s|$)", text)
    return f"{m.group(1)} {m.group(2)}" if m else text


def footprint_table(variants: list[dict[str, Any]]) -> Any:
    """Firmware footprints measured by `edgeops firmware generate --target cortex-m4`, or None."""
    rows = [
        [
            v["name"],
            fp.get("target", ""),
            fp.get("flash_bytes"),
            fp.get("ram_bytes"),
            fp.get("arena_bytes") or "",
            _short_toolchain(fp.get("toolchain", "")),
        ]
        for v in variants
        if isinstance(fp := (v.get("metrics") or {}).get("footprint"), dict)
    ]
    if not rows:
        return None
    return table(
        "Firmware footprint (bytes; flash = text + data, RAM = data + bss)",
        ["variant", "target", "flash", "RAM", "TFLM arena", "toolchain"],
        rows,
    )


def _cell(metrics: dict[str, Any], key: str) -> str:
    v = metrics.get(key)
    if not isinstance(v, (int, float)):
        return ""
    if key.startswith("latency_ms"):
        return f"{v * 1000:.1f}"  # shown in microseconds
    if key == "accuracy_delta":
        return f"{v * 100:+.2f}"  # points
    if key in ("accuracy", "agreement"):
        return f"{v:.4f}"
    return str(int(v))


_VARIANT_COLUMNS = [
    ("accuracy", "acc"),
    ("accuracy_delta", "Δ pts"),
    ("agreement", "agree"),
    ("latency_ms_p50", "p50 µs"),
    ("latency_ms_p95", "p95 µs"),
    ("arena_bytes", "arena"),
]


def variants_table(variants: list[dict[str, Any]], original: dict[str, Any]) -> Any:
    """Variants with the metrics measured in their own runtime on the held-out split."""
    from rich.table import Table

    t = Table(
        title="Variants (measured on the held-out split)", title_justify="left", header_style="bold"
    )
    t.add_column("variant", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    for _, label in _VARIANT_COLUMNS:
        t.add_column(label, justify="right", no_wrap=True)
    for v in variants:
        m = original if v["name"] == "original" else v["metrics"]
        t.add_row(v["name"], str(v["size"]), *(_cell(m, k) for k, _ in _VARIANT_COLUMNS))
    return t


@app.command("alias")
def alias(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="NAME@VERSION the alias should point to (or NAME with --remove).")
    ],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. production, canary.")],
    remove: Annotated[bool, typer.Option("--remove", help="Delete the alias instead.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Point an alias at a version (moving it if it exists; every move is kept).

    Example: `edgeops models alias wrist@3 production` (and `wrist@2 production` to move back)
    """
    reg = workspace(ctx).registry
    move = (
        reg.remove_alias(ref.split("@")[0], alias_name)
        if remove
        else reg.set_alias(ref, alias_name)
    )
    if json_out:
        print_json(move.__dict__)
        return
    if move.to_version is None:
        console.print(f"Removed {move.model}@{move.alias} (was version {move.from_version})")
    elif move.from_version is None:
        console.print(f"{move.model}@{move.alias} → version {move.to_version}")
    else:
        console.print(
            f"{move.model}@{move.alias} moved: version {move.from_version} → {move.to_version}"
        )


@app.command("history")
def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show every alias move of a model, oldest first.

    Example: `edgeops models history wrist`
    """
    events = workspace(ctx).registry.alias_history(name)
    rows = [
        {
            "alias": e.alias,
            "from": e.from_version,
            "to": e.to_version,
            "author": e.author,
            "at": e.at,
        }
        for e in events
    ]
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            f"Alias moves of {name}",
            ["at", "alias", "from", "to", "by"],
            [[when(r["at"]), r["alias"], r["from"], r["to"], r["author"]] for r in rows],
        )
    )


@app.command("lineage")
def lineage(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show where a version came from (run, seeds, data, features) and its variants.

    Example: `edgeops models lineage wrist@production`
    """
    from rich.tree import Tree

    lin = workspace(ctx).registry.lineage(ref)
    if json_out:
        print_json(lin)
        return
    aliases = f" ({', '.join(lin['aliases'])})" if lin["aliases"] else ""
    tree = Tree(f"[bold]{lin['model']}[/]{aliases} by {lin['author']} at {lin['created_at']}")
    if lin["run"]:
        r = lin["run"]
        node = tree.add(f"run {r['id']} [{r['status']}] seeds={r['seeds']}")
        if r["git_commit"]:
            node.add(f"git {r['git_commit'][:12]}{' (dirty)' if r['git_dirty'] else ''}")
        if r["config"]:
            node.add(f"config {r['config']}")
    if lin["dataset"]:
        d = lin["dataset"]
        node = tree.add(f"data {d['ref']} ({d['rows']} rows, sha256 {d['sha256'][:12]})")
        origin = d.get("origin") or {}
        if origin.get("kind") == "fleet_samples":
            node.add(
                f"{origin.get('samples')} labelled fleet samples from "
                f"{len(origin.get('devices', []))} devices added to {origin.get('base')}"
            )
    if lin["features"]:
        tree.add(f"features {lin['features']}")
    variants = tree.add("variants")
    for v in lin["variants"]:
        variants.add(f"{v['name']}: {v['format']}, {v['size']} bytes, sha256 {v['sha256'][:12]}")
    _retraining_chain(workspace(ctx).registry, tree, lin.get("retraining"))
    console.print(tree)


def _retraining_chain(registry: Any, tree: Any, step: dict[str, Any] | None) -> None:
    """Each retraining back to the first version: trigger, champion, decision."""
    from rich.text import Text

    seen: set[str] = set()
    while step and step["champion"] not in seen:
        seen.add(step["champion"])
        node = tree.add(
            Text(
                f"retrained from {step['champion']} (decision {step['decision_id']}, "
                f"trigger {step['trigger']}): {step['decision']}, {step['status']}"
            )
        )
        node.add(Text(str(step["cause"].get("reason", ""))))
        node.add(Text(step["reason"]))
        step = registry.lineage(step["champion"]).get("retraining")


@app.command("get")
def get(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    variant: Annotated[str, typer.Option("--variant", "-v", help="Which variant.")] = "original",
) -> None:
    """Write a variant's verified bytes to a file.

    Example: `edgeops models get wrist@production --variant tflite-int8 --out wrist.tflite`
    """
    v = workspace(ctx).registry.export_variant(ref, variant, out)
    console.print(f"Wrote {variant} ({v.format}, {v.size} bytes, sha256 {v.sha256[:12]}) to {out}")
