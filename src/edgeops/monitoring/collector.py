"""The telemetry collector: devices' monitoring messages from MQTT into the database.

One process type ingests everything devices send: telemetry windows, samples,
labels, deployment events and states. Several collectors (processes or
machines) split the load through an MQTT 5 **shared subscription**
(``$share/<group>/edgeops/<fleet>/devices/+/<kind>``): the broker hands each
message to one member of the group. States are the exception: every collector
subscribes to them directly (they are few, retained, and each collector needs
the fleet registry to accept telemetry), and records them idempotently.

Delivery is at least once, end to end. The client acknowledges a QoS 1 message
only after the batch holding it is committed (paho's manual acks), on a
persistent session (a stable client id and a session expiry), so a collector
that crashes or loses its database gets its unacknowledged messages again when
it reconnects with the same id. What arrives twice is de-duplicated by the
database (:mod:`.ingest`). After each commit the collector also sends every
device whose telemetry windows or samples were in the batch an ``ack`` message
naming them (``edgeops/<fleet>/devices/<device>/ack``): the agent keeps those in
its outbox until then, so a window is not lost even when the broker loses it
after its PUBACK (e.g. a Mosquitto restart, which forgets shared
subscriptions). Messages are batched — up to ``batch_size`` or
``linger`` seconds after the first — and each batch is one transaction; one
thread parses the next batch while another writes the last one. Memory is
bounded: the queue holds at most ``queue_size`` messages and ``queue_bytes`` bytes
of payload (paho's network thread waits when it is full, so the broker is held back
over TCP), at most two parsed batches wait for the writer, and the broker sends at
most ``receive_maximum`` unacknowledged messages (MQTT 5; Mosquitto 2.0 does not hold
to it strictly).

One process stores 9,000-9,600 windows a second on one core of the benchmark
machine (bench/ingest.py, docs/benchmarks.md); run one collector per core, each
with its own client id, to use more.

With ``protocol="3.1.1"`` (brokers without MQTT 5, such as amqtt) the
subscription is a normal one, so only one collector per fleet should run.
"""

from __future__ import annotations

import gc
import logging
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeops_protocol.messages import ACK_KINDS, ACK_MAX_KEYS, ack_message
from edgeops_protocol.topics import device_filter, device_topic

from ..errors import ConfigError, StoreUnavailable
from ..mqtt import Message, MqttClient
from .ingest import Ingestor, IngestResult, Prepared

__all__ = ["SHARED_KINDS", "Collector", "CollectorOptions", "default_client_id", "tune_gc"]

log = logging.getLogger("edgeops.collector")
SHARED_KINDS = ("telemetry", "samples", "labels", "events")
_GC_EVERY = 10.0  # seconds between garbage collections when tune_gc() is in force


def tune_gc() -> None:
    """For a process that runs a collector (``edgeops collector`` calls it): parsed messages
    are trees of lists that reference counting frees, yet they set off the cyclic garbage
    collector every 700 allocations, which then walks the young objects again and again:
    about a third of the collector's time. So: freeze what exists, turn automatic
    collection off, and let :meth:`Collector.run` collect every 10 s (the few cycles a
    batch leaves, from the database session, are found then)."""
    gc.collect()
    gc.freeze()
    gc.disable()


