"""HMAC-SHA256 manifests for microcontrollers: per-device keys, and a controller that uses them.

Microcontroller firmware verifies manifests with HMAC-SHA256 and a key of its
own (docs/protocol.md, alg ``hmac-sha256``), where Ed25519 is too heavy. The
server keeps one key per device in ``<keys_dir>/devices/<device>.hmac`` (mode
0600: ``<key_id> <base64 key>``); the same key is flashed into the device (the
firmware's config: ``hmac_key_id``, ``hmac_key``).

:class:`FirmwareRolloutController` is the stop-gap until the rollout controller
signs per device itself (docs/firmware.md, "What the server needs next"): a
:class:`~edgeops.fleet.controller.RolloutController` whose manifests for devices
with an HMAC key are HMAC-signed, and which gives those devices the loadable
emlearn variant (``emlearn-loadable``) where the rollout chose ``c-emlearn`` (C
source a device cannot load over the air).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops_protocol.manifest import sign_manifest, sign_manifest_hmac
from edgeops_protocol.topics import device_topic, validate_id

from ..errors import ConfigError, Conflict
from ..fleet.controller import RolloutController
from ..fsutil import atomic_write_bytes

__all__ = [
    "LOADABLE_VARIANT",
    "DeviceKey",
    "FirmwareRolloutController",
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


class FirmwareRolloutController(RolloutController):
    """A rollout controller that signs microcontrollers' manifests with their HMAC keys."""

    def __init__(
        self,
        ws: Any,
        key: Any,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        *,
        device_keys: Mapping[str, DeviceKey],
        loadable_variant: str = LOADABLE_VARIANT,
    ) -> None:
        super().__init__(ws, key, client, clock)
        self.device_keys = dict(device_keys)
        self.loadable_variant = loadable_variant

    def _deploy(
        self, rid: str, model_ref: str, device: str, targets: dict[str, Any], revert: bool
    ) -> dict[str, Any] | None:
        dk = self.device_keys.get(device)
        if dk is None:
            return super()._deploy(rid, model_ref, device, targets, revert)
        t = targets["devices"][device]
        if not revert and t["variant"] == "c-emlearn":
            mv = self.ws.registry.get_version(model_ref)
            if any(v.name == self.loadable_variant for v in mv.variants):
                t = {**t, "variant": self.loadable_variant}
                targets = {**targets, "devices": {**targets["devices"], device: t}}
        out = super()._deploy(rid, model_ref, device, targets, revert)
        if out is not None:
            out["envelope"] = sign_manifest_hmac(out["envelope"]["manifest"], dk.key, dk.key_id)
        return out

    def resign_expiring(self, now: float, margin: float | None = None) -> int:
        """As the base class, but each device's manifest is signed the way it verifies."""
        n = 0
        for d in self.fleet.desired():
            m = dict(d.envelope["manifest"])
            life = m["expires_at"] - m["issued_at"]
            if d.expires_at - now > (life / 2 if margin is None else margin):
                continue
            m["issued_at"], m["expires_at"] = now, now + life
            envelope = sign_for_device(m, self.key, self.device_keys)
            if self.client is not None:
                topic = device_topic(self.fleet.fleet, d.device_id, "desired")
                self.client.publish_all([(topic, json.dumps(envelope).encode(), True)])
            self.fleet.save_desired(
                d.device_id,
                d.seq,
                d.rollout_id,
                d.model_ref,
                d.variant,
                d.sha256,
                envelope,
                m["expires_at"],
            )
            n += 1
        return n
