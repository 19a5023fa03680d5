"""What goes into the rollout engine (events) and what comes out (commands).

The adapter turns MQTT messages, operator requests and the passing of time into
events, feeds them to :func:`edgeops.rollout.engine.step` with the current time,
and carries out the commands it gets back: it publishes a manifest for each
:class:`Deploy` or :class:`Revert` (a new ``seq`` each time) and answers with
:class:`Deployed`, and it logs each :class:`Notify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..errors import InvalidInput

__all__ = [
    "PROGRESS_KINDS",
    "REPORT_KINDS",
    "Abort",
    "Command",
    "Deploy",
    "Deployed",
    "DeviceReport",
    "Event",
    "Notify",
    "NotifyKind",
    "Pause",
    "Resume",
    "Revert",
    "Rollback",
    "SoakVerdict",
    "Start",
    "Tick",
]

# The device events of the wire protocol (docs/protocol.md, "Events").
REPORT_KINDS = ("activated", "failed", "rejected", "rolled_back", "downloading", "verified")
PROGRESS_KINDS = ("downloading", "verified")


def _check_seq(seq: object) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise InvalidInput(f"a manifest seq must be an integer >= 1, not {seq!r}")


# --- events ------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Begin the rollout: the first stage starts."""


@dataclass(frozen=True)
class Tick:
    """Time has passed; deadlines and soaks are checked against ``now``."""


@dataclass(frozen=True)
class Deployed:
    """The adapter published a manifest with ``seq`` for ``device`` (a Deploy or Revert)."""

    device: str
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True)
class DeviceReport:
    """A device event about the manifest with ``seq``; ``kind`` is one of REPORT_KINDS."""

    device: str
    seq: int
    kind: str
    reason: str = ""

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if self.kind not in REPORT_KINDS:
            raise InvalidInput(f"unknown device event {self.kind!r}; known: {REPORT_KINDS}")


@dataclass(frozen=True)
class Pause:
    """Operator: start no new stage and send no retries until Resume."""


@dataclass(frozen=True)
class Resume:
    """Operator: carry on after a Pause."""


@dataclass(frozen=True)
class Abort:
    """Operator: stop and revert what this rollout changed."""

    reason: str = "operator abort"


@dataclass(frozen=True)
class Rollback:
    """Operator: revert what this rollout changed, also after it completed."""

    reason: str = "operator rollback"


@dataclass(frozen=True)
class SoakVerdict:
    """Monitoring's judgement of stage ``stage`` during its soak."""

    stage: int
    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.stage, bool) or not isinstance(self.stage, int) or self.stage < 0:
            raise InvalidInput(f"a verdict's stage must be an integer >= 0, not {self.stage!r}")


Event = Start | Tick | Deployed | DeviceReport | Pause | Resume | Abort | Rollback | SoakVerdict
EVENT_TYPES = (Start, Tick, Deployed, DeviceReport, Pause, Resume, Abort, Rollback, SoakVerdict)


# --- commands ----------------------------------------------------------------


@dataclass(frozen=True)
class Deploy:
    """Publish the rollout's manifest for ``device`` (attempt 1, 2, ...), then answer Deployed."""

    device: str
    attempt: int


@dataclass(frozen=True)
class Revert:
    """Publish a manifest for the model ``device`` had before, then answer Deployed."""

    device: str
    attempt: int


class NotifyKind(str, Enum):
    """What a :class:`Notify` is about (its detail is a human-readable line)."""

    STAGE_STARTED = "stage_started"
    STAGE_SKIPPED = "stage_skipped"
    STAGE_COMPLETED = "stage_completed"
    SOAK_STARTED = "soak_started"
    COMPLETED = "completed"
    PAUSED = "paused"
    RESUMED = "resumed"
    RETRY = "retry"
    DEVICE_TIMED_OUT = "device_timed_out"
    LATE_ACTIVATION = "late_activation"
    ABORTING = "aborting"
    ROLLING_BACK = "rolling_back"
    NOT_REVERTED = "not_reverted"
    REVERT_FAILED = "revert_failed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class Notify:
    """A line for the rollout's log."""

    kind: NotifyKind
    detail: str


Command = Deploy | Revert | Notify
