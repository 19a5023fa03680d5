"""``edgeops fleet`` and ``edgeops keys``: the devices and the key that signs their manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..fleet.store import device_summary as device_dict
from ._common import JSON_HELP, console, kv_table, print_json, table, when, workspace

app = typer.Typer(help="Devices of the fleet: list, show, tag, provision.", no_args_is_help=True)
keys_app = typer.Typer(help="The fleet's manifest signing key.", no_args_is_help=True)

SYNC_HELP = "Read the devices' retained state from the broker first (default: yes)."


def fleet_store(ctx: typer.Context):  # -> FleetStore
    from ..fleet.store import FleetStore

    ws = workspace(ctx)
    return FleetStore(ws.db, ws.settings.fleet)


def sync(ctx: typer.Context) -> int:
    from ..mqtt import MqttClient

    ws = workspace(ctx)
    with MqttClient(ws.settings.mqtt_url) as client:
        return fleet_store(ctx).sync(client)


@app.command("list")
def list_(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Option(help="Only devices matching this selector.")] = None,
    sync_first: Annotated[bool, typer.Option("--sync/--no-sync", help=SYNC_HELP)] = True,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List devices: online, model, version, runtime, hardware, last seen, tags.

    Example: `edgeops fleet list --target tag:lab`
    """
    if sync_first:
        sync(ctx)
    rows = [device_dict(d) for d in fleet_store(ctx).devices(target)]
    if json_out:
        print_json(rows)
        return
    # flash / RAM only when a device declares them (microcontroller firmware does)
    memory = any(r["flash_bytes"] or r["ram_bytes"] for r in rows)
    console.print(
        table(
            f"Fleet {workspace(ctx).settings.fleet}",
            ["device", "online", "model", "variant", "runtime", "hardware"]
            + (["flash / RAM"] if memory else [])
            + ["last seen", "tags"],
            [
                [
                    r["device"],
                    "yes" if r["online"] else "no",
                    f"{r['model']}@{r['version']}" if r["model"] else "",
                    r["variant"] or "",
                    ", ".join(r["runtimes"]),
                    r["hardware"] or "",
                ]
                + ([_memory(r)] if memory else [])
                + [when(r["last_seen"]), ", ".join(r["tags"])]
                for r in rows
            ],
        )
    )


def _memory(r: dict) -> str:
    """``1024 KiB / 256 KiB``: the flash and RAM a device declares ("?" for one it omits)."""
    if not (r["flash_bytes"] or r["ram_bytes"]):
        return ""
    return " / ".join(f"{r[k] // 1024} KiB" if r[k] else "?" for k in ("flash_bytes", "ram_bytes"))


