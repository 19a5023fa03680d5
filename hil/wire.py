"""A userspace lossy link: two TUN interfaces and a loop that copies packets between them,
losing, delaying and reordering them as an :class:`~hil.impair.Impairment` says.

It is :mod:`hil.netns`'s link where the kernel has no ``sch_netem`` (``tc qdisc ... netem``
answers "Specified qdisc kind is unknown"): the same figures, applied to each
direction on its own, outside the kernel. Run as its own process::

    python -m hil.wire --host-if eoab12c30h --dev-if eoab12c30d --loss 20 \\
        --delay-ms 50 --jitter-ms 20 --reorder 25 --seed 7 --stats wire.json

It creates both interfaces in the namespace it runs in, prints ``ready`` and
copies until SIGTERM; :mod:`hil.netns` then moves the device side into the
device's namespace and gives both sides their addresses. SIGUSR1 starts an outage
(every packet lost), SIGUSR2 ends it. The interfaces belong to this process: they
disappear when it ends (and it ends when its parent does).
Every second, and at the end, it writes what it did to ``--stats`` (JSON, per
direction: packets in, lost, lost to an outage, sent at once, sent, queue overflows).

TUN rather than a veth pair read through packet sockets: a TUN device without
offloads hands over whole, checksummed IP packets, one per read, so each packet is
judged on its own, as netem does.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import heapq
import json
import os
import random
import selectors
import signal
import struct
import sys
import time
from pathlib import Path

from hil.impair import Impairment, Schedule

__all__ = ["main", "open_tun"]

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_PR_SET_PDEATHSIG = 1
LIMIT = 1000  # packets waiting per direction, as netem's default limit
MTU = 65535


def open_tun(name: str) -> int:
    """A new TUN interface ``name`` (IP packets, no extra header); its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Wire:
    """Copy packets between two fds through one :class:`Schedule` per direction."""

    def __init__(self, host_fd: int, dev_fd: int, imp: Impairment, seed: int) -> None:
        self.out = {host_fd: dev_fd, dev_fd: host_fd}
        self.names = {host_fd: "down", dev_fd: "up"}  # server -> device is "down"
        self.schedule = {
            host_fd: Schedule(imp, random.Random(f"{seed}/down")),
            dev_fd: Schedule(imp, random.Random(f"{seed}/up")),
        }
        self.counts = {
            d: {
                "in": 0,
                "lost": 0,
                "outage_lost": 0,
                "at_once": 0,
                "sent": 0,
                "overflow": 0,
                "errors": 0,
            }
            for d in ("down", "up")
        }
        self._queued = {host_fd: 0, dev_fd: 0}
        self._heap: list[tuple[float, int, int, int, bytes]] = []
        self._n = 0
        self.stopped = False
        self.outage = False  # SIGUSR1: every packet is lost until SIGUSR2

    def receive(self, fd: int, now: float) -> None:
        counts = self.counts[self.names[fd]]
        while True:
            try:
                packet = os.read(fd, MTU)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                counts["errors"] += 1
                return
            counts["in"] += 1
            if self.outage:
                counts["outage_lost"] += 1
                continue
            due = self.schedule[fd].due(now)
            if due is None:
                counts["lost"] += 1
                continue
            if self._queued[fd] >= LIMIT:
                counts["overflow"] += 1
                continue
            if due <= now:
                counts["at_once"] += 1
            self._n += 1
            self._queued[fd] += 1
            heapq.heappush(self._heap, (due, self._n, fd, self.out[fd], packet))

    def send_due(self, now: float) -> float | None:
        """Send what is due; seconds until the next packet is (None: nothing waits)."""
        while self._heap and self._heap[0][0] <= now:
            _, _, src, dst, packet = heapq.heappop(self._heap)
            self._queued[src] -= 1
            counts = self.counts[self.names[src]]
            try:
                os.write(dst, packet)
                counts["sent"] += 1
            except OSError:  # e.g. the other side is not up yet
                counts["errors"] += 1
        return (self._heap[0][0] - now) if self._heap else None

    def run(self, stats: Path | None) -> None:
        sel = selectors.DefaultSelector()
        for fd in self.out:
            sel.register(fd, selectors.EVENT_READ)
        last = 0.0
        wait: float | None = None
        while not self.stopped:
            timeout = 0.5 if wait is None else min(wait, 0.5)
            for key, _ in sel.select(timeout):
                self.receive(key.fd, time.monotonic())
            wait = self.send_due(time.monotonic())
            if stats is not None and time.monotonic() - last >= 1.0:
                self.write_stats(stats)
                last = time.monotonic()
        if stats is not None:
            self.write_stats(stats)

    def write_stats(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": 1, "directions": self.counts}))
        os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hil.wire", description=__doc__.splitlines()[0])
    p.add_argument("--host-if", required=True)
    p.add_argument("--dev-if", required=True)
    p.add_argument("--loss", type=float, default=0.0, help="per cent of packets lost")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--reorder", type=float, default=0.0, help="per cent sent at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", type=Path, help="JSON file of the counts, rewritten every second")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _die_with_parent()
    try:
        imp = Impairment(args.loss, args.delay_ms, args.jitter_ms, args.reorder)
        host_fd = open_tun(args.host_if)
        dev_fd = open_tun(args.dev_if)
    except (ValueError, OSError) as exc:
        print(f"hil.wire: {exc}", file=sys.stderr)
        return 2
    wire = Wire(host_fd, dev_fd, imp, args.seed)

    def stop(signum: int, frame: object) -> None:
        wire.stopped = True

    def outage(signum: int, frame: object) -> None:
        wire.outage = signum == signal.SIGUSR1

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, outage)
    signal.signal(signal.SIGUSR2, outage)
    print("ready", flush=True)
    wire.run(args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
