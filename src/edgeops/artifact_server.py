"""The artifact server: registered model variants over HTTP, for devices that download
by HTTP instead of MQTT chunks (docs/protocol.md, "Artifact download by HTTP").

::

    GET  /artifacts/<sha256>    the bytes (200), or one range of them (206)
    HEAD /artifacts/<sha256>    the same headers without the body

Only blobs that are variants of a registered model version are served. The store
also holds data sets and feature snapshots, which devices have no business reading,
so a digest naming one of those is a 404, like a digest the store does not hold.
A blob is hashed the first time it is asked for; after that its verified file is
served for as long as the file is unchanged (inode, size, modification time). A blob
that does not match its digest is never served: 503 (a store fault, see
:mod:`edgeops.errors`) with a one-line error, and logged.

Ranges: one ``bytes=N-``, ``bytes=N-M`` or ``bytes=-SUFFIX`` per request (206 with
``Content-Range``); a malformed, multiple or unsatisfiable range is a 416 with
``Content-Range: bytes */<size>``. Every answer has ``Content-Length``; blobs also
``ETag: "<sha256>"``, ``Accept-Ranges: bytes`` and an immutable ``Cache-Control`` (a
digest's bytes never change). A path under ``/artifacts/`` that is not 64 lowercase
hex digits is a 400; any other path is a 404. The digest is the only thing taken from
the path, so no request reaches outside the store, and nothing is listed.

>>> parse_range("bytes=10-", 100), parse_range("bytes=90-200", 100), parse_range("bytes=-5", 100)
((10, 99), (90, 99), (95, 99))
>>> parse_range(None, 100) is None
True
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .artifacts import ArtifactStore, sha256_file
from .errors import ArtifactCorrupt, EdgeopsError, InvalidInput, NotFound

__all__ = ["DEFAULT_PORT", "ArtifactServer", "parse_range", "registered_variants"]

log = logging.getLogger("edgeops.artifact_server")

DEFAULT_PORT = 8471
_PREFIX = "/artifacts/"
_SHA = re.compile(r"[0-9a-f]{64}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_SEND = 64 * 1024


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) a ``Range`` header asks for, None without
    one; ``ValueError`` when it is malformed, holds several ranges, or none of
    ``size`` bytes satisfies it."""
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise ValueError(f"Range {header[:80]!r} is not bytes=N-, bytes=N-M or bytes=-N")
    if not m.group(1):  # a suffix: the last N bytes
        suffix = int(m.group(2))
        if suffix == 0 or size == 0:
            raise ValueError(f"Range {header[:80]!r} asks for no bytes")
        return max(0, size - suffix), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        raise ValueError(f"Range {header[:80]!r} is outside the {size} bytes")
    return start, min(end, size - 1)


def registered_variants(db: Any) -> Callable[[str], bool]:
    """Whether a digest is a variant of a registered model version in ``db``."""
    from sqlalchemy import select

    from .store.schema import Variant

    def check(sha256: str) -> bool:
        with db.session() as s:
            row = s.execute(select(Variant.id).where(Variant.sha256 == sha256).limit(1))
            return row.first() is not None

    return check


_Stamp = tuple[int, int, int]  # inode, size, mtime_ns of a blob's file


