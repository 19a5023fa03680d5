"""The fleet's manifest signing key (Ed25519), kept in the workspace, and its rotation.

Layout of the keys folder (``<home>/.edgeops/keys``, mode 0700)::

    signing.key          the active private key, base64 (0600): what load_key returns
    signing.pub          its public key, the one new agents are configured with
    archive/<id>.key     every key the fleet signed with, active one included (0600);
                         an old key re-signs its announcement (keys retire)
    chain.json           {"format": 1, "fleet": "lab", "links": [...]}: each rotation's
                         announcement of the new key, signed by the key before it

:func:`rotate_key` makes a new key the active one and announces it under the old one
(:mod:`edgeops_protocol.keychain`); the chain is published retained on
``edgeops/<fleet>/keys`` (:func:`publish_keys`), where agents learn it. Everything that
signs holds what :func:`load_key` returns, an :class:`ActiveKey` that follows the folder,
so it signs with the new key from then on, a controller that runs across the rotation too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops_protocol.keychain import announce_key, keys_message, keys_topic
from edgeops_protocol.manifest import generate_keypair, key_id, public_key_of

from .. import audit
from ..errors import ConfigError, Conflict, InvalidInput, NotFound
from ..fsutil import atomic_write_bytes

__all__ = [
    "DEFAULT_GRACE",
    "ActiveKey",
    "Rotation",
    "SigningKey",
    "generate_key",
    "key_chain",
    "load_key",
    "publish_keys",
    "retire_keys",
    "rotate_key",
]

DEFAULT_GRACE = 7 * 24 * 3600.0  # the old key is retired a week after a rotation
CHAIN_FORMAT = 1


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


@dataclass(frozen=True)
class Rotation:
    new: SigningKey
    previous: SigningKey
    retire_previous_at: float | None
    link: dict[str, Any]  # the signed announcement

    def summary(self) -> dict[str, Any]:
        return {
            "key_id": self.new.key_id,
            "public_key": self.new.public_b64,
            "previous": self.previous.key_id,
            "retire_previous_at": self.retire_previous_at,
        }


def _paths(keys_dir: Path) -> tuple[Path, Path]:
    return keys_dir / "signing.key", keys_dir / "signing.pub"


def _archive(keys_dir: Path, kid: str) -> Path:
    return keys_dir / "archive" / f"{kid}.key"


def _write_private(path: Path, private: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, base64.b64encode(private) + b"\n", mode=0o600)


def _install(keys_dir: Path, key: SigningKey) -> None:
    private_path, public_path = _paths(keys_dir)
    _write_private(private_path, key.private)
    atomic_write_bytes(public_path, key.public_b64.encode() + b"\n", mode=0o644)


def generate_key(keys_dir: Path, force: bool = False) -> SigningKey:
    """Create the signing key pair; refuses to replace one unless ``force``.

    A forced key is not announced to the agents (that is :func:`rotate_key`), so it also
    starts a new chain: ``chain.json`` is removed."""
    private_path, _ = _paths(keys_dir)
    if private_path.exists() and not force:
        raise Conflict(
            f"a signing key already exists in {keys_dir}; agents trust it — use "
            "`edgeops keys rotate` to replace it, or --force only if you mean to re-configure "
            "every agent"
        )
    private, public = generate_keypair()
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    key = SigningKey(private, public)
    _install(keys_dir, key)
    _write_private(_archive(keys_dir, key.key_id), private)
    with contextlib.suppress(FileNotFoundError):
        (keys_dir / "chain.json").unlink()
    audit.key_generated(keys_dir, key.key_id, key.public_b64, force)
    return key


def _read_private(path: Path) -> bytes:
    try:
        private = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a base64 key; regenerate it") from exc
    if len(private) != 32:
        raise ConfigError(f"{path} does not hold a 32-byte Ed25519 key")
    return private


def _read_chain(keys_dir: Path) -> dict[str, Any] | None:
    path = keys_dir / "chain.json"
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); restore it from a backup") from exc
    if not isinstance(data, dict) or data.get("format") != CHAIN_FORMAT:
        raise ConfigError(f"{path} is not a key chain of format {CHAIN_FORMAT}")
    return data


def _write_chain(keys_dir: Path, fleet: str, links: list[dict[str, Any]]) -> None:
    data = {"format": CHAIN_FORMAT, "fleet": fleet, "links": links}
    atomic_write_bytes(keys_dir / "chain.json", json.dumps(data, indent=1).encode() + b"\n")


def key_chain(keys_dir: Path) -> list[dict[str, Any]]:
    """The signed announcements of every rotation, oldest first (empty: never rotated)."""
    data = _read_chain(keys_dir)
    return [] if data is None else list(data["links"])


def load_key(keys_dir: Path) -> ActiveKey:
    """The active signing key of ``keys_dir``, following later rotations (:class:`ActiveKey`)."""
    return ActiveKey(keys_dir)


class ActiveKey:
    """The active signing key of a keys folder, read again whenever the folder changed.

    It answers like a :class:`SigningKey` (``private``, ``public``, ``key_id``,
    ``public_b64``), each time with the key active at that moment: the newest one of the
    chain, else ``signing.key``. :meth:`current` is a snapshot."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = Path(keys_dir)
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._key: SigningKey | None = None
        self.current()  # no key: NotFound now, not at the first signature

    def _fingerprint(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for name in ("signing.key", "chain.json"):
            try:
                st = (self.keys_dir / name).stat()
            except FileNotFoundError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def current(self) -> SigningKey:
        with self._lock:
            stamp = self._fingerprint()
            if self._key is None or stamp != self._stamp:
                self._key, self._stamp = _load(self.keys_dir), stamp
            return self._key

    @property
    def private(self) -> bytes:
        return self.current().private

    @property
    def public(self) -> bytes:
        return self.current().public

    @property
    def key_id(self) -> str:
        return self.current().key_id

    @property
    def public_b64(self) -> str:
        return self.current().public_b64

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ActiveKey, SigningKey)):
            return (self.private, self.public) == (other.private, other.public)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # it changes with the folder

    def __repr__(self) -> str:
        return f"ActiveKey({str(self.keys_dir)!r}, key_id={self.key_id!r})"


