"""Deployment manifests: canonical form, signatures, and the checks a device makes.

Signing and verifying with Ed25519 needs ``cryptography`` (imported when used);
HMAC-SHA256, for microcontrollers, needs only the standard library. The device
checks are pure functions of the manifest, the device's facts, the highest
sequence number it accepted, and the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from . import PROTOCOL_VERSION
from .messages import MAX_MESSAGE_BYTES, decode
from .topics import ProtocolError, validate_id

__all__ = [
    "RUNTIME_FAMILY",
    "DeviceFacts",
    "Rejected",
    "canonical_json",
    "check_manifest",
    "generate_keypair",
    "key_id",
    "parse_envelope",
    "public_key_of",
    "sign_manifest",
    "sign_manifest_hmac",
    "validate_manifest",
    "verify_envelope",
]

# runtime package on a device -> the runtime family a manifest names
RUNTIME_FAMILY = {
    "ai-edge-litert": "tflite",
    "tflite-runtime": "tflite",
    "onnxruntime": "onnx",
    "tflite-micro": "tflm",
    "emlearn": "emlearn",
}
FORMATS = ("tflite", "onnx", "c-tflm", "c-emlearn")
FAMILIES = ("tflite", "onnx", "tflm", "emlearn")


class Rejected(Exception):
    """A manifest the device must not act on; ``str()`` is the reason it reports."""


def canonical_json(obj: Any) -> bytes:
    """The signed bytes: sorted keys, no whitespace, ASCII (non-ASCII escaped)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def key_id(public_key: bytes) -> str:
    """First 16 hex digits of the SHA-256 of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ModuleNotFoundError as exc:  # pragma: no cover - a dependency of the agent extra
        raise RuntimeError("Ed25519 needs the 'cryptography' package") from exc
    return ed25519


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as raw bytes: ``(private 32 bytes, public 32 bytes)``."""
    from cryptography.hazmat.primitives import serialization as ser

    private = _ed25519().Ed25519PrivateKey.generate()
    raw = private.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    return raw, public_key_of(raw)


def public_key_of(private_key: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization as ser

    private = _ed25519().Ed25519PrivateKey.from_private_bytes(private_key)
    return private.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def _envelope(manifest: Mapping[str, Any], alg: str, kid: str, value: bytes) -> dict:
    return {
        "protocol": PROTOCOL_VERSION,
        "type": "desired",
        "manifest": dict(manifest),
        "signature": {"alg": alg, "key_id": kid, "value": base64.b64encode(value).decode()},
    }


def sign_manifest(manifest: Mapping[str, Any], private_key: bytes) -> dict:
    """The signed envelope of ``manifest`` (Ed25519)."""
    validate_manifest(manifest)
    private = _ed25519().Ed25519PrivateKey.from_private_bytes(private_key)
    sig = private.sign(canonical_json(manifest))
    return _envelope(manifest, "ed25519", key_id(public_key_of(private_key)), sig)


def sign_manifest_hmac(manifest: Mapping[str, Any], key: bytes, kid: str) -> dict:
    """The envelope of ``manifest`` authenticated with HMAC-SHA256 (per-device key)."""
    validate_manifest(manifest)
    mac = hmac.new(key, canonical_json(manifest), hashlib.sha256).digest()
    return _envelope(manifest, "hmac-sha256", kid, mac)


def parse_envelope(payload: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """The envelope of a desired-state message, shape-checked (signature not yet checked)."""
    env = decode(payload, "desired", max_bytes)
    if not isinstance(env.get("manifest"), dict):
        raise ProtocolError("field 'manifest' must be an object")
    sig = env.get("signature")
    if not isinstance(sig, dict) or not all(
        isinstance(sig.get(k), str) for k in ("alg", "key_id", "value")
    ):
        raise ProtocolError("field 'signature' must hold alg, key_id and value strings")
    return env


def verify_envelope(
    env: Mapping[str, Any],
    public_keys: Mapping[str, bytes] | None = None,
    hmac_keys: Mapping[str, bytes] | None = None,
    retired: Container[str] = (),
) -> dict:
    """The manifest, if its signature verifies with one of the keys; else :class:`Rejected`.

    ``retired`` names Ed25519 keys the device stopped trusting (key rotation,
    :mod:`edgeops_protocol.keychain`), so the reason says so rather than "unknown"."""
    sig = env["signature"]
    try:
        value = base64.b64decode(sig["value"], validate=True)
    except (ValueError, TypeError) as exc:
        raise Rejected("signature is not base64") from exc
    try:
        signed = canonical_json(env["manifest"])
    except (TypeError, ValueError) as exc:
        raise Rejected(f"manifest cannot be canonicalized: {exc}") from exc
    if sig["alg"] == "ed25519":
        key = (public_keys or {}).get(sig["key_id"])
        if key is None and sig["key_id"] in retired:
            raise Rejected(f"signing key {sig['key_id'][:16]!r} was retired")
        if key is None:
            raise Rejected(f"unknown signing key {sig['key_id'][:16]!r}")
        from cryptography.exceptions import InvalidSignature

        try:
            _ed25519().Ed25519PublicKey.from_public_bytes(key).verify(value, signed)
        except (InvalidSignature, ValueError) as exc:
            raise Rejected("bad signature") from exc
    elif sig["alg"] == "hmac-sha256":
        key = (hmac_keys or {}).get(sig["key_id"])
        if key is None:
            raise Rejected(f"unknown HMAC key {sig['key_id'][:16]!r}")
        if not hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), value):
            raise Rejected("bad signature")
    else:
        raise Rejected(f"unsupported signature algorithm {sig['alg'][:32]!r}")
    try:
        return validate_manifest(env["manifest"])
    except ProtocolError as exc:
        raise Rejected(f"malformed manifest: {exc}") from exc


