"""``edgeops drift``: drift reports and alerts from the fleet's telemetry."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..errors import InvalidInput
from ._common import JSON_HELP, console, fmt_value, print_json, table, when, workspace
from .rollout import parse_duration

app = typer.Typer(help="Drift and skew from telemetry: report, skew, alerts.", no_args_is_help=True)


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


def _ci(pair: list[float] | None) -> str:
    return "" if not pair else f"{pair[0]:.2f}-{pair[1]:.2f}"


def _by_group(
    title: str, columns: list[str], part: dict[str, Any], row: Callable[[dict[str, Any]], list]
) -> Any:
    """One table: the whole scope (``all``), then a section of variants, then of devices."""
    t = table(title, ["group", *columns], [["all", *row(part["overall"])]])
    for key in ("variants", "devices"):
        if part[key]:
            t.add_section()
        for name, g in part[key].items():
            t.add_row(name, *[fmt_value(v) for v in row(g)])
    return t


def _agreement_row(g: dict[str, Any]) -> list[Any]:
    return [
        g["n"],
        g["agreeing"],
        _num(g["rate"]),
        _ci(g["ci95"]),
        _num(g["mean_abs_diff"], ".4f"),
        g["non_finite"],
        g["unusable"],
    ]


def _accuracy_row(g: dict[str, Any]) -> list[Any]:
    return [
        g["labelled"],
        g["correct"],
        _num(g["accuracy"]),
        _ci(g["ci"]),
        _num(g["offline_accuracy"]),
        (g["direction"] or "").upper(),
    ]


@app.command("skew")
def skew(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or @ALIAS).")],
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only devices with this tag.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last DURATION, e.g. 1h.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="Newest samples (and labelled samples) to use.")
    ] = 1000,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Production skew: devices against the float model, offline accuracy and their group.

    Agreement of the devices' outputs with the registered float model re-run on
    the sampled inputs, on-device accuracy of labelled samples against the
    offline test accuracy, and devices whose telemetry differs from the rest of
    the scope.

    Example: `edgeops drift skew wrist@3 --tag lab`
    """
    if device and tag:
        raise InvalidInput("give --device or --tag, not both")
    scope = f"device:{device}" if device else f"tag:{tag}" if tag else "fleet"
    start = time.time() - parse_duration(since, "--since") if since else None
    out = _service(ctx).skew(ref, scope=scope, since=start, limit=limit)
    if json_out:
        print_json(out)
        return
    where = f"{out['model']} in {scope}" + (f", last {since}" if since else "")
    reasons = out["reasons"]

    a = out["agreement"]
    if a is None:
        console.print(f"Agreement with the float model: {reasons['agreement']}")
    else:
        console.print(
            _by_group(
                f"{where}: agreement with the float model",
                ["n", "agree", "rate", "95% CI", "|d|", "inf/nan", "unusable"],
                a,
                _agreement_row,
            )
        )
        console.print(
            f"{a['samples']} samples (the newest, {out['limit']} at most); |d|: mean absolute "
            f"score difference; unusable: features or outputs that do not fit the model"
        )

    acc = out["accuracy"]
    if acc is None:
        console.print(f"On-device accuracy: {reasons['accuracy']}")
    else:
        console.print(
            _by_group(
                f"{where}: on-device accuracy against offline",
                ["labelled", "correct", "accuracy", "95% CI", "offline", ""],
                acc,
                _accuracy_row,
            )
        )

    if not out["outliers"]:
        console.print(f"Devices unlike their group: {reasons['outliers']}")
        return
    console.print(
        table(
            f"{where}: each device against the rest",
            ["device", "variant", "predictions", "p (adj.)", "flagged"],
            [
                [
                    o["device"],
                    o["variant"],
                    o["samples"],
                    _num(o["p"], ".2g"),
                    ", ".join(o["flagged"]),
                ]
                for o in out["outliers"]
            ],
        )
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
