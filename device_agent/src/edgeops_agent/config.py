"""The agent's configuration: one TOML file, checked when loaded, one-line errors.

>>> cfg = AgentConfig.from_dict({"device": "pi-07", "fleet": "lab", "state_dir": "/tmp/s",
...                              "public_keys": ["A" * 43 + "="], "runtimes": ["onnxruntime"]})
>>> cfg.broker, cfg.keepalive, cfg.http_port, cfg.simulate.fail_health
('mqtt://127.0.0.1:1883', 30, None, False)

``agent.example.toml`` documents every key. Relative paths (``state_dir``, key
files, ``password_file``, ``ca_file``, ``cert_file``, ``key_file``) are taken relative
to the file's folder.
The ``[simulate]`` section exists for the fleet simulator and the tests only: it
makes a healthy agent misbehave on purpose.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeops_protocol.manifest import key_id
from edgeops_protocol.messages import MAX_MESSAGE_BYTES
from edgeops_protocol.topics import ProtocolError, validate_id

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10 on older Pis
    import tomli as tomllib

__all__ = ["AgentConfig", "SimulateConfig", "load_config", "parse_broker_url"]

MQTT_PROTOCOLS = ("3.1.1", "5")
ARTIFACT_TRANSPORTS = ("mqtt", "http", "auto")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class SimulateConfig:
    """Misbehaviour on purpose, for the fleet simulator and tests only."""

    fail_health: bool = False  # every health check fails
    extra_latency_ms: float = 0.0  # added to every prediction
    corrupt_outputs_after_activation: bool = False  # a model this agent activates predicts NaN
    download_delay_ms: float = 0.0  # the worker sleeps this long per received chunk

    def __post_init__(self) -> None:
        if self.extra_latency_ms < 0 or self.download_delay_ms < 0:
            raise ConfigError("simulate: extra_latency_ms and download_delay_ms must be >= 0")


def _monitoring_checks(c: AgentConfig) -> list[tuple[bool, str]]:
    return [
        (
            c.telemetry_window_s == 0 or 1 <= c.telemetry_window_s <= 86400,
            "telemetry_window_s must be 0 (no time limit) or 1..86400 seconds",
        ),
        (0 <= c.telemetry_window_count <= 10**9, "telemetry_window_count must be 0..1000000000"),
        (
            not c.telemetry or bool(c.telemetry_window_s or c.telemetry_window_count),
            "telemetry_window_s and telemetry_window_count cannot both be 0",
        ),
        (10 <= c.outbox_max_messages <= 10**7, "outbox_max_messages must be 10..10000000"),
        (c.outbox_max_bytes >= 1024 * 1024, "outbox_max_bytes must be >= 1048576 (1 MiB)"),
        (
            c.outbox_ack_timeout_s == 0 or 1 <= c.outbox_ack_timeout_s <= 86400,
            "outbox_ack_timeout_s must be 0 (the broker's PUBACK is enough) or 1..86400 seconds",
        ),
        (0 <= c.samples_per_hour <= 10**6, "samples_per_hour must be 0..1000000"),
        (0 <= c.sample_bytes_per_hour <= 10 * 1024**3, "sample_bytes_per_hour must be 0..10 GiB"),
    ]


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

    >>> parse_broker_url("mqtts://broker.local")
    ('broker.local', 8883, True)
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker {url!r}: {exc}; use mqtt://host:port") from exc
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"broker {url!r} is not valid; use mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise ConfigError("broker URL must not hold credentials; use username and password keys")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _check_client_cert(cert: Path | None, key: Path | None, tls: bool) -> None:
    """Both or neither; only for mqtts://; readable, and the key belongs to the certificate."""
    if cert is None and key is None:
        return
    if cert is None or key is None:
        raise ConfigError("give both cert_file and key_file (a client certificate and its key)")
    if not tls:
        raise ConfigError("cert_file and key_file need an mqtts:// broker")
    for name, path in (("cert_file", cert), ("key_file", key)):
        try:
            Path(path).open("rb").close()
        except OSError as exc:
            raise ConfigError(f"cannot read {name} {path}: {exc.strerror}") from exc
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"cert_file {cert} and key_file {key} must be a PEM certificate and its "
            f"unencrypted PEM key ({exc})"
        ) from exc


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; values are checked when the object is built."""

    device: str
    fleet: str
    state_dir: Path
    public_keys: tuple[bytes, ...] = ()  # raw 32-byte Ed25519 public keys
    # highest accepted seq kept outside state_dir, so it survives a reinstall (floor.py)
    anti_rollback_file: Path | None = None
    hmac_keys: Mapping[str, bytes] = field(default_factory=dict)  # key_id -> key
    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    mqtt_protocol: str = "3.1.1"
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate (PEM) for mqtts://, with key_file
    key_file: Path | None = None  # its unencrypted PEM private key
    hardware: str = "generic-linux"
    runtimes: tuple[str, ...] | None = None  # None: the installed ones
    tags: tuple[str, ...] = ()
    max_artifact_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = MAX_MESSAGE_BYTES
    http_port: int | None = None  # None: no local HTTP endpoint; 0: any free port
    inbox_size: int = 256  # messages waiting for the worker; more are dropped and counted
    download_stall_s: float = 10.0  # no new chunk for this long: subscribe again
    download_timeout_s: float = 300.0  # no new chunk for this long: the deployment fails
    artifact_transport: str = "mqtt"  # mqtt chunks, http from artifact.url, or auto
    http_download_timeout_s: float = 30.0  # connect and each read of an HTTP download
    http_download_retries: int = 5  # failed HTTP attempts in a row before giving up
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    log_level: str = "info"
    # monitoring (docs/protocol.md, "Telemetry" and "Samples and labels")
    telemetry: bool = True  # statistics windows of the predictions
    telemetry_window_s: float = 60.0  # a window closes this long after its first prediction
    telemetry_window_count: int = 250  # ... or after this many predictions (0: no limit)
    outbox_max_messages: int = 10_000  # messages kept while the broker is away; then the
    outbox_max_bytes: int = 32 * 1024 * 1024  # oldest are dropped and counted
    # windows and samples stay in the outbox until the collector's ack names them; one not
    # acknowledged this long after the broker took it is sent again (0: the PUBACK is enough)
    outbox_ack_timeout_s: float = 60.0
    samples_per_hour: float = 0.0  # sampled predictions per hour (0: no limit of this kind)
    sample_bytes_per_hour: float = 0.0  # bytes of samples per hour (both 0: no sampling)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)

    def __post_init__(self) -> None:
        try:
            validate_id(self.device, "device")
            validate_id(self.fleet, "fleet")
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
        _check_client_cert(self.cert_file, self.key_file, parse_broker_url(self.broker)[2])
        if not self.public_keys and not self.hmac_keys:
            raise ConfigError("no public_keys (or hmac_keys): the agent could accept no manifest")
        for key in self.public_keys:
            if not isinstance(key, bytes) or len(key) != 32:
                raise ConfigError("public_keys must be raw 32-byte Ed25519 keys")
        if self.anti_rollback_file is not None and _inside(self.anti_rollback_file, self.state_dir):
            raise ConfigError(
                "anti_rollback_file must be outside state_dir: it must survive deleting it"
            )
        checks = [
            (1 <= self.keepalive <= 65535, "keepalive must be 1..65535 seconds"),
            (self.mqtt_protocol in MQTT_PROTOCOLS, "mqtt_protocol must be '3.1.1' or '5'"),
            (self.max_artifact_bytes >= 1, "max_artifact_bytes must be >= 1"),
            (self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024"),
            (self.http_port is None or 0 <= self.http_port <= 65535, "http_port must be 0..65535"),
            (self.inbox_size >= 8, "inbox_size must be >= 8"),
            (
                0 < self.download_stall_s <= self.download_timeout_s,
                "download_stall_s must be > 0 and <= download_timeout_s",
            ),
            (
                self.artifact_transport in ARTIFACT_TRANSPORTS,
                f"artifact_transport must be one of {', '.join(ARTIFACT_TRANSPORTS)}",
            ),
            (self.http_download_timeout_s > 0, "http_download_timeout_s must be > 0"),
            (0 <= self.http_download_retries <= 100, "http_download_retries must be 0..100"),
            (
                0 < self.reconnect_min_s <= self.reconnect_max_s,
                "reconnect_min_s must be > 0 and <= reconnect_max_s",
            ),
            (self.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}"),
            (bool(self.hardware) and len(self.hardware) <= 64, "hardware must be 1-64 characters"),
            (
                all(isinstance(t, str) and 0 < len(t) <= 64 for t in self.tags)
                and len(self.tags) <= 32,
                "tags must be at most 32 strings of 1-64 characters",
            ),
            *_monitoring_checks(self),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def key_map(self) -> dict[str, bytes]:
        """Ed25519 public keys by key id (as the envelope's ``signature.key_id`` names them)."""
        return {key_id(k): k for k in self.public_keys}

    @property
    def installed_runtimes(self) -> tuple[str, ...]:
        """``runtimes`` as configured, or the runtimes installed on this device."""
        if self.runtimes is not None:
            return self.runtimes
        from .runtime import available_runtimes

        return tuple(available_runtimes())

    def replace(self, **changes: Any) -> AgentConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> AgentConfig:
        """Build from parsed TOML; relative paths are resolved against ``base_dir``."""
        return _from_dict(dict(data), base_dir or Path.cwd())


def load_config(path: str | Path) -> AgentConfig:
    """Read and check an agent TOML file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return _from_dict(data, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# --- parsing ----------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "device": (str,), "fleet": (str,), "state_dir": (str,), "anti_rollback_file": (str,),
    "broker": (str,),
    "username": (str,), "password": (str,), "password_file": (str,), "keepalive": (int,),
    "mqtt_protocol": (str,), "ca_file": (str,), "cert_file": (str,), "key_file": (str,),
    "hardware": (str,), "runtimes": (list,),
    "tags": (list,), "public_keys": (list,), "hmac_keys": (dict,),
    "max_artifact_bytes": (int,), "max_message_bytes": (int,), "http_port": (int,),
    "inbox_size": (int,), "download_stall_s": (int, float), "download_timeout_s": (int, float),
    "artifact_transport": (str,), "http_download_timeout_s": (int, float),
    "http_download_retries": (int,),
    "reconnect_min_s": (int, float), "reconnect_max_s": (int, float), "log_level": (str,),
    "telemetry": (bool,), "telemetry_window_s": (int, float), "telemetry_window_count": (int,),
    "outbox_max_messages": (int,), "outbox_max_bytes": (int,),
    "outbox_ack_timeout_s": (int, float),
    "samples_per_hour": (int, float), "sample_bytes_per_hour": (int, float),
    "simulate": (dict,),
}  # fmt: skip
_SIMULATE_TYPES: dict[str, tuple[type, ...]] = {
    "fail_health": (bool,), "extra_latency_ms": (int, float),
    "corrupt_outputs_after_activation": (bool,), "download_delay_ms": (int, float),
}  # fmt: skip


def _typed(data: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> dict[str, Any]:
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]!r}; see agent.example.toml")
    for key, value in data.items():
        kinds = types[key]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{where}{key} must be {names}, not {type(value).__name__}")
    return data


def _inside(path: Path, folder: Path) -> bool:
    a, b = Path(path).absolute(), Path(folder).absolute()
    return a == b or b in a.parents


def _path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _public_key(entry: Any, base: Path) -> bytes:
    if not isinstance(entry, str) or not entry:
        raise ConfigError("public_keys entries must be base64 keys or paths to key files")
    raw = _b64(entry)
    if raw is not None and len(raw) == 32:
        return raw
    path = _path(entry, base)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"public key {entry[:60]!r} is neither a base64 32-byte key nor a readable file"
        ) from exc
    if len(content) == 32:
        return content
    raw = _b64(content.decode("ascii", "replace").strip())
    if raw is None or len(raw) != 32:
        raise ConfigError(f"public key file {path} must hold a base64 raw 32-byte Ed25519 key")
    return raw


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _from_dict(data: dict[str, Any], base: Path) -> AgentConfig:
    _typed(data, _TYPES, "")
    for key in ("device", "fleet", "state_dir"):
        if key not in data:
            raise ConfigError(f"missing required key {key!r}")
    kw: dict[str, Any] = {k: v for k, v in data.items() if k not in _SPECIAL}
    kw["state_dir"] = _path(data["state_dir"], base)
    kw["public_keys"] = tuple(_public_key(e, base) for e in data.get("public_keys", []))
    hmac_keys = {}
    for kid, value in data.get("hmac_keys", {}).items():
        raw = _b64(value) if isinstance(value, str) else None
        if not raw:
            raise ConfigError(f"hmac_keys.{kid} must be a base64 key")
        hmac_keys[kid] = raw
    kw["hmac_keys"] = hmac_keys
    if "password_file" in data:
        if "password" in data:
            raise ConfigError("give password or password_file, not both")
        try:
            kw["password"] = _path(data["password_file"], base).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read password_file: {exc.strerror}") from exc
    for key in ("ca_file", "cert_file", "key_file"):
        if key in data:
            kw[key] = _path(data[key], base)
    if "anti_rollback_file" in data:
        kw["anti_rollback_file"] = _path(data["anti_rollback_file"], base)
    for key in ("runtimes", "tags"):
        if key in data:
            if not all(isinstance(v, str) for v in data[key]):
                raise ConfigError(f"{key} must be a list of strings")
            kw[key] = tuple(data[key])
    kw["simulate"] = SimulateConfig(
        **_typed(dict(data.get("simulate", {})), _SIMULATE_TYPES, "simulate.")
    )
    return AgentConfig(**kw)


_SPECIAL = {
    "state_dir",
    "anti_rollback_file",
    "public_keys",
    "hmac_keys",
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
    "runtimes",
    "tags",
    "simulate",
}
