"""``edgeops retrain``: retraining policies, retraining by hand, the watcher, decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ._common import JSON_HELP, console, kv_table, print_json, table, when, workspace


class _RetrainGroup(TyperGroup):
    """``edgeops retrain NAME`` is ``edgeops retrain run NAME``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RetrainGroup,
    help="Retrain models on drift, new data or schedules: `edgeops retrain NAME` by hand, "
    "`watch` for the policies, `list` for the decisions.",
    no_args_is_help=True,
)
policy_app = typer.Typer(help="Retraining policies, one per model.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


def _policy_dict(p: Any) -> dict[str, Any]:
    ro = p.rollout
    return {
        "model": p.model,
        "champion": p.champion,
        "triggers": p.triggers() or ["none (by hand only)"],
        "from_samples": p.from_samples,
        "holdout": p.holdout,
        "min_new_samples": p.min_new_samples,
        "min_improvement": p.min_improvement,
        "action": p.action,
        "promote": p.promote,
        "cooldown_s": p.cooldown,
        "rollout": {
            "target": ro.target,
            "stages": [round(s * 100, 2) for s in ro.stages],
            "stage_wait_s": ro.stage_wait,
            "max_failures": ro.max_failures,
            "timeout_s": ro.timeout,
            "gates": list(ro.gates),
            "gate_min_count": ro.gate_min_count,
        },
    }


@policy_app.command("set")
def policy_set(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name (must match the file's `model`).")],
    file: Annotated[Path, typer.Argument(help="Policy YAML (see docs/retraining.md).")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Store the retraining policy of a model (replaces the one it had).

    Example: `edgeops retrain policy set wrist-har policies/wrist-har.yaml`
    """
    from ..errors import InvalidInput
    from ..retrain import set_policy
    from ..retrain.store import read_policy_text

    ws = workspace(ctx)
    try:
        text = file.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read policy file {file}: {exc.strerror}") from None
    if read_policy_text(text, str(file)).model != model:
        raise InvalidInput(f"{file} is the policy of another model; its `model:` must be {model}")
    p = set_policy(ws, file)
    if json_out:
        print_json(_policy_dict(p))
    else:
        triggers = "; ".join(p.triggers() or ["none"])
        console.print(f"Policy of {p.model} stored: triggers {triggers}")


@policy_app.command("show")
def policy_show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show a model's retraining policy with its defaults filled in.

    Example: `edgeops retrain policy show wrist-har`
    """
    from ..retrain import load_policy

    p = load_policy(workspace(ctx), model)
    d = _policy_dict(p)
    if json_out:
        print_json(d)
        return
    rollout = d.pop("rollout")
    console.print(kv_table(f"Retraining policy of {model}", d))
    console.print(kv_table("Canary rollout", rollout))


@app.command("run")
def run(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name (its policy applies).")],
    reason: Annotated[str, typer.Option(help="Why, for the decision record.")] = "by hand",
    watch: Annotated[
        bool,
        typer.Option(
            "--watch/--detach", help="Drive a canary rollout to its end (default) or leave it."
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Retrain a model now: new data from the fleet, the pipeline again, challenger
    against champion, and the policy's action.

    `edgeops retrain NAME` is short for `edgeops retrain run NAME`.

    Example: `edgeops retrain wrist-har --reason "new labels from the field"`
    """
    from ..config import current_user
    from ..fleet.controller import TERMINAL
    from ..fleet.keys import load_key
    from ..retrain import Trigger, load_policy, retrain, settle
    from .rollout import controller

    ws = workspace(ctx)
    policy = load_policy(ws, model)
    key = load_key(ws.settings.keys_dir) if policy.action == "canary" else None

    def say(text: str) -> None:
        if not json_out:
            console.print(text, markup=False, highlight=False)

    d = retrain(
        ws, policy, Trigger("manual", reason, {"user": current_user()}), key=key, reporter=say
    )
    if d["status"] == "canary" and watch:
        ctl, client = controller(ctx)
        ctl.fleet.sync(client)
        ctl.run(until=lambda: ctl.status(d["rollout"])["status"] in TERMINAL)
        d = next((x for x in settle(ws, say) if x["id"] == d["id"]), d)
    if json_out:
        print_json(d)
    else:
        console.print(f"Decision {d['id']}: {d['decision']} ({d['status']})")


@app.command("watch")
def watch_cmd(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(help="Seconds between trigger checks.", min=0.5)] = 30,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: never).")
    ] = None,
) -> None:
    """Run every model's retraining policy continuously: triggers, retraining, canaries.

    Example: `edgeops retrain watch --interval 60`
    """
    from ..fleet.keys import load_key
    from ..retrain import RetrainWatcher, list_policies
    from .rollout import controller

    ws = workspace(ctx)
    policies = list_policies(ws)
    if not policies:
        from ..errors import InvalidInput

        raise InvalidInput(
            "no model has a retraining policy; add one with `edgeops retrain policy set`"
        )
    ctl, client = controller(ctx)
    ctl.fleet.sync(client)
    watcher = RetrainWatcher(
        ws,
        load_key(ws.settings.keys_dir),
        client,
        reporter=lambda t: console.print(t, markup=False, highlight=False),
        controller=ctl,
    )
    names = ", ".join(p.model for p, _ in policies)
    console.print(f"watching {names} on fleet {ws.settings.fleet}; Ctrl-C to stop")
    try:
        watcher.run(interval=interval, max_seconds=duration)
    except KeyboardInterrupt:
        console.print("stopped")


@app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest decisions to show.")] = 50,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List retraining decisions: trigger, champion, challenger, decision and why.

    Example: `edgeops retrain list wrist-har`
    """
    from ..retrain import decisions

    rows = decisions(workspace(ctx), model, limit)
    if json_out:
        print_json(rows)
        return
    console.print(
        table(
            "Retraining decisions",
            [
                "id",
                "when",
                "model",
                "trigger",
                "champion",
                "challenger",
                "decision",
                "status",
                "reason",
            ],
            [
                [
                    d["id"],
                    when(d["created_at"]),
                    d["model"],
                    d["trigger"],
                    d["champion"],
                    d["challenger"] or "-",
                    d["decision"],
                    d["status"],
                    d["reason"],
                ]
                for d in rows
            ],
        )
    )
