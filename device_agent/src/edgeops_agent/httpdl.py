"""Artifact downloads by HTTP: Range requests for the chunks a download still lacks.

The manifest's ``artifact.url`` (signed with the rest of the manifest) names the
artifact on the registry's artifact server (``edgeops artifacts serve``). An
:class:`HttpFetch` runs on a thread of its own. For each run of consecutive missing
chunks it sends one ``Range: bytes=<first byte>-<last byte>`` request, reads the
body one chunk at a time, checks each chunk against ``artifact.chunks[index]`` and
hands the good ones to ``deliver``. The agent posts them into its mailbox, and the
worker stores them through the same :class:`~edgeops_agent.download.Download` as
chunks from MQTT (which checks them again). So the chunk files on disk are the only
record of progress: a dropped connection, or a restarted agent, asks only for the
chunks still missing, and chunks from MQTT and HTTP mix freely.

A failed attempt (no connection, a timeout, a 5xx, a body cut short, a chunk that
fails its hash) is tried again after a backoff (0.5 s, doubling up to 8 s) from the
first chunk still missing; ``retries`` failed attempts in a row without a new chunk
end the fetch with a one-line reason. A 4xx other than 408 and 429 ends it at once,
and so does a redirect (redirects are not followed: the signed URL is the one used).

>>> missing_runs([0, 1, 2, 5, 7, 8])
[(0, 2), (5, 5), (7, 8)]
>>> byte_range((7, 8), chunk_size=100, size=850)
(700, 849)
>>> choose_transport("auto", None), choose_transport("auto", "http://registry:8471/x")
('mqtt', 'http')
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from .errors import DeployFailed

__all__ = [
    "HttpFetch",
    "byte_range",
    "choose_transport",
    "missing_runs",
    "url_problem",
]

log = logging.getLogger("edgeops_agent.httpdl")

BACKOFF_S, MAX_BACKOFF_S = 0.5, 8.0
_READ = 64 * 1024


def missing_runs(missing: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive chunk indexes as ``(first, last)`` runs, in order."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(missing)):
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def byte_range(run: tuple[int, int], *, chunk_size: int, size: int) -> tuple[int, int]:
    """The first and last byte (inclusive) of a run of chunks."""
    return run[0] * chunk_size, min(size, (run[1] + 1) * chunk_size) - 1


def url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be downloaded from, or None: only http(s) URLs with a host."""
    if not isinstance(url, str) or not url:
        return "artifact.url must be a non-empty string"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"artifact.url {url[:120]!r} is not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"artifact.url {url[:120]!r} is not an http:// or https:// URL"
    if parts.username or parts.password:
        return "artifact.url must not hold credentials"
    return None


def choose_transport(setting: str, url: Any) -> str:
    """``"http"`` or ``"mqtt"`` for a download, given ``artifact_transport`` and the
    manifest's ``artifact.url`` (None when absent); :class:`DeployFailed` when
    ``setting`` is ``"http"`` and the URL is missing or unusable. ``"auto"`` takes HTTP
    only for a usable URL."""
    if setting == "mqtt":
        return "mqtt"
    problem = "the manifest has no artifact.url" if url is None else url_problem(url)
    if problem is None:
        return "http"
    if setting == "auto":
        if url is not None:
            log.warning("%s; downloading by MQTT instead", problem)
        return "mqtt"
    raise DeployFailed(
        "download",
        f"artifact_transport is 'http' but {problem}; roll out with --artifact-url, "
        "or set artifact_transport to 'auto' or 'mqtt'",
    )


