"""``edgeops drift``: drift reports and alerts from the fleet's telemetry."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from ..errors import InvalidInput
from ._common import JSON_HELP, console, print_json, table, when, workspace
from .rollout import parse_duration

app = typer.Typer(help="Drift and skew from telemetry: report, alerts.", no_args_is_help=True)


def _service(ctx: typer.Context) -> Any:
    from ..monitoring.service import MonitoringService

    return MonitoringService(workspace(ctx))


def _num(v: Any, fmt: str = ".3f") -> str:
    return "" if v is None else format(v, fmt)


@app.command("report")
def report(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or @ALIAS).")],
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only devices with this tag.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last DURATION, e.g. 1h.")] = None,
    variant: Annotated[str | None, typer.Option(help="Only this variant.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Per-feature drift of live inputs and outputs against the training baseline.

    Example: `edgeops drift report wrist@3 --tag floor-2 --since 1h`
    """
    if device and tag:
        raise InvalidInput("give --device or --tag, not both")
    scope = f"device:{device}" if device else f"tag:{tag}" if tag else "fleet"
    start = time.time() - parse_duration(since, "--since") if since else None
    out = _service(ctx).report(ref, scope=scope, variant=variant, since=start)
    if json_out:
        print_json(out)
        return
    if not out["variants"]:
        console.print(
            f"No telemetry for {out['model']} in {scope}"
            + (f" in the last {since}" if since else "")
        )
        return
    for name, v in out["variants"].items():
        r = v["report"]
        flagged = set(v["rule"]["flagged"])
        rows = [
            [
                f["name"],
                f["samples"],
                _num(f["psi"]),
                _num(f["js"]),
                _num(f["ks"]),
                _num(f["p_adjusted"], ".2g"),
                "DRIFT" if f["name"] in flagged else "",
            ]
            for f in [*r["features"], r["outputs"]["classes"], r["outputs"]["confidence"]]
        ]
        console.print(
            table(
                f"{out['model']} {name} in {scope}: {r['count']} predictions from "
                f"{len(v['devices'])} devices, {v['windows']} windows",
                ["input/output", "samples", "PSI", "JS", "KS", "p (adj.)", ""],
                rows,
            )
        )
        lat = r["latency_ms"]
        console.print(
            f"error rate {_num(r['error_rate'], '.4f')}, non-finite "
            f"{_num(r['non_finite_rate'], '.4f')}, latency p50 {_num(lat['p50'])} ms "
            f"p95 {_num(lat['p95'])} ms"
        )


@app.command("alerts")
def alerts(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Only this NAME@VERSION.")] = None,
    status: Annotated[str | None, typer.Option(help="open or closed.")] = None,
    evaluate_now: Annotated[
        bool,
        typer.Option(
            "--evaluate", help="Evaluate the alert rules on the telemetry first (needs --model)."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List drift and skew alerts, with what triggered them.

    Example: `edgeops drift alerts --model wrist@3 --evaluate --status open`
    """
    svc = _service(ctx)
    if evaluate_now:
        if not model:
            raise InvalidInput("--evaluate needs --model NAME@VERSION")
        model = svc.ws.registry.get_version(model).ref
        svc.evaluate_alerts(model)
    elif model:
        model = svc.ws.registry.get_version(model).ref
    rows = svc.alerts(model=model, status=status)
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            "Alerts",
            ["id", "status", "model", "scope", "subject", "metric", "value", "opened", "reason"],
            [
                [
                    a["id"],
                    a["status"],
                    a["model"],
                    a["scope"],
                    a["subject"],
                    a["metric"],
                    f"{a['value']:.4g}",
                    when(a["opened_at"]),
                    a["reason"],
                ]
                for a in rows
            ],
        )
    )
