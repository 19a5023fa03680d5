"""``edgeops rollout`` and ``edgeops controller``: staged rollouts over MQTT."""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any

import typer

from ..errors import InvalidInput
from ._common import JSON_HELP, console, print_json, table, when, workspace

app = typer.Typer(
    help="Staged rollouts: start, status, list, pause, resume, abort, rollback.",
    no_args_is_help=True,
)


def parse_duration(text: str, what: str) -> float:
    """Seconds in ``30``, ``30s``, ``5m``, ``2h`` or ``1d``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise InvalidInput(f"{what} {text!r} is not a duration; use e.g. 30s, 5m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_stages(text: str) -> tuple[float, ...]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise InvalidInput(f"--stages {text!r} must be percentages like 5,25,100") from exc
    if (
        not values
        or values[-1] != 100
        or any(b <= a for a, b in itertools.pairwise(values))
        or values[0] <= 0
    ):
        raise InvalidInput(f"--stages {text!r} must increase and end at 100, e.g. 5,25,100")
    return tuple(v / 100 for v in values)


def controller(ctx: typer.Context, with_broker: bool = True):  # -> (RolloutController, client)
    from ..fleet.controller import RolloutController
    from ..fleet.keys import load_key
    from ..mqtt import MqttClient

    ws = workspace(ctx)
    client = MqttClient(ws.settings.mqtt_url).connect() if with_broker else None
    if client is not None:
        ctx.call_on_close(client.close)
    return RolloutController(ws, load_key(ws.settings.keys_dir), client), client


def _progress_table(st: dict[str, Any]) -> Any:
    c = st["counts"]
    return table(
        f"Rollout {st['rollout']}: {st['model']} → {st['selector']}",
        [
            "status",
            "stage",
            "devices",
            "activated",
            "deploying",
            "failed",
            "timed out",
            "reverted",
            "failure ratio",
        ],
        [
            [
                st["status"],
                f"{st['stage'] + 1}/{st['stages']}",
                st["devices"],
                c["activated"],
                c["deploying"] + c["pending"],
                c["failed"] + c["rolled_back"],
                c["timed_out"],
                c["reverted"],
                f"{st['failure_ratio']:.0%} (max {st['max_failures']:.0%})",
            ]
        ],
    )


def drive(ctx: typer.Context, ctl: Any, rid: str, watch: bool, json_out: bool) -> dict:
    """Run the controller until rollout ``rid`` is finished, with a live view."""
    from rich.live import Live

    from ..fleet.controller import TERMINAL

    def done() -> bool:
        return ctl.status(rid)["status"] in TERMINAL

    if json_out or not watch:
        ctl.run(until=done)
    else:
        with Live(_progress_table(ctl.status(rid)), console=console, refresh_per_second=4) as live:
            ctl.run(
                until=done,
                on_step=lambda r, s: r == rid and live.update(_progress_table(ctl.status(rid))),
            )
    for r, kind, detail in ctl.notes:
        if r == rid and not json_out:
            console.print(f"  {kind}: {detail}", markup=False, highlight=False)
    return ctl.status(rid)


@app.command("start")
def start(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or @ALIAS) to roll out.")],
    target: Annotated[str, typer.Option(help="Devices: all, tag:NAME[+tag:X], device:ID[,ID].")],
    variant: Annotated[
        str | None,
        typer.Option(
            help="Variant for every device (default: the best one each device's runtime runs)."
        ),
    ] = None,
    stages: Annotated[
        str, typer.Option(help="Cumulative percentages of the targets.")
    ] = "5,25,100",
    max_failures: Annotated[
        float, typer.Option(help="Abort above this failure percentage.")
    ] = 10.0,
    stage_wait: Annotated[str, typer.Option(help="Soak time between stages, e.g. 10m.")] = "0s",
    timeout: Annotated[str, typer.Option(help="Time a device has per attempt.")] = "10m",
    retries: Annotated[
        int, typer.Option(help="Extra attempts for a device that times out.", min=0, max=100)
    ] = 2,
    probation: Annotated[
        str, typer.Option(help="Devices watch a new model this long and roll back on errors.")
    ] = "60s",
    hardware: Annotated[
        str, typer.Option(help="Comma-separated hardware the manifests allow; * for any.")
    ] = "*",
    artifact_url: Annotated[
        str | None,
        typer.Option(
            "--artifact-url",
            metavar="BASE",
            help="http://HOST:PORT of `edgeops artifacts serve`: manifests carry the "
            "artifact's URL there, for devices that download by HTTP.",
        ),
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            help="Quality gate judged on the new version's telemetry while a stage soaks "
            "(repeatable): error_rate<=X, p95_latency_ms<=X, confidence>=X, drift_psi<=X, "
            "drift_flagged<=N. A breach aborts and rolls back; needs `edgeops collector`.",
        ),
    ] = None,
    gate_min_count: Annotated[
        int,
        typer.Option(help="Predictions per variant a gate verdict needs.", min=1),
    ] = 500,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="Only create it; a running `edgeops controller` drives it."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Roll a model version out to devices in stages, aborting and rolling back on failures.

    Example: `edgeops rollout start wrist@3 --target tag:lab --stages 5,25,100 --max-failures 10`

    Example with quality gates: `edgeops rollout start wrist@3 --target all --stage-wait 10m
    --gate error_rate<=0.02 --gate drift_flagged<=0`
    """
    from ..fleet.controller import RolloutOptions
    from ..fleet.deploy import ManifestOptions
    from ..monitoring.gates import QualityGates

    if not 0 <= max_failures <= 100:
        raise InvalidInput("--max-failures is a percentage between 0 and 100")
    opts = RolloutOptions(
        stages=parse_stages(stages),
        max_failures=max_failures / 100,
        stage_wait=parse_duration(stage_wait, "--stage-wait"),
        timeout=parse_duration(timeout, "--timeout"),
        retries=retries,
        variant=variant,
        hardware=tuple(h.strip() for h in hardware.split(",") if h.strip()),
        manifest=ManifestOptions(
            probation_s=parse_duration(probation, "--probation"), artifact_url_base=artifact_url
        ),
        gates=QualityGates.parse(gate or [], gate_min_count),
    )
    ctl, client = controller(ctx)
    ctl.fleet.sync(client)
    rid = ctl.create(ref, target, opts)
    st = ctl.status(rid)
    if not json_out:
        console.print(
            f"Rollout [bold]{rid}[/]: {st['model']} to {st['devices']} devices "
            f"in stages of {st['stage_sizes']}"
        )
        for device, why in st["skipped"].items():
            console.print(f"  skipped {device}: {why}")
    if not detach:
        st = drive(ctx, ctl, rid, watch=True, json_out=json_out)
    if json_out:
        print_json(st)
    elif not detach:
        console.print(
            f"Rollout {rid} {st['status']}" + (f": {st['reason']}" if st["reason"] else "")
        )
    if st["status"] in ("aborted", "rolled_back"):
        raise typer.Exit(8)


