"""Device identities: MQTT credentials, client certificates and the agent's config file.

``edgeops fleet provision`` gives a device a login on the fleet's broker and
writes everything the agent needs (``agent.toml``) into one folder. The
workspace keeps only what the broker needs to check a login later, in
``<keys dir>/identities.json`` (mode 0600, written atomically under a lock)::

    {"format": 1,
     "devices": {"pi-07": {"fleet": "lab", "password_hash": "$7$1000$...", "tags": [..],
                           "hardware": "rpi4", "provisioned_at": 1795760000.0,
                           "rotations": 0, "certificate": null}},
     "services": {"server": {"role": "server", "password_hash": "$7$...", "created_at": ..}}}

Passwords are never stored: the hash is the one Mosquitto 2 reads from its
password file (``$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>``), so
``edgeops broker config`` (:mod:`edgeops.broker_config`) can write that file
from the registry. The MQTT username is the device id, which
:func:`~edgeops_protocol.topics.validate_id` keeps free of ``/``, ``+`` and ``#``.

Client certificates (``--cert``) are issued by the fleet's own CA
(``<keys dir>/fleet-ca.key`` and ``fleet-ca.pem``, ECDSA P-256), which also
issues the broker's server certificate for ``edgeops broker config --self-signed``;
``agent.toml`` names them (``cert_file``, ``key_file``).

``--host-firmware`` also writes ``device.toml``, the config of the C firmware's
host port (``ports/host/host_config.h``), with the same login, TLS files and the
device's HMAC manifest key (``<keys dir>/devices/<device>.hmac``, made if missing).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import string
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..config import Settings
from ..errors import Conflict, InvalidInput
from ..fsutil import atomic_write_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "REGISTRY_NAME",
    "Provisioned",
    "check_password",
    "ensure_fleet_ca",
    "hash_password",
    "issue_certificate",
    "load_registry",
    "locked_registry",
    "new_password",
    "provision_device",
    "render_host_firmware_config",
    "save_registry",
]

REGISTRY_NAME = "identities.json"
REGISTRY_FORMAT = 1
# The passwords are 192 random bits, so the hash needs no slowness to resist guessing;
# Mosquitto checks it on its one thread at every login, so the iterations stay modest.
HASH_ITERATIONS = 1000
SALT_LEN = 12  # Mosquitto 2 requires exactly 12 salt bytes
_SALT_CHARS = string.ascii_letters + string.digits  # a text salt EMQX can import as well
SERVICE_NAME_RE = re.compile(r"^(server|collector-[0-9]+)$")
DEFAULT_STATE_DIR = "/var/lib/edgeops-agent"
HOST_FIRMWARE_STATE_DIR = "state"  # relative to device.toml's folder
HOST_FIRMWARE_MAX_TAGS = 8  # ports/host/host_config.h: HOST_MAX_TAGS, tags of < 64 bytes
MOSQUITTO_PASSWD_EXAMPLE = (
    "$7$101$SUrTmo6iyKEuSqrO$FMzEQ9Op93E9mvrsAi9oU4vOSrcC4csj+Hkb+7maKFkGLsEberGr7beJRSxu31Q1"
    "ruKXgxjGoPbOK7fMhLu9CQ=="
)


# --- passwords ------------------------------------------------------------------------
def new_password() -> str:
    """32 URL-safe characters (192 random bits)."""
    return secrets.token_urlsafe(24)


def hash_password(
    password: str, salt: bytes | None = None, iterations: int = HASH_ITERATIONS
) -> str:
    """Mosquitto 2's ``$7$`` password hash (what ``mosquitto_passwd`` writes).

    Checked against a line ``mosquitto_passwd -b`` (2.0.11) wrote for "secret":

    >>> line = MOSQUITTO_PASSWD_EXAMPLE
    >>> hash_password("secret", salt=base64.b64decode(line.split("$")[3]), iterations=101) == line
    True
    """
    if salt is None:
        salt = "".join(secrets.choice(_SALT_CHARS) for _ in range(SALT_LEN)).encode()
    if len(salt) != SALT_LEN:
        raise ValueError(f"Mosquitto needs a {SALT_LEN}-byte salt")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt, validate=True), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# --- the registry -----------------------------------------------------------------------
def _empty() -> dict[str, Any]:
    return {"format": REGISTRY_FORMAT, "devices": {}, "services": {}}


def load_registry(keys_dir: Path) -> dict[str, Any]:
    """The identities registry (an empty one if there is none yet)."""
    path = keys_dir / REGISTRY_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _empty()
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}; restore it from a backup") from exc
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise InvalidInput(f"{path} is not an identities registry of format {REGISTRY_FORMAT}")
    return {**_empty(), **data}


def save_registry(keys_dir: Path, data: dict[str, Any]) -> None:
    keys_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(keys_dir / REGISTRY_NAME, text.encode(), mode=0o600)


@contextlib.contextmanager
def locked_registry(keys_dir: Path) -> Iterator[dict[str, Any]]:
    """Read, change and write the registry with no other edgeops process in between.

    The registry is written back only when the block ends without an error.
    """
    import fcntl

    keys_dir.mkdir(parents=True, exist_ok=True)
    with open(keys_dir / (REGISTRY_NAME + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_registry(keys_dir)
        yield data
        save_registry(keys_dir, data)


# --- certificates ---------------------------------------------------------------------
def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_fleet_ca(keys_dir: Path, fleet: str):  # -> (private key, certificate)
    """The fleet CA's key and certificate, created on first use (valid 20 years)."""
    key_path, cert_path = keys_dir / "fleet-ca.key", keys_dir / "fleet-ca.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgeops fleet {fleet} CA")])
    now = time.time()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), now, 20 * 365)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    keys_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _builder(subject, issuer, public_key, now: float, days: int):
    start = dt.datetime.fromtimestamp(now - 3600, dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
    )


