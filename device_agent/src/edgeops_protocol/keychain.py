"""Signing key rotation: each new fleet key is announced in a message signed by the key
before it, and devices follow that chain from a key they already trust.

A *link* is one announcement and its Ed25519 signature by the previous key::

    {"announcement": {"type": "key", "fleet": "lab", "key_id": "<new>",
                      "public_key": "<base64>", "previous": "<old key id>",
                      "issued_at": 1795760000.0, "retire_previous_at": 1796364800.0},
     "signature": {"alg": "ed25519", "key_id": "<old key id>", "value": "<base64>"}}

The server publishes every link, oldest first, in one retained ``keys`` message on
``edgeops/<fleet>/keys`` (docs/protocol.md, "Signing keys"). A device follows the
chain with :func:`follow_chain`, a pure function of what it trusts, the chain and the
time: a link signed by a key it trusts adds the new key, and sets when the previous key
stops being trusted (``retire_previous_at``; a later copy of the link may bring that
time forward, never push it back). The signature covers the canonical JSON of
``announcement`` (:func:`~edgeops_protocol.manifest.canonical_json`), whose
``"type": "key"`` keeps it from ever being read as a manifest.

>>> keys_topic("lab")
'edgeops/lab/keys'
>>> KeyTrust().trusted({"a1": b"k" * 32}, now=0.0)
{'a1': b'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk'}
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import PROTOCOL_VERSION
from .manifest import _ed25519, canonical_json, key_id, public_key_of
from .messages import MAX_MESSAGE_BYTES, decode
from .topics import ROOT, ProtocolError, validate_id

__all__ = [
    "MAX_CHAIN",
    "ChainOutcome",
    "KeyTrust",
    "announce_key",
    "follow_chain",
    "keys_message",
    "keys_topic",
    "parse_keys_message",
]

MAX_CHAIN = 64  # links in one keys message; a device more rotations behind is re-provisioned
_KID_CHARS = frozenset("0123456789abcdef")


def keys_topic(fleet: str) -> str:
    """The retained topic of the fleet's key announcements."""
    return f"{ROOT}/{validate_id(fleet, 'fleet')}/keys"


def announce_key(
    fleet: str,
    new_public_key: bytes,
    previous_private_key: bytes,
    *,
    issued_at: float,
    retire_previous_at: float | None,
) -> dict[str, Any]:
    """A link: ``new_public_key`` announced under the signature of the previous key.

    ``retire_previous_at`` (Unix seconds) is when devices stop trusting the previous key;
    None leaves it trusted until a later copy of this link sets a time."""
    validate_id(fleet, "fleet")
    if len(new_public_key) != 32:
        raise ValueError("new_public_key must be a raw 32-byte Ed25519 public key")
    previous = key_id(public_key_of(previous_private_key))
    announcement = {
        "type": "key",
        "fleet": fleet,
        "key_id": key_id(new_public_key),
        "public_key": base64.b64encode(new_public_key).decode(),
        "previous": previous,
        "issued_at": float(issued_at),
        "retire_previous_at": None if retire_previous_at is None else float(retire_previous_at),
    }
    private = _ed25519().Ed25519PrivateKey.from_private_bytes(previous_private_key)
    value = private.sign(canonical_json(announcement))
    return {
        "announcement": announcement,
        "signature": {
            "alg": "ed25519",
            "key_id": previous,
            "value": base64.b64encode(value).decode(),
        },
    }


def keys_message(fleet: str, chain: Iterable[Mapping[str, Any]]) -> bytes:
    """The retained payload of ``edgeops/<fleet>/keys``: the newest :data:`MAX_CHAIN` links."""
    links = [dict(link) for link in chain][-MAX_CHAIN:]
    msg = {
        "protocol": PROTOCOL_VERSION,
        "type": "keys",
        "fleet": validate_id(fleet, "fleet"),
        "chain": links,
    }
    return json.dumps(msg, sort_keys=True, separators=(",", ":")).encode()


