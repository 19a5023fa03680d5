"""The Mosquitto configuration of a fleet: who may log in, and what each account may touch.

``edgeops broker config`` writes into one folder (docs/broker-security.md)::

    mosquitto.conf          two listeners (per_listener_settings): devices, services
    devices.passwd          provisioned devices of the fleet ($7$ hashes, mode 0600)
    services.passwd         the `server` account and the `collector-N` accounts (0600)
    acl                     pattern rules with %u: each device only under its own topics
    server.pem, server.key  the TLS certificate of the device listener (given or issued)
    ca.pem                  the fleet CA (with --self-signed or --client-certs)
    service-credentials.json  passwords of service accounts created by this run (0600)

The device listener makes the client id the username (``use_username_as_clientid``):
Mosquitto 2 has no option that refuses client ids with ``/``, ``+`` or ``#``, so
the one a device sends is ignored, and the username is a device id, which
provisioning keeps to ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``. No device can take over
another's session or client id. Services have a listener of their own, without
that rule, so several server processes can share the ``server`` account.

The ``render_*`` functions are pure; :func:`write_broker_config` reads the
workspace's identities registry (:mod:`edgeops.fleet.provision`) and writes the files.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeops_protocol.topics import DEVICE_KINDS, ROOT

from .config import Settings
from .errors import InvalidInput
from .fsutil import atomic_write_bytes

__all__ = [
    "DEVICE_PUBLISH_KINDS",
    "BrokerOptions",
    "BrokerWritten",
    "render_acl",
    "render_mosquitto_conf",
    "render_password_file",
    "write_broker_config",
]

CONFIG_FORMAT = 1
DEVICE_PUBLISH_KINDS = ("state", "events", "telemetry", "samples", "labels")
COLLECTOR_READ_KINDS = ("state", "events", "telemetry", "samples", "labels")
DEVICE_READ_KINDS = ("desired", "ack")  # server -> device
assert set(DEVICE_PUBLISH_KINDS) | set(DEVICE_READ_KINDS) == set(DEVICE_KINDS)


@dataclass(frozen=True)
class BrokerOptions:
    """How the broker listens. Paths are where the files will be on the broker's host."""

    listener: int = 8883
    bind: str | None = None  # None: every interface
    service_listener: int = 1883
    service_bind: str = "127.0.0.1"  # not loopback: TLS with the same certificate
    tls_cert: Path | None = None
    tls_key: Path | None = None
    self_signed: bool = False
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
    client_certs: bool = False
    collectors: int = 1
    rotate_services: bool = False
    install_dir: Path | None = None  # default: the output folder
    persistence_dir: str | None = "/var/lib/mosquitto/"

    def __post_init__(self) -> None:
        given = bool(self.tls_cert or self.tls_key)
        if self.self_signed and given:
            raise InvalidInput("give --tls-cert and --tls-key, or --self-signed, not both")
        if not self.self_signed and not given:
            raise InvalidInput(
                "the device listener needs TLS: give --tls-cert and --tls-key, or --self-signed"
            )
        if given and not (self.tls_cert and self.tls_key):
            raise InvalidInput("give both --tls-cert and --tls-key")
        for port in (self.listener, self.service_listener):
            if not 1 <= port <= 65535:
                raise InvalidInput(f"listener port {port} is not 1..65535")
        if self.listener == self.service_listener:
            raise InvalidInput("the device and service listeners need different ports")
        if not 0 <= self.collectors <= 100:
            raise InvalidInput("--collectors must be 0..100")
        if not self.hostnames:
            raise InvalidInput("--hostname: give at least one name for the server certificate")

    @property
    def service_tls(self) -> bool:
        return not _is_loopback(self.service_bind)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- pure rendering -------------------------------------------------------------------
def render_password_file(accounts: Mapping[str, str]) -> str:
    """``username:hash`` lines, sorted (Mosquitto's password file)."""
    for name in accounts:
        if not name or ":" in name or "\n" in name:
            raise InvalidInput(f"account name {name!r} cannot be in a password file")
    return "".join(f"{name}:{accounts[name]}\n" for name in sorted(accounts))