def _key_usage(cert_sign: bool = False):
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=not cert_sign,
        key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def issue_certificate(
    keys_dir: Path, fleet: str, common_name: str, *, server_names: tuple[str, ...] = ()
) -> tuple[bytes, bytes, dict[str, Any]]:
    """``(key PEM, certificate PEM, summary)`` issued by the fleet CA.

    Without ``server_names`` it is a client certificate (5 years) whose common name
    is the device id; with them, a server certificate (825 days) for those DNS
    names and IP addresses.
    """
    ca_key, ca_cert = ensure_fleet_ca(keys_dir, fleet)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    days = 825 if server_names else 5 * 365
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    now = time.time()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server_names:
        alt: list[Any] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    summary = {
        "serial": format(cert.serial_number, "x"),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "not_after": now - 3600 + days * 86400,  # as _builder sets it
    }
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM), summary


# --- provisioning ---------------------------------------------------------------------
@dataclass(frozen=True)
class Provisioned:
    """What ``provision_device`` did; the password is only in the agent config."""

    device: str
    fleet: str
    username: str
    broker: str
    out: Path
    files: dict[str, Path]
    rotated: bool
    certificate: dict[str, Any] | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    hardware: str = "generic-linux"
    hmac_key_id: str | None = None  # with host_firmware: the key in device.toml
    hmac_key_created: bool = False  # ... made by this call (not there before)

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "fleet": self.fleet,
            "username": self.username,
            "broker": self.broker,
            "rotated": self.rotated,
            "tags": list(self.tags),
            "hardware": self.hardware,
            "out": str(self.out),
            "files": {k: str(v) for k, v in self.files.items()},
            "certificate": self.certificate,
            "hmac_key_id": self.hmac_key_id,
        }


def default_device_broker(settings: Settings) -> str:
    """``mqtts://<host of the workspace's MQTT URL>:8883``: where devices log in by default."""
    from ..mqtt import parse_mqtt_url

    host = parse_mqtt_url(settings.mqtt_url)[0]
    return f"mqtts://{f'[{host}]' if ':' in host else host}:8883"


def _check_device_id(device: str) -> None:
    from edgeops_protocol.topics import ProtocolError, validate_id

    try:
        validate_id(device, "device")
    except ProtocolError as exc:
        raise InvalidInput(str(exc)) from exc
    if SERVICE_NAME_RE.match(device):
        raise InvalidInput(
            f"device id {device!r} is reserved for the broker's service accounts "
            "(server, collector-N); choose another id"
        )


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string (ASCII, escaped) is a TOML basic string


def render_agent_config(values: dict[str, Any], device: str, fleet: str, when: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    lines = [
        f"# edgeops-agent configuration of device {device!r} in fleet {fleet!r}, written by",
        f"# `edgeops fleet provision` on {stamp}. It holds the device's MQTT password:",
        "# keep it mode 0600. agent.example.toml documents every key.",
    ]
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(_q(v) for v in value)}]")
        else:
            lines.append(f"{key} = {_q(value)}")
    return "\n".join(lines) + "\n"


