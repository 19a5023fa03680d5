"""Reading what the collector stored: telemetry windows, samples and labels, ingest counters.

:class:`MonitoringStore` is the library face of monitoring data for one fleet;
the CLI and the HTTP API call it and nothing else. Windows are selected by
model, variant, device and the device-time range their ``end`` falls in, and
merged by adding counts (``edgeops_protocol.stats.merge_windows``). Labels are
written here too (:meth:`MonitoringStore.add_label`), by the HTTP API, the CLI
and the collector's ``labels`` topic alike, through :func:`set_label`.

On-device accuracy is the share of labelled samples whose ``predicted`` equals
the label.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from edgeops_protocol.stats import merge_windows
from edgeops_protocol.topics import ProtocolError, validate_id

from ..errors import InvalidInput, NotFound
from ..store import Database
from ..store.schema import IngestCounter, Sample, TelemetryWindow
from .validate import PRINTABLE_RE

__all__ = ["Accuracy", "MonitoringStore", "check_label", "set_label"]


@dataclass(frozen=True)
class Accuracy:
    """Labelled samples and how many of them the device predicted right."""

    labelled: int
    correct: int

    @property
    def value(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "correct": self.correct, "accuracy": self.value}


def check_label(label: str) -> str:
    if not isinstance(label, str) or not 0 < len(label) <= 128 or not PRINTABLE_RE.match(label):
        raise InvalidInput("a label must be a printable string of 1-128 characters")
    return label


def set_label(s: Session, fleet: str, sample_id: str, label: str, device: str | None = None) -> str:
    """Attach ``label`` to a stored sample, in the caller's transaction.

    Returns ``"added"``, ``"changed"`` (a correction replaces the earlier label),
    ``"unchanged"`` (the same label again: a replay), ``"unknown_sample"``, or
    ``"wrong_device"`` when ``device`` is given and the sample is another device's.
    """
    row = s.execute(
        select(Sample).where(Sample.fleet == fleet, Sample.sample_id == sample_id)
    ).scalar_one_or_none()
    if row is None:
        return "unknown_sample"
    if device is not None and row.device_id != device:
        return "wrong_device"
    if row.label == label:
        return "unchanged"
    status = "added" if row.label is None else "changed"
    row.label, row.labelled_at = label, datetime.now(timezone.utc)
    return status


def _model_filter(q: Select, column: Any, model: str | None) -> Select:
    """``NAME`` matches every version, ``NAME@VERSION`` one."""
    if not model:
        return q
    if "@" in model:
        return q.where(column == model)
    return q.where(column.like(model.replace("%", r"\%").replace("_", r"\_") + "@%", escape="\\"))


class MonitoringStore:
    def __init__(self, db: Database, fleet: str) -> None:
        self.db = db
        try:
            self.fleet = validate_id(fleet, "fleet")
        except ProtocolError as exc:
            raise InvalidInput(str(exc)) from exc

    # --- labels --------------------------------------------------------------------
    def add_label(self, sample_id: str, label: str, device: str | None = None) -> str:
        """Ground truth for a sampled prediction: ``"added"``, ``"changed"`` or ``"unchanged"``."""
        check_label(label)

        def write(s: Session) -> str:
            return set_label(s, self.fleet, sample_id, label, device)

        status = self.db.write(write)
        if status == "unknown_sample":
            raise NotFound(
                f"no sample {sample_id!r} in fleet {self.fleet}; see `edgeops labels list`"
            )
        if status == "wrong_device":
            raise InvalidInput(f"sample {sample_id!r} is not from device {device!r}")
        return status

    # --- windows -------------------------------------------------------------------
    def _windows_query(
        self,
        model: str | None,
        variant: str | None,
        device: str | None,
        since: float | None,
        until: float | None,
    ) -> Select:
        q = select(TelemetryWindow).where(TelemetryWindow.fleet == self.fleet)
        q = _model_filter(q, TelemetryWindow.model_ref, model)
        if variant:
            q = q.where(TelemetryWindow.variant == variant)
        if device:
            q = q.where(TelemetryWindow.device_id == device)
        if since is not None:
            q = q.where(TelemetryWindow.end >= since)
        if until is not None:
            q = q.where(TelemetryWindow.end < until)
        return q

    def windows(
        self,
        model: str | None = None,
        *,
        variant: str | None = None,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 10_000,
    ) -> list[TelemetryWindow]:
        """Windows whose ``end`` (device time, Unix seconds) is in ``[since, until)``, oldest
        first. ``model`` is ``NAME`` (every version) or ``NAME@VERSION``."""
        q = self._windows_query(model, variant, device, since, until).order_by(
            TelemetryWindow.end, TelemetryWindow.id
        )
        if limit is not None:
            q = q.limit(limit)
        with self.db.session() as s:
            return list(s.execute(q).scalars())

    def merged(
        self,
        model: str,
        variant: str,
        *,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any] | None:
        """The sum of the matching windows of one variant (None if there are none)."""
        q = self._windows_query(model, variant, device, since, until)
        with self.db.session() as s:
            stats = [w.stats for w in s.execute(q).scalars()]
        return merge_windows(stats) if stats else None

    def window_count(self, model: str | None = None, device: str | None = None) -> int:
        q = self._windows_query(model, None, device, None, None)
        with self.db.session() as s:
            return s.execute(select(func.count()).select_from(q.subquery())).scalar_one()

    # --- samples -------------------------------------------------------------------
    def samples(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        labelled: bool | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 100,
    ) -> list[Sample]:
        """Samples, newest first (by device time ``ts`` in ``[since, until)``)."""
        q = self._samples_query(model, device, since, until)
        if labelled is not None:
            q = q.where(Sample.label.is_not(None) if labelled else Sample.label.is_(None))
        q = q.order_by(Sample.ts.desc(), Sample.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.db.session() as s:
            return list(s.execute(q).scalars())

    def sample(self, sample_id: str) -> Sample:
        with self.db.session() as s:
            row = s.execute(
                select(Sample).where(Sample.fleet == self.fleet, Sample.sample_id == sample_id)
            ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no sample {sample_id!r} in fleet {self.fleet}")
        return row

    def _samples_query(
        self, model: str | None, device: str | None, since: float | None, until: float | None
    ) -> Select:
        q = select(Sample).where(Sample.fleet == self.fleet)
        q = _model_filter(q, Sample.model_ref, model)
        if device:
            q = q.where(Sample.device_id == device)
        if since is not None:
            q = q.where(Sample.ts >= since)
        if until is not None:
            q = q.where(Sample.ts < until)
        return q

    def accuracy(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        by_device: bool = False,
    ) -> Accuracy | dict[str, Accuracy]:
        """On-device accuracy of the labelled samples (per device with ``by_device``)."""
        sub = (
            self._samples_query(model, device, since, until)
            .where(Sample.label.is_not(None))
            .subquery()
        )
        right = func.coalesce(func.sum(case((sub.c.predicted == sub.c.label, 1), else_=0)), 0)
        cols = [func.count(), right]
        with self.db.session() as s:
            if not by_device:
                n, k = s.execute(select(*cols).select_from(sub)).one()
                return Accuracy(int(n), int(k))
            q = select(sub.c.device_id, *cols).group_by(sub.c.device_id)
            return {d: Accuracy(int(n), int(k)) for d, n, k in s.execute(q)}

    # --- counters ------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Messages rejected so far, by reason."""
        with self.db.session() as s:
            q = select(IngestCounter.reason, IngestCounter.count).where(
                IngestCounter.fleet == self.fleet
            )
            return {r: int(c) for r, c in s.execute(q.order_by(IngestCounter.reason))}
