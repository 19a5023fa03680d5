"""The targets file: which devices a campaign runs on, the broker, and the campaign's
figures. TOML, checked when read; every error names the key and what to write instead.

>>> spec = parse_targets('''
... [[target]]
... name = "sim-1"
... kind = "netns"
... netem = {loss = 20, delay_ms = 50, jitter_ms = 20, reorder = 25}
... ''')
>>> spec.targets[0].netem.describe(), spec.broker.start, spec.campaign.scenarios
('20% loss, 50±20 ms, reorder 25%', True, ('rollout', 'telemetry'))

See ``hil/targets.example.toml`` and docs/hil.md for every key.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.errors import HilError
from hil.impair import Impairment

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "KEYS",
    "SCENARIOS",
    "BrokerSpec",
    "CampaignSpec",
    "NetnsTarget",
    "Spec",
    "SshTarget",
    "load_targets",
    "parse_targets",
]

SCENARIOS = ("rollout", "telemetry")
INSTALLS = ("venv", "source", "none")
STARTS = ("nohup", "systemd-run")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST = re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$")


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise HilError(f"{what} {value!r}: use 1-64 letters, digits, '_', '.', '-'")
    return value


@dataclass(frozen=True)
class CampaignSpec:
    fleet: str | None = None  # default: hil-<run token>
    scenarios: tuple[str, ...] = SCENARIOS
    predictions: int = 250  # per target, in the telemetry scenario
    window: int = 25  # the agents' telemetry_window_count
    batch: int = 25  # rows per POST /predict
    rollout_timeout_s: float = 180.0
    telemetry_timeout_s: float = 120.0
    online_timeout_s: float = 120.0
    keepalive: int = 10  # the agents' MQTT keepalive
    chunk_size: int | None = None  # artifact chunk bytes (default: the protocol's)

    def __post_init__(self) -> None:
        if self.fleet is not None:
            _check_id(self.fleet, "campaign.fleet")
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise HilError(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
        if not self.scenarios:
            raise HilError("campaign.scenarios is empty; name at least one of rollout, telemetry")
        if not (1 <= self.window <= 100_000 and 1 <= self.batch <= 1000):
            raise HilError("campaign.window must be 1..100000 and campaign.batch 1..1000")
        if self.predictions < self.window or self.predictions % self.window:
            raise HilError("campaign.predictions must be a positive multiple of campaign.window")
        if min(self.rollout_timeout_s, self.telemetry_timeout_s, self.online_timeout_s) <= 0:
            raise HilError("campaign timeouts must be > 0 seconds")
        if not 2 <= self.keepalive <= 600:
            raise HilError("campaign.keepalive must be 2..600 seconds")
        if self.chunk_size is not None and not 256 <= self.chunk_size <= 4 * 1024 * 1024:
            raise HilError("campaign.chunk_size must be 256..4194304 bytes")


@dataclass(frozen=True)
class BrokerSpec:
    """The operator's broker (``url``), or one the harness starts (``start``)."""

    url: str | None = None  # what this machine (controller, collector) connects to
    device_url: str | None = None  # what SSH devices connect to (default: url)
    start: bool = True
    listen: str | None = None  # an extra address the started broker listens on
    advertise: str | None = None  # the address SSH devices reach the started broker at
    port: int = 0  # 0: a free port

    def __post_init__(self) -> None:
        for key in ("url", "device_url"):
            value = getattr(self, key)
            if value is not None and not re.match(r"^mqtts?://[^/\s]+/?$", value):
                raise HilError(f"broker.{key} {value!r}: use mqtt://host:port")
        for key in ("listen", "advertise"):
            value = getattr(self, key)
            if value is not None and not _HOST.match(value):
                raise HilError(f"broker.{key} {value!r} is not a host name or address")
        if not 0 <= self.port <= 65535:
            raise HilError("broker.port must be 0..65535")


