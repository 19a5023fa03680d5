"""The device agent: desired manifests in, deployments, state and events out.

Threads: paho's network thread only hands messages to the agent's bounded
:class:`~edgeops_agent.worker.Mailbox`; one worker (of a pool shared by the fleet
simulator) runs everything else, one message at a time, so the agent's state
needs no locks. Applications call the :class:`~edgeops_agent.serve.Predictor`
from their own threads; its probation counters post a rollback request into the
mailbox. A timer posts a ``tick`` every second (download stalls, end of
probation, a rollback made by ``edgeops-agent rollback`` while the agent runs).
An HTTP download (:mod:`edgeops_agent.httpdl`) runs on a thread of its own and
posts each checked chunk into the same mailbox, so the worker stores it exactly as
a chunk from MQTT; a full mailbox makes that thread wait, never drops the chunk.

What the agent keeps is in :mod:`edgeops_agent.store`; how one manifest is
deployed is :mod:`edgeops_agent.deploy`. Monitoring: :mod:`edgeops_agent.telemetry`
counts predictions on the callers' threads and hands closed windows, samples and
labels to the worker, which writes them to the :mod:`edgeops_agent.outbox` and
publishes it in order (a ``monitor`` item, posted when there is something to do).

Trust: a manifest must be signed by a key of ``agent.toml`` or one announced under a
trusted key on the retained ``edgeops/<fleet>/keys`` topic (:mod:`edgeops_agent.keytrust`),
and not retired. Anti-rollback: ``accepted_seq`` in ``state.json``, and where
``anti_rollback_file`` is set, also in that file outside the state directory
(:mod:`edgeops_agent.floor`), so a reinstall does not forget it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edgeops_protocol.keychain import keys_topic, parse_keys_message
from edgeops_protocol.manifest import (
    DeviceFacts,
    Rejected,
    check_manifest,
    parse_envelope,
    verify_envelope,
)
from edgeops_protocol.messages import ACK_KINDS, event_message, parse_ack, state_message
from edgeops_protocol.topics import (
    ProtocolError,
    chunk_filter,
    device_topic,
    parse_chunk_topic,
    parse_device_topic,
)

from .config import AgentConfig
from .deploy import Deployment
from .errors import DeployFailed, StoreError
from .floor import RollbackFloor
from .fsutil import FileLock
from .health import LINUX_FORMATS, health_check
from .httpdl import HttpFetch
from .keytrust import TrustedKeys
from .outbox import Outbox, OutboxSender
from .probation import Probation
from .report import event_fields, state_fields
from .runtime import load_runner
from .serve import LoadedModel, Predictor
from .stats import RateLimitedLog, Stats
from .store import StateStore, other_slot
from .telemetry import Telemetry
from .worker import Mailbox, Timer, WorkerPool

__all__ = ["Agent"]

log = logging.getLogger("edgeops_agent")
TICK_S = 1.0
_FORMAT_FAMILY = {"tflite": "tflite", "onnx": "onnx", "c-tflm": "tflm", "c-emlearn": "emlearn"}


class Agent:
    """One device. ``start()`` returns at once; ``stop()`` publishes the offline state."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        pool: WorkerPool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = StateStore(config.state_dir)
        self._clock = clock
        self._stats = Stats()
        self._rlog = RateLimitedLog(log)
        self.predictor = Predictor(extra_latency_ms=config.simulate.extra_latency_ms)
        self._probation_listener = self._on_prediction  # attached while a probation runs
        self.telemetry = Telemetry.from_config(
            config, clock=clock, counters=self._stats, notify=self._wake_monitor
        )
        self.telemetry.attach(self.predictor)
        self.outbox: Outbox | None = None  # opened by start(), once the agent lock is held
        self._sender: OutboxSender | None = None
        self._monitor_queued = False
        self._dropped_reported = -1
        self.facts = DeviceFacts(
            config.fleet,
            config.device,
            config.hardware,
            tuple(config.installed_runtimes),
            config.max_artifact_bytes,
        )
        self.topics = {
            kind: device_topic(config.fleet, config.device, kind)
            for kind in ("state", "desired", "events", "ack")
        }
        self.keys_topic = keys_topic(config.fleet)
        self.keys = TrustedKeys(config.state_dir / "keys.json", config.fleet, config.key_map)
        self.floor = (
            None
            if config.anti_rollback_file is None
            else RollbackFloor(config.anti_rollback_file, config.fleet, config.device)
        )
        self._reinstalled_seq: int | None = None  # the floor's seq, when state_dir forgot it
        self._unverified_desired: bytes | None = None  # signed by a key not (yet) trusted
        self._own_pool = pool is None
        self._pool = pool or WorkerPool(1, name=f"agent-{config.device}")
        self._box = Mailbox(
            self._pool,
            self._handle,
            max_items=config.inbox_size,
            max_bytes=max(16 * 1024 * 1024, 4 * config.max_message_bytes),
        )
        self._agent_lock = FileLock(config.state_dir / "agent.lock")
        self.boot = ""
        self.events: deque[dict[str, Any]] = deque(maxlen=200)  # recent events, newest last
        self._deployment: Deployment | None = None
        self._probation_now: Probation | None = None
        self._link: Any = None  # MqttLink, imported on start (paho is only needed then)
        self._http: Any = None
        self._fetch: HttpFetch | None = None  # the HTTP download in flight
        self._timer: Timer | None = None
        self._tick_queued = False
        self._running = False
        self._stop_requested = False  # stop() before start() finished
        self._stopped = threading.Event()

    # --- lifecycle -------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Counters of messages received, dropped, rejected, chunks stored, ... (a copy)."""
        return self._stats.snapshot()

    @property
    def connected(self) -> bool:
        return bool(self._link is not None and self._link.connected)

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self._http is None else self._http.address

    def start(self) -> None:
        """Load the active model, resume a deployment in flight, connect in the background."""
        if self._running:
            return
        if self._box.closed:
            raise RuntimeError("an Agent starts once; create a new Agent to start again")
        if not self._agent_lock.acquire(blocking=False):
            raise StoreError(f"another agent is running on {self.config.state_dir}; stop it first")
        try:
            self._start()
        except BaseException:
            self._agent_lock.release()
            raise

    def _start(self) -> None:
        from .mqtt import MqttLink

        self.boot = f"{self.store.new_boot()}-{secrets.token_hex(4)}"
        if self.floor is not None:
            self._apply_floor()
        self.outbox = Outbox(
            self.config.state_dir / "outbox",
            max_messages=self.config.outbox_max_messages,
            max_bytes=self.config.outbox_max_bytes,
        )
        self.telemetry.start(self.boot)
        self._load_active(resume_probation=True)
        pending = self.store.deploying_manifest()
        stale = self.store.state.get("deploying")
        if pending is None and stale:  # its manifest file is gone: nothing to resume
            self.store.end_deployment(int(stale["seq"]))
        self.store.clean_downloads(keep=pending["artifact"]["sha256"] if pending else None)
        self._link = MqttLink(
            self.config,
            will=(self.topics["state"], self._offline_state()),
            on_message=self._on_mqtt_message,
            on_connect=lambda: self._box.post(("connected",), force=True),
            on_disconnect=lambda: self._box.post(("disconnected",), force=True),
        )
        self._sender = OutboxSender(
            self.outbox,
            self._link.client,
            nudge=self._wake_monitor,
            ack_timeout_s=self.config.outbox_ack_timeout_s,
        )
        self._running = True
        self._stopped.clear()
        if self._own_pool:
            self._pool.start()
        if pending is not None:
            self._box.post(("resume", pending), force=True)
        if self.config.http_port is not None:
            from .httpd import LocalHttp

            self._http = LocalHttp(self, self.config.http_port)
            self._http.start()
        self._arm_tick()
        self._link.start()
        log.info("agent %s/%s started (boot %s)", self.config.fleet, self.config.device, self.boot)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the message in hand, publish the offline state, disconnect.

        Messages still queued are dropped: everything the agent receives is retained
        on the broker and comes again on the next start. Called while :meth:`run_forever`
        is still starting (a signal handler), it stops the agent as soon as it has started."""
        if not self._running:
            self._stop_requested = True
            return
        self._running = False
        if self._timer:
            self._timer.cancel()
        self._box.close()
        self._box.wait_idle(timeout)
        self._close_monitoring(min(2.0, timeout))
        self._link.stop(final=(self.topics["state"], self._offline_state()))
        self._shutdown()

    def kill(self) -> None:
        """Stop as a crash would: no offline state (the broker publishes the last will)."""
        if not self._running:
            return
        self._running = False
        if self._timer:
            self._timer.cancel()
        self._box.close()
        self._link.abort()
        self._box.wait_idle(10.0)
        self._shutdown()

    def _shutdown(self) -> None:
        self._box.close()
        if self._fetch is not None:
            self._fetch.cancel()
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._own_pool:
            self._pool.stop()
        self._agent_lock.release()
        self._stopped.set()

    def run_forever(self) -> None:
        """Start and block until :meth:`stop` (e.g. from a signal handler)."""
        self.start()
        if self._stop_requested:  # SIGTERM arrived before or while starting
            self.stop()
        while not self._stopped.wait(1.0):
            pass

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every message received so far was handled (for tests and tools)."""
        return self._box.wait_idle(timeout)

    def inject(self, topic: str, payload: bytes) -> bool:
        """Hand a message to the agent as if the broker had sent it; False if it was dropped."""
        return self._on_mqtt_message(topic, payload)

    # --- state and events ------------------------------------------------------------
    def state_fields(self) -> dict[str, Any]:
        """The fields of this device's ``state`` message (docs/protocol.md)."""
        return state_fields(
            self.store.snapshot(),
            fleet=self.config.fleet,
            device=self.config.device,
            boot=self.boot,
            ts=self._clock(),
            hardware=self.config.hardware,
            runtimes=self.facts.runtimes,
            tags=self.config.tags,
            outbox_dropped=self.outbox.dropped if self.outbox is not None else 0,
        )

    def _offline_state(self) -> bytes:
        return state_message(
            fleet=self.config.fleet, device=self.config.device, online=False, ts=self._clock()
        )

    def _publish_state(self) -> None:
        if self.connected:
            fields = self.state_fields()
            self._link.publish(self.topics["state"], state_message(**fields), retain=True)
            self._dropped_reported = fields["outbox_dropped"]

    def emit(
        self,
        event: str,
        manifest: dict[str, Any],
        *,
        progress: float | None = None,
        reason: str = "",
        step: str | None = None,
    ) -> None:
        """Publish a deployment event (kept on disk for the next connection when offline)."""
        fields = event_fields(
            manifest,
            event,
            fleet=self.config.fleet,
            device=self.config.device,
            boot=self.boot,
            ts=self._clock(),
            progress=progress,
            reason=reason,
            step=step,
        )
        self.events.append(fields)
        self._stats.incr(f"events_{event}")
        if not self._send_event(fields) and event != "downloading":
            try:
                self.store.add_pending_event(fields)
            except StoreError as exc:
                log.error("cannot keep event %s for later: %s", event, exc)

    def _send_event(self, fields: dict[str, Any]) -> bool:
        if not self.connected:
            return False
        return bool(self._link.publish(self.topics["events"], event_message(**fields)))

    # --- paho's thread ---------------------------------------------------------------
    def _on_mqtt_message(self, topic: str, payload: bytes) -> bool:
        if not self._running:
            return False
        self._stats.incr("messages_received")
        if len(payload) > self.config.max_message_bytes:
            self._count(
                "dropped_oversized", f"dropped a message of {len(payload)} bytes on {topic[:120]!r}"
            )
            return False
        if not self._box.post(("message", topic, bytes(payload)), size=len(payload)):
            self._count("dropped_queue_full", f"inbox full: dropped a message on {topic[:120]!r}")
            return False
        return True

    # --- the worker ------------------------------------------------------------------
    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        try:
            if kind == "message":
                self._on_message(item[1], item[2])
            elif kind == "connected":
                self._on_connected()
            elif kind == "disconnected":
                self._stats.incr("disconnects")
            elif kind == "tick":
                self._on_tick()
            elif kind == "probation_failed":
                self._on_probation_failed(item[1], item[2])
            elif kind == "resume":
                self._begin(item[1], resumed=True)
            elif kind == "monitor":
                self._monitor()
            elif kind == "http_chunk":
                self._on_http_chunk(item[1], item[2], item[3])
            elif kind == "http_done":
                self._on_http_done(item[1], item[2])
        except StoreError as exc:  # the disk failed under us: say so, keep serving
            self._stats.incr("store_errors")
            log.error("state directory error: %s", exc)
        except Exception:  # a bug must not stop the worker: count it, log it, go on
            self._stats.incr("internal_errors")
            log.exception("error while handling %s", kind)

    def _on_connected(self) -> None:
        if not self._running:
            return
        self._stats.incr("connects")
        self._link.subscribe(self.keys_topic, 1)  # first: its retained chain comes first
        self._link.subscribe(self.topics["desired"], 1)
        if self.config.outbox_ack_timeout_s > 0:
            self._link.subscribe(self.topics["ack"], 1)
        self._publish_state()
        if self._deployment is not None and self._deployment.downloading:
            self._deployment.announce()
            if self._deployment.source == "mqtt":
                self.subscribe_chunks(self._deployment.sha256)
        for fields in self.store.take_pending_events():
            if not self._send_event(fields):
                self.store.add_pending_event(fields)
        if self._sender is not None:
            self._sender.connected()
        self._monitor()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics["desired"]:
            self._on_desired(payload)
            return
        if topic == self.keys_topic:
            self._on_keys(payload)
            return
        if topic == self.topics["ack"]:
            self._on_ack(payload)
            return
        if topic.startswith(f"edgeops/{self.config.fleet}/artifacts/"):
            self._on_chunk(topic, payload)
            return
        try:
            fleet, device, _ = parse_device_topic(topic)
        except ProtocolError:
            self._count("unknown_topic", f"message on an unknown topic {topic[:120]!r}")
            return
        if (fleet, device) != (self.config.fleet, self.config.device):
            self._count("other_device", f"message for another device on {topic[:120]!r}")
        else:
            self._count("unknown_topic", f"unexpected message on {topic!r}")

    def _on_ack(self, payload: bytes) -> None:
        """The collector committed these windows and samples: they leave the outbox."""
        try:
            ack = parse_ack(payload, self.config.max_message_bytes)
        except ProtocolError as exc:
            self._count("rejected_acks", f"ignored a malformed ack message: {exc}")
            return
        if (ack["fleet"], ack["device"]) != (self.config.fleet, self.config.device):
            self._count("rejected_acks", "ignored an ack message for another device")
            return
        if self._sender is not None:
            keys = [(kind, boot, seq) for kind in ACK_KINDS for boot, seq in ack[kind]]
            self._stats.incr("acks_received")
            self._sender.acknowledge(keys)
            self._sender.pump()

    def _count(self, counter: str, message: str) -> None:
        self._stats.incr(counter)
        self._rlog.warning(counter, "%s", message)

    def _on_desired(self, payload: bytes) -> None:
        if not payload:
            self._stats.incr("desired_cleared")
            return
        try:
            env = parse_envelope(payload, self.config.max_message_bytes)
        except ProtocolError as exc:
            self._count("malformed", f"malformed desired state: {exc}")
            self.emit("rejected", {}, reason=f"malformed desired state: {exc}")
            return
        raw = env["manifest"]
        if raw.get("fleet") != self.config.fleet or raw.get("device") != self.config.device:
            self._count("other_device", "dropped a desired state for another device")
            return
        now = self._clock()
        trusted = self.keys.keys(now)
        try:
            manifest = verify_envelope(
                env, trusted, self.config.hmac_keys, retired=self.keys.retired(now)
            )
            accepted = self.store.accepted_seq
            if manifest["seq"] == accepted == self._reinstalled_seq:
                accepted -= 1  # reinstalled: install the newest manifest it accepted again
            if not check_manifest(manifest, self.facts, accepted, now):
                self._stats.incr("desired_already_handled")
                return
            self._check_runnable(manifest)
        except Rejected as exc:
            self._count("rejected", f"rejected manifest seq {raw.get('seq')!r}: {exc}")
            self.emit("rejected", raw, reason=str(exc))
            sig = env["signature"]
            if sig["alg"] == "ed25519" and sig["key_id"] not in trusted:
                self._unverified_desired = payload  # again if a key announcement comes
            return
        self._unverified_desired = None
        if self._deployment is not None and not self._deployment.finished:
            old = self._deployment
            old.abandon(f"superseded by manifest seq {manifest['seq']}")
            self._stats.incr("deployments_abandoned")
            sha = manifest["artifact"]["sha256"]
            self.store.end_deployment(old.seq, keep_downloads=sha if old.sha256 == sha else None)
        self.store.begin_deployment(manifest)  # accepted_seq is on disk before anything else
        self._reinstalled_seq = None
        self._raise_floor(int(manifest["seq"]), manifest["model"])
        self._publish_state()
        self._begin(manifest, resumed=False)

    def _on_keys(self, payload: bytes) -> None:
        """A retained ``keys`` message: follow its announcements from the keys we trust."""
        if not payload:
            return
        try:
            msg = parse_keys_message(payload, self.config.max_message_bytes)
        except ProtocolError as exc:
            self._count("keys_malformed", f"malformed keys message: {exc}")
            return
        if msg["fleet"] != self.config.fleet:
            self._count("keys_rejected", f"keys message for fleet {msg['fleet']!r}")
            return
        out = self.keys.apply(msg["chain"], self._clock())
        for reason in out.rejected:
            self._count("keys_rejected", f"key announcement refused: {reason}")
        if out.added:
            self._stats.incr("keys_added", len(out.added))
            log.info("now trusting signing key(s) %s", ", ".join(out.added))
        if out.changed and self._unverified_desired is not None:
            payload, self._unverified_desired = self._unverified_desired, None
            self._on_desired(payload)

    def _apply_floor(self) -> None:
        """At start: the anti-rollback file's seq is the floor of ``accepted_seq``."""
        assert self.floor is not None
        floor, own = self.floor.read(), self.store.accepted_seq
        if floor > own:
            log.warning(
                "%s remembers accepted seq %d, %s only %d (reinstalled?): refusing older manifests",
                self.floor.path,
                floor,
                self.store.path,
                own,
            )
            self.store.update(lambda s: s.update(accepted_seq=max(int(s["accepted_seq"]), floor)))
            self._reinstalled_seq = floor
        elif own > floor:  # e.g. the file was configured later, or its last write was lost
            self._raise_floor(own, None)

    def _raise_floor(self, seq: int, model: dict[str, Any] | None) -> None:
        """Record an accepted seq in the anti-rollback file; a failure there is logged and
        counted, and does not stop the deployment (``state.json`` holds the seq too)."""
        if self.floor is None:
            return
        try:
            self.floor.raise_to(seq, model, self._clock())
        except StoreError as exc:
            self._stats.incr("floor_errors")
            log.error("anti-rollback file: %s", exc)

    def _check_runnable(self, manifest: dict[str, Any]) -> None:
        fmt = manifest["model"]["format"]
        if fmt not in LINUX_FORMATS or _FORMAT_FAMILY[fmt] != manifest["model"]["runtime"]:
            raise Rejected(
                f"model format {fmt} with runtime {manifest['model']['runtime']} does not run "
                "on this agent"
            )
        if manifest["artifact"]["chunk_size"] > self.config.max_message_bytes:
            raise Rejected(
                f"chunk_size {manifest['artifact']['chunk_size']} is over this device's message "
                f"limit of {self.config.max_message_bytes}"
            )

    def _begin(self, manifest: dict[str, Any], resumed: bool) -> None:
        self._stats.incr("deployments_resumed" if resumed else "deployments_started")
        dep = Deployment(
            manifest,
            self.store,
            self,
            stall_s=self.config.download_stall_s,
            timeout_s=self.config.download_timeout_s,
            transport=self.config.artifact_transport,
            wall_clock=self._clock,
        )
        self._deployment = dep
        dep.begin()
        self._settle()

    def _settle(self) -> None:
        """After a deployment step: a finished deployment is forgotten and the state told."""
        if self._deployment is not None and self._deployment.finished:
            self._deployment = None
            self._publish_state()

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        try:
            _, sha, index = parse_chunk_topic(topic)
        except ProtocolError:
            self._count("unknown_topic", f"bad artifact topic {topic[:120]!r}")
            return
        self._store_chunk(sha, index, payload)

    def _store_chunk(self, sha: str, index: int, data: bytes) -> None:
        dep = self._deployment
        if dep is None or not dep.downloading or sha != dep.sha256:
            self._stats.incr("chunks_unexpected")
            return
        if self.config.simulate.download_delay_ms:
            time.sleep(self.config.simulate.download_delay_ms / 1000.0)
        outcome = dep.add_chunk(index, data)
        self._stats.incr(f"chunks_{outcome}")
        if outcome == "bad":
            self._rlog.warning(
                "bad-chunk", "chunk %d of %s failed its SHA-256 check; dropped", index, sha[:12]
            )
        self._settle()

    def _on_http_chunk(self, fetch: HttpFetch, index: int, data: bytes) -> None:
        if fetch is not self._fetch:  # a fetch stopped since: its chunks are not wanted
            self._stats.incr("chunks_unexpected")
            return
        self._stats.incr("http_chunks")
        self._store_chunk(fetch.sha256, index, data)

    def _on_http_done(self, fetch: HttpFetch, error: str | None) -> None:
        if fetch is not self._fetch:
            return
        self._fetch = None
        if error is not None:
            self._stats.incr("http_downloads_failed")
        dep = self._deployment
        if dep is not None and dep.sha256 == fetch.sha256:
            dep.http_finished(error)
            self._settle()

    # --- ports for Deployment ----------------------------------------------------------
    def subscribe_chunks(self, sha256: str) -> None:
        if self.connected:
            self._link.subscribe(chunk_filter(self.config.fleet, sha256), 1)

    def unsubscribe_chunks(self, sha256: str) -> None:
        if self.connected:
            self._link.unsubscribe(chunk_filter(self.config.fleet, sha256))

    def fetch_http(self, artifact: dict[str, Any], url: str, missing: list[int]) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        box = self._box

        def deliver(fetch: HttpFetch, index: int, data: bytes) -> bool:
            return box.post(("http_chunk", fetch, index, data), size=len(data))

        def finished(fetch: HttpFetch, error: str | None) -> None:
            box.post(("http_done", fetch, error), force=True)

        self._fetch = HttpFetch(
            url,
            artifact,
            missing,
            deliver=deliver,
            finished=finished,
            timeout_s=self.config.http_download_timeout_s,
            retries=self.config.http_download_retries,
        )
        log.info("downloading %s by HTTP from %s", artifact["sha256"][:12], url)
        self._fetch.start()

    def stop_http(self, sha256: str) -> None:
        if self._fetch is not None and self._fetch.sha256 == sha256:
            self._fetch.cancel()
            self._fetch = None

    def check_health(self, manifest: dict[str, Any], model_bytes: bytes) -> LoadedModel:
        runner, report = health_check(
            manifest["model"]["format"],
            model_bytes,
            manifest["health"],
            simulate_failure=self.config.simulate.fail_health,
        )
        log.info(
            "health check passed: %d rows, max diff %.3g, median %.2f ms",
            report.rows,
            report.max_abs_diff,
            report.median_latency_ms,
        )
        return LoadedModel.build(
            runner, manifest, corrupt=self.config.simulate.corrupt_outputs_after_activation
        )

    def activated(self, slot: str, model: LoadedModel, meta: dict[str, Any]) -> None:
        self.predictor.load(model)
        self._start_probation(meta, model.manifest)
        self.emit("activated", model.manifest)  # the new state follows from _settle()
        log.info("activated %s (seq %d) in slot %s", model.name, meta["seq"], slot)

    # --- probation and rollback --------------------------------------------------------
    @property
    def _probation(self) -> Probation | None:
        return self._probation_now

    @_probation.setter
    def _probation(self, probation: Probation | None) -> None:
        """The probation that runs (None: none); its listener is on the predictor only
        meanwhile, so that predictions after it cost no Python call."""
        self._probation_now = probation
        if probation is None:
            self.predictor.remove_listener(self._probation_listener)
        else:
            self.predictor.add_listener(self._probation_listener, once=True)

    def _start_probation(self, meta: dict[str, Any], manifest: dict[str, Any]) -> None:
        health = manifest["health"]
        until = float(meta.get("activated_at") or 0) + float(health["probation_s"])
        self._probation = None
        if until > self._clock():
            self._probation = Probation(
                until,
                max_error_rate=float(health["max_error_rate"]),
                latency_budget_ms=float(health["latency_budget_ms"]),
                clock=self._clock,
            )

    def _on_prediction(self, features: Any, outputs: Any, latency_ms: float, error: bool) -> None:
        probation = self._probation_now
        if probation is None:
            return
        reason = probation.record(error, latency_ms)
        if reason is not None:
            self._box.post(("probation_failed", probation, reason), force=True)

    def _on_probation_failed(self, probation: Probation, reason: str) -> None:
        if probation is not self._probation:
            return  # another model is active by now
        self._probation = None
        self.rollback(f"probation: {reason}")

    def rollback(self, reason: str) -> None:
        """Switch back to the previous slot (or to no model) and report it. Worker thread only."""
        failed = self.store.slot_meta(self.store.active)
        old, new = self.store.switch_back(reason)
        self._stats.incr("rollbacks")
        self._load_active(resume_probation=False)
        log.warning("rolled back from slot %s to %s: %s", old, new or "no model", reason)
        if failed:
            self.emit("rolled_back", failed, reason=reason)
        self._publish_state()

    def _load_active(self, resume_probation: bool) -> None:
        """Serve the active slot's model (after a start, a rollback, or a CLI rollback)."""
        slot = self.store.active
        self._probation = None
        if slot is None:
            self.predictor.load(None)
            return
        try:
            data, manifest = self.store.read_slot(slot)
            runner = load_runner(manifest["model"]["format"], data)
            model = LoadedModel.build(runner, manifest)
        except (StoreError, DeployFailed, ValueError, RuntimeError) as exc:
            log.error("active slot %s cannot be loaded (%s); switching back", slot, exc)
            self.store.forget_slot(slot)
            self.predictor.load(None)
            other = other_slot(slot)
            if self.store.slot_meta(other):
                self.store.update(lambda s: s.update(active=other))
                self._load_active(resume_probation=False)
            return
        self.predictor.load(model)
        meta = self.store.slot_meta(slot)
        if resume_probation and meta:
            self._start_probation(meta, manifest)

    def _on_tick(self) -> None:
        self._tick_queued = False
        if not self._running:
            return
        if self._deployment is not None:
            self._deployment.tick()
            self._settle()
        if self._probation is not None and not self._probation.active():
            if self._probation.failed is None:
                log.info("probation passed after %d predictions", self._probation.count)
            self._probation = None
        if self.store.reload_if_changed():  # e.g. `edgeops-agent rollback` while we run
            log.info("state.json was changed by another process; reloading")
            self._load_active(resume_probation=False)
            if self.connected:
                for fields in self.store.take_pending_events():
                    self._send_event(fields)
            self._publish_state()
        self.telemetry.tick()
        self._monitor()
        self._arm_tick()

    def _arm_tick(self) -> None:
        def fire() -> None:
            if self._running and not self._tick_queued:
                self._tick_queued = True
                if not self._box.post(("tick",), force=True):
                    self._tick_queued = False

        if self._running:
            self._timer = self._pool.call_later(TICK_S, fire)

    # --- monitoring: telemetry windows, samples, labels (docs/protocol.md) ---------------
    def send_label(self, sample_id: str, label: str) -> None:
        """Ground truth for one of this device's samples (a prediction result's
        ``sample_id``), published on the ``labels`` topic through the outbox."""
        self.telemetry.label(sample_id, label)

    def _wake_monitor(self) -> None:
        """Any thread: something waits for :meth:`_monitor` (posted once until it runs)."""
        if not self._monitor_queued:
            self._monitor_queued = True
            if not self._box.post(("monitor",), force=True):
                self._monitor_queued = False

    def _monitor(self) -> None:
        """Closed windows, samples and labels into the outbox; the outbox to the broker."""
        self._monitor_queued = False
        outbox = self.outbox
        if outbox is None:
            return
        items, lost = self.telemetry.drain()
        outbox.add_dropped(lost)
        for topic, payload in items:
            outbox.append(topic, payload)
        if self._sender is not None:
            self._sender.pump()
        if outbox.dropped != self._dropped_reported:
            self._publish_state()  # outbox_dropped changed: say so (when connected)

    def _close_monitoring(self, timeout: float) -> None:
        """On a clean stop (the worker is idle): the open window goes to the outbox, and
        the outbox to the broker for up to ``timeout`` seconds; the rest waits on disk."""
        self.telemetry.close()
        self._monitor()
        if self._sender is not None and self.connected:
            self._sender.flush(timeout)