class ArtifactServer:
    """Serves ``store``'s blobs that ``is_served`` accepts, on a thread per request.

    ``log`` keeps the last 1000 requests (method, path, range, status) for operators
    and tests. Use :meth:`start` (a background thread) or :meth:`serve_forever`.
    """

    def __init__(
        self,
        store: ArtifactStore,
        is_served: Callable[[str], bool],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
    ) -> None:
        self.store = store
        self._is_served = is_served
        self.log: deque[dict[str, Any]] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self._hashing: dict[str, threading.Lock] = {}
        self._verified: dict[str, _Stamp] = {}
        self._corrupt: dict[str, _Stamp] = {}
        self._thread: threading.Thread | None = None
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as exc:
            raise InvalidInput(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port"
            ) from exc
        self._httpd.app = self

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The base URL, as ``edgeops rollout start --artifact-url`` takes it."""
        return "http://{}:{}".format(*self.address)

    def start(self) -> ArtifactServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name="edgeops-artifacts", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop accepting requests and close the socket (requests in flight may finish)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def blob(self, sha256: str) -> tuple[Path, int]:
        """The verified file of ``sha256`` and its size; :class:`NotFound` or
        :class:`ArtifactCorrupt` otherwise. Hashes a blob once per version of its file."""
        path = self.store.path_for(sha256)
        stamp = _stamp(path)
        with self._lock:
            if stamp is not None and self._verified.get(sha256) == stamp:
                return path, stamp[1]
        if not self._is_served(sha256):
            raise NotFound(f"artifact {sha256[:12]} is not a registered model variant here")
        if stamp is None:
            log.error("registered artifact %s is missing from %s", sha256, self.store.root)
            raise NotFound(f"artifact {sha256[:12]} is registered but missing from the store")
        with self._lock:  # one lock per registered blob: bounded by the registry
            lock = self._hashing.setdefault(sha256, threading.Lock())
        with lock:  # one hash per blob at a time; others wait for its verdict
            with self._lock:
                if self._verified.get(sha256) == stamp:
                    return path, stamp[1]
                corrupt = self._corrupt.get(sha256) == stamp
            if not corrupt:
                digest, _ = sha256_file(path)
                corrupt = digest != sha256
            with self._lock:
                (self._corrupt if corrupt else self._verified)[sha256] = stamp
        if corrupt:
            log.error("artifact %s at %s does not match its SHA-256; not serving it", sha256, path)
            raise ArtifactCorrupt(
                f"artifact {sha256[:12]} is corrupt on the server; restore it from backup"
            )
        return path, stamp[1]


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: ArtifactServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "edgeops-artifacts/1"
    timeout = 60  # an idle or stuck client gives its thread back after this long

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse(self) -> None:
        self._error(405, "only GET and HEAD are served", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _record(self, status: int, rng: str | None = None) -> None:
        self.server.app.log.append(
            {
                "method": self.command,
                "path": self.path[:200],
                "range": self.headers.get("Range"),
                "status": status,
                "sent": rng,
            }
        )

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._record(status)
        data = (message + "\n").encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if not path.startswith(_PREFIX):
            self._error(404, f"nothing at {path[:100]}; artifacts are at {_PREFIX}<sha256>")
            return
        sha256 = path[len(_PREFIX) :]
        if not _SHA.fullmatch(sha256):
            self._error(400, f"{sha256[:80]!r} is not a SHA-256 hex digest (64 of 0-9a-f)")
            return
        try:
            blob, size = self.server.app.blob(sha256)
        except EdgeopsError as exc:
            self._error(exc.http_status, str(exc))
            return
        try:
            rng = parse_range(self.headers.get("Range"), size)
        except ValueError as exc:
            self._error(416, str(exc), {"Content-Range": f"bytes */{size}"})
            return
        start, end = rng if rng is not None else (0, size - 1)
        self._record(206 if rng else 200, f"{start}-{end}")
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", f'"{sha256}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        if rng is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            self._send_bytes(blob, start, end - start + 1)

    def _send_bytes(self, blob: Path, start: int, length: int) -> None:
        try:
            with blob.open("rb") as fh:
                fh.seek(start)
                while length > 0:
                    data = fh.read(min(_SEND, length))
                    if not data:  # the file shrank under us: end the connection
                        self.close_connection = True
                        return
                    self.wfile.write(data)
                    length -= len(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the device went away; it resumes with a range
        except OSError as exc:  # the headers are out: all we can do is end the connection
            log.error("cannot read %s: %s", blob, exc)
            self.close_connection = True