def default_client_id(fleet: str) -> str:
    """Stable across restarts (so the broker's session, with unacknowledged messages,
    is found again): one collector per host unless ``client_id`` is given."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"edgeops-collector-{fleet}-{host}"[:128]


@dataclass(frozen=True)
class CollectorOptions:
    group: str = "edgeops-collector"  # shared subscription group
    client_id: str | None = None  # default: default_client_id(fleet)
    protocol: str = "5"  # "5": shared subscription; "3.1.1": a normal one
    batch_size: int = 500  # messages per transaction, at most
    linger: float = 0.05  # seconds to wait for a batch to fill after its first message
    queue_size: int = 2000  # messages held in memory, at most
    queue_bytes: int = 64 * 1024 * 1024  # ... and bytes of their payloads, at most
    receive_maximum: int = 1000  # unacknowledged messages the broker may send (MQTT 5)
    session_expiry: int = 3600  # seconds the broker keeps the session while we are away

    def __post_init__(self) -> None:
        if self.protocol not in ("5", "3.1.1"):
            raise ConfigError(f"unknown MQTT protocol {self.protocol!r}; use 5 or 3.1.1")
        if not 1 <= self.batch_size <= self.queue_size:
            raise ConfigError("batch size must be between 1 and the queue size")
        if not self.group or any(c in self.group for c in "/+#$"):
            raise ConfigError(f"bad shared subscription group {self.group!r}")


class Collector:
    """Subscribe, batch, store, acknowledge. ``run()`` until ``stop()``."""

    def __init__(
        self,
        ingestor: Ingestor,
        mqtt_url: str,
        opts: CollectorOptions | None = None,
        client: MqttClient | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.fleet = ingestor.fleet
        self.opts = opts or CollectorOptions()
        self.client_id = self.opts.client_id or default_client_id(self.fleet)
        self.client = client or MqttClient(
            mqtt_url,
            client_id=self.client_id,
            max_queue=self.opts.queue_size,
            max_queue_bytes=self.opts.queue_bytes,
            protocol=self.opts.protocol,
            manual_ack=True,
            session_expiry=self.opts.session_expiry,
            receive_maximum=self.opts.receive_maximum,
        )
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.received = 0
        self.batches = 0
        self.acks_sent = 0
        self._stop = threading.Event()

    def topics(self) -> list[str]:
        shared = self.opts.protocol == "5"
        out = [device_filter(self.fleet, "state")]
        for kind in SHARED_KINDS:
            f = device_filter(self.fleet, kind)
            out.append(f"$share/{self.opts.group}/{f}" if shared else f)
        return out

    def start(self, timeout: float = 10.0) -> Collector:
        for topic in self.topics():
            self.client.subscribe(topic, 1)
        self.client.connect(timeout)
        self.client.wait_subscribed(timeout)
        return self

    def stop(self) -> None:
        """Ask ``run()`` to finish the messages it holds and return (thread- and signal-safe)."""
        self._stop.set()

    def close(self) -> None:
        self.client.close()

    # --- the loop ----------------------------------------------------------------------
    def run(
        self,
        until: Callable[[], bool] | None = None,
        max_seconds: float | None = None,
        on_batch: Callable[[IngestResult], None] | None = None,
        report_every: float = 30.0,
    ) -> None:
        """Store batches until ``stop()``, ``until()`` or ``max_seconds``; then drain what was
        already received (acknowledged after its commit) and return.

        Two threads: this one takes batches and parses them (:meth:`Ingestor.prepare`),
        a writer stores them and acknowledges (:meth:`Ingestor.store`), so parsing the
        next batch overlaps the database's work on the last one. At most two parsed
        batches wait between them."""
        handoff: queue.Queue[tuple[list[Message], Prepared | None] | None] = queue.Queue(2)
        writer = threading.Thread(
            target=self._writer, args=(handoff, on_batch), name="collector-writer", daemon=True
        )
        writer.start()
        started = last_report = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = self._take(block=0.2)
                if batch:
                    handoff.put((batch, self._prepare(batch)))
                now = time.monotonic()
                if now - last_report >= report_every:
                    self._report()
                    last_report = now
                if (until is not None and until()) or (
                    max_seconds is not None and now - started >= max_seconds
                ):
                    break
            while batch := self._take(block=0.0):
                handoff.put((batch, self._prepare(batch)))
        finally:
            handoff.put(None)
            writer.join()

    def _take(self, block: float) -> list[Message]:
        q = self.client.messages
        try:
            batch = [q.get(timeout=block) if block > 0 else q.get_nowait()]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.opts.linger
        while len(batch) < self.opts.batch_size:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    break
                try:
                    batch.append(q.get(timeout=left))
                except queue.Empty:
                    break
        return batch

    def _prepare(self, batch: list[Message]) -> Prepared | None:
        try:
            return self.ingestor.prepare([(m.topic, m.payload) for m in batch])
        except Exception:  # a parser bug: the writer stores the batch message by message
            log.exception("could not parse a batch of %d messages", len(batch))
            return None

    def _writer(self, handoff: queue.Queue, on_batch: Any) -> None:
        abandoned = False
        last_gc = time.monotonic()
        while (item := handoff.get()) is not None:
            if not abandoned:
                abandoned = not self._write(*item, on_batch)
            if not gc.isenabled() and time.monotonic() - last_gc >= _GC_EVERY:
                gc.collect()  # tune_gc() turned automatic collection off
                last_gc = time.monotonic()

    def _write(self, batch: list[Message], prepared: Prepared | None, on_batch: Any) -> bool:
        """Store a batch, then acknowledge it; False if stopped while the store was down (the
        batch stays unacknowledged: the broker redelivers it on the next session)."""
        delay = 0.5
        while True:
            try:
                res = self._store(batch, prepared)
                break
            except StoreUnavailable as exc:
                log.error("%s; retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 30.0)
        self._send_acks(prepared, res.unknown_devices)
        for m in batch:  # only now: a crash before this line means redelivery, not loss
            self.client.ack(m)
        self.received += len(batch)
        self.batches += 1
        self.accepted.update(res.accepted)
        self.rejected.update(res.rejected)
        if on_batch is not None:
            on_batch(res)
        return True

    def _store(self, batch: list[Message], prepared: Prepared | None) -> IngestResult:
        if prepared is not None:
            try:
                return self.ingestor.store(prepared)
            except StoreUnavailable:
                raise
            except Exception:
                log.exception("a batch failed; storing its %d messages one by one", len(batch))
        res = IngestResult()
        for m in batch:
            try:
                one = self.ingestor.ingest([(m.topic, m.payload)])
            except StoreUnavailable:
                raise
            except Exception:  # this message breaks ingest: drop it, never loop on it
                log.exception("could not store a message on %s; dropped", m.topic)
                self.ingestor.count_rejected("internal_error")
                one = IngestResult(rejected=Counter({"internal_error": 1}))
            res.accepted.update(one.accepted)
            res.rejected.update(one.rejected)
        return res

    def _send_acks(self, prepared: Prepared | None, unknown: set[str]) -> None:
        """Tell each device which of its windows and samples this committed batch holds
        (stored, duplicates and rejections alike: the collector is done with them) — but
        not a device the registry does not know yet: its first windows can overtake its
        first state, and sent again they are stored."""
        if prepared is None:  # stored one by one after a parser failure: devices resend
            return
        acks: dict[str, dict[str, list[list[Any]]]] = {}
        for kind in ACK_KINDS:
            for _, m in prepared.parsed.get(kind, ()):
                if m["device"] in unknown:
                    continue
                per = acks.setdefault(m["device"], {k: [] for k in ACK_KINDS})
                per[kind].append([m["boot"], m["seq"]])
        for device, per in acks.items():
            pairs = [(k, p) for k in ACK_KINDS for p in per[k]]
            for i in range(0, len(pairs), ACK_MAX_KEYS):
                part = pairs[i : i + ACK_MAX_KEYS]
                body = {k: [p for kk, p in part if kk == k] for k in ACK_KINDS}
                try:
                    self.client.publish(
                        device_topic(self.fleet, device, "ack"),
                        ack_message(fleet=self.fleet, device=device, **body),
                    )
                except (ValueError, TypeError):  # never for what ingest accepted; be safe
                    log.exception("could not send an ack to %s", device)
                    continue
                self.acks_sent += 1

    def _report(self) -> None:
        log.info(
            "%d messages in %d batches; stored %s; rejected %s; %d dropped by the client queue",
            self.received,
            self.batches,
            dict(self.accepted) or "{}",
            dict(self.rejected) or "{}",
            self.client.dropped,
        )
