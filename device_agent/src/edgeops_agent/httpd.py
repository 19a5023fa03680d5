"""A tiny local HTTP endpoint for applications on the device (127.0.0.1 only).

``POST /predict`` with ``{"rows": [{column: value, ...}, ...]}`` (raw samples,
through the model's feature transforms) or ``{"features": [[...], ...]}``
returns ``{"model": {...}, "predictions": [{"label", "scores"}, ...]}``;
``GET /state`` returns the device's state message fields; ``GET /healthz``
returns ``{"ok": true, "model": ...}``. Bad requests get a 4xx and a one-line
JSON ``{"error": "..."}``; no active model is a 503.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .errors import NoModel, PredictionError

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["LocalHttp"]

log = logging.getLogger("edgeops_agent.http")
MAX_BODY = 4 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        agent = self.server.agent
        if self.path == "/healthz":
            model = agent.predictor.model
            self._send(200, {"ok": True, "model": model.ref() if model else None})
        elif self.path == "/state":
            self._send(200, agent.state_fields())
        else:
            self._send(404, {"error": f"no such endpoint {self.path[:100]}; try POST /predict"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._send(404, {"error": f"no such endpoint {self.path[:100]}; try POST /predict"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send(413 if length > 0 else 400, {"error": "missing or too large body"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            self._send(400, {"error": f"body is not valid JSON: {str(exc)[:80]}"})
            return
        if not isinstance(body, dict) or ("rows" in body) == ("features" in body):
            self._send(400, {"error": 'body must be {"rows": [...]} or {"features": [[...]]}'})
            return
        predictor = self.server.agent.predictor
        try:
            if "rows" in body:
                predictions = predictor.predict_rows(body["rows"])
            else:
                predictions = predictor.predict_features(body["features"])
        except NoModel as exc:
            self._send(503, {"error": str(exc)})
            return
        except PredictionError as exc:
            self._send(400, {"error": str(exc).splitlines()[0][:300]})
            return
        model = predictor.model
        self._send(200, {"model": model.ref() if model else None, "predictions": predictions})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    agent: Agent


class LocalHttp:
    """The endpoint of one agent, served on a thread of its own."""

    def __init__(self, agent: Agent, port: int) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.agent = agent
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="edgeops-agent-http",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("serving predictions on http://%s:%d", *self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
