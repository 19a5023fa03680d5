"""Telemetry: statistics windows, samples and labels of this device's predictions.

:class:`Telemetry` is a batch listener of the :class:`~edgeops_agent.serve.Predictor`.
It counts every prediction in the open window, a :class:`WindowStats
<edgeops_protocol.stats.WindowStats>` built from the active model's
``serving.baseline`` (docs/protocol.md, "Telemetry"): ``update`` for a one-row call,
``update_many`` for the rows of a batch (the same counts, in whole-batch numpy calls).
The windows of a model are ``fresh()`` copies of one built when it starts predicting,
and a closed window's row buffers are freed while it waits for the worker. A window
belongs to one model: the first prediction of another model closes it. It also
closes after ``window_count`` predictions, or on the first tick ``window_s``
seconds after its first prediction; a window without predictions is never opened,
so never sent. Within the sampling budget (:mod:`edgeops_agent.sampling`) it turns
predictions into ``sample`` messages, whose ``sample_id`` the prediction result
carries so an application can send a ``label`` for it later.

Threads: predictions come from any thread (the application's, the HTTP
endpoint's). One lock guards the open window, the sampler and the hand-off queue;
a prediction holds it for its ``update`` calls only. Closed windows (their counts
turned into JSON), samples and labels go to a bounded queue that the agent's
worker empties (:meth:`Telemetry.drain`) into the on-disk
:class:`~edgeops_agent.outbox.Outbox`: nothing on the prediction path touches the
disk or the network. ``notify`` is called when the queue stops being empty (the
agent posts a wake-up into its mailbox); a full queue drops its oldest item and
counts it in :attr:`Telemetry.lost`, which the agent adds to ``outbox_dropped``.

With the C extensions built, the batch listener is a ``RowSink``
(``edgeops_agent._fastpath``): while a window of the active model is open and
statistics are on, the telemetry *arms* it with that window, and a one-row call is
counted in C without the lock (the window is a
:class:`~edgeops_protocol.stats.NativeWindowStats`; one C call is atomic under the
GIL); with statistics off it returns None for the active model's calls, as
:meth:`Telemetry.on_predictions` would. With sampling on it is armed with the
sampler's gap (:meth:`~edgeops_agent.sampling.Sampler.next_gap`): it lets that many
calls pass and hands the next one, the sampling candidate, to
:meth:`Telemetry.on_predictions`; at disarm the sampler is told how many passed. The
sink refuses the row that would fill the window, and everything else, and hands it
to :meth:`Telemetry.on_predictions`.
Every section that holds the lock and may count, open or close a window disarms the
sink first and arms it again at the end, so the C path never counts into a window the
Python code is working on.

A closed window becomes its message on the worker: the envelope of
``telemetry_message`` (a template per model and boot, cut from it at ``seq``, ``start``
and ``end``, compared with it at its first use) and the window's own compact JSON
(:meth:`~edgeops_protocol.stats.PyWindowStats.window_json`): the same bytes as
``telemetry_message`` with the stats dict. The first window of each model (and boot,
and window layout) is checked with ``parse_telemetry``, as the collector will check
it; later ones differ from it only in numbers that are valid by construction (counts
of what was counted, ``seq``, times), so only what can still go wrong is checked again:
the size limit, the latency sum and maximum (not negative) and the times.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeops_protocol.baseline import CONFIDENCE_EDGES
from edgeops_protocol.histogram import validate_edges
from edgeops_protocol.messages import (
    MAX_INPUT_COLUMNS,
    MAX_VALUES,
    label_message,
    parse_label,
    parse_sample,
    parse_telemetry,
    sample_message,
    telemetry_message,
)
from edgeops_protocol.stats import NativeWindowStats, WindowStats
from edgeops_protocol.topics import ProtocolError, device_topic

from .errors import PredictionError
from .sampling import Sampler, SamplingBudget, budget_from
from .serve import _load_fastpath
from .stats import RateLimitedLog, Stats

if TYPE_CHECKING:
    from .config import AgentConfig
    from .serve import LoadedModel, Predictor

__all__ = ["Telemetry", "model_ref", "window_baseline"]

log = logging.getLogger("edgeops_agent.telemetry")
MAX_PENDING = 256  # closed windows, samples and labels waiting for the worker
MAX_SAMPLE_BYTES = 256 * 1024  # the collector's limit (parse_sample)
MAX_TELEMETRY_BYTES = 256 * 1024  # the collector's limit (parse_telemetry)


_fastpath = _load_fastpath()  # its own reference, so tests can switch it off here alone


def model_ref(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` of telemetry and sample messages: name, version, variant, sha256."""
    m = manifest["model"]
    return {
        "name": m["name"],
        "version": m["version"],
        "variant": m["variant"],
        "sha256": manifest["artifact"]["sha256"],
    }


