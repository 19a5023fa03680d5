"""What every command shares: the workspace, output as tables or JSON, error translation."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ..errors import EdgeopsError

console = Console()
err_console = Console(stderr=True)

JSON_HELP = "Print JSON instead of a table, for scripts."


class EdgeopsGroup(TyperGroup):
    """The root command group: turns library errors into one-line messages and exit codes."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeopsError as exc:
            err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


def workspace(ctx: typer.Context):  # -> Workspace
    """The workspace chosen by ``--workspace``, ``EDGEOPS_HOME`` or the current folder."""
    from ..workspace import Workspace

    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    if "ws" not in obj:
        obj["ws"] = Workspace.open(obj.get("workspace"))
        root.obj = obj
        root.call_on_close(obj["ws"].close)
    return obj["ws"]


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot encode {type(o).__name__}")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default, sort_keys=False) + "\n")


def when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else ""


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=_default)
    return "" if v is None else str(v)


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[fmt_value(v) for v in r])
    return t


def kv_table(title: str | None, items: dict[str, Any]) -> Table:
    return table(title, ["key", "value"], [[k, v] for k, v in items.items()])
