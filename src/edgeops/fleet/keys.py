"""The fleet's manifest signing key (Ed25519), kept in the workspace.

``<home>/.edgeops/keys/signing.key`` holds the raw private key in base64 (mode
0600); ``signing.pub`` the public key that agents are configured with.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from edgeops_protocol.manifest import generate_keypair, key_id, public_key_of

from .. import audit
from ..errors import ConfigError, Conflict, NotFound
from ..fsutil import atomic_write_bytes

__all__ = ["SigningKey", "generate_key", "load_key"]


@dataclass(frozen=True)
class SigningKey:
    private: bytes
    public: bytes

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()


def _paths(keys_dir: Path) -> tuple[Path, Path]:
    return keys_dir / "signing.key", keys_dir / "signing.pub"


def generate_key(keys_dir: Path, force: bool = False) -> SigningKey:
    """Create the signing key pair; refuses to replace one unless ``force``."""
    private_path, public_path = _paths(keys_dir)
    if private_path.exists() and not force:
        raise Conflict(
            f"a signing key already exists in {keys_dir}; agents trust it — "
            "use --force only if you mean to replace it"
        )
    private, public = generate_keypair()
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    atomic_write_bytes(private_path, base64.b64encode(private) + b"\n", mode=0o600)
    atomic_write_bytes(public_path, base64.b64encode(public) + b"\n", mode=0o644)
    audit.key_generated(keys_dir, key_id(public), base64.b64encode(public).decode(), force)
    return SigningKey(private, public)


def load_key(keys_dir: Path) -> SigningKey:
    private_path, _ = _paths(keys_dir)
    try:
        private = base64.b64decode(private_path.read_text().strip(), validate=True)
    except FileNotFoundError as exc:
        raise NotFound(f"no signing key in {keys_dir}; run `edgeops keys generate`") from exc
    except ValueError as exc:
        raise ConfigError(f"{private_path} is not a base64 key; regenerate it") from exc
    if len(private) != 32:
        raise ConfigError(f"{private_path} does not hold a 32-byte Ed25519 key")
    return SigningKey(private, public_key_of(private))
