"""The agent's persistent state in ``state_dir``: survives restarts and power loss.

Layout::

    state_dir/
      state.json                 the one source of truth (format 1), replaced atomically
      lock                       flock held while state.json is read-modified-written
      agent.lock                 flock held by the running agent (one agent per state_dir)
      slots/a/model.bin          the model of slot "a" ...
      slots/a/manifest.json      ... and the verified manifest it came with
      slots/b/...
      deploying.json             the manifest of the deployment in flight
      downloads/<sha256>/<i>.chunk   chunks already received and checked

``state.json``::

    {"format": 1, "rev": 7, "boot": 3, "accepted_seq": 42, "active": "a",
     "slots": {"a": {slot meta}, "b": {slot meta} | null},
     "deploying": {"seq": 43, "sha256": "..."} | null,
     "pending_events": [event fields to publish on the next connect]}

Slot meta holds the model reference of the state message (``name``, ``version``,
``variant``, ``sha256``, ``seq``, ``activated_at``) plus ``format``, ``size``,
``deployment``, ``rollout`` and ``probation_s``. Switching the active slot is one
replace of ``state.json``. A slot's files are trusted only when ``model.bin``
hashes to the slot meta's ``sha256``, so a crash between writing a slot and
recording it leaves an empty slot, never a wrong one. Every change goes through
:meth:`StateStore.update` (under ``lock``) so the CLI (``rollback``) and a
running agent never overwrite each other; ``rev`` counts the changes so the
agent notices one it did not make.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StoreError
from .fsutil import FileLock, atomic_write, fsync_dir, kill_point

__all__ = ["SLOTS", "StateStore", "other_slot"]

STATE_FORMAT = 1
SLOTS = ("a", "b")
MAX_PENDING_EVENTS = 100


def other_slot(slot: str | None) -> str:
    """The slot a deployment writes to: the one that is not active."""
    return "b" if slot == "a" else "a"


def _fresh() -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "rev": 0,
        "boot": 0,
        "accepted_seq": 0,
        "active": None,
        "slots": {"a": None, "b": None},
        "deploying": None,
        "pending_events": [],
    }


class StateStore:
    """Reads and writes ``state_dir``; every method is safe to call from one thread at a time
    per process, and across processes through the ``lock`` file."""

    def __init__(self, state_dir: Path, *, create: bool = True) -> None:
        self.root = Path(state_dir)
        if not create and not (self.root / "state.json").is_file():
            raise StoreError(f"{self.root} holds no agent state (state.json); has the agent run?")
        try:
            for sub in ("slots/a", "slots/b", "downloads"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state_dir {self.root}: {exc.strerror}") from exc
        self.path = self.root / "state.json"
        self._lock = threading.RLock()
        self._file_lock = FileLock(self.root / "lock")
        self._stamp: tuple[int, int, int] | None = None
        self.state: dict[str, Any] = self._read()

    # --- state.json ------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp = None
            return _fresh()
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreError(
                f"{self.path} is not valid JSON; move it aside to start from an empty state"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise StoreError(f"{self.path} has an unknown format; this agent reads format 1")
        state = _fresh()
        state.update(data)
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        return state

    def update(self, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Apply ``change`` to the state read fresh from disk, then write it atomically."""
        with self._lock, self._file_lock:
            state = self._read()
            change(state)
            state["rev"] = int(state.get("rev", 0)) + 1
            data = json.dumps(state, indent=1, sort_keys=True).encode()
            try:
                atomic_write(self.path, data)
                st = os.stat(self.path)
            except OSError as exc:
                raise StoreError(f"cannot write {self.path}: {exc.strerror}") from exc
            self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            self.state = state
            return copy.deepcopy(state)

    def reload_if_changed(self) -> bool:
        """Re-read ``state.json`` if another process changed it; True when it did."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                return False
            if (st.st_ino, st.st_mtime_ns, st.st_size) == self._stamp:
                return False
            with self._file_lock:
                fresh = self._read()
            changed = fresh.get("rev") != self.state.get("rev")
            self.state = fresh
            return changed

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.state)

    @property
    def accepted_seq(self) -> int:
        return int(self.state["accepted_seq"])

    @property
    def active(self) -> str | None:
        active = self.state["active"]
        return active if active in SLOTS else None

    def slot_meta(self, slot: str | None) -> dict[str, Any] | None:
        if slot is None:
            return None
        meta = self.state["slots"].get(slot)
        return dict(meta) if meta else None

    def new_boot(self) -> int:
        """Count one more start of the agent; returns the boot number."""
        return int(self.update(lambda s: s.update(boot=int(s["boot"]) + 1))["boot"])

    # --- deployments -----------------------------------------------------------------
    def begin_deployment(self, manifest: dict[str, Any]) -> None:
        """Persist ``accepted_seq := seq`` and the manifest in flight, before acting on it."""
        seq, sha = manifest["seq"], manifest["artifact"]["sha256"]
        try:
            atomic_write(self.root / "deploying.json", json.dumps(manifest).encode())
        except OSError as exc:
            raise StoreError(f"cannot write deploying.json: {exc.strerror}") from exc

        def change(s: dict[str, Any]) -> None:
            s["accepted_seq"] = max(int(s["accepted_seq"]), seq)
            s["deploying"] = {"seq": seq, "sha256": sha}

        self.update(change)

    def deploying_manifest(self) -> dict[str, Any] | None:
        """The manifest of an unfinished deployment (after a crash or restart), if any."""
        current = self.state.get("deploying")
        if not current:
            return None
        try:
            manifest = json.loads((self.root / "deploying.json").read_bytes())
        except (OSError, ValueError):
            return None
        if manifest.get("seq") != current["seq"]:
            return None
        return manifest if isinstance(manifest, dict) else None

    def end_deployment(self, seq: int, keep_downloads: str | None = None) -> None:
        """Forget the deployment ``seq`` (finished, failed or abandoned) and its downloads
        (except the chunks of artifact ``keep_downloads``)."""

        def change(s: dict[str, Any]) -> None:
            if s.get("deploying") and s["deploying"]["seq"] == seq:
                s["deploying"] = None

        self.update(change)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "deploying.json").unlink()
        self.clean_downloads(keep=keep_downloads)

    def downloads_dir(self, sha256: str) -> Path:
        return self.root / "downloads" / sha256

    def clean_downloads(self, keep: str | None) -> None:
        """Remove download folders other than ``keep`` (and stray staged slot files)."""
        for folder in (self.root / "downloads").iterdir():
            if folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)
        for slot in SLOTS:
            for stray in (self.root / "slots" / slot).glob("*.staged"):
                with contextlib.suppress(FileNotFoundError):
                    stray.unlink()

    # --- slots -----------------------------------------------------------------------
    def model_path(self, slot: str) -> Path:
        return self.root / "slots" / slot / "model.bin"

    def staged_path(self, slot: str) -> Path:
        """Where the next model of ``slot`` is assembled before :meth:`install`."""
        return self.root / "slots" / slot / "model.bin.staged"

    def install(self, slot: str, manifest: dict[str, Any], staged: Path | None) -> None:
        """Move a staged model into ``slot`` (if given) and write its manifest, durably."""
        folder = self.root / "slots" / slot
        try:
            if staged is not None:
                kill_point("rename", folder / "model.bin")
                os.replace(staged, folder / "model.bin")
            atomic_write(folder / "manifest.json", json.dumps(manifest).encode(), sync_dir=False)
            fsync_dir(folder)
        except OSError as exc:
            raise StoreError(f"cannot write slot {slot}: {exc.strerror}") from exc

    def read_slot(self, slot: str) -> tuple[bytes, dict[str, Any]]:
        """The model bytes and manifest of ``slot``, checked against its meta."""
        meta = self.slot_meta(slot)
        if meta is None:
            raise StoreError(f"slot {slot} is empty")
        folder = self.root / "slots" / slot
        try:
            data = (folder / "model.bin").read_bytes()
            manifest = json.loads((folder / "manifest.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreError(f"slot {slot} cannot be read: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise StoreError(f"slot {slot}: model.bin does not match its SHA-256")
        if (
            not isinstance(manifest, dict)
            or manifest.get("artifact", {}).get("sha256") != meta["sha256"]
        ):
            raise StoreError(f"slot {slot}: manifest.json does not match the slot")
        return data, manifest

    def slot_with(self, sha256: str) -> str | None:
        """The slot already holding the artifact ``sha256``, active slot first."""
        order = [self.active, other_slot(self.active)] if self.active else list(SLOTS)
        for slot in order:
            meta = self.slot_meta(slot)
            if meta and meta["sha256"] == sha256:
                return slot
        return None

    def activate(self, slot: str, meta: dict[str, Any]) -> None:
        """Record ``meta`` for ``slot`` and make it the active slot: one atomic replace."""

        def change(s: dict[str, Any]) -> None:
            s["slots"][slot] = meta
            s["active"] = slot

        self.update(change)

    def switch_back(self, bad_reason: str) -> tuple[str | None, str | None]:
        """Make the other slot active (or none, when it is empty); ``(from, to)`` slots."""
        result: list[str | None] = []

        def change(s: dict[str, Any]) -> None:
            old = s["active"]
            target = other_slot(old) if old else None
            new = target if target and s["slots"].get(target) else None
            if old and s["slots"].get(old):
                s["slots"][old]["rolled_back"] = bad_reason
            if new and s["slots"].get(new):
                s["slots"][new].pop("rolled_back", None)
            s["active"] = new
            result[:] = [old, new]

        self.update(change)
        return result[0], result[1]

    def forget_slot(self, slot: str) -> None:
        """Mark ``slot`` empty (its files no longer match; e.g. a crash while writing it)."""

        def change(s: dict[str, Any]) -> None:
            s["slots"][slot] = None
            if s["active"] == slot:
                s["active"] = None

        self.update(change)

    # --- events kept for the next connection -----------------------------------------
    def add_pending_event(self, event: dict[str, Any]) -> None:
        def change(s: dict[str, Any]) -> None:
            s["pending_events"] = (s.get("pending_events") or [])[-(MAX_PENDING_EVENTS - 1) :]
            s["pending_events"].append(event)

        self.update(change)

    def take_pending_events(self) -> list[dict[str, Any]]:
        if not self.state.get("pending_events"):
            return []
        taken: list[dict[str, Any]] = []

        def change(s: dict[str, Any]) -> None:
            taken.extend(s.get("pending_events") or [])
            s["pending_events"] = []

        self.update(change)
        return taken