@dataclass(frozen=True)
class NetnsTarget:
    """A simulated device: the real agent in a network namespace of this machine."""

    name: str
    netem: Impairment = field(default_factory=Impairment)
    link: str = "auto"  # auto, veth (tc netem), wire (userspace netem)
    hardware: str = "rpi4"
    runtimes: tuple[str, ...] = ("onnxruntime",)
    http_port: int = 8470
    kind: str = "netns"

    def __post_init__(self) -> None:
        _check_id(self.name, "target name")
        if self.link not in ("auto", "veth", "wire"):
            raise HilError(f"target {self.name}: link must be auto, veth or wire")
        _check_port(self.name, self.http_port)


@dataclass(frozen=True)
class SshTarget:
    """A real device reached over SSH."""

    name: str
    host: str
    user: str | None = None
    port: int = 22
    key: str | None = None  # private key file (ssh -i)
    python: str = "python3"  # the device's Python, 3.9 or newer
    workdir: str = "edgeops-hil"  # on the device; relative paths are under the login's home
    install: str = "venv"  # venv (wheel built here), source (copied), none (already there)
    extras: tuple[str, ...] = ("onnx",)  # the agent's extras for a venv install
    pip_args: tuple[str, ...] = ()  # e.g. ["--no-index", "--find-links", "/opt/wheels"]
    system_site_packages: bool = False  # the venv sees the device's system packages
    start: str = "nohup"  # nohup, or systemd-run (a transient unit; journal logs)
    sudo: bool = False  # prefix systemd-run/systemctl/journalctl with sudo -n
    ssh_options: tuple[str, ...] = ()  # more ssh arguments, e.g. ["-o", "ProxyJump=gw"]
    hardware: str = "rpi4"
    runtimes: tuple[str, ...] = ("onnxruntime",)
    http_port: int = 8470
    kind: str = "ssh"

    def __post_init__(self) -> None:
        _check_id(self.name, "target name")
        if not _HOST.match(self.host):
            raise HilError(f"target {self.name}: host {self.host!r} is not a host name/address")
        if self.user is not None and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", self.user):
            raise HilError(f"target {self.name}: user {self.user!r} is not a login name")
        if self.install not in INSTALLS:
            raise HilError(f"target {self.name}: install must be one of {', '.join(INSTALLS)}")
        if self.start not in STARTS:
            raise HilError(f"target {self.name}: start must be one of {', '.join(STARTS)}")
        if not self.workdir or self.workdir.strip("/. ~") == "" or ".." in self.workdir.split("/"):
            raise HilError(
                f"target {self.name}: workdir {self.workdir!r} must name a folder of its own "
                "(the harness deletes it on --uninstall)"
            )
        if not all(re.match(r"^[A-Za-z0-9_-]+$", e) for e in self.extras):
            raise HilError(f"target {self.name}: extras must be names like onnx or litert")
        _check_port(self.name, self.http_port)
        if not 1 <= self.port <= 65535:
            raise HilError(f"target {self.name}: port must be 1..65535")

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


