"""Anti-rollback that survives a reinstall of the agent: the highest manifest ``seq`` this
device accepted, kept in a file outside the state directory (``anti_rollback_file``).

``state.json`` already keeps ``accepted_seq``, but a reinstall that deletes the state
directory would forget it and let a replayed old manifest in again. Where the device has
storage that outlives the agent's own folder, this file keeps the floor: the agent reads
it when it starts and takes the higher of the two as its ``accepted_seq``, and raises it
after each manifest it accepts. One file may serve several agents (a key per fleet and
device); changes are made under a lock and written atomically::

    {"format": 1,
     "devices": {"lab/pi-07": {"seq": 42, "model": {"name": "wrist-har", "version": 3},
                               "updated_at": 1795760000.0}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import StoreError
from .fsutil import FileLock, atomic_write

__all__ = ["RollbackFloor"]

FORMAT = 1


class RollbackFloor:
    """The floor of one device (``fleet/device``) in ``path``."""

    def __init__(self, path: Path, fleet: str, device: str) -> None:
        self.path = Path(path)
        self.key = f"{fleet}/{device}"
        self._lock = FileLock(self.path.with_name(self.path.name + ".lock"))

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {"format": FORMAT, "devices": {}}
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"cannot read the anti-rollback file {self.path} ({exc}); it keeps which old "
                "manifests this device refuses: fix or restore it (deleting it drops that floor)"
            ) from exc
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("devices"), dict)
        ):
            raise StoreError(f"{self.path} is not an anti-rollback file of format {FORMAT}")
        return data

    def entry(self) -> dict[str, Any] | None:
        """What is kept for this device: ``seq``, ``model``, ``updated_at`` (None: nothing)."""
        with self._lock:
            entry = self._load()["devices"].get(self.key)
        if entry is not None and (
            not isinstance(entry, dict)
            or isinstance(entry.get("seq"), bool)
            or not isinstance(entry.get("seq"), int)
        ):
            raise StoreError(f"{self.path}: the entry of {self.key} has no integer seq")
        return entry

    def read(self) -> int:
        """The highest seq this device accepted (0 when none is recorded)."""
        entry = self.entry()
        return 0 if entry is None else int(entry["seq"])

    def raise_to(self, seq: int, model: Mapping[str, Any] | None, now: float) -> bool:
        """Record ``seq`` (and the model of that manifest) if it is above the floor; True
        when the file changed."""
        with self._lock:
            data = self._load()
            entry = data["devices"].get(self.key)
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("seq"), int)
                and entry["seq"] >= seq
            ):
                return False
            ref = None if model is None else {k: model.get(k) for k in ("name", "version")}
            data["devices"][self.key] = {"seq": int(seq), "model": ref, "updated_at": now}
            try:
                atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
            except OSError as exc:
                raise StoreError(f"cannot write {self.path}: {exc.strerror}") from exc
        return True
