"""The signing keys an agent learned from key announcements, kept in ``state_dir/keys.json``.

The keys in ``agent.toml`` (``public_keys``) are where trust starts; a retained ``keys``
message (:mod:`edgeops_protocol.keychain`) adds each new fleet key announced under a
trusted one, and says when the old one is retired. What was learned is written here
(atomically) so that it holds across restarts; a lost or unreadable file is no harm, since
the retained chain teaches the same again on the next connection::

    {"format": 1, "fleet": "lab",
     "announced": {"<key id>": "<base64 public key>"},
     "retire_at": {"<key id>": 1796364800.0}}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeops_protocol.keychain import ChainOutcome, KeyTrust, follow_chain
from edgeops_protocol.topics import ProtocolError

from .errors import StoreError
from .fsutil import atomic_write

__all__ = ["TrustedKeys"]

log = logging.getLogger("edgeops_agent")
FORMAT = 1


class TrustedKeys:
    """The Ed25519 keys a manifest may be signed with at a given time."""

    def __init__(self, path: Path, fleet: str, configured: Mapping[str, bytes]) -> None:
        self.path = Path(path)
        self.fleet = fleet
        self.configured = dict(configured)
        self.trust = self._read()

    def _read(self) -> KeyTrust:
        try:
            data: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return KeyTrust()
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); starting from the configured keys", self.path, exc)
            return KeyTrust()
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ProtocolError(f"unknown format; this agent reads format {FORMAT}")
            if data.get("fleet") != self.fleet:
                raise ProtocolError(f"it is for fleet {data.get('fleet')!r}")
            return KeyTrust.from_dict(data)
        except ProtocolError as exc:
            log.error("ignoring %s (%s); starting from the configured keys", self.path, exc)
            return KeyTrust()

    def keys(self, now: float) -> dict[str, bytes]:
        """Trusted keys by key id (what :func:`verify_envelope` takes)."""
        return self.trust.trusted(self.configured, now)

    def retired(self, now: float) -> set[str]:
        return self.trust.retired(now)

    def apply(self, chain: list[dict[str, Any]], now: float) -> ChainOutcome:
        """Follow a parsed chain of announcements; what changed is on disk when this returns."""
        out = follow_chain(self.trust, chain, fleet=self.fleet, configured=self.configured, now=now)
        if out.changed:
            data = {"format": FORMAT, "fleet": self.fleet, **out.trust.to_dict()}
            try:
                atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
            except OSError as exc:
                raise StoreError(f"cannot write {self.path}: {exc.strerror}") from exc
            self.trust = out.trust
        return out