@app.command("status")
def status(
    ctx: typer.Context,
    rollout_id: Annotated[str | None, typer.Argument(help="Rollout id (default: newest).")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep updating until it finishes.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show a rollout's progress and each device's state; --watch follows it live.

    Example: `edgeops rollout status r-1a2b3c4d --watch`
    """
    import time

    from rich.live import Live

    from ..fleet.controller import TERMINAL

    ctl, _ = controller(ctx, with_broker=False)
    if rollout_id is None:
        rows = ctl.list()
        if not rows:
            raise InvalidInput("there are no rollouts yet; start one with `edgeops rollout start`")
        rollout_id = rows[0]["id"]
    st = ctl.status(rollout_id)
    if watch and not json_out:
        with Live(_progress_table(st), console=console, refresh_per_second=2) as live:
            while st["status"] not in TERMINAL:
                time.sleep(0.5)
                st = ctl.status(rollout_id)
                live.update(_progress_table(st))
    if json_out:
        print_json(st)
        return
    if not watch:
        console.print(_progress_table(st))
    console.print(
        table(
            "Devices",
            ["device", "variant", "status", "attempt", "seq", "reason"],
            [
                [d, x["variant"], x["status"], x["attempt"], x["seq"], x["reason"]]
                for d, x in st["devices_detail"].items()
            ],
        )
    )
    if st.get("gates"):
        console.print("Quality gates: " + ", ".join(st["gates"]), markup=False)
        console.print(
            table(
                "Gate verdicts",
                ["stage", "verdict", "reason"],
                [
                    [v["stage"], {True: "pass", False: "FAIL"}.get(v["ok"], "-"), v["reason"]]
                    for v in st.get("verdicts", [])
                ],
            )
        )


@app.command("list")
def list_(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List rollouts, newest first.

    Example: `edgeops rollout list`
    """
    ctl, _ = controller(ctx, with_broker=False)
    rows = ctl.list()
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            "Rollouts",
            ["id", "model", "target", "status", "devices", "created"],
            [
                [
                    r["id"],
                    r["model"],
                    r["selector"],
                    r["status"],
                    r["devices"],
                    when(r["created_at"]),
                ]
                for r in rows
            ],
        )
    )


