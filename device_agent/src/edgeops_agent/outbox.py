"""The outbox: monitoring messages waiting for the broker, on disk, in order, bounded.

Telemetry windows, samples and labels are written here before anything tries
to send them, so they survive a broker that is away, a restart and a power cut.
Layout of ``state_dir/outbox/``::

    00000000000000000017.msg   one message: b"edgeops-outbox 1 <topic>\\n" + payload
    dropped.json               {"format": 1, "dropped": N}

Each message file is written atomically (temporary file, fsync, rename, fsync of
the folder) and named by a number that only goes up, so the order on disk is the
order to send. :class:`Outbox` is the queue; :class:`OutboxSender` publishes it.

**Bounds.** At most ``max_messages`` files and ``max_bytes`` bytes. A message that
does not fit makes room by deleting the *oldest* messages (not the one in flight,
unless nothing else is left); each deleted message adds one to ``dropped``, which
is persisted in ``dropped.json`` and reported as ``outbox_dropped`` in the state
message. A message bigger than ``max_bytes`` on its own, a file that cannot be
written (disk full) and a damaged file are dropped and counted the same way: the
outbox never loses a message without counting it, and never raises for a full
disk.

**Sending** (:class:`OutboxSender`): one message in flight at a time. The oldest
message waiting to be sent is handed to paho with QoS 1; when the broker's PUBACK
arrives the next one goes. After a lost connection paho retransmits the message in
flight (DUP flag) before anything else, and nothing new is handed until it is
acknowledged, so the broker receives the outbox in order, each message at least
once. A restarted agent sends the files left over, with the ``boot`` and ``seq``
they were written with.

**End-to-end acknowledgement.** A broker's PUBACK only says the broker has the
message; a broker that restarts before a collector got it (Mosquitto does not
keep MQTT 5 shared subscriptions across a restart, so nobody is subscribed for
a moment) loses it. So telemetry windows and samples — messages with a
``(boot, seq)`` — stay on disk after the PUBACK until the collector's ``ack``
message names them (it sends one after each committed batch, docs/protocol.md).
One not acknowledged within ``ack_timeout_s`` is queued again (in order, before
newer messages) and sent again, waiting twice as long after each try, up to 16
times ``ack_timeout_s``; the collector stores each ``(device, boot, seq)`` once,
so a second copy costs nothing. With ``ack_timeout_s = 0`` the PUBACK is enough
(the file is deleted then), for collectors that send no acks. Labels (no
``seq``) are always deleted on the PUBACK.

>>> import tempfile, pathlib
>>> box = Outbox(pathlib.Path(tempfile.mkdtemp()), max_messages=2, max_bytes=1 << 20)
>>> [box.append("t", p) for p in (b"one", b"two", b"three")]
[0, 0, 1]
>>> box.oldest()[1:], box.dropped
(('t', b'two'), 1)
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fsutil import atomic_write

__all__ = ["Outbox", "OutboxSender", "ack_key"]

log = logging.getLogger("edgeops_agent.outbox")
FORMAT = 1
_MAGIC = b"edgeops-outbox 1 "
_NAME = re.compile(r"^(\d{20})\.msg$")


class Outbox:
    """A bounded FIFO of ``(topic, payload)`` in a folder; one thread at a time appends
    and reads it (the agent's worker)."""

    def __init__(self, folder: Path, *, max_messages: int, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._index: collections.OrderedDict[int, int] = collections.OrderedDict()  # n -> size
        self._bytes = 0
        self.in_flight: int | None = None  # handed to the connection: dropped last
        # Messages wait to be sent (a heap of numbers: the oldest first) or, sent and
        # PUBACKed, wait for the collector's ack: number -> (key, deadline, tries), with a
        # heap of (deadline, number) and key -> number to find them.
        self._pending: list[int] = []
        self._queued: set[int] = set()
        self._awaiting: dict[int, tuple[tuple[str, str, int], float, int]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._by_key: dict[tuple[str, str, int], int] = {}
        self.dropped = self._read_dropped()
        for stray in self.folder.glob(".*.tmp"):  # a crash while writing: never renamed
            with contextlib.suppress(OSError):
                stray.unlink()
        found = []
        for path in self.folder.iterdir():
            m = _NAME.match(path.name)
            if m:
                with contextlib.suppress(OSError):
                    found.append((int(m.group(1)), path.stat().st_size))
        for number, size in sorted(found):
            self._index[number] = size
            self._bytes += size
            self._queue(number)
        self._next = (max(self._index) + 1) if self._index else 1

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, number: object) -> bool:
        return number in self._index

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def waiting(self) -> int:
        """Messages not handed to the broker yet (or queued again)."""
        return len(self._queued)

    @property
    def unacknowledged(self) -> int:
        """Messages the broker has, waiting for the collector's ack."""
        return len(self._awaiting)

    def _queue(self, number: int) -> None:
        if number not in self._queued:
            self._queued.add(number)
            heapq.heappush(self._pending, number)

    def _path(self, number: int) -> Path:
        return self.folder / f"{number:020d}.msg"

    def append(self, topic: str, payload: bytes) -> int:
        """Queue a message; returns how many messages were dropped to make room (or this one)."""
        data = _MAGIC + topic.encode() + b"\n" + payload
        with self._lock:
            if len(data) > self.max_bytes:
                log.warning(
                    "dropped a %d-byte message for %s: over outbox_max_bytes", len(data), topic
                )
                self.add_dropped(1)
                return 1
            dropped = 0
            while self._index and (
                len(self._index) >= self.max_messages or self._bytes + len(data) > self.max_bytes
            ):
                self._remove(self._victim())
                dropped += 1
            number = self._next
            self._next += 1
            try:
                atomic_write(self._path(number), data)
            except OSError as exc:
                log.error("cannot write to the outbox (%s): message dropped", exc.strerror)
                dropped += 1
            else:
                self._index[number] = len(data)
                self._bytes += len(data)
                self._queue(number)
            if dropped:
                self.add_dropped(dropped)
            return dropped

    def _victim(self) -> int:
        for number in self._index:
            if number != self.in_flight:
                return number
        return next(iter(self._index))

    def oldest(self) -> tuple[int, str, bytes] | None:
        """``(number, topic, payload)`` of the oldest message waiting to be sent (not one
        that waits for an ack); damaged files are dropped."""
        with self._lock:
            while self._pending:
                number = self._pending[0]
                if number not in self._queued:  # removed meanwhile
                    heapq.heappop(self._pending)
                    continue
                try:
                    data = self._path(number).read_bytes()
                except OSError:
                    data = b""
                head, sep, payload = data.partition(b"\n")
                if sep and head.startswith(_MAGIC):
                    return number, head[len(_MAGIC) :].decode("utf-8", "replace"), payload
                log.error("outbox file %s is damaged or unreadable: dropped", number)
                self._remove(number)
                self.add_dropped(1)
            return None

    def remove(self, number: int) -> None:
        """Forget a message (sent and acknowledged)."""
        with self._lock:
            self._remove(number)

    def await_ack(self, number: int, key: tuple[str, str, int], deadline: float) -> None:
        """The broker has message ``number``: keep it until :meth:`acknowledge` names ``key``,
        or until ``deadline``, when :meth:`expire` queues it again."""
        with self._lock:
            if number not in self._index:
                return
            self._queued.discard(number)
            if self.in_flight == number:
                self.in_flight = None
            tries = self._awaiting[number][2] if number in self._awaiting else 0
            old = self._by_key.get(key)
            if old is not None and old != number:  # the same window twice: keep the newer
                self._remove(old)
            self._awaiting[number] = (key, deadline, tries)
            self._by_key[key] = number
            heapq.heappush(self._deadlines, (deadline, number))

    def acknowledge(self, key: tuple[str, str, int]) -> bool:
        """The collector has committed ``key``: delete its file. False if none waits."""
        with self._lock:
            number = self._by_key.get(key)
            if number is None:
                return False
            self._remove(number)
            return True

    def expire(self, now: float) -> list[tuple[int, int]]:
        """Queue again the messages whose ack is overdue; ``(number, tries so far)`` each."""
        out = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                deadline, number = heapq.heappop(self._deadlines)
                entry = self._awaiting.get(number)
                if entry is None or entry[1] != deadline:
                    continue  # acknowledged, removed, or re-armed since
                key, _, tries = entry
                self._awaiting[number] = (key, float("inf"), tries + 1)
                self._queue(number)
                out.append((number, tries + 1))
        return out

    def tries(self, number: int) -> int:
        entry = self._awaiting.get(number)
        return 0 if entry is None else entry[2]

    def _remove(self, number: int) -> None:
        size = self._index.pop(number, None)
        if size is not None:
            self._bytes -= size
        if self.in_flight == number:
            self.in_flight = None
        self._queued.discard(number)
        entry = self._awaiting.pop(number, None)
        if entry is not None and self._by_key.get(entry[0]) == number:
            del self._by_key[entry[0]]
        with contextlib.suppress(FileNotFoundError):
            self._path(number).unlink()

    def add_dropped(self, n: int) -> None:
        """Count ``n`` more messages lost (here or before they reached the outbox)."""
        if n <= 0:
            return
        with self._lock:
            self.dropped += n
            try:
                body = json.dumps({"format": FORMAT, "dropped": self.dropped}).encode()
                atomic_write(self.folder / "dropped.json", body)
            except OSError as exc:  # the count in memory is still reported
                log.error("cannot persist outbox_dropped: %s", exc.strerror)

    def _read_dropped(self) -> int:
        try:
            data = json.loads((self.folder / "dropped.json").read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            log.error("outbox/dropped.json is damaged; counting drops from 0 again")
            return 0
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return 0
        value = data.get("dropped")
        return max(value, 0) if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass
class _InFlight:
    number: int
    mid: int
    since: float
    key: tuple[str, str, int] | None  # (kind, boot, seq) if the collector acknowledges it


_ACKED_KINDS = ("telemetry", "samples")


def ack_key(topic: str, payload: bytes) -> tuple[str, str, int] | None:
    """``(kind, boot, seq)`` of a telemetry window or a sample, which the collector's ``ack``
    messages name; None for other messages (or one that is not what the agent writes)."""
    kind = topic.rpartition("/")[2]
    if kind not in _ACKED_KINDS:
        return None
    try:
        obj = json.loads(payload)
        boot, seq = obj["boot"], obj["seq"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(boot, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return kind, boot, seq


class OutboxSender:
    """Publishes an :class:`Outbox` through a paho client, one message in flight at a time.

    :meth:`pump` runs on the agent's worker (or on the stopping thread once the worker
    is idle). paho's ``on_publish`` callback only queues the acknowledged message id
    and calls ``nudge`` (which posts a wake-up into the agent's mailbox): it never
    takes a lock that :meth:`pump` holds while it calls paho, because paho calls
    ``on_publish`` under its own lock, the one ``publish`` needs.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: Any,
        *,
        nudge: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
        republish_after_s: float = 120.0,
        ack_timeout_s: float = 0.0,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.outbox = outbox
        self._client = client
        self._queue_full = mqtt.MQTT_ERR_QUEUE_SIZE
        self._nudge = nudge
        self._clock = clock
        self._republish_after = republish_after_s
        self._ack_timeout = ack_timeout_s
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        self._in_flight: _InFlight | None = None
        self.sent = 0
        self.refused = 0
        self.republished = 0
        self.acknowledged = 0  # by the collector
        self.resent = 0  # sent again: the collector's ack did not come in time
        client.on_publish = self._on_publish

    @property
    def idle(self) -> bool:
        """Nothing to hand over: no message in flight and none waiting to be sent (messages
        the broker has may still wait for the collector's ack)."""
        return self._in_flight is None and self.outbox.waiting == 0

    @property
    def settled(self) -> bool:
        """Everything was sent and acknowledged end to end: the outbox is empty."""
        return self._in_flight is None and len(self.outbox) == 0

    def acknowledge(self, keys: list[tuple[str, str, int]]) -> int:
        """The collector's ack message: delete those messages; how many were waiting."""
        n = sum(self.outbox.acknowledge(key) for key in keys)
        self.acknowledged += n
        return n

    def pump(self) -> None:
        """Take the acknowledgements in, hand the next message over if nothing is in flight."""
        while self._acks:
            mid, refused = self._acks.popleft()
            current = self._in_flight
            if current is not None and mid == current.mid:
                self._in_flight = None
                if refused:  # MQTT 5 broker said no (e.g. not authorized): retrying won't help
                    self.outbox.remove(current.number)
                    self.refused += 1
                    self.outbox.add_dropped(1)
                    log.warning("the broker refused outbox message %d; dropped", current.number)
                    continue
                self.sent += 1
                if current.key is not None and self._ack_timeout > 0:
                    wait = self._ack_timeout * 2 ** min(self.outbox.tries(current.number), 4)
                    self.outbox.await_ack(current.number, current.key, self._clock() + wait)
                else:
                    self.outbox.remove(current.number)
        if self._ack_timeout > 0:
            for number, tries in self.outbox.expire(self._clock()):
                self.resent += 1
                if tries == 1:
                    log.info(
                        "no ack from the collector for outbox message %d; sending again", number
                    )
        if not self._client.is_connected():
            return
        current = self._in_flight
        if current is not None:
            if current.number not in self.outbox:  # dropped to make room meanwhile
                self._in_flight = None
            elif self._clock() - current.since > self._republish_after:
                self._in_flight = None  # paho never confirmed it: hand it over again
                self.republished += 1
                log.warning("outbox message %d unacknowledged; publishing it again", current.number)
            else:
                return
        while True:
            item = self.outbox.oldest()
            if item is None:
                return
            number, topic, payload = item
            try:
                info = self._client.publish(topic, payload, qos=1, retain=False)
            except (ValueError, TypeError) as exc:  # a topic or payload paho refuses outright
                log.error("outbox message %d cannot be published (%s): dropped", number, exc)
                self.outbox.remove(number)
                self.outbox.add_dropped(1)
                continue
            if info.rc == self._queue_full:
                return  # paho's own queue is full: try again on the next pump
            # success, or "no connection" (paho keeps it and sends it after reconnecting)
            key = ack_key(topic, payload) if self._ack_timeout > 0 else None
            self._in_flight = _InFlight(number, info.mid, self._clock(), key)
            self.outbox.in_flight = number
            return

    def connected(self) -> None:
        """A new connection: paho retransmits the message in flight; give it time again."""
        if self._in_flight is not None:
            self._in_flight.since = self._clock()

    def flush(self, timeout: float) -> bool:
        """Pump until the broker has everything or ``timeout`` passed (on a clean stop); what
        waits for the collector's ack stays on disk and is sent again on the next start."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if self.idle:
                return True
            if time.monotonic() >= deadline or not self._client.is_connected():
                return False
            time.sleep(0.01)

    # --- paho's network thread -----------------------------------------------------------
    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason: Any = None, props: Any = None
    ) -> None:
        refused = bool(getattr(reason, "is_failure", False))
        self._acks.append((mid, refused))
        self._nudge()
