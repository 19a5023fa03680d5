"""The deployment of one accepted manifest, from download to activation (docs/protocol.md).

::

    begin ─┬─ artifact already in a slot ──────────────────────────┐
           └─ downloading ── chunk… ── complete ── assemble+verify ─┴─ health ─ install ─ activate
                  │ (no new chunk for download_timeout_s, or the HTTP fetch gave up)
                  └─ failed

Chunks come from one source at a time: retained MQTT chunk topics, or HTTP ranges
from ``artifact.url`` (:mod:`edgeops_agent.httpdl`), as ``artifact_transport`` and
the manifest decide. Both feed :meth:`Deployment.add_chunk`, so the chunk files are
shared; with ``"auto"`` a failed HTTP fetch falls back to MQTT and keeps its chunks.

Any failing step publishes ``failed`` with the step and the reason, and the model
that was serving keeps serving. The class holds the plain logic; everything that
talks to the outside (events, MQTT subscriptions, the health check, switching the
served model) goes through the :class:`DeployPorts` the agent passes in, so the
tests drive it with a fake. The store and the chunk files are real: they are the
point of the exercise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .download import STORED, Download
from .errors import DeployFailed, StoreError
from .httpdl import choose_transport
from .serve import LoadedModel
from .store import StateStore, other_slot

__all__ = ["DeployPorts", "Deployment", "slot_meta"]

log = logging.getLogger("edgeops_agent.deploy")

# phases
NEW, DOWNLOADING, INSTALLING = "new", "downloading", "installing"
DONE, FAILED, ABANDONED = "done", "failed", "abandoned"
# where the chunks of a download come from
MQTT, HTTP = "mqtt", "http"


class DeployPorts(Protocol):
    """What a deployment needs from the agent."""

    def emit(
        self,
        event: str,
        manifest: dict[str, Any],
        *,
        progress: float | None = None,
        reason: str = "",
        step: str | None = None,
    ) -> None: ...

    def subscribe_chunks(self, sha256: str) -> None: ...

    def unsubscribe_chunks(self, sha256: str) -> None: ...

    def fetch_http(self, artifact: dict[str, Any], url: str, missing: list[int]) -> None:
        """Start fetching chunks ``missing`` from ``url``; chunks come back through
        :meth:`Deployment.add_chunk`, the end through :meth:`Deployment.http_finished`."""

    def stop_http(self, sha256: str) -> None: ...

    def check_health(self, manifest: dict[str, Any], model_bytes: bytes) -> LoadedModel: ...

    def activated(self, slot: str, model: LoadedModel, meta: dict[str, Any]) -> None: ...


def slot_meta(manifest: dict[str, Any], activated_at: float) -> dict[str, Any]:
    """What ``state.json`` records about the model of a slot."""
    model, art, health = manifest["model"], manifest["artifact"], manifest["health"]
    return {
        "name": model["name"],
        "version": model["version"],
        "variant": model["variant"],
        "format": model["format"],
        "sha256": art["sha256"],
        "size": art["size"],
        "seq": manifest["seq"],
        "deployment": manifest["deployment"],
        "rollout": manifest.get("rollout"),
        "activated_at": activated_at,
        "probation_s": float(health["probation_s"]),
    }


class Deployment:
    """One manifest on its way to activation; driven by the agent's worker thread only."""

    def __init__(
        self,
        manifest: dict[str, Any],
        store: StateStore,
        ports: DeployPorts,
        *,
        stall_s: float = 10.0,
        timeout_s: float = 300.0,
        transport: str = MQTT,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.manifest = manifest
        self.seq: int = manifest["seq"]
        self.sha256: str = manifest["artifact"]["sha256"]
        self.store = store
        self.ports = ports
        self.stall_s = stall_s
        self.timeout_s = timeout_s
        self.transport = transport  # the agent's artifact_transport: mqtt, http or auto
        self.source: str | None = None  # where chunks come from while downloading
        self._clock = clock
        self._wall = wall_clock
        self.phase = NEW
        self.download: Download | None = None
        self._last_chunk_at = clock()
        self._last_subscribe_at = clock()
        self._reported_decile = -1

    @property
    def finished(self) -> bool:
        return self.phase in (DONE, FAILED, ABANDONED)

    @property
    def downloading(self) -> bool:
        return self.phase == DOWNLOADING

    # --- steps -----------------------------------------------------------------------
    def begin(self) -> None:
        """Start (or resume after a restart): reuse a slot, or collect the chunks."""
        try:
            slot = self.store.slot_with(self.sha256)
            if slot is not None:
                try:
                    data, _ = self.store.read_slot(slot)
                except StoreError as exc:
                    log.warning("slot %s is unusable (%s); downloading again", slot, exc)
                    self.store.forget_slot(slot)
                else:
                    self.ports.emit("verified", self.manifest)
                    self._health_and_activate(slot, data, staged=False)
                    return
            folder = self.store.downloads_dir(self.sha256)
            self.download = Download(self.manifest["artifact"], folder)
            held = self.download.resume()
            url = self.manifest["artifact"].get("url")
            source = None if self.download.complete else choose_transport(self.transport, url)
            if held:
                log.info(
                    "resuming download of %s: %d of %d chunks on disk",
                    self.sha256[:12],
                    held,
                    self.download.total,
                )
            self.phase = DOWNLOADING
            self._last_chunk_at = self._last_subscribe_at = self._clock()
            self._report_progress()
            if source is None:
                self._finish_download()
            else:
                self._start_source(source)
        except DeployFailed as exc:
            self._fail(exc.step, exc.reason)
        except StoreError as exc:
            self._fail("install", str(exc))

    def add_chunk(self, index: int, data: bytes) -> str:
        """A chunk from MQTT or HTTP: its outcome (``stored``, ``duplicate``, ``bad``, ...)."""
        if self.phase != DOWNLOADING or self.download is None:
            return "unexpected"
        try:
            outcome = self.download.add(index, data)
        except OSError as exc:
            self._fail("download", f"cannot store chunk {index}: {exc}")
            return "error"
        if outcome == STORED:
            self._last_chunk_at = self._clock()
            self._report_progress()
            if self.download.complete:
                self._finish_download()
        return outcome

    def tick(self) -> None:
        """Called about once a second: subscribe again after a stall, fail after the timeout."""
        if self.phase != DOWNLOADING or self.download is None:
            return
        now = self._clock()
        if now - self._last_chunk_at >= self.timeout_s:
            missing = self.download.missing()
            bad = sorted(self.download.bad_indexes & set(missing))
            reason = f"no new chunk for {self.timeout_s:g} s; missing chunks {self._missing_text()}"
            if bad:
                reason += f"; chunks {', '.join(map(str, bad[:8]))} failed their SHA-256 check"
            self._fail("download", reason)
        elif (
            self.source == MQTT
            and now - max(self._last_chunk_at, self._last_subscribe_at) >= self.stall_s
        ):
            # subscribing again makes the broker send the retained chunks again
            self._last_subscribe_at = now
            self.ports.subscribe_chunks(self.sha256)

    def http_finished(self, error: str | None) -> None:
        """The HTTP fetch ended (``error`` None: every chunk was delivered). Chunks still
        missing fail the download, or with ``auto`` move it to MQTT chunks."""
        if self.phase != DOWNLOADING or self.source != HTTP or self.download is None:
            return
        if self.download.complete:
            return
        if error is None:
            error = f"the server sent every range but chunks {self._missing_text()} are missing"
        if self.transport == "auto":
            log.warning("HTTP download of %s: %s; falling back to MQTT", self.sha256[:12], error)
            self._last_chunk_at = self._clock()  # the MQTT download gets its full timeout
            self._start_source(MQTT)
        else:
            self._fail("download", f"HTTP download failed: {error}")

    def abandon(self, reason: str) -> None:
        """Stop here because a newer manifest arrived; the serving model is untouched."""
        if self.finished:
            return
        if self.phase == DOWNLOADING:
            self._stop_source()
        self.phase = ABANDONED
        self.ports.emit("failed", self.manifest, reason=reason, step="superseded")

    # --- internals -------------------------------------------------------------------
    def _start_source(self, source: str) -> None:
        assert self.download is not None
        self.source = source
        self._last_subscribe_at = self._clock()
        if source == HTTP:
            url = self.manifest["artifact"]["url"]
            self.ports.fetch_http(self.manifest["artifact"], url, self.download.missing())
        else:
            self.ports.subscribe_chunks(self.sha256)

    def _stop_source(self) -> None:
        if self.source == HTTP:
            self.ports.stop_http(self.sha256)
        else:
            self.ports.unsubscribe_chunks(self.sha256)

    def _missing_text(self) -> str:
        assert self.download is not None
        missing = self.download.missing()
        return ", ".join(map(str, missing[:8])) + (" …" if len(missing) > 8 else "")

    def announce(self) -> None:
        """Publish the download's progress now (after a reconnect: the server may have
        missed the events of a download that resumed while offline)."""
        if self.phase == DOWNLOADING:
            self._report_progress(force=True)

    def _report_progress(self, force: bool = False) -> None:
        assert self.download is not None
        decile = int(self.download.progress * 10 + 1e-9)
        if force or decile > self._reported_decile:
            self._reported_decile = decile
            self.ports.emit("downloading", self.manifest, progress=round(self.download.progress, 4))

    def _finish_download(self) -> None:
        assert self.download is not None
        self._stop_source()
        self.phase = INSTALLING
        slot = other_slot(self.store.active)
        staged = self.store.staged_path(slot)
        try:
            self.download.assemble(staged)
            self.ports.emit("verified", self.manifest)
            self._health_and_activate(slot, staged.read_bytes(), staged=True)
        except DeployFailed as exc:
            self._fail(exc.step, exc.reason)
        except (OSError, StoreError) as exc:
            self._fail("install", str(exc))
        finally:
            if self.phase != DONE and staged.exists():
                staged.unlink()

    def _health_and_activate(self, slot: str, data: bytes, *, staged: bool) -> None:
        model = self.ports.check_health(self.manifest, data)
        staged_path = self.store.staged_path(slot) if staged else None
        try:
            self.store.install(slot, self.manifest, staged_path)
        except StoreError as exc:
            raise DeployFailed("install", str(exc)) from exc
        meta = slot_meta(self.manifest, self._wall())
        try:
            self.store.activate(slot, meta)
        except StoreError as exc:
            raise DeployFailed("activate", str(exc)) from exc
        self.phase = DONE
        self.ports.activated(slot, model, meta)
        try:  # only tidying up now: a crash before this resumes and re-activates, harmlessly
            self.store.end_deployment(self.seq)
        except StoreError as exc:
            log.error("cannot record the end of deployment seq %d: %s", self.seq, exc)

    def _fail(self, step: str, reason: str) -> None:
        if self.phase == DOWNLOADING:
            self._stop_source()
        self.phase = FAILED
        log.warning("deployment seq %d failed at %s: %s", self.seq, step, reason)
        try:
            self.store.end_deployment(self.seq)
        except StoreError as exc:
            log.error("cannot record the end of deployment seq %d: %s", self.seq, exc)
        self.ports.emit("failed", self.manifest, reason=reason, step=step)