def window_baseline(
    manifest: Mapping[str, Any], n_features: int, n_outputs: int
) -> tuple[dict[str, Any], str | None]:
    """The baseline a :class:`WindowStats` is built from, and what was wrong with the
    manifest's, if anything.

    Features come from ``serving.baseline.features`` when they are usable and one per
    model input feature (else there are none: the window still counts classes,
    confidence, latency and errors). Labels are ``serving.labels`` (one count per
    label, as the protocol says), else the baseline's, else ``"0"``, ``"1"``, ...

    >>> base, problem = window_baseline({"serving": {"labels": ["a", "b"]}}, 3, 2)
    >>> base["features"], base["outputs"]["labels"], problem
    ([], ['a', 'b'], None)
    """
    serving = manifest.get("serving") or {}
    baseline = serving.get("baseline") or {}
    outputs = baseline.get("outputs") if isinstance(baseline, Mapping) else None
    outputs = outputs if isinstance(outputs, Mapping) else {}
    problem = None
    features: list[dict[str, Any]] = []
    listed = (baseline.get("features") if isinstance(baseline, Mapping) else None) or []
    try:
        for f in listed:
            features.append({"name": str(f["name"]), "edges": validate_edges(f["edges"]).tolist()})
    except (TypeError, KeyError, ValueError) as exc:
        features, problem = [], f"serving.baseline.features cannot be used: {exc}"
    if features and len(features) != n_features:
        problem = f"serving.baseline has {len(features)} features, the model takes {n_features}"
        features = []
    labels = serving.get("labels") or outputs.get("labels") or []
    if not isinstance(labels, list) or not labels:
        labels = [str(i) for i in range(max(2, n_outputs))]
    try:
        conf = validate_edges(outputs.get("confidence_edges", CONFIDENCE_EDGES)).tolist()
    except (TypeError, ValueError):
        conf, problem = list(CONFIDENCE_EDGES), "serving.baseline confidence_edges are unusable"
    return {
        "features": features,
        "outputs": {"labels": [str(x) for x in labels], "confidence_edges": conf},
    }, problem


@dataclass
class _Window:
    stats: WindowStats
    start: float


@dataclass
class _Closed:
    """A window closed on a prediction thread; turned into JSON on the worker."""

    window: _Window
    ref: dict[str, Any]
    seq: int
    end: float


class _Unfit(ValueError):
    """A raw input value that has no JSON form in a sample."""