class _Failed(Exception):
    """One attempt failed; ``permanent`` ones are not tried again."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError


class HttpFetch:
    """Fetches the chunks ``missing`` of ``artifact`` from ``url`` on a thread of its own.

    ``deliver(fetch, index, data)`` receives each chunk that passed its hash and returns
    False when it cannot take it now (it is offered again shortly, until :meth:`cancel`).
    ``finished(fetch, error)`` is called once at the end, with None when every chunk was
    delivered, unless the fetch was cancelled.
    """

    def __init__(
        self,
        url: str,
        artifact: dict[str, Any],
        missing: Iterable[int],
        *,
        deliver: Callable[[HttpFetch, int, bytes], bool],
        finished: Callable[[HttpFetch, str | None], None],
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.url = url
        self.sha256: str = artifact["sha256"]
        self.size: int = artifact["size"]
        self.chunk_size: int = artifact["chunk_size"]
        self.hashes: list[str] = list(artifact["chunks"])
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.ranges: list[str] = []  # the Range headers sent, in order (diagnostics, tests)
        self._pending = set(missing)
        self._deliver = deliver
        self._finished = finished
        self._cancel = threading.Event()
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._thread = threading.Thread(
            target=self._run, name=f"edgeops-http-{self.sha256[:8]}", daemon=True
        )

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Stop soon (after the read in progress, at most ``timeout_s``); no ``finished``."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the fetch thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            error = self._fetch_all()
        except Exception as exc:  # a bug must not leave the deployment waiting in silence
            log.exception("HTTP download of %s failed", self.sha256[:12])
            error = f"internal error: {type(exc).__name__}: {exc}"
        if not self.cancelled:
            self._finished(self, error)

    def _fetch_all(self) -> str | None:
        failures = 0
        while self._pending and not self.cancelled:
            before = len(self._pending)
            try:
                self._attempt(missing_runs(self._pending)[0])
                continue
            except _Failed as exc:
                failure = exc
            failures = 1 if len(self._pending) < before else failures + 1
            if failure.permanent or failures > self.retries:
                return str(failure)
            delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (failures - 1))
            log.info("HTTP download: %s; trying again in %.1f s", failure, delay)
            if self._cancel.wait(delay):
                return None
        return None

    def _attempt(self, run: tuple[int, int]) -> None:
        start, end = byte_range(run, chunk_size=self.chunk_size, size=self.size)
        header = f"bytes={start}-{end}"
        self.ranges.append(header)
        request = urllib.request.Request(
            self.url,
            headers={"Range": header, "Accept-Encoding": "identity", "User-Agent": "edgeops-agent"},
        )
        try:
            response = self._opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            permanent = exc.code < 500 and exc.code not in (408, 429)
            note = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
            raise _Failed(f"HTTP {exc.code} from {self.url}{note}", permanent) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _Failed(f"cannot reach {self.url}: {_why(exc)}") from exc
        with response:
            try:
                self._read_run(response, run, start, end)
            except (OSError, http.client.HTTPException) as exc:
                raise _Failed(f"reading from {self.url}: {_why(exc)}") from exc

    def _read_run(self, response: Any, run: tuple[int, int], start: int, end: int) -> None:
        if response.status == 206:
            expected = f"bytes {start}-{end}/{self.size}"
            got = (response.headers.get("Content-Range") or "").strip()
            if got != expected:
                raise _Failed(f"{self.url} answered range {got!r}, not {expected!r}")
        elif response.status == 200:  # a server that ignores ranges: skip to our bytes
            skipped = 0
            while skipped < start:
                piece = response.read(min(_READ, start - skipped))
                if not piece:
                    raise _Failed(f"{self.url} sent {skipped} bytes, fewer than {self.size}")
                skipped += len(piece)
        else:
            raise _Failed(f"unexpected HTTP {response.status} from {self.url}", permanent=True)
        for index in range(run[0], run[1] + 1):
            if self.cancelled:
                return
            want = min(self.chunk_size, self.size - index * self.chunk_size)
            data = _read_exactly(response, want)
            if len(data) < want:
                raise _Failed(f"{self.url} closed the connection in chunk {index}")
            if hashlib.sha256(data).hexdigest() != self.hashes[index]:
                raise _Failed(f"chunk {index} from {self.url} failed its SHA-256 check")
            while not self._deliver(self, index, data):
                if self._cancel.wait(0.05):  # the agent's inbox is full: wait for the worker
                    return
            self._pending.discard(index)


def _read_exactly(response: Any, n: int) -> bytes:
    parts: list[bytes] = []
    left = n
    while left > 0:
        piece = response.read(min(_READ, left))
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