def _check_port(name: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise HilError(f"target {name}: http_port must be 1..65535")


Target = NetnsTarget | SshTarget


@dataclass(frozen=True)
class Spec:
    campaign: CampaignSpec
    broker: BrokerSpec
    targets: tuple[Target, ...]
    source: Path | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            raise HilError("no [[target]] in the targets file")
        names = [t.name for t in self.targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise HilError(f"target name {dup[0]!r} is used twice; names are device ids")
        if any(isinstance(t, NetnsTarget) for t in self.targets) and not self.broker.start:
            raise HilError(
                "netns targets need the broker the harness starts (they reach this machine "
                "only over their links); drop broker.url or move them to another file"
            )

    def with_scenarios(self, scenarios: tuple[str, ...]) -> Spec:
        c = self.campaign
        return Spec(_replace(c, scenarios=scenarios), self.broker, self.targets, self.source)


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


_CAMPAIGN_TYPES: dict[str, tuple[type, ...]] = {
    "fleet": (str,),
    "scenarios": (list,),
    "predictions": (int,),
    "window": (int,),
    "batch": (int,),
    "rollout_timeout_s": (int, float),
    "telemetry_timeout_s": (int, float),
    "online_timeout_s": (int, float),
    "keepalive": (int,),
    "chunk_size": (int,),
}
_BROKER_TYPES: dict[str, tuple[type, ...]] = {
    "url": (str,),
    "device_url": (str,),
    "start": (bool,),
    "listen": (str,),
    "advertise": (str,),
    "port": (int,),
}
_COMMON: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "kind": (str,),
    "hardware": (str,),
    "runtimes": (list,),
    "http_port": (int,),
}
_NETNS_TYPES = {**_COMMON, "netem": (dict,), "link": (str,)}
_SSH_TYPES = {
    **_COMMON,
    "host": (str,),
    "user": (str,),
    "port": (int,),
    "key": (str,),
    "python": (str,),
    "workdir": (str,),
    "install": (str,),
    "extras": (list,),
    "pip_args": (list,),
    "system_site_packages": (bool,),
    "start": (str,),
    "sudo": (bool,),
    "ssh_options": (list,),
}


KEYS = {  # every key a targets file may hold, by table (docs/hil.md describes each)
    "campaign": tuple(_CAMPAIGN_TYPES),
    "broker": tuple(_BROKER_TYPES),
    "target (netns)": tuple(_NETNS_TYPES),
    "target (ssh)": tuple(_SSH_TYPES),
}


def _typed(data: Any, types: dict[str, tuple[type, ...]], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HilError(f"{where} must be a table")
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise HilError(f"unknown key {where}.{unknown[0]}; see hil/targets.example.toml")
    for key, value in data.items():
        kinds = types[key]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise HilError(f"{where}.{key} must be {names}, not {type(value).__name__}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise HilError(f"{where}.{key} must be a list of strings")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def _target(data: Any, i: int, base: Path | None) -> Target:
    where = f"target[{i}]"
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "netns":
        kw = _typed(data, _NETNS_TYPES, where)
        if "netem" in kw:
            try:
                kw["netem"] = Impairment.from_dict(kw["netem"])
            except (TypeError, ValueError) as exc:
                raise HilError(f"{where}.netem: {exc}") from exc
        return NetnsTarget(**kw)
    if kind == "ssh":
        kw = _typed(data, _SSH_TYPES, where)
        if "key" in kw:
            key = Path(kw["key"]).expanduser()
            kw["key"] = str(key if key.is_absolute() or base is None else base / key)
        return SshTarget(**kw)
    raise HilError(f'{where}.kind must be "netns" or "ssh", not {kind!r}')


def parse_targets(text: str, base: Path | None = None) -> Spec:
    """A :class:`Spec` from the text of a targets file (``base``: its folder, for key paths)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HilError(f"the targets file is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"campaign", "broker", "target"})
    if unknown:
        raise HilError(f"unknown section [{unknown[0]}]; known: [campaign], [broker], [[target]]")
    campaign = _typed(data.get("campaign", {}), _CAMPAIGN_TYPES, "campaign")
    broker = _typed(data.get("broker", {}), _BROKER_TYPES, "broker")
    if "url" in broker and "start" not in broker:
        broker["start"] = False
    if broker.get("start") and "url" in broker:
        raise HilError("give broker.url (yours) or broker.start = true (the harness's), not both")
    if not broker.get("start", True) and "url" not in broker:
        raise HilError("broker.start = false needs broker.url, the broker to use")
    targets = data.get("target", [])
    if not isinstance(targets, list):
        raise HilError("targets are [[target]] tables")
    return Spec(
        CampaignSpec(**campaign),
        BrokerSpec(**broker),
        tuple(_target(t, i, base) for i, t in enumerate(targets)),
    )


def load_targets(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HilError(f"cannot read the targets file {path}: {exc.strerror}") from exc
    try:
        spec = parse_targets(text, path.resolve().parent)
    except HilError as exc:
        raise HilError(f"{path}: {exc}") from exc
    return Spec(spec.campaign, spec.broker, spec.targets, path)