def _c_string(key: str, value: str) -> str:
    """A string the host firmware's config reader takes: it unescapes only \\" and \\\\."""
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in value):
        raise InvalidInput(f"{key} {value!r} has a control character the firmware cannot read")
    if len(value.encode()) >= 256:
        raise InvalidInput(f"{key} is longer than the firmware's 255 bytes")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_host_firmware_config(
    values: dict[str, Any], device: str, fleet: str, when: float
) -> str:
    """``device.toml`` of the host firmware (the subset of TOML ``host_config.c`` reads).

    >>> print(render_host_firmware_config({"device": "mcu-1", "tags": ["a"]}, "mcu-1", "lab", 0))
    ... # doctest: +ELLIPSIS
    # edgeops host firmware configuration of device 'mcu-1' in fleet 'lab',
    ...
    device = "mcu-1"
    tags = ["a"]
    <BLANKLINE>
    """
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    lines = [
        f"# edgeops host firmware configuration of device {device!r} in fleet {fleet!r},",
        f"# written by `edgeops fleet provision --host-firmware` on {stamp}. It holds the",
        "# device's MQTT password and HMAC key: keep it mode 0600. ports/host/README.md",
        "# documents every key.",
    ]
    for key, value in values.items():
        if isinstance(value, list):
            if len(value) > HOST_FIRMWARE_MAX_TAGS or any(len(v.encode()) >= 64 for v in value):
                raise InvalidInput(
                    f"the host firmware takes at most {HOST_FIRMWARE_MAX_TAGS} {key} of at "
                    "most 63 bytes each; give fewer or shorter --tags"
                )
            lines.append(f"{key} = [{', '.join(_c_string(key, v) for v in value)}]")
        else:
            lines.append(f"{key} = {_c_string(key, value)}")
    return "\n".join(lines) + "\n"


def _ca_source(ca_file: str | None, broker: str, keys_dir: Path, fleet: str) -> Path | None:
    if ca_file == "system" or (ca_file is None and not broker.startswith("mqtts://")):
        return None
    if ca_file is None:
        ensure_fleet_ca(keys_dir, fleet)
        return keys_dir / "fleet-ca.pem"
    path = Path(ca_file)
    if not path.is_file():
        raise InvalidInput(f"CA file {path} does not exist; give a PEM file or 'system'")
    return path


