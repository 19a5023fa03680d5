"""``edgeops collector`` and ``edgeops labels``: monitoring data in, ground truth on top."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Annotated, Any

import typer

from ..errors import InvalidInput
from ._common import JSON_HELP, console, kv_table, print_json, table, workspace

labels_app = typer.Typer(
    help="Ground-truth labels for sampled predictions: add, list, accuracy.",
    no_args_is_help=True,
)


def monitoring_store(ctx: typer.Context):  # -> MonitoringStore
    from ..monitoring.store import MonitoringStore

    ws = workspace(ctx)
    return MonitoringStore(ws.db, ws.settings.fleet)


def collector_cmd(
    ctx: typer.Context,
    group: Annotated[
        str, typer.Option(help="Shared subscription group: collectors in one group split the load.")
    ] = "edgeops-collector",
    client_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="MQTT client id; keep it across restarts so unacknowledged messages are "
            "redelivered. Default: edgeops-collector-FLEET-HOSTNAME.",
            show_default=False,
        ),
    ] = None,
    mqtt: Annotated[
        str,
        typer.Option(
            "--mqtt", help="MQTT version: 5 (shared subscription) or 3.1.1 (one collector only)."
        ),
    ] = "5",
    batch_size: Annotated[int, typer.Option(help="Messages per database transaction.")] = 500,
    session_expiry: Annotated[
        int, typer.Option(help="Seconds the broker keeps undelivered messages while away.")
    ] = 3600,
    reorder_window: Annotated[
        int,
        typer.Option(help="Reject a window this many seq numbers behind its boot's newest."),
    ] = 100_000,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: run until stopped)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the totals as JSON at exit.")
    ] = False,
) -> None:
    """Store devices' telemetry, samples, labels, events and states as they arrive.

    Example: `edgeops collector --group collectors --id collector-1`
    """
    from ..monitoring.collector import Collector, CollectorOptions, tune_gc
    from ..monitoring.ingest import Ingestor

    ws = workspace(ctx)
    if mqtt not in ("5", "3.1.1"):
        raise InvalidInput(f"--mqtt {mqtt!r}: use 5 or 3.1.1")
    opts = CollectorOptions(
        group=group,
        client_id=client_id,
        protocol=mqtt,
        batch_size=batch_size,
        queue_size=max(2000, 4 * batch_size),
        receive_maximum=min(65535, 2 * batch_size),
        session_expiry=session_expiry,
    )
    _log_to_stderr()
    if reorder_window < 1:
        raise InvalidInput("--reorder-window must be at least 1")
    ingestor = Ingestor(ws.db, ws.settings.fleet, reorder_window=reorder_window)
    collector = Collector(ingestor, ws.settings.mqtt_url, opts)
    _sync_states(ws)
    tune_gc()
    collector.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: collector.stop())
    how = f"shared group {group}" if mqtt == "5" else "MQTT 3.1.1, no shared subscription"
    print(
        f"collector {collector.client_id} on fleet {ws.settings.fleet} ({how}); Ctrl-C to stop",
        file=sys.stderr,
    )
    try:
        collector.run(max_seconds=duration)
    finally:
        collector.close()
    totals = {
        "client_id": collector.client_id,
        "messages": collector.received,
        "batches": collector.batches,
        "stored": dict(collector.accepted),
        "rejected": dict(collector.rejected),
    }
    if json_out:
        print_json(totals)
    else:
        console.print(kv_table("Collector totals", totals))


def _log_to_stderr() -> None:
    log = logging.getLogger("edgeops.collector")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _sync_states(ws: Any) -> None:
    """Every device's retained state first, so a device that appeared while no collector
    ran is known before its telemetry (which the session may hold) is checked."""
    from ..fleet.store import FleetStore
    from ..mqtt import MqttClient

    with MqttClient(ws.settings.mqtt_url) as client:
        FleetStore(ws.db, ws.settings.fleet).sync(client)


@labels_app.command("add")
def labels_add(
    ctx: typer.Context,
    sample_id: Annotated[str, typer.Argument(help="Sample id, e.g. pi-07/5f0c/4.")],
    label: Annotated[str, typer.Argument(help="The true class of that sample.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Attach a ground-truth label to a sampled prediction (replaces an earlier label).

    Example: `edgeops labels add pi-07/5f0c/4 walk`
    """
    store = monitoring_store(ctx)
    status = store.add_label(sample_id, label)
    s = store.sample(sample_id)
    out = {"sample_id": sample_id, "label": label, "predicted": s.predicted, "status": status}
    if json_out:
        print_json(out)
    else:
        right = "right" if s.predicted == label else "wrong"
        console.print(
            f"{sample_id}: label {label} {status}; the device predicted {s.predicted} ({right})"
        )


@labels_app.command("list")
def labels_list(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="NAME or NAME@VERSION.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    unlabelled: Annotated[
        bool, typer.Option("--unlabelled", help="Only samples without a label yet.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List sampled predictions, newest first, with their labels.

    Example: `edgeops labels list --model wrist --unlabelled`
    """
    rows = [
        {
            "sample_id": s.sample_id,
            "device": s.device_id,
            "model": s.model_ref,
            "variant": s.variant,
            "ts": s.ts,
            "predicted": s.predicted,
            "label": s.label,
        }
        for s in monitoring_store(ctx).samples(
            model, device=device, labelled=False if unlabelled else None, limit=limit
        )
    ]
    if json_out:
        print_json(rows)
        return
    cols = ["sample_id", "device", "model", "variant", "predicted", "label"]
    console.print(table("Samples", cols, [[r[c] for c in cols] for r in rows]))


@labels_app.command("accuracy")
def labels_accuracy(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="NAME or NAME@VERSION.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    by_device: Annotated[bool, typer.Option("--by-device", help="One row per device.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """On-device accuracy: the share of labelled samples the device predicted right.

    Example: `edgeops labels accuracy --model wrist@3 --by-device`
    """
    store = monitoring_store(ctx)
    if by_device:
        groups = store.accuracy(model, device=device, by_device=True)
        out: Any = {d: a.to_dict() for d, a in sorted(groups.items())}
    else:
        out = store.accuracy(model, device=device).to_dict()
    if json_out:
        print_json(out)
        return
    rows = out.items() if by_device else [("all", out)]
    console.print(
        table(
            "On-device accuracy",
            ["device", "labelled", "correct", "accuracy"],
            [[d, a["labelled"], a["correct"], a["accuracy"]] for d, a in rows],
        )
    )
