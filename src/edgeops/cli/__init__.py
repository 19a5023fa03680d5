"""The ``edgeops`` command line: one command group per area, thin over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from . import artifacts as artifacts_cmds
from . import broker as broker_cmds
from . import ci as ci_cmds
from . import data as data_cmds
from . import demo as demo_cmd
from . import drift as drift_cmds
from . import features as features_cmds
from . import firmware as firmware_cmds
from . import fleet as fleet_cmds
from . import models as models_cmds
from . import monitor as monitor_cmds
from . import package as package_cmd
from . import retrain as retrain_cmds
from . import rollout as rollout_cmds
from . import runs as runs_cmds
from . import serve as serve_cmd
from . import tokens as tokens_cmds
from . import train as train_cmds
from ._common import EdgeopsGroup, console, kv_table, print_json

app = typer.Typer(
    cls=EdgeopsGroup,
    help="edgeops: from data to a fleet of edge devices, and keeping the models healthy there.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data_cmds.app, name="data")
app.add_typer(features_cmds.app, name="features")
app.add_typer(runs_cmds.app, name="runs")
app.add_typer(fleet_cmds.app, name="fleet")
app.add_typer(fleet_cmds.keys_app, name="keys")
app.add_typer(broker_cmds.app, name="broker")
app.add_typer(rollout_cmds.app, name="rollout")
app.add_typer(drift_cmds.app, name="drift")
app.command("controller")(rollout_cmds.controller_cmd)
app.command("collector")(monitor_cmds.collector_cmd)
app.add_typer(monitor_cmds.labels_app, name="labels")
app.add_typer(models_cmds.app, name="models")
app.add_typer(artifacts_cmds.app, name="artifacts")
app.add_typer(firmware_cmds.app, name="firmware")
app.command("train")(train_cmds.train)
app.command("quantize")(train_cmds.quantize)
app.command("check")(train_cmds.check)
app.command("demo")(demo_cmd.demo)
app.command("serve")(serve_cmd.serve)
app.command("package")(package_cmd.package)
app.add_typer(retrain_cmds.app, name="retrain")
app.add_typer(ci_cmds.app, name="ci")
app.add_typer(tokens_cmds.app, name="tokens")
app.add_typer(tokens_cmds.audit_app, name="audit")


def _version(value: bool) -> None:
    if value:
        console.print(f"edgeops {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Workspace folder (holds edgeops.toml). Default: $EDGEOPS_HOME or the nearest "
            "edgeops.toml above the current folder.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """edgeops: from data to a fleet of edge devices, and keeping the models healthy there.

    Example: `edgeops init && edgeops data add readings.csv --name readings`
    """
    ctx.obj = {"workspace": workspace}


@app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="Folder for the workspace.")] = Path("."),
    db_url: Annotated[
        str | None,
        typer.Option(help="Database URL, e.g. postgresql://user@host/db. Default: SQLite in DIR."),
    ] = None,
    mqtt_url: Annotated[str | None, typer.Option(help="MQTT broker URL.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a workspace: edgeops.toml plus a local store (an existing one is left as it is).

    Example: `edgeops init my-project --db-url postgresql://postgres@127.0.0.1/edgeops`
    """
    from ..workspace import Workspace

    ws, created = Workspace.init(folder, db_url=db_url, mqtt_url=mqtt_url)
    info = {"created": created, **ws.settings.describe(), "schema": ws.db.schema_version()}
    ws.close()
    if json_out:
        print_json(info)
        return
    verb = "Created" if created else "Found existing"
    console.print(f"{verb} workspace in [bold]{ws.settings.home}[/]")
    console.print(kv_table(None, info))


@app.command("info")
def info(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the workspace's settings, its store's schema version and what it holds.

    Example: `edgeops info --json`
    """
    from ._common import workspace

    ws = workspace(ctx)
    out = {
        **ws.settings.describe(),
        "schema": ws.db.schema_version(),
        "datasets": len(ws.data.names()),
        "models": len(ws.registry.models()),
    }
    if json_out:
        print_json(out)
    else:
        console.print(kv_table(None, out))


def main() -> None:
    app()