def provision_device(
    settings: Settings,
    device: str,
    *,
    out: Path,
    tags: tuple[str, ...] = (),
    hardware: str | None = None,
    broker: str | None = None,
    ca_file: str | None = None,
    cert: bool = False,
    state_dir: str | None = None,
    force: bool = False,
    host_firmware: bool = False,
) -> Provisioned:
    """Create (or with ``force`` rotate) a device's identity and write its ``agent.toml``.

    ``ca_file``: the CA the device checks the broker's certificate against (copied
    next to ``agent.toml``); ``"system"`` for the system's CAs; by default the fleet
    CA when ``broker`` is ``mqtts://``. ``cert``: a client certificate from the fleet
    CA (``device.pem``, ``device.key``), named by ``cert_file`` and ``key_file``.
    ``host_firmware``: also ``device.toml`` for the C firmware's host port, with the
    device's HMAC key (the existing one, else a new one). ``state_dir`` defaults to
    ``/var/lib/edgeops-agent`` for the agent and ``state`` (next to ``device.toml``)
    for the firmware.
    """
    from edgeops_agent.config import AgentConfig
    from edgeops_agent.config import ConfigError as AgentConfigError

    from .keys import load_key

    _check_device_id(device)
    keys_dir, fleet = settings.keys_dir, settings.fleet
    broker = broker or default_device_broker(settings)
    if cert and not broker.startswith("mqtts://"):
        raise InvalidInput(
            f"--cert needs an mqtts:// broker (a client certificate is part of TLS), not {broker}"
        )
    public_key = load_key(keys_dir).public_b64
    out = Path(out).resolve()
    with locked_registry(keys_dir) as registry:
        old = registry["devices"].get(device)
        if old is not None and not force:
            raise Conflict(
                f"device {device} is already provisioned (fleet {old.get('fleet')}); use "
                "--force to give it a new password (the old one stops working once "
                "`edgeops broker config` has rewritten the broker's password file)"
            )
        old = old or {}
        tags = tags or tuple(old.get("tags", ()))
        hardware = (
            hardware or old.get("hardware") or ("host-sim" if host_firmware else "generic-linux")
        )
        password = new_password()
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o700)
        files: dict[str, Path] = {}
        values: dict[str, Any] = {
            "device": device,
            "fleet": fleet,
            "hardware": hardware,
            "tags": list(tags),
            "broker": broker,
            "username": device,
            "password": password,
            "public_keys": [public_key],
            "state_dir": state_dir or DEFAULT_STATE_DIR,
        }
        ca_source = _ca_source(ca_file, broker, keys_dir, fleet)
        if ca_source is not None:
            files["ca"] = out / "ca.pem"
            if ca_source.resolve() != files["ca"]:
                atomic_write_bytes(files["ca"], ca_source.read_bytes())
            values["ca_file"] = "ca.pem"

        def check() -> None:  # the agent's own loader reads it before it is written
            text = render_agent_config(values, device, fleet, 0)
            try:
                AgentConfig.from_dict(tomllib.loads(text), out)
            except AgentConfigError as exc:
                raise InvalidInput(f"the agent config would not load: {exc}") from exc

        check()
        firmware: dict[str, Any] = {}
        if host_firmware:  # checked before anything else is written
            firmware = _host_firmware_values(values, state_dir)
            render_host_firmware_config(firmware, device, fleet, 0)
        certificate = None
        if cert:
            key_pem, cert_pem, certificate = issue_certificate(keys_dir, fleet, device)
            files["key"], files["certificate"] = out / "device.key", out / "device.pem"
            atomic_write_bytes(files["key"], key_pem, mode=0o600)
            atomic_write_bytes(files["certificate"], cert_pem)
            values["cert_file"], values["key_file"] = "device.pem", "device.key"
            check()
        now = time.time()
        files["agent_config"] = out / "agent.toml"
        text = render_agent_config(values, device, fleet, now)
        atomic_write_bytes(files["agent_config"], text.encode(), mode=0o600)
        hmac_key_id, hmac_created = None, False
        if host_firmware:
            hmac_key_id, hmac_created = _host_firmware_files(
                keys_dir, device, fleet, {**firmware, **_tls_keys(values)}, out, files, now
            )
        registry["devices"][device] = {
            "fleet": fleet,
            "password_hash": hash_password(password),
            "tags": list(tags),
            "hardware": hardware,
            "provisioned_at": old.get("provisioned_at", now),
            "rotated_at": now if old else None,
            "rotations": int(old.get("rotations", -1)) + 1,
            "certificate": certificate,
        }
    return Provisioned(
        device, fleet, device, broker, out, files, bool(old), certificate, tuple(tags), hardware,
        hmac_key_id, hmac_created,
    )  # fmt: skip


def _tls_keys(values: dict[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in ("ca_file", "cert_file", "key_file") if k in values}


def _host_firmware_values(agent: dict[str, Any], state_dir: str | None) -> dict[str, Any]:
    firmware = {k: agent[k] for k in ("device", "fleet", "broker", "username", "password")}
    firmware.update(
        hardware=agent["hardware"],
        tags=agent["tags"],
        state_dir=state_dir or HOST_FIRMWARE_STATE_DIR,
        hmac_key_id="x",  # placeholders of the right kind, for the check before writing
        hmac_key="x",
        **_tls_keys(agent),
    )
    return firmware


def _host_firmware_files(
    keys_dir: Path,
    device: str,
    fleet: str,
    values: dict[str, Any],
    out: Path,
    files: dict[str, Path],
    now: float,
) -> tuple[str, bool]:
    """Write ``device.toml`` with the device's HMAC key: ``(key id, whether it is new)``."""
    from ..firmware.signing import generate_device_key, load_device_keys

    key = load_device_keys(keys_dir).get(device)
    created = key is None
    if key is None:
        key = generate_device_key(keys_dir, device)
    values = {**values, "hmac_key_id": key.key_id, "hmac_key": key.key_b64}
    files["firmware_config"] = out / "device.toml"
    text = render_host_firmware_config(values, device, fleet, now)
    atomic_write_bytes(files["firmware_config"], text.encode(), mode=0o600)
    return key.key_id, created
