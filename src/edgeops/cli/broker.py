"""``edgeops broker``: the fleet's MQTT broker configuration (Mosquitto)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import JSON_HELP, console, print_json, table, workspace

app = typer.Typer(help="The fleet's MQTT broker: logins and access rules.", no_args_is_help=True)


@app.command("config")
def config(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the files.")],
    listener: Annotated[int, typer.Option(help="TLS port of the device listener.")] = 8883,
    bind: Annotated[
        str | None, typer.Option(help="Address of the device listener. Default: all.")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM server certificate (chain) for the devices' TLS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its unencrypted PEM key.")] = None,
    self_signed: Annotated[
        bool,
        typer.Option("--self-signed", help="Issue the server certificate from the fleet's own CA."),
    ] = False,
    hostname: Annotated[
        list[str] | None,
        typer.Option(help="Name or IP in the issued certificate (repeat). Default: localhost."),
    ] = None,
    client_certs: Annotated[
        bool,
        typer.Option(
            "--client-certs",
            help="Devices must also present a certificate of the fleet CA (fleet provision "
            "--cert).",
        ),
    ] = False,
    service_listener: Annotated[
        int, typer.Option(help="Port of the listener for the server and collectors.")
    ] = 1883,
    service_bind: Annotated[
        str, typer.Option(help="Its address; not loopback means TLS as well.")
    ] = "127.0.0.1",
    collectors: Annotated[int, typer.Option(help="Collector accounts to have.")] = 1,
    rotate_services: Annotated[
        bool,
        typer.Option("--rotate-services", help="New passwords for the service accounts."),
    ] = False,
    install_dir: Annotated[
        Path | None,
        typer.Option(help="Where the files will be on the broker host. Default: --out."),
    ] = None,
    persistence_dir: Annotated[
        str, typer.Option(help="Mosquitto's persistence folder.")
    ] = "/var/lib/mosquitto/",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write the fleet's Mosquitto config: password files, TLS listener, per-device ACLs.

    Devices are those `edgeops fleet provision` created. Service accounts (`server`,
    `collector-N`) are created on first use; their passwords are shown once and written
    to service-credentials.json (mode 0600). See docs/broker-security.md.

    Example: `edgeops broker config --out broker/ --self-signed --hostname broker.lab`
    """
    from ..broker_config import BrokerOptions, write_broker_config

    opts = BrokerOptions(
        listener=listener,
        bind=bind,
        service_listener=service_listener,
        service_bind=service_bind,
        tls_cert=tls_cert,
        tls_key=tls_key,
        self_signed=self_signed,
        hostnames=tuple(hostname or ("localhost", "127.0.0.1")),
        client_certs=client_certs,
        collectors=collectors,
        rotate_services=rotate_services,
        install_dir=install_dir,
        persistence_dir=persistence_dir,
    )
    written = write_broker_config(workspace(ctx).settings, out, opts)
    if json_out:
        print_json(written.summary())
        return
    console.print(
        f"Wrote the broker config for {len(written.devices)} device(s) and "
        f"{len(written.services)} service account(s) to {written.out}:"
    )
    for path in written.files.values():
        console.print(f"  {path}", markup=False, highlight=False)
    if written.created:
        console.print("New service accounts (shown once; also in service-credentials.json):")
        rows = [[n, written.urls[n]] for n in written.created]
        console.print(table(None, ["account", "MQTT URL (set EDGEOPS_MQTT_URL)"], rows))
    else:
        console.print("Service accounts unchanged (--rotate-services gives new passwords).")
    if written.without_certificate:
        console.print(
            f"[yellow]Without a client certificate, refused by --client-certs: "
            f"{', '.join(written.without_certificate)}; provision them again with "
            "--force --cert.[/yellow]"
        )
    console.print("Install the files, then reload Mosquitto (SIGHUP) to apply them.")
