"""``edgeops tokens``: API tokens for the HTTP API; ``edgeops audit``: the audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import (
    JSON_HELP,
    console,
    err_console,
    fmt_value,
    print_json,
    table,
    when,
    workspace,
)

app = typer.Typer(
    help="API tokens for the HTTP API and the dashboard: create, list, revoke.",
    no_args_is_help=True,
)
audit_app = typer.Typer(
    help="The audit log: rollouts, alias moves, retraining decisions, keys and tokens.",
    no_args_is_help=True,
)


def _store(ctx: typer.Context):  # -> TokenStore
    from ..auth import TokenStore

    return TokenStore(workspace(ctx).db)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who or what uses it, e.g. grafana, alice, ci.")],
    role: Annotated[
        str, typer.Option("--role", help="viewer (read), operator (also change), or admin.")
    ] = "viewer",
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Lifetime such as 30m, 12h, 90d or 2w. Default: never."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Create an API token and print it once; only its SHA-256 is stored.

    Example: `edgeops tokens create grafana --role viewer --expires 90d`
    """
    from ..auth import Role, parse_duration

    lifetime = parse_duration(expires) if expires else None
    token, info = _store(ctx).create(name, Role.parse(role), lifetime)
    if json_out:
        print_json({**info.to_dict(), "token": token})
        return
    console.print(token, markup=False, highlight=False)
    until = f"until {when(info.expires_at)} UTC" if info.expires_at else "without expiry"
    err_console.print(
        f"Token {info.name!r} ({info.role}) created, valid {until}. It is shown only now: "
        "store it where it is used (Authorization: Bearer <token>).",
        markup=False,
        highlight=False,
    )


@app.command("list")
def list_tokens(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List the API tokens (never the tokens themselves): role, status, creation, last use.

    Example: `edgeops tokens list --json`
    """
    rows = [t.to_dict() for t in _store(ctx).list()]
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("No API tokens; create one with `edgeops tokens create NAME`.")
        return
    cols = ["name", "role", "status", "created_by", "created_at", "expires_at", "last_used_at"]
    console.print(
        table(
            "API tokens",
            cols,
            [[r[c] if not c.endswith("_at") else when(r[c]) for c in cols] for r in rows],
        )
    )


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the token to revoke.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Revoke a token: requests with it are refused (401) from now on.

    Example: `edgeops tokens revoke grafana`
    """
    info = _store(ctx).revoke(name)
    if json_out:
        print_json(info.to_dict())
        return
    console.print(f"Token {info.name!r} ({info.role}) revoked.", markup=False, highlight=False)


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest entries to show.")] = 50,
    action: Annotated[
        str | None,
        typer.Option("--action", help="Only this action (alias.move) or family (rollout)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List the audit log, newest first: when, who, action, subject, details.

    Example: `edgeops audit list --limit 20 --action rollout`
    """
    from .. import audit

    rows = audit.entries(workspace(ctx).db, limit=limit, action=action)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("The audit log is empty.")
        return
    console.print(
        table(
            "Audit log",
            ["when", "actor", "action", "subject", "details"],
            [
                [when(r["at"]), r["actor"], r["action"], r["subject"], fmt_value(r["details"])]
                for r in rows
            ],
        )
    )
