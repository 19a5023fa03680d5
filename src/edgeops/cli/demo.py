"""``edgeops demo``: the whole loop on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import console, table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Workspace folder for the demo.")] = Path(
        "edgeops-demo"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the generated data set.")] = 0,
    devices: Annotated[
        int, typer.Option(help="Simulated Raspberry Pi agents.", min=2, max=200)
    ] = 12,
    mqtt_url: Annotated[
        str | None,
        typer.Option(
            "--mqtt-url",
            help="MQTT broker to use (default: 127.0.0.1:1883 if it answers, else one the "
            "demo starts: Mosquitto, or amqtt).",
        ),
    ] = None,
    train_only: Annotated[
        bool, typer.Option("--train-only", help="Only train and quantize; no fleet.")
    ] = False,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Keep the fleet running and serve the dashboard at the end."),
    ] = False,
    port: Annotated[int, typer.Option(help="Dashboard port with --serve.")] = 8470,
) -> None:
    """Run the whole loop: data, training, quantization, a fleet of simulated agents, a
    staged rollout, telemetry, an injected sensor fault, drift alert, retraining and the
    canary rollout of the better model.

    Example: `edgeops demo --dir /tmp/edgeops-demo`
    """
    from ..demo import run_demo, run_loop_demo
    from .train import RichReporter, _quiet_frameworks, native_stderr_silenced, variants_summary

    _quiet_frameworks()
    console.print(f"[bold]edgeops demo[/] in {folder.resolve()}")
    if train_only:
        with RichReporter() as rep, native_stderr_silenced():
            r = run_demo(folder, rep, seed=seed)
        title = f"{r.model} (production): variants measured on the held-out split"
        console.print(variants_summary(title, r.metrics, r.variants))
        console.print(f"Next: [bold]cd {folder} && edgeops models show {r.model}[/]")
        return

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    on_ready = _serve_dashboard(port) if serve else None
    with native_stderr_silenced():
        r = run_loop_demo(
            folder, say, None, seed=seed, devices=devices, mqtt_url=mqtt_url, on_ready=on_ready
        )
    _summary(r)
    console.print(
        f"Next: [bold]cd {folder} && edgeops models lineage wrist-har@production[/], "
        "`edgeops retrain list`, `edgeops serve` for the dashboard"
    )


def _serve_dashboard(port: int) -> Any:
    def on_ready(ws: Any, loop: Any) -> None:
        import uvicorn

        from ..api import create_app
        from ..auth import Role, TokenStore

        token, _ = TokenStore(ws.db).create("demo-dashboard", Role.VIEWER)
        console.print(
            f"Dashboard on http://127.0.0.1:{port}/ with the fleet still running; Ctrl-C to end"
        )
        console.print(f"Sign in with this viewer token (shown once): {token}", markup=False)
        uvicorn.run(create_app(ws), host="127.0.0.1", port=port, log_level="warning")

    return on_ready


def _summary(r: Any) -> None:
    console.print(
        table(
            "Model versions",
            ["version", "aliases", "trained on", "rows", "offline accuracy"],
            [
                [
                    v["ref"],
                    ", ".join(v["aliases"]),
                    v["data"],
                    v["rows"],
                    _num(v["accuracy"], ".4f"),
                ]
                for v in r.versions
            ],
        )
    )
    console.print(
        table(
            "Rollouts",
            ["rollout", "model", "devices", "status", "seconds", "gate verdicts"],
            [
                [
                    x["id"],
                    x["model"],
                    x["devices"],
                    x["status"],
                    _num(x["seconds"], ".1f"),
                    ", ".join("pass" if g["ok"] else "FAIL" for g in x.get("gates", [])),
                ]
                for x in r.rollouts
            ],
        )
    )
    console.print(
        table(
            "Retraining decisions",
            ["id", "trigger", "champion", "challenger", "data", "decision", "status"],
            [
                [
                    d["id"],
                    d["trigger"],
                    d["champion"],
                    d["challenger"] or "-",
                    d["data"] or "-",
                    d["decision"],
                    d["status"],
                ]
                for d in r.decisions
            ],
        )
    )
    console.print(
        table(
            "Drift against each model's baseline",
            ["model", "devices", "predictions", "max PSI", "feature", "flagged features"],
            [
                [
                    x["model"],
                    x["scope"],
                    x["predictions"],
                    _num(x["max_psi"]),
                    x.get("feature") or "-",
                    x["flagged"],
                ]
                for x in r.drift
            ],
        )
    )
    console.print(
        table(
            "Accuracy on the devices (ground truth of every prediction)",
            ["phase", "devices", "model", "predictions", "accuracy"],
            [
                [a["phase"], a["group"], a["model"], a["predictions"], _pct(a["accuracy"])]
                for a in r.accuracy
            ],
        )
    )
    on = sorted({v for v in r.serving.values() if v is not None})
    console.print(
        f"{len(r.serving)} devices serve version(s) {', '.join(map(str, on))}; "
        f"loop took {r.seconds:.0f}s"
    )