def render_acl(
    fleet: str, devices: Iterable[str], servers: Iterable[str], collectors: Iterable[str]
) -> str:
    """The ACL file: everything not allowed here is denied."""
    base = f"{ROOT}/{fleet}"
    lines = [
        f"# edgeops ACL of fleet {fleet} (format {CONFIG_FORMAT}), written by `edgeops broker "
        "config`.",
        "# Mosquitto denies whatever no rule allows. A pattern applies to every account, %u",
        "# being its username: a device's username is its device id, so each device may",
        "# publish only under its own device topics and read only its own desired state and acks.",
        *(f"pattern write {base}/devices/%u/{kind}" for kind in DEVICE_PUBLISH_KINDS),
        *(f"pattern read {base}/devices/%u/{kind}" for kind in DEVICE_READ_KINDS),
        "",
    ]
    for name in sorted(servers):
        lines += [
            "# the server (rollouts, fleet sync, dashboard): every topic of the fleet",
            f"user {name}",
            f"topic readwrite {base}/#",
            "",
        ]
    for name in sorted(collectors):
        lines += [
            "# a collector: what devices report, also through $share/<group>/... subscriptions",
            f"user {name}",
            *(f"topic read {base}/devices/+/{kind}" for kind in COLLECTOR_READ_KINDS),
            f"topic write {base}/devices/+/ack",
            "",
        ]
    lines.append(
        "# artifact chunks are shared by the devices that install the same model; the signed"
    )
    lines.append("# key announcements (`edgeops keys rotate`) are read by every device")
    for name in sorted(devices):
        lines += [f"user {name}", f"topic read {base}/artifacts/+/+", f"topic read {base}/keys"]
    return "\n".join(lines) + "\n"


def render_mosquitto_conf(fleet: str, opts: BrokerOptions, install_dir: Path) -> str:
    """``mosquitto.conf`` with absolute paths under ``install_dir``."""
    d = install_dir
    lines = [
        f"# Mosquitto configuration of the edgeops fleet {fleet} (format {CONFIG_FORMAT}),",
        "# written by `edgeops broker config`; regenerate rather than edit. Reload with",
        "# SIGHUP (systemctl reload mosquitto) after new devices were provisioned.",
        "per_listener_settings true",
    ]
    if opts.persistence_dir:
        lines += ["persistence true", f"persistence_location {opts.persistence_dir}"]
    lines += [
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "",
        "# devices: TLS; the password from `edgeops fleet provision`; the client id is",
        "# always the username (the device id), whatever id the device sends",
        f"listener {opts.listener}{f' {opts.bind}' if opts.bind else ''}",
        "allow_anonymous false",
        f"password_file {d / 'devices.passwd'}",
        f"acl_file {d / 'acl'}",
        "use_username_as_clientid true",
        *_tls_lines(d),
    ]
    if opts.client_certs:
        lines += [
            "# and a client certificate issued by the fleet CA (as well as the password)",
            f"cafile {d / 'ca.pem'}",
            "require_certificate true",
        ]
    lines += [
        "",
        "# the server and the collectors",
        f"listener {opts.service_listener} {opts.service_bind}",
        "allow_anonymous false",
        f"password_file {d / 'services.passwd'}",
        f"acl_file {d / 'acl'}",
    ]
    if opts.service_tls:
        lines += _tls_lines(d)
    return "\n".join(lines) + "\n"


def _tls_lines(d: Path) -> list[str]:
    return [f"certfile {d / 'server.pem'}", f"keyfile {d / 'server.key'}", "tls_version tlsv1.2"]


# --- writing --------------------------------------------------------------------------
@dataclass(frozen=True)
class BrokerWritten:
    out: Path
    files: dict[str, Path]
    devices: list[str]
    services: list[str]
    created: dict[str, str] = field(default_factory=dict)  # new service account -> password
    urls: dict[str, str] = field(default_factory=dict)  # new service account -> MQTT URL
    # with client_certs: devices provisioned without --cert, which the listener refuses
    without_certificate: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "files": {k: str(v) for k, v in self.files.items()},
            "devices": self.devices,
            "services": self.services,
            "created": [
                {"username": name, "password": pw, "url": self.urls[name]}
                for name, pw in self.created.items()
            ],
            "without_certificate": self.without_certificate,
        }


def _service_url(name: str, password: str, opts: BrokerOptions, install_dir: Path) -> str:
    host = opts.service_bind
    host = f"[{host}]" if ":" in host else host
    if not opts.service_tls:
        return f"mqtt://{name}:{password}@{host}:{opts.service_listener}"
    query = f"?ca_file={install_dir / 'ca.pem'}" if opts.self_signed else ""
    host = opts.hostnames[0] if host in ("0.0.0.0", "[::]") else host
    return f"mqtts://{name}:{password}@{host}:{opts.service_listener}{query}"