def _kid(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 16 or not set(value) <= _KID_CHARS:
        raise ProtocolError(f"{where} must be a key id (16 lowercase hex digits)")
    return value


def _time(value: Any, where: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{where} must be a finite number")
    return float(value)


def _b64(value: Any, where: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or (size is not None and len(raw) != size):
        raise ProtocolError(f"{where} must be base64" + (f" of {size} bytes" if size else ""))
    return raw


def _check_link(link: Any, i: int) -> dict[str, Any]:
    where = f"chain[{i}]"
    if not isinstance(link, dict) or not isinstance(link.get("announcement"), dict):
        raise ProtocolError(f"{where} must hold an announcement object")
    ann, sig = link["announcement"], link.get("signature")
    if ann.get("type") != "key":
        raise ProtocolError(f"{where}.announcement.type must be 'key'")
    validate_id(ann.get("fleet"), "fleet")
    _kid(ann.get("key_id"), f"{where}.announcement.key_id")
    _kid(ann.get("previous"), f"{where}.announcement.previous")
    _b64(ann.get("public_key"), f"{where}.announcement.public_key", 32)
    _time(ann.get("issued_at"), f"{where}.announcement.issued_at")
    _time(ann.get("retire_previous_at"), f"{where}.announcement.retire_previous_at", True)
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
        raise ProtocolError(f"{where}.signature must be an ed25519 signature")
    _kid(sig.get("key_id"), f"{where}.signature.key_id")
    _b64(sig.get("value"), f"{where}.signature.value", 64)
    return link


def parse_keys_message(payload: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """A ``keys`` message, shape-checked (signatures are checked by :func:`follow_chain`)."""
    msg = decode(payload, "keys", max_bytes)
    validate_id(msg.get("fleet"), "fleet")
    chain = msg.get("chain")
    if not isinstance(chain, list) or len(chain) > MAX_CHAIN:
        raise ProtocolError(f"field 'chain' must be a list of at most {MAX_CHAIN} links")
    msg["chain"] = [_check_link(link, i) for i, link in enumerate(chain)]
    return msg


@dataclass(frozen=True)
class KeyTrust:
    """What a device learned from announcements: keys by id, and when keys stop being trusted.

    The keys in its configuration are passed to :meth:`trusted` rather than kept here, so a
    changed configuration takes effect at once; a retirement applies to them too."""

    announced: Mapping[str, bytes] = field(default_factory=dict)  # key id -> public key
    retire_at: Mapping[str, float] = field(default_factory=dict)  # key id -> Unix seconds

    def retired(self, now: float) -> set[str]:
        """Key ids no longer trusted at ``now``."""
        return {kid for kid, at in self.retire_at.items() if at <= now}

    def trusted(self, configured: Mapping[str, bytes], now: float) -> dict[str, bytes]:
        """Ed25519 public keys by id that may sign at ``now``: configured or announced,
        and not retired."""
        gone = self.retired(now)
        return {k: v for k, v in {**configured, **self.announced}.items() if k not in gone}

    def to_dict(self) -> dict[str, Any]:
        return {
            "announced": {k: base64.b64encode(v).decode() for k, v in self.announced.items()},
            "retire_at": dict(self.retire_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyTrust:
        """The inverse of :meth:`to_dict`; :class:`ProtocolError` if it does not hold one."""
        announced = data.get("announced", {})
        retire_at = data.get("retire_at", {})
        if not isinstance(announced, dict) or not isinstance(retire_at, dict):
            raise ProtocolError("key trust must hold 'announced' and 'retire_at' objects")
        keys = {_kid(k, "key id"): _b64(v, f"key {k}", 32) for k, v in announced.items()}
        times = {_kid(k, "key id"): _time(v, f"retire_at of {k}") for k, v in retire_at.items()}
        return cls(keys, times)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ChainOutcome:
    trust: KeyTrust
    added: tuple[str, ...] = ()  # key ids trusted from now on
    changed: bool = False  # anything new: keys added or a retirement time set or brought forward
    rejected: tuple[str, ...] = ()  # one reason per link refused


def follow_chain(
    trust: KeyTrust,
    chain: Iterable[Mapping[str, Any]],
    *,
    fleet: str,
    configured: Mapping[str, bytes],
    now: float,
) -> ChainOutcome:
    """Apply the links of a parsed ``keys`` message, oldest first.

    A link is applied when its signer is trusted at ``now`` and its signature verifies.
    A link with a signer the device does not trust is passed over quietly when its new key
    is already trusted or retired, or when a later link continues from it (history from
    before this device's key, e.g. for a device provisioned after a rotation); any other
    link is refused with a reason (an unknown or retired signer, a bad signature, another
    fleet)."""
    from cryptography.exceptions import InvalidSignature

    chain = list(chain)
    continued = {link["announcement"]["previous"] for link in chain}
    announced, retire_at = dict(trust.announced), dict(trust.retire_at)
    added: list[str] = []
    rejected: list[str] = []
    changed = False
    for link in chain:
        ann, sig = link["announcement"], link["signature"]
        new, signer = ann["key_id"], sig["key_id"]
        current = KeyTrust(announced, retire_at)
        trusted, gone = current.trusted(configured, now), current.retired(now)
        if ann["fleet"] != fleet:
            rejected.append(f"announcement of key {new} is for fleet {ann['fleet']}, not {fleet}")
            continue
        if signer not in trusted:
            if new not in trusted and new not in gone and new not in continued:
                state = "retired" if signer in gone else "unknown"
                rejected.append(f"announcement of key {new} is signed by {state} key {signer}")
            continue
        public = base64.b64decode(ann["public_key"])
        if signer != ann["previous"] or key_id(public) != new:
            rejected.append(f"announcement of key {new} does not match its key or signer")
            continue
        try:
            _ed25519().Ed25519PublicKey.from_public_bytes(trusted[signer]).verify(
                base64.b64decode(sig["value"]), canonical_json(ann)
            )
        except (InvalidSignature, ValueError):
            rejected.append(f"announcement of key {new} has a bad signature")
            continue
        if new in gone:
            rejected.append(f"key {new} was retired; it cannot be announced again")
            continue
        if new not in trusted:
            announced[new] = public
            added.append(new)
            changed = True
        when = ann["retire_previous_at"]
        if when is not None and when < retire_at.get(signer, math.inf):
            retire_at[signer] = float(when)
            changed = True
    return ChainOutcome(KeyTrust(announced, retire_at), tuple(added), changed, tuple(rejected))