def _request(
    ctx: typer.Context, rollout_id: str, op: str, reason: str, wait: bool, json_out: bool
) -> None:
    ctl, _ = controller(ctx, with_broker=wait)
    ctl.request(rollout_id, op, reason)
    if wait:
        st = drive(ctx, ctl, rollout_id, watch=not json_out, json_out=json_out)
    else:
        st = ctl.status(rollout_id)
    if json_out:
        print_json(st)
    else:
        console.print(f"Rollout {rollout_id}: {op} requested; now {st['status']}")


@app.command("pause")
def pause(
    ctx: typer.Context,
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Pause a rollout: no new stage starts and no retry is sent until it is resumed.

    Example: `edgeops rollout pause r-1a2b3c4d`
    """
    _request(ctx, rollout_id, "pause", "", wait=False, json_out=json_out)


@app.command("resume")
def resume(
    ctx: typer.Context,
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    detach: Annotated[
        bool, typer.Option("--detach", help="Leave it to a running controller.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Resume a paused rollout (and drive it to the end unless --detach).

    Example: `edgeops rollout resume r-1a2b3c4d`
    """
    _request(ctx, rollout_id, "resume", "", wait=not detach, json_out=json_out)


@app.command("abort")
def abort(
    ctx: typer.Context,
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "operator abort",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Abort a rollout and roll back the devices it changed.

    Example: `edgeops rollout abort r-1a2b3c4d --reason "battery drain"`
    """
    _request(ctx, rollout_id, "abort", reason, wait=True, json_out=json_out)


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "operator rollback",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Move every device a rollout changed back to its previous model (also after it
    completed).

    Example: `edgeops rollout rollback r-1a2b3c4d`
    """
    _request(ctx, rollout_id, "rollback", reason, wait=True, json_out=json_out)


def controller_cmd(
    ctx: typer.Context,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit when no rollout is left to drive.")
    ] = False,
) -> None:
    """Run the rollout controller: drives every rollout, records device state and events,
    re-signs desired states before they expire.

    Example: `edgeops controller`
    """
    ctl, client = controller(ctx)
    ctl.fleet.sync(client)
    console.print(f"controller {ctl.owner} on fleet {ctl.fleet.fleet}; Ctrl-C to stop")
    try:
        ctl.run(until=(lambda: not ctl.active()) if until_idle else (lambda: False))
    except KeyboardInterrupt:
        console.print("stopped")