class Telemetry:
    """Statistics windows and samples of one agent's predictions (see the module doc)."""

    def __init__(
        self,
        *,
        fleet: str,
        device: str,
        stats_enabled: bool = True,
        window_s: float = 60.0,
        window_count: int = 0,
        samples_per_hour: float = 0.0,
        sample_bytes_per_hour: float = 0.0,
        clock: Callable[[], float] = time.time,
        counters: Stats | None = None,
        notify: Callable[[], object] | None = None,
    ) -> None:
        self.fleet, self.device = fleet, device
        self.stats_enabled = stats_enabled
        self.window_s = window_s
        self.window_count = window_count
        self.config_budget = SamplingBudget(samples_per_hour, sample_bytes_per_hour)
        self._clock = clock
        self.counters = counters if counters is not None else Stats()
        self._notify = notify
        self._rlog = RateLimitedLog(log)
        self.topics = {
            kind: device_topic(fleet, device, kind) for kind in ("telemetry", "samples", "labels")
        }
        self._lock = threading.Lock()
        self._predictor: Predictor | None = None
        self.boot = ""
        self._seq = 0
        self._sample_seq = 0
        self._rng = random.Random(0)
        self._model: LoadedModel | None = None
        self._ref: dict[str, Any] = {}
        self._baseline: dict[str, Any] | None = None
        self._empty: WindowStats | None = None  # built from _baseline once; windows are fresh()
        self._width: int | None = None  # values per row the model takes
        self._window: _Window | None = None
        self._sampler: Sampler | None = None
        self._sampling = False  # the sampler is enabled (its budget is fixed)
        self._pending: deque[_Closed | tuple[str, bytes]] = deque()
        self.lost = 0  # items the full hand-off queue dropped, not yet taken by drain()
        self._envelope: _Envelope | None = None  # of the last window sent
        # one-row calls counted in C while armed (see the module doc)
        self._sink: Any = None
        if _fastpath is not None and NativeWindowStats is not None:
            self._sink = _fastpath.RowSink(self.on_predictions)

    @classmethod
    def from_config(cls, config: AgentConfig, **kw: Any) -> Telemetry:
        return cls(
            fleet=config.fleet,
            device=config.device,
            stats_enabled=config.telemetry,
            window_s=config.telemetry_window_s,
            window_count=config.telemetry_window_count,
            samples_per_hour=config.samples_per_hour,
            sample_bytes_per_hour=config.sample_bytes_per_hour,
            **kw,
        )

    def attach(self, predictor: Predictor) -> None:
        """Listen to every prediction of ``predictor`` and take its labels."""
        self._predictor = predictor
        predictor.add_batch_listener(self._sink if self._sink is not None else self.on_predictions)
        predictor.label_sink = self.label

    def start(self, boot: str) -> None:
        """A new boot: sequence numbers start at 1 again, the sampler's draws are reseeded."""
        with self._lock:
            self._disarm()
            self.boot = boot
            self._seq = self._sample_seq = 0
            self._rng = random.Random(f"{self.device}/{boot}")
            self._model, self._window, self._sampler = None, None, None
            self._sampling = False

    # --- prediction threads --------------------------------------------------------------
    def on_predictions(
        self,
        model: LoadedModel,
        rows: Sequence[Mapping[str, Any]] | None,
        x: np.ndarray,
        out: np.ndarray | None,
        latency_ms: float,
    ) -> dict[int, str] | None:
        """Count one call's rows; returns ``{row: sample_id}`` for the rows sampled."""
        if not self.boot:
            return None
        if model is self._model and not self._sampling:
            if not self.stats_enabled:
                return None  # statistics off, no sampling
            if len(x) == 1 and self._sink is None:  # one row, no sampling (no C sink)
                if x.ndim != 2:  # e.g. a (1, 64, 3) window: one feature per value
                    x = x.reshape(1, -1)
                with self._lock:
                    w = self._window
                    if (
                        w is not None
                        and model is self._model
                        and x.shape[1] == self._width
                        and (not self.window_count or w.stats.count + 1 < self.window_count)
                    ):
                        # WindowStats.update takes the (1, k) row and (1, m) scores as they are
                        if out is None:
                            w.stats.update(x, None, latency_ms, True)
                        else:
                            w.stats.update(x, out, latency_ms)
                        return None
        if x.ndim != 2:  # e.g. (n, 64, 3) windows: the baseline has one feature per value
            x = x.reshape(len(x), -1)
        n = len(x)
        notify = False
        sampled: dict[int, str] | None = None
        with self._lock:
            self._disarm()
            try:
                if model is not self._model and not self._switch(model):
                    self.counters.incr("telemetry_stale_predictions", n)
                    return None
                if self._width is None:
                    self._width = x.shape[1]
                elif x.shape[1] != self._width:  # the model raised on it: not one of its inputs
                    self.counters.incr("telemetry_misshapen_rows", n)
                    return None
                pending_before = len(self._pending)
                if self.stats_enabled:
                    self._count(model, x, out, latency_ms)
                sampler = self._sampler
                if out is not None and sampler is not None and sampler.enabled:
                    for i in range(n):
                        if sampler.want():
                            sample_id = self._sample(sampler, model, rows, x, out, i)
                            if sample_id is not None:
                                sampled = sampled or {}
                                sampled[i] = sample_id
                notify = pending_before == 0 and len(self._pending) > 0
            finally:
                self._arm()
        if notify and self._notify is not None:
            self._notify()
        return sampled

    def _count(
        self, model: LoadedModel, x: np.ndarray, out: np.ndarray | None, latency_ms: float
    ) -> None:
        n, i = len(x), 0
        limit = self.window_count
        while i < n:
            w = self._window
            if w is None:
                w = self._open(model, x, out)
            j = n if not limit else min(n, i + limit - w.stats.count)
            if j - i == 1:  # update() costs less for one row than update_many()
                w.stats.update(x[i:j], None if out is None else out[i:j], latency_ms, out is None)
            elif out is None:
                w.stats.update_many(x[i:j], None, latency_ms, True)
            else:
                w.stats.update_many(x[i:j], out[i:j], latency_ms)
            i = j
            if limit and w.stats.count >= limit:
                self._close()

    def _disarm(self) -> None:
        """Lock held: from now on every call comes to :meth:`on_predictions` (the sampler
        is told how many calls the sink let pass meanwhile)."""
        if self._sink is not None:
            passed = self._sink.disarm()
            if passed and self._sampling and self._sampler is not None:
                self._sampler.skip(passed)

    def _arm(self) -> None:
        """Lock held, at the end of a section: let the C sink count one-row calls of the
        active model in the open window, if that is what :meth:`on_predictions` would do."""
        sink = self._sink
        if sink is None:
            return
        w = self._window
        # sampling: the calls before the sampler's next candidate (that one comes here)
        gap = self._sampler.next_gap() if self._sampling and self._sampler is not None else -1
        if not self.boot or self._model is None:
            sink.disarm()
        elif not self.stats_enabled:  # on_predictions only samples the model's calls
            sink.arm(self._model, None, 0, 0, gap)
        elif w is not None and self._width and isinstance(w.stats, NativeWindowStats):
            sink.arm(self._model, w.stats, self._width, self.window_count, gap)
        else:
            sink.disarm()

    def _switch(self, model: LoadedModel) -> bool:
        """Another model predicts: close the window of the old one. False for a call that
        began on a model no longer active (its rows belong to no open window)."""
        predictor = self._predictor
        if self._model is not None and predictor is not None and predictor.model is not model:
            return False
        self._close()
        self._model, self._ref, self._baseline = model, model_ref(model.manifest), None
        self._empty = None
        self._width = _input_width(model)
        budget = self.config_budget
        try:
            budget = budget_from(
                budget.per_hour,
                budget.bytes_per_hour,
                (model.manifest.get("serving") or {}).get("sampling"),
            )
        except ValueError as exc:
            self.counters.incr("sampling_config_bad")
            self._rlog.warning("sampling", "%s; using the agent's sampling budget", exc)
        if self._sampler is None or self._sampler.budget != budget:
            self._sampler = Sampler(budget, rng=self._rng, clock=self._clock)
        self._sampling = self._sampler.enabled
        return True

    def _open(self, model: LoadedModel, x: np.ndarray, out: np.ndarray | None) -> _Window:
        if self._baseline is None:
            n_out = out.shape[1] if out is not None and out.ndim == 2 else _n_outputs(model)
            self._baseline, problem = window_baseline(model.manifest, self._width or 0, n_out)
            if problem:
                self.counters.incr("telemetry_baseline_unusable")
                self._rlog.warning(
                    "baseline", "%s: %s; windows count no features", model.name, problem
                )
            self._empty = None
        if self._empty is None:
            self._empty = WindowStats(self._baseline)
        self._window = _Window(self._empty.fresh(), self._clock())
        return self._window

    def _close(self) -> None:
        """Close the open window (if it counted anything) and queue it. Lock held."""
        w, self._window = self._window, None
        if w is None or w.stats.count == 0:
            return
        w.stats.release()  # counts its last rows and frees its buffers while it waits
        self._seq += 1
        self._push(_Closed(w, self._ref, self._seq, max(self._clock(), w.start)))

    def _push(self, item: _Closed | tuple[str, bytes]) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.lost += 1
        self._pending.append(item)

    def _sample(
        self,
        sampler: Sampler,
        model: LoadedModel,
        rows: Sequence[Mapping[str, Any]] | None,
        x: np.ndarray,
        out: np.ndarray,
        i: int,
    ) -> str | None:
        scores = out[i]
        if not (np.isfinite(scores).all() and np.isfinite(x[i]).all()):
            self.counters.incr("samples_non_finite_skipped")  # no label, useless to retrain
            return None
        seq = self._sample_seq + 1
        sample_id = f"{self.device}/{self.boot}/{seq}"
        raw = None
        if rows is not None:
            try:
                raw = _json_input(rows[i])
            except _Unfit:
                self.counters.incr("samples_input_unsendable")
        k = int(scores.argmax()) if scores.size > 1 else int(scores[0] >= 0.5)
        predicted = str(model.labels[k]) if 0 <= k < len(model.labels) else str(k)
        try:
            payload = sample_message(
                fleet=self.fleet,
                device=self.device,
                boot=self.boot,
                seq=seq,
                ts=self._clock(),
                sample_id=sample_id,
                model=self._ref,
                input=raw,
                features=_floats(x[i]),
                outputs=_floats(scores),
                predicted=predicted,
            )
            parse_sample(payload, MAX_SAMPLE_BYTES)  # never send what the collector refuses
        except (ProtocolError, ValueError) as exc:
            self.counters.incr("samples_unsendable")
            self._rlog.warning("sample", "a sample cannot be sent: %s", exc)
            return None
        sampler.spend(len(payload))
        self._sample_seq = seq
        self._push((self.topics["samples"], payload))
        self.counters.incr("samples_taken")
        return sample_id

    # --- any thread ------------------------------------------------------------------------
    def label(self, sample_id: str, label: str) -> None:
        """Queue a ``label`` message for one of this device's samples."""
        try:
            payload = label_message(
                fleet=self.fleet, device=self.device, sample_id=sample_id, label=label,
                ts=self._clock(),
            )  # fmt: skip
            parse_label(payload)
        except (ProtocolError, ValueError, TypeError) as exc:
            raise PredictionError(f"cannot send this label: {exc}") from exc
        with self._lock:
            notify = not self._pending
            self._push((self.topics["labels"], payload))
        if notify and self._notify is not None:
            self._notify()

    # --- the agent's worker ----------------------------------------------------------------
    def tick(self) -> None:
        """Close a window that is old enough or whose model is no longer active; measure the
        prediction rate for the sampler. The agent calls this every second."""
        with self._lock:
            w = self._window
            predictor = self._predictor
            if w is not None and (
                (self.window_s and self._clock() - w.start >= self.window_s)
                or (predictor is not None and predictor.model is not self._model)
            ):
                self._disarm()
                self._close()
                self._arm()
            sampler = self._sampler
            if self._sampling and sampler is not None:
                self._disarm()  # the sampler counts the calls let pass, and may draw anew
                sampler.observe()
                self._arm()

    def close(self) -> None:
        """Close the open window now (the agent stops)."""
        with self._lock:
            self._disarm()
            self._close()

    def drain(self) -> tuple[list[tuple[str, bytes]], int]:
        """The messages waiting, as ``(topic, payload)`` in order, and how many were lost."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            lost, self.lost = self.lost, 0
        out = []
        windows = 0
        for item in items:
            if isinstance(item, tuple):
                out.append(item)
                continue
            try:
                payload = self._window_message(item)
            except (ProtocolError, ValueError) as exc:
                lost += 1
                self._rlog.warning("window", "a telemetry window cannot be sent: %s", exc)
                continue
            out.append((self.topics["telemetry"], payload))
            windows += 1
        if windows:
            self.counters.incr("telemetry_windows", windows)
        return out, lost

    def _window_message(self, closed: _Closed) -> bytes:
        """The telemetry message of a closed window: ``telemetry_message`` with the window,
        byte for byte (the envelope ends with ``stats``, the window's JSON goes there)."""
        stats = closed.window.stats
        seq, start, end = closed.seq, closed.window.start, closed.end
        envelope = self._envelope
        if envelope is None or envelope.ref is not closed.ref or envelope.boot != self.boot:
            envelope = self._envelope = _Envelope(self, closed.ref)
        payload = b"".join((envelope.head(seq, start, end), stats.window_json(), b"}"))
        # never send what the collector refuses: in full for the first window of a model,
        # else what is not valid by construction (see the module doc)
        if envelope.checked != stats.layout:
            parse_telemetry(payload, MAX_TELEMETRY_BYTES)
            envelope.checked = stats.layout
        elif len(payload) > MAX_TELEMETRY_BYTES:
            raise ProtocolError(f"message of {len(payload)} bytes is over the limit")
        elif not (stats.lat_sum >= 0 and stats.lat_max >= 0):
            raise ProtocolError("latency_sum_ms and latency_max_ms must be >= 0")
        elif not end >= start:
            raise ProtocolError("field 'end' must not be before 'start'")
        return payload


# marks for the numbers of an envelope template: values no other field is likely to hold
_MARK_SEQ, _MARK_START, _MARK_END = 7340317294053217, 1.2345678901234567e-300, 9.87654321e-301


class _Envelope:
    """The telemetry messages of one model and boot, up to their ``stats``: made with
    ``telemetry_message`` (``stats=0``, the last field, cut off), once with marks for
    ``seq``, ``start`` and ``end`` to cut the bytes into a template that later windows
    fill in; ``telemetry_message`` itself for any value the template does not take."""

    def __init__(self, telemetry: Telemetry, ref: dict[str, Any]) -> None:
        self.ref, self.boot = ref, telemetry.boot
        self._fields = {"fleet": telemetry.fleet, "device": telemetry.device, "boot": self.boot}
        self.checked: Any = None  # the window layout checked in full with parse_telemetry
        self._parts: tuple[bytes, ...] | None = None
        try:
            marked = self._message(_MARK_SEQ, _MARK_START, _MARK_END)
            marks = [str(_MARK_SEQ).encode(), repr(_MARK_START).encode(), repr(_MARK_END).encode()]
            if all(marked.count(m) == 1 for m in marks):
                a, rest = marked.split(marks[0])
                b, rest = rest.split(marks[1])
                c, d = rest.split(marks[2])
                self._parts = (a, b, c, d)
        except ValueError:  # not in this order: no template
            self._parts = None

    def _message(self, seq: Any, start: Any, end: Any) -> bytes:
        head = telemetry_message(
            **self._fields, seq=seq, start=start, end=end, model=self.ref, stats=0
        )
        if not head.endswith(b',"stats":0}'):
            raise ValueError("the telemetry envelope does not end with its stats")
        return head[:-2]

    def head(self, seq: Any, start: Any, end: Any) -> bytes:
        """The message's bytes up to its stats (``ValueError`` for non-finite times)."""
        parts = self._parts
        if (
            parts is None
            or seq.__class__ is not int
            or start.__class__ is not float
            or end.__class__ is not float
            or not (math.isfinite(start) and math.isfinite(end))
        ):
            return self._message(seq, start, end)
        a, b, c, d = parts
        filled = b"".join((a, str(seq).encode(), b, repr(start).encode(), c, repr(end).encode(), d))
        if self.checked is None and filled != self._message(seq, start, end):  # first: compared
            self._parts = None
            return self._message(seq, start, end)
        return filled


def _input_width(model: LoadedModel) -> int | None:
    """Values per row of the model's input (None when a dimension is dynamic)."""
    try:
        dims = model.runner.inputs[0].shape[1:]
    except (AttributeError, IndexError, TypeError):
        return None
    return int(np.prod(dims)) if dims and all(d > 0 for d in dims) else None


def _n_outputs(model: LoadedModel) -> int:
    """Scores per row, from the runner's ``(batch, k)`` outputs (used before any succeeded)."""
    widths = [t.shape[1] for t in getattr(model.runner, "outputs", []) if len(t.shape) == 2]
    return max([w for w in widths if w > 0], default=2)


def _floats(row: np.ndarray) -> list[float]:
    """JSON numbers that read back as the same float32 (9 significant digits)."""
    return [float(f"{v:.9g}") for v in row.ravel().tolist()]


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        if len(v) > 1024:
            raise _Unfit("a string over 1024 characters")
        return v
    if isinstance(v, (bool, int)) or v is None:
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53:
            raise _Unfit("an integer too large for JSON readers")
        return v
    raise _Unfit(f"a value of type {type(v).__name__}")


def _json_input(row: Mapping[str, Any]) -> dict[str, Any]:
    """The raw row as JSON: scalars, and lists of scalars (non-finite numbers become null)."""
    if len(row) > MAX_INPUT_COLUMNS:
        raise _Unfit(f"more than {MAX_INPUT_COLUMNS} columns")
    out: dict[str, Any] = {}
    for key, value in row.items():
        if not isinstance(key, str) or len(key) > 128:
            raise _Unfit("a column name that is not a short string")
        if isinstance(value, (list, tuple, np.ndarray)):
            items = value.ravel().tolist() if isinstance(value, np.ndarray) else value
            if len(items) > MAX_VALUES:
                raise _Unfit(f"a column of more than {MAX_VALUES} values")
            out[key] = [_json_value(v) for v in items]
        else:
            out[key] = _json_value(value)
    return out