def _load(keys_dir: Path) -> SigningKey:
    """The active signing key now: the newest one of the chain, else ``signing.key``."""
    private_path, _ = _paths(keys_dir)
    try:
        private = _read_private(private_path)
    except FileNotFoundError as exc:
        raise NotFound(f"no signing key in {keys_dir}; run `edgeops keys generate`") from exc
    key = SigningKey(private, public_key_of(private))
    links = key_chain(keys_dir)
    head = links[-1]["announcement"]["key_id"] if links else None
    if head is not None and head != key.key_id:
        # a rotation stopped after writing the chain, before signing.key: finish reading it
        try:
            private = _read_private(_archive(keys_dir, head))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{keys_dir}/chain.json announces key {head}, but neither signing.key nor "
                "archive/ holds it; restore the keys folder from a backup"
            ) from exc
        key = SigningKey(private, public_key_of(private))
    return key


def _audit(keys_dir: Path, action: str, subject: str, details: dict[str, Any]) -> bool:
    """Record a key change in the store of the workspace ``keys_dir`` belongs to
    (``<home>/.edgeops/keys``), as :func:`edgeops.audit.key_generated` does; False when it
    belongs to none."""
    from ..config import CONFIG_NAME

    home = keys_dir.parent.parent
    if (keys_dir.name, keys_dir.parent.name) != ("keys", ".edgeops"):
        return False
    if not (home / CONFIG_NAME).is_file():
        return False
    from ..workspace import Workspace

    ws = Workspace.open(home)
    try:
        ws.db.write(lambda s: audit.record(s, action, subject, details))
    finally:
        ws.close()
    return True


def _check_fleet(keys_dir: Path, fleet: str) -> None:
    data = _read_chain(keys_dir)
    if data is not None and data.get("fleet") != fleet:
        raise InvalidInput(
            f"the key chain in {keys_dir} belongs to fleet {data.get('fleet')!r}, not {fleet!r}"
        )


def rotate_key(
    keys_dir: Path, fleet: str, *, grace: float | None = DEFAULT_GRACE, now: float | None = None
) -> Rotation:
    """Make a new key the active one, announced under the signature of the current one.

    Agents that learn the announcement trust the new key at once and stop trusting the old
    one ``grace`` seconds later (None: not until :func:`retire_keys`). The old private key
    stays in ``archive/``. Nothing is published here: see :func:`publish_keys`."""
    if grace is not None and grace < 0:
        raise InvalidInput("the grace period cannot be negative")
    now = time.time() if now is None else now
    _check_fleet(keys_dir, fleet)
    previous = _load(keys_dir)
    private, public = generate_keypair()
    new = SigningKey(private, public)
    # order: archive both, then the chain, then signing.key; load_key copes with a stop between
    _write_private(_archive(keys_dir, previous.key_id), previous.private)
    _write_private(_archive(keys_dir, new.key_id), new.private)
    retire_at = None if grace is None else now + grace
    link = announce_key(
        fleet, public, previous.private, issued_at=now, retire_previous_at=retire_at
    )
    _write_chain(keys_dir, fleet, [*key_chain(keys_dir), link])
    _install(keys_dir, new)
    details = {"public_key": new.public_b64, "previous": previous.key_id, "retire_at": retire_at}
    _audit(keys_dir, "key.rotate", new.key_id, details)
    return Rotation(new, previous, retire_at, link)


def retire_keys(keys_dir: Path, fleet: str, *, now: float | None = None) -> list[str]:
    """Tell agents to stop trusting every key but the active one now: each announcement
    whose retirement is later (or unset) is signed again with ``now``. The ids retired."""
    now = time.time() if now is None else now
    _check_fleet(keys_dir, fleet)
    links = key_chain(keys_dir)
    retired: list[str] = []
    for i, link in enumerate(links):
        ann = link["announcement"]
        when = ann.get("retire_previous_at")
        if when is not None and when <= now:
            continue
        try:
            old = _read_private(_archive(keys_dir, ann["previous"]))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"key {ann['previous']} is not in {keys_dir}/archive, so its announcement "
                "cannot be signed again; restore the keys folder from a backup"
            ) from exc
        new_public = base64.b64decode(ann["public_key"])
        links[i] = announce_key(
            ann["fleet"], new_public, old, issued_at=ann["issued_at"], retire_previous_at=now
        )
        retired.append(ann["previous"])
    if retired:
        _write_chain(keys_dir, fleet, links)
        active = _load(keys_dir).key_id
        for kid in retired:
            _audit(keys_dir, "key.retire", kid, {"active": active})
    return retired


def publish_keys(client: Any, keys_dir: Path, fleet: str) -> bytes | None:
    """Publish the chain retained on ``edgeops/<fleet>/keys`` (QoS 1, acknowledged); the
    payload, or None when the key was never rotated (nothing to announce)."""
    _check_fleet(keys_dir, fleet)
    links = key_chain(keys_dir)
    if not links:
        return None
    payload = keys_message(fleet, links)
    client.publish_all([(keys_topic(fleet), payload, True)])
    return payload