def _need(obj: Mapping[str, Any], key: str, kind: type | tuple, where: str) -> Any:
    value = obj.get(key)
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProtocolError(f"{where}.{key} must be a number")
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}.{key} is missing or has the wrong type")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{where}.{key} must be finite")
    return value


def validate_manifest(m: Mapping[str, Any]) -> dict:
    """Shape and type checks of a manifest (docs/protocol.md); returns it as a dict."""
    if not isinstance(m, Mapping):
        raise ProtocolError("manifest must be an object")
    validate_id(_need(m, "fleet", str, "manifest"), "fleet")
    validate_id(_need(m, "device", str, "manifest"), "device")
    seq = _need(m, "seq", int, "manifest")
    if seq < 1:
        raise ProtocolError("manifest.seq must be >= 1")
    if m.get("action") != "deploy":
        raise ProtocolError("manifest.action must be 'deploy'")
    _need(m, "deployment", str, "manifest")
    if m.get("rollout") is not None and not isinstance(m.get("rollout"), str):
        raise ProtocolError("manifest.rollout must be a string or null")
    issued = _need(m, "issued_at", (int, float), "manifest")
    expires = _need(m, "expires_at", (int, float), "manifest")
    if expires <= issued:
        raise ProtocolError("manifest.expires_at must be after issued_at")
    target = _need(m, "target", dict, "manifest")
    for key in ("hardware", "runtime"):
        values = _need(target, key, list, "manifest.target")
        if not values or not all(isinstance(v, str) for v in values):
            raise ProtocolError(f"manifest.target.{key} must be a non-empty list of strings")
    model = _need(m, "model", dict, "manifest")
    _need(model, "name", str, "manifest.model")
    if _need(model, "version", int, "manifest.model") < 1:
        raise ProtocolError("manifest.model.version must be >= 1")
    _need(model, "variant", str, "manifest.model")
    if model.get("format") not in FORMATS:
        raise ProtocolError(f"manifest.model.format must be one of {', '.join(FORMATS)}")
    if model.get("runtime") not in FAMILIES:
        raise ProtocolError(f"manifest.model.runtime must be one of {', '.join(FAMILIES)}")
    art = _need(m, "artifact", dict, "manifest")
    sha = _need(art, "sha256", str, "manifest.artifact")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ProtocolError("manifest.artifact.sha256 must be a SHA-256 hex digest")
    size = _need(art, "size", int, "manifest.artifact")
    chunk = _need(art, "chunk_size", int, "manifest.artifact")
    chunks = _need(art, "chunks", list, "manifest.artifact")
    if size < 1 or chunk < 1 or len(chunks) != max(1, -(-size // chunk)):
        raise ProtocolError("manifest.artifact size, chunk_size and chunks do not agree")
    if not all(isinstance(c, str) and len(c) == 64 for c in chunks):
        raise ProtocolError("manifest.artifact.chunks must be SHA-256 hex digests")
    health = _need(m, "health", dict, "manifest")
    ins = _need(health, "inputs", list, "manifest.health")
    outs = _need(health, "outputs", list, "manifest.health")
    if len(ins) != len(outs):
        raise ProtocolError("manifest.health inputs and outputs differ in length")
    for key in ("atol", "latency_budget_ms", "probation_s", "max_error_rate"):
        if _need(health, key, (int, float), "manifest.health") < 0:
            raise ProtocolError(f"manifest.health.{key} must be >= 0")
    _need(m, "serving", dict, "manifest")
    return dict(m)


@dataclass(frozen=True)
class DeviceFacts:
    fleet: str
    device: str
    hardware: str
    runtimes: tuple[str, ...]  # installed runtime packages, e.g. ("ai-edge-litert",)
    max_artifact_bytes: int = 64 * 1024 * 1024

    @property
    def families(self) -> set[str]:
        return {RUNTIME_FAMILY.get(r, r) for r in self.runtimes}


def check_manifest(m: Mapping[str, Any], facts: DeviceFacts, accepted_seq: int, now: float) -> bool:
    """Whether to act on a verified manifest.

    Returns False for one already handled (``seq == accepted_seq``); raises
    :class:`Rejected` with the reason for a manifest the device must refuse.
    """
    if m["fleet"] != facts.fleet or m["device"] != facts.device:
        raise Rejected(f"manifest is for {m['fleet']}/{m['device']}, not this device")
    if m["seq"] == accepted_seq:
        return False
    if m["seq"] < accepted_seq:
        raise Rejected(f"replayed manifest: seq {m['seq']} is below the accepted {accepted_seq}")
    if m["expires_at"] <= now:
        raise Rejected(f"manifest expired at {m['expires_at']:.0f} (now {now:.0f})")
    hardware = m["target"]["hardware"]
    if "*" not in hardware and facts.hardware not in hardware:
        raise Rejected(f"manifest targets hardware {', '.join(hardware)}, this is {facts.hardware}")
    runtime = m["model"]["runtime"]
    if runtime not in m["target"]["runtime"] or runtime not in facts.families:
        raise Rejected(
            f"manifest needs runtime {runtime}; this device has "
            f"{', '.join(sorted(facts.families)) or 'none'}"
        )
    if m["artifact"]["size"] > facts.max_artifact_bytes:
        raise Rejected(
            f"artifact of {m['artifact']['size']} bytes is over this device's "
            f"limit of {facts.max_artifact_bytes}"
        )
    return True