def _tls_files(settings: Settings, opts: BrokerOptions, out: Path, files: dict[str, Path]) -> None:
    from .fleet.provision import ensure_fleet_ca, issue_certificate

    files["certificate"], files["key"] = out / "server.pem", out / "server.key"
    if opts.self_signed:
        key_pem, cert_pem, _ = issue_certificate(
            settings.keys_dir, settings.fleet, opts.hostnames[0], server_names=opts.hostnames
        )
    else:
        assert opts.tls_cert and opts.tls_key
        cert_pem, key_pem = _read_pair(opts.tls_cert, opts.tls_key)
    atomic_write_bytes(files["certificate"], cert_pem)
    atomic_write_bytes(files["key"], key_pem, mode=0o600)
    if opts.self_signed or opts.client_certs:
        ensure_fleet_ca(settings.keys_dir, settings.fleet)
        files["ca"] = out / "ca.pem"
        atomic_write_bytes(files["ca"], (settings.keys_dir / "fleet-ca.pem").read_bytes())


def _read_pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(
            f"cannot use {cert_path} / {key_path} as a PEM certificate and an unencrypted "
            f"PEM key: {exc}"
        ) from exc
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if cert.public_key().public_bytes(enc, raw) != key.public_key().public_bytes(enc, raw):
        raise InvalidInput(f"{key_path} is not the key of the certificate {cert_path}")
    return cert_pem, key_pem


def write_broker_config(settings: Settings, out: Path, opts: BrokerOptions) -> BrokerWritten:
    """Write the fleet's Mosquitto files into ``out`` (each one atomically).

    Service accounts (``server``, ``collector-1`` ...) that do not exist yet, or all
    of them with ``opts.rotate_services``, get new passwords, returned in
    :attr:`BrokerWritten.created` and written to ``service-credentials.json``.
    """
    from .fleet.provision import hash_password, locked_registry, new_password

    out = Path(out).resolve()
    install_dir = (opts.install_dir or out).resolve()
    fleet = settings.fleet
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    _tls_files(settings, opts, out, files)
    wanted = {"server": "server"}
    wanted.update({f"collector-{i}": "collector" for i in range(1, opts.collectors + 1)})
    created: dict[str, str] = {}
    with locked_registry(settings.keys_dir) as registry:
        services = registry["services"]
        for name, role in wanted.items():
            if name not in services or opts.rotate_services:
                created[name] = new_password()
                services[name] = {
                    "role": role,
                    "password_hash": hash_password(created[name]),
                    "created_at": time.time(),
                }
        devices = {
            name: rec["password_hash"]
            for name, rec in registry["devices"].items()
            if rec.get("fleet") == fleet
        }
        service_hashes = {name: services[name]["password_hash"] for name in wanted}
        no_cert = sorted(
            name
            for name, rec in registry["devices"].items()
            if rec.get("fleet") == fleet and not rec.get("certificate")
        )
    files["devices_passwd"] = out / "devices.passwd"
    atomic_write_bytes(files["devices_passwd"], render_password_file(devices).encode(), 0o600)
    files["services_passwd"] = out / "services.passwd"
    text = render_password_file(service_hashes).encode()
    atomic_write_bytes(files["services_passwd"], text, 0o600)
    servers = [n for n, r in wanted.items() if r == "server"]
    collectors = [n for n, r in wanted.items() if r == "collector"]
    files["acl"] = out / "acl"
    atomic_write_bytes(files["acl"], render_acl(fleet, devices, servers, collectors).encode())
    files["conf"] = out / "mosquitto.conf"
    conf = render_mosquitto_conf(fleet, opts, install_dir)
    atomic_write_bytes(files["conf"], conf.encode())
    urls = {n: _service_url(n, pw, opts, install_dir) for n, pw in created.items()}
    if created:
        files["credentials"] = out / "service-credentials.json"
        doc = {
            "format": CONFIG_FORMAT,
            "fleet": fleet,
            "written_at": time.time(),
            "accounts": [
                {"username": n, "role": wanted[n], "password": pw, "url": urls[n]}
                for n, pw in created.items()
            ],
        }
        text = (json.dumps(doc, indent=1) + "\n").encode()
        atomic_write_bytes(files["credentials"], text, 0o600)
    no_cert = no_cert if opts.client_certs else []
    return BrokerWritten(out, files, sorted(devices), sorted(wanted), created, urls, no_cert)
