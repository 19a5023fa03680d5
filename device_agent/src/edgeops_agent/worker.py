"""Where the agent's work runs: bounded mailboxes drained by a small pool of threads.

Each agent owns one :class:`Mailbox`; paho's callback thread only posts into
it (never blocks: a full mailbox drops the message and says so). The
:class:`WorkerPool` runs mailboxes on its threads with one rule: a mailbox is
drained by at most one thread at a time, so an agent's handler never runs
concurrently with itself and needs no locks of its own. A standalone agent has a
pool of one thread; the fleet simulator shares one small pool among hundreds of
agents. The pool also runs timers (:meth:`WorkerPool.call_later`) on one thread.

>>> pool = WorkerPool(threads=1); pool.start()
>>> seen = []
>>> box = Mailbox(pool, seen.append, max_items=4)
>>> [box.post(i) for i in range(3)]
[True, True, True]
>>> box.wait_idle(5.0), seen
(True, [0, 1, 2])
>>> pool.stop()
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Mailbox", "Timer", "WorkerPool"]

log = logging.getLogger("edgeops_agent.worker")
_BATCH = 16  # items one thread takes from a mailbox before letting others run


class Timer:
    """A pending :meth:`WorkerPool.call_later`; ``cancel()`` stops it from firing."""

    __slots__ = ("cancelled", "due", "fn")

    def __init__(self, due: float, fn: Callable[[], None]) -> None:
        self.due, self.fn, self.cancelled = due, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class WorkerPool:
    """``threads`` worker threads for mailboxes, and one timer thread."""

    def __init__(self, threads: int = 1, name: str = "edgeops-agent") -> None:
        self.size = max(1, threads)
        self.name = name
        self._ready: queue.SimpleQueue[Mailbox | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_cond = threading.Condition()
        self._counter = itertools.count()
        self._running = False

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        for i in range(self.size):
            t = threading.Thread(target=self._work, name=f"{self.name}-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._time, name=f"{self.name}-timers", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._running:
            return
        self._running = False
        for _ in range(self.size):
            self._ready.put(None)
        with self._timer_cond:
            self._timer_cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self._threads.clear()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` (which must be quick: post into a mailbox) after ``delay`` seconds."""
        timer = Timer(time.monotonic() + max(0.0, delay), fn)
        with self._timer_cond:
            heapq.heappush(self._timers, (timer.due, next(self._counter), timer))
            self._timer_cond.notify()
        return timer

    def _schedule(self, box: Mailbox) -> None:
        self._ready.put(box)

    def _work(self) -> None:
        while True:
            box = self._ready.get()
            if box is None:
                return
            box._drain()

    def _time(self) -> None:
        with self._timer_cond:
            while self._running:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, timer = heapq.heappop(self._timers)
                    if not timer.cancelled:
                        try:
                            timer.fn()
                        except Exception:  # a timer must not stop the others
                            log.exception("timer callback failed")
                wait = self._timers[0][0] - now if self._timers else None
                self._timer_cond.wait(wait)


class Mailbox:
    """A bounded queue of items for ``handler``, run by a :class:`WorkerPool`."""

    def __init__(
        self,
        pool: WorkerPool,
        handler: Callable[[Any], None],
        *,
        max_items: int = 256,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._pool = pool
        self._handler = handler
        self._items: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._scheduled = False
        self._idle = threading.Condition(self._lock)
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def post(self, item: Any, size: int = 0, *, force: bool = False) -> bool:
        """Queue ``item`` (``size`` bytes); False when the mailbox is full or closed.

        ``force`` skips the bounds, for the few control items (connect, timers) that
        must never be lost and are small."""
        with self._lock:
            if self.closed:
                return False
            if not force and (
                len(self._items) >= self.max_items or self._bytes + size > self.max_bytes
            ):
                return False
            self._items.append((item, size))
            self._bytes += size
            if self._scheduled:
                return True
            self._scheduled = True
        self._pool._schedule(self)
        return True

    def close(self) -> None:
        """Accept nothing more; what is queued is dropped."""
        with self._lock:
            self.closed = True
            self._items.clear()
            self._bytes = 0
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every posted item was handled; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._items or self._scheduled:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def _drain(self) -> None:
        for _ in range(_BATCH):
            with self._lock:
                if not self._items:
                    self._scheduled = False
                    self._idle.notify_all()
                    return
                item, size = self._items.popleft()
                self._bytes -= size
            try:
                self._handler(item)
            except Exception:  # the handler logs its own errors; this is the last guard
                log.exception("unhandled error in the agent's worker")
        with self._lock:  # more left: go to the back of the line so other mailboxes run
            if not self._items:
                self._scheduled = False
                self._idle.notify_all()
                return
        self._pool._schedule(self)
