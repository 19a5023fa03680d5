"""HMAC-SHA256 manifests for microcontrollers: per-device keys, and the fleet's signer.

Microcontroller firmware verifies manifests with HMAC-SHA256 and a key of its
own (docs/protocol.md, alg ``hmac-sha256``), where Ed25519 is too heavy. The
server keeps one key per device in ``<keys_dir>/devices/<device>.hmac`` (mode
0600: ``<key_id> <base64 key>``, made by ``edgeops keys device``); the same key is
flashed into the device (the firmware's config: ``hmac_key_id``, ``hmac_key``).

:class:`FleetSigner` is the rollout controller's default signer: HMAC with the
device's key when it has one, Ed25519 with the fleet key otherwise.
:class:`FirmwareRolloutController` is kept as a thin alias (a controller whose
signer uses the device keys given to it); the controller itself now signs per
device and prefers ``emlearn-loadable`` for emlearn firmware (``fleet.deploy``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops_protocol.manifest import sign_manifest, sign_manifest_hmac
from edgeops_protocol.topics import validate_id

from ..errors import ConfigError, Conflict
from ..fleet.controller import RolloutController
from ..fsutil import atomic_write_bytes

__all__ = [
    "LOADABLE_VARIANT",
    "DeviceKey",
    "FirmwareRolloutController",
    "FleetSigner",
    "generate_device_key",
    "load_device_keys",
    "sign_for_device",
]

LOADABLE_VARIANT = "emlearn-loadable"
KEY_BYTES = 32


@dataclass(frozen=True)
class DeviceKey:
    device: str
    key_id: str
    key: bytes

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key).decode()


def _path(keys_dir: Path, device: str) -> Path:
    return Path(keys_dir) / "devices" / f"{validate_id(device, 'device')}.hmac"


def generate_device_key(keys_dir: Path, device: str, force: bool = False) -> DeviceKey:
    """A new random 32-byte HMAC key for ``device``; refuses to replace one unless ``force``."""
    path = _path(keys_dir, device)
    if path.exists() and not force:
        raise Conflict(
            f"{device} already has an HMAC key; its firmware holds it — "
            "use force only if you reflash the device with the new one"
        )
    key = secrets.token_bytes(KEY_BYTES)
    kid = f"{device}-{hashlib.sha256(key).hexdigest()[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write_bytes(path, f"{kid} {base64.b64encode(key).decode()}\n".encode(), mode=0o600)
    return DeviceKey(device, kid, key)


def load_device_keys(keys_dir: Path) -> dict[str, DeviceKey]:
    """Every device's HMAC key in ``keys_dir`` (device id -> key)."""
    out: dict[str, DeviceKey] = {}
    for path in sorted((Path(keys_dir) / "devices").glob("*.hmac")):
        try:
            kid, value = path.read_text().split()
            key = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ConfigError(f"{path} is not '<key_id> <base64 key>'; regenerate it") from exc
        out[path.stem] = DeviceKey(path.stem, kid, key)
    return out


def sign_for_device(
    manifest: Mapping[str, Any], signing_key: Any, device_keys: Mapping[str, DeviceKey]
) -> dict[str, Any]:
    """HMAC-SHA256 with the device's key when it has one, else Ed25519 with the fleet key."""
    dk = device_keys.get(manifest["device"])
    if dk is not None:
        return sign_manifest_hmac(manifest, dk.key, dk.key_id)
    return sign_manifest(manifest, signing_key.private)


class FleetSigner:
    """``signer(device, manifest) -> envelope``: HMAC-SHA256 with the device's key when it
    has one, else Ed25519 with the fleet ``key``.

    Device keys come from ``device_keys`` when given, else from ``<keys_dir>/devices/``,
    read again whenever that folder changes (a key made by ``edgeops keys device`` while a
    controller runs is used for the next manifest)."""

    def __init__(
        self,
        key: Any,
        *,
        keys_dir: Path | None = None,
        device_keys: Mapping[str, DeviceKey] | None = None,
    ) -> None:
        self.key = key
        self.keys_dir = None if keys_dir is None else Path(keys_dir)
        self._fixed = None if device_keys is None else dict(device_keys)
        self._loaded: dict[str, DeviceKey] = {}
        self._stamp: int | None = None

    def device_keys(self) -> dict[str, DeviceKey]:
        if self._fixed is not None:
            return self._fixed
        if self.keys_dir is None:
            return {}
        folder = self.keys_dir / "devices"
        try:
            stamp = folder.stat().st_mtime_ns
        except FileNotFoundError:
            self._loaded, self._stamp = {}, None
            return {}
        if stamp != self._stamp:
            self._loaded, self._stamp = load_device_keys(self.keys_dir), stamp
        return self._loaded

    def __call__(self, device: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        dk = self.device_keys().get(device)
        if dk is not None:
            return sign_manifest_hmac(manifest, dk.key, dk.key_id)
        if self.key is None:
            raise ConfigError(
                f"no signing key to sign {device}'s manifest; run `edgeops keys generate`"
            )
        return sign_manifest(manifest, self.key.private)


class FirmwareRolloutController(RolloutController):
    """A rollout controller whose signer uses the HMAC keys given (``device_keys``) instead
    of ``<keys_dir>/devices/``. Kept for callers of the stop-gap; new code passes
    ``signer=FleetSigner(key, device_keys=...)`` to :class:`RolloutController`."""

    def __init__(
        self,
        ws: Any,
        key: Any,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        *,
        device_keys: Mapping[str, DeviceKey],
    ) -> None:
        self.device_keys = dict(device_keys)
        signer = FleetSigner(key, device_keys=self.device_keys)
        super().__init__(ws, key, client, clock, signer=signer)