@app.command("show")
def show(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id.")],
    sync_first: Annotated[bool, typer.Option("--sync/--no-sync", help=SYNC_HELP)] = True,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show one device: reported state, desired state and recent deployment events.

    Example: `edgeops fleet show pi-07`
    """
    if sync_first:
        sync(ctx)
    fs = fleet_store(ctx)
    d = device_dict(fs.get(device))
    desired = next((x for x in fs.desired() if x.device_id == device), None)
    d["desired"] = (
        None
        if desired is None
        else {
            "seq": desired.seq,
            "model": desired.model_ref,
            "variant": desired.variant,
            "rollout": desired.rollout_id,
            "expires_at": desired.expires_at,
        }
    )
    events = [
        {"at": e.at, "seq": e.seq, "event": e.event, "reason": e.reason, "rollout": e.rollout_id}
        for e in fs.events(device=device, limit=20)
    ]
    if json_out:
        print_json({**d, "events": events})
        return
    console.print(kv_table(f"Device {device}", {k: v for k, v in d.items()}))
    console.print(
        table(
            "Recent events",
            ["at", "seq", "event", "reason", "rollout"],
            [[when(e["at"]), e["seq"], e["event"], e["reason"], e["rollout"]] for e in events],
        )
    )


@app.command("tag")
def tag(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to add (or remove with --remove).")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove these tags.")] = False,
) -> None:
    """Add tags to a device (or remove them); rollouts select devices by tag.

    Example: `edgeops fleet tag pi-07 canary floor-2`
    """
    now = fleet_store(ctx).tag(device, tags, remove=remove)
    console.print(f"{device}: tags {', '.join(now) or '(none)'}")


@app.command("provision")
def provision(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id: also its MQTT username.")],
    tags: Annotated[
        str | None, typer.Option(help="Comma-separated tags, e.g. lab,floor-2.")
    ] = None,
    hardware: Annotated[
        str | None, typer.Option(help="Hardware name, e.g. rpi4. Default: generic-linux.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for agent.toml. Default: ./DEVICE.")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Broker URL the device uses. Default: mqtts://<host of the workspace's "
            "MQTT URL>:8883."
        ),
    ] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(
            help="CA certificate the device checks the broker against (copied next to "
            "agent.toml), or 'system'. Default for mqtts://: the fleet CA."
        ),
    ] = None,
    cert: Annotated[
        bool, typer.Option("--cert", help="Also issue a client certificate from the fleet CA.")
    ] = False,
    state_dir: Annotated[
        str | None,
        typer.Option(
            help="The state folder on the device. Default: /var/lib/edgeops-agent (agent), "
            "state next to device.toml (host firmware)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Provision again: a new password (and certificate).")
    ] = False,
    host_firmware: Annotated[
        bool,
        typer.Option(
            "--host-firmware",
            help="Also write device.toml for the C firmware's host port, with the device's "
            "HMAC key (made if it has none).",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Create a device's identity: MQTT login, optional client certificate, agent.toml.

    The password is written only into agent.toml (mode 0600); the workspace keeps its
    hash for `edgeops broker config`, which must run again before the device can log in.

    Example: `edgeops fleet provision pi-07 --tags lab,floor-2 --hardware rpi4 --out pi-07/`
    """
    from ..fleet.provision import provision_device

    result = provision_device(
        workspace(ctx).settings,
        device,
        out=out or Path(device),
        tags=tuple(t.strip() for t in (tags or "").split(",") if t.strip()),
        hardware=hardware,
        broker=broker,
        ca_file=ca_file,
        cert=cert,
        state_dir=state_dir,
        force=force,
        host_firmware=host_firmware,
    )
    if result.hmac_key_created:
        from .. import audit

        details = {"device": device, "alg": "hmac-sha256", "force": False}
        key_id = result.hmac_key_id
        workspace(ctx).db.write(lambda s: audit.record(s, "key.generate", key_id, details))
    if json_out:
        print_json(result.summary())
        return
    verb = "Re-provisioned (new password)" if result.rotated else "Provisioned"
    console.print(f"{verb} {device} in fleet {result.fleet}; files in {result.out}:")
    for path in result.files.values():
        console.print(f"  {path}", markup=False, highlight=False)
    console.print("Run `edgeops broker config` and reload the broker so that it accepts the login.")


@keys_app.command("generate")
def keys_generate(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create the fleet's Ed25519 signing key; prints the public key agents must trust.

    Example: `edgeops keys generate`
    """
    from ..fleet.keys import generate_key

    key = generate_key(workspace(ctx).settings.keys_dir, force=force)
    console.print(
        f"Signing key {key.key_id} created. Put this public key in each agent's "
        "config (public_keys):"
    )
    console.print(key.public_b64, markup=False, highlight=False)


@keys_app.command("show")
def keys_show(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Print the public signing key and its id.

    Example: `edgeops keys show --json`
    """
    from ..fleet.keys import load_key

    key = load_key(workspace(ctx).settings.keys_dir)
    if json_out:
        print_json({"key_id": key.key_id, "public_key": key.public_b64})
    else:
        console.print(f"{key.key_id} {key.public_b64}", markup=False, highlight=False)


def _grace(text: str) -> float | None:
    if text.strip().lower() == "never":
        return None
    if text.strip() == "0":
        return 0.0
    from ..auth import parse_duration
    from ..errors import InvalidInput

    try:
        return parse_duration(text).total_seconds()
    except InvalidInput:
        raise InvalidInput(
            f"grace {text!r} is not a duration; use e.g. 12h, 7d or 2w, 0, or never"
        ) from None


def _publish_keys(ctx: typer.Context, what: str) -> str:
    """Publish the key chain retained; the topic. A broker error says how to retry."""
    from edgeops_protocol.keychain import keys_topic

    from ..errors import BrokerUnavailable
    from ..fleet.keys import publish_keys
    from ..mqtt import MqttClient

    settings = workspace(ctx).settings
    try:
        with MqttClient(settings.mqtt_url) as client:
            publish_keys(client, settings.keys_dir, settings.fleet)
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(
            f"{what}, but the announcement was not published ({exc}); run "
            "`edgeops keys publish` once the broker is reachable"
        ) from exc
    return keys_topic(settings.fleet)


def _utc(ts: float | None) -> str:
    import datetime as dt

    if ts is None:
        return "never (until `edgeops keys retire`)"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@keys_app.command("rotate")
def keys_rotate(
    ctx: typer.Context,
    grace: Annotated[
        str,
        typer.Option(
            help="How long agents keep trusting the old key: 12h, 7d, 2w; 0 for not at all, "
            "'never' until `edgeops keys retire`."
        ),
    ] = "7d",
    publish: Annotated[
        bool,
        typer.Option(
            "--publish/--no-publish", help="Publish the announcement on the broker (default)."
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Replace the signing key: a new key, announced to agents under the old one.

    The announcement (signed by the old key) is published retained on
    edgeops/<fleet>/keys; agents that trust the old key trust the new one from then on, and
    stop trusting the old one after the grace period. Manifests are signed with the new key.

    Example: `edgeops keys rotate --grace 7d`
    """
    from ..fleet.keys import rotate_key

    settings = workspace(ctx).settings
    rotation = rotate_key(settings.keys_dir, settings.fleet, grace=_grace(grace))
    new, old = rotation.new.key_id, rotation.previous.key_id
    topic = _publish_keys(ctx, f"signing key {new} is active") if publish else None
    if json_out:
        print_json({**rotation.summary(), "topic": topic, "published": topic is not None})
        return
    where = f"announced on {topic}" if topic else "NOT announced yet: run `edgeops keys publish`"
    console.print(f"Signing key {new} is now active; {where}.", markup=False, highlight=False)
    console.print(f"Agents stop trusting {old}: {_utc(rotation.retire_previous_at)}.")
    console.print("New agents' config (public_keys):")
    console.print(rotation.new.public_b64, markup=False, highlight=False)


@keys_app.command("retire")
def keys_retire(
    ctx: typer.Context,
    publish: Annotated[
        bool,
        typer.Option("--publish/--no-publish", help="Publish the change on the broker (default)."),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Tell agents to stop trusting every signing key but the active one, now.

    Ends the grace period of the last rotation early, e.g. once every device reports the
    new key or when the old one may have leaked.

    Example: `edgeops keys retire`
    """
    from ..fleet.keys import load_key, retire_keys

    settings = workspace(ctx).settings
    retired = retire_keys(settings.keys_dir, settings.fleet)
    active = load_key(settings.keys_dir).key_id
    topic = None
    if retired and publish:
        topic = _publish_keys(ctx, f"keys {', '.join(retired)} are retired in {settings.keys_dir}")
    if json_out:
        print_json({"retired": retired, "active": active, "topic": topic})
    elif retired:
        console.print(f"Retired {', '.join(retired)}; only {active} signs from now on.")
    else:
        console.print(f"Nothing to retire: agents already trust only {active}.")


@keys_app.command("publish")
def keys_publish(ctx: typer.Context) -> None:
    """Publish the key announcements again (retained), e.g. after the broker lost them.

    Example: `edgeops keys publish`
    """
    from ..fleet.keys import key_chain

    if not key_chain(workspace(ctx).settings.keys_dir):
        console.print("The signing key was never rotated: there is nothing to announce.")
        return
    topic = _publish_keys(ctx, "the keys are unchanged")
    console.print(f"Published the key announcements on {topic}.", markup=False, highlight=False)


@keys_app.command("device")
def keys_device(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id, as in its firmware config.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace its key (reflash the device with the new one).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Create a microcontroller's HMAC-SHA256 key; prints the key id and key for its
    firmware config, once (the server keeps it, mode 0600, to sign the device's manifests).

    Example: `edgeops keys device mcu-07`
    """
    from .. import audit
    from ..firmware.signing import generate_device_key

    ws = workspace(ctx)
    key = generate_device_key(ws.settings.keys_dir, device, force=force)
    details = {"device": device, "alg": "hmac-sha256", "force": force}
    ws.db.write(lambda s: audit.record(s, "key.generate", key.key_id, details))
    if json_out:
        print_json({"device": device, "hmac_key_id": key.key_id, "hmac_key": key.key_b64})
        return
    console.print(
        f"HMAC key {key.key_id} created for {device}; rollouts sign its manifests with it. "
        "Put these two lines in its firmware config (shown once):",
        markup=False,
        highlight=False,
    )
    console.print(f'hmac_key_id = "{key.key_id}"', markup=False, highlight=False)
    console.print(f'hmac_key = "{key.key_b64}"', markup=False, highlight=False)
