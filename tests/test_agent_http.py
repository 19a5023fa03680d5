"""The agent downloading by HTTP: from the real artifact server, resuming after a crash
or a dropped connection with Range requests for the missing chunks only, refusing
wrong bytes, and choosing between HTTP and MQTT chunks (``artifact_transport``).

Desired states, states and events go through a real Mosquitto (:class:`Server` of
test_agent_kit plays the server's side); artifacts come from
:class:`edgeops.artifact_server.ArtifactServer` on a free port, or from
:class:`FaultyServer`, which misbehaves on purpose.
"""

from __future__ import annotations

import base64
import doctest
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

import edgeops_agent.httpdl
from brokers import free_port
from edgeops.artifact_server import ArtifactServer, parse_range
from edgeops.artifacts import ArtifactStore
from edgeops_agent.agent import Agent
from edgeops_agent.httpdl import HttpFetch
from test_agent_kit import Server, make_manifest, onnx_model, wait_until
from test_agent_kit import agents_fixture as agents_fixture
from test_agent_kit import keys_fixture as keys_fixture
from test_agent_kit import server_fixture as server_fixture
from test_agent_kit import start_fixture as start_fixture

DEV = "dev-1"
CS = 16  # small chunks: the 399-byte model is 25 of them


@pytest.fixture
def registry(tmp_path):
    """The real artifact server, serving the test model only."""
    store = ArtifactStore(tmp_path / "artifacts")
    sha = store.put_bytes(onnx_model(0).data).sha256
    with ArtifactServer(store, {sha}.__contains__, port=0) as srv:
        yield srv


def _manifest(server: Server, seq: int, url: str | None, **over: Any) -> dict:
    model = onnx_model(0)
    manifest = make_manifest(model, fleet=server.fleet, device=DEV, seq=seq, chunk_size=CS, **over)
    if url is not None:
        manifest["artifact"]["url"] = f"{url}/artifacts/{manifest['artifact']['sha256']}"
    return manifest


def _ranges(srv: ArtifactServer, since: int = 0) -> list[str | None]:
    return [e["range"] for e in list(srv.log)[since:]]


def _chunks_on_disk(agent: Agent, sha: str) -> set[int]:
    folder = agent.config.state_dir / "downloads" / sha
    return {int(p.stem) for p in folder.glob("*.chunk")}


def _serving_seq(agent: Agent) -> int | None:
    model = agent.predictor.model
    return None if model is None else model.ref()["seq"]


SIZE = len(onnx_model(0).data)
TOTAL = -(-SIZE // CS)


def test_the_httpdl_examples_run():
    assert doctest.testmod(edgeops_agent.httpdl).failed == 0


def test_an_agent_activates_a_model_downloaded_by_http(server, start, registry):
    agent = start(artifact_transport="http")
    manifest = _manifest(server, 5, registry.url)
    server.desire(DEV, manifest)  # no chunk is published on MQTT: HTTP is the only way
    server.wait_event(DEV, "activated", 5)
    agent.wait_idle()  # the worker counts the last chunk after the event it led to

    events = server.events(DEV, 5)
    progress = [e["progress"] for e in events if e["event"] == "downloading"]
    assert [e["event"] for e in events] == ["downloading"] * len(progress) + [
        "verified",
        "activated",
    ]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert _ranges(registry) == [f"bytes=0-{SIZE - 1}"]  # one request for the one run
    assert [e["status"] for e in registry.log] == [206]
    assert agent.stats["http_chunks"] == agent.stats["chunks_stored"] == TOTAL
    state = wait_until(lambda: (s := server.last_state(DEV)) and s["model"] and s)
    assert state["model"]["sha256"] == manifest["artifact"]["sha256"]
    model = onnx_model(0)
    scores = [p["scores"] for p in agent.predictor.predict_rows(model.rows)]
    np.testing.assert_allclose(scores, model.probabilities, atol=1e-6)


def test_a_crashed_http_download_resumes_with_the_missing_chunks_only(
    server, start, registry, agents
):
    agent = start(artifact_transport="http", simulate={"download_delay_ms": 100})
    manifest = _manifest(server, 7, registry.url)
    sha = manifest["artifact"]["sha256"]
    server.desire(DEV, manifest)
    wait_until(lambda: len(_chunks_on_disk(agent, sha)) >= 6, what="6 chunks on disk")
    agent.kill()  # as a crash: chunks queued for the worker are lost, stored ones are kept
    agents.remove(agent)
    held = _chunks_on_disk(agent, sha)
    assert 6 <= len(held) < TOTAL and held == set(range(len(held)))
    assert _ranges(registry) == [f"bytes=0-{SIZE - 1}"]
    mark = len(registry.log)

    again = start(artifact_transport="http")
    server.wait_event(DEV, "activated", 7)
    again.wait_idle()
    assert _ranges(registry, mark) == [f"bytes={len(held) * CS}-{SIZE - 1}"]
    assert again.stats["chunks_stored"] == TOTAL - len(held)
    assert "chunks_duplicate" not in again.stats
    assert again.stats["deployments_resumed"] == 1
    assert _serving_seq(again) == 7


def test_a_download_begun_over_mqtt_finishes_over_http(server, start, registry, agents):
    """Chunks from either transport are the same files: a restart with another transport
    asks the artifact server for each missing run of chunks, and nothing else."""
    agent = start(artifact_transport="mqtt")
    manifest = _manifest(server, 8, registry.url)
    sha = manifest["artifact"]["sha256"]
    skip = (3, 4, 10, 11, 12, TOTAL - 1)
    server.publish_artifact(onnx_model(0).data, CS, skip=skip)
    server.desire(DEV, manifest)
    wait_until(lambda: len(_chunks_on_disk(agent, sha)) == TOTAL - len(skip), what="chunks")
    agent.stop()
    agents.remove(agent)
    assert not registry.log  # MQTT only so far

    again = start(artifact_transport="http")
    server.wait_event(DEV, "activated", 8)
    again.wait_idle()
    assert _ranges(registry) == [
        f"bytes={3 * CS}-{5 * CS - 1}",
        f"bytes={10 * CS}-{13 * CS - 1}",
        f"bytes={(TOTAL - 1) * CS}-{SIZE - 1}",
    ]
    assert again.stats["http_chunks"] == len(skip)


class FaultyServer:
    """An artifact server that misbehaves on purpose: cuts its first ``cuts`` bodies after
    ``cut_after`` bytes, flips the byte at offset ``flip``, waits ``stall_s`` before
    sending a body, or ignores Range (200 and every byte). Records every Range header."""

    def __init__(
        self,
        data: bytes,
        *,
        cut_after: int = 0,
        cuts: int = 0,
        flip: int | None = None,
        stall_s: float = 0.0,
        ignore_range: bool = False,
    ) -> None:
        self.ranges: list[str | None] = []
        served = bytearray(data)
        if flip is not None:
            served[flip] ^= 0xFF
        outer = self
        self.cuts = cuts

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                header = self.headers.get("Range")
                outer.ranges.append(header)
                whole = (0, len(served) - 1)
                first, last = whole if ignore_range else parse_range(header, len(served)) or whole
                body = bytes(served[first : last + 1])
                self.send_response(200 if ignore_range else 206)
                self.send_header("Content-Length", str(len(body)))
                if not ignore_range:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(served)}")
                self.end_headers()
                if stall_s:
                    time.sleep(stall_s)
                if outer.cuts > 0:
                    outer.cuts -= 1
                    body = body[:cut_after]
                    self.close_connection = True
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def faulty():
    made: list[FaultyServer] = []

    def _make(**kw: Any) -> FaultyServer:
        made.append(FaultyServer(onnx_model(0).data, **kw))
        return made[-1]

    yield _make
    for srv in made:
        srv.close()


def test_a_dropped_connection_resumes_from_the_next_missing_chunk(server, start, faulty):
    flaky = faulty(cut_after=100, cuts=2)  # 100 bytes: chunks 0-5 whole, chunk 6 cut short
    agent = start(artifact_transport="http")
    server.desire(DEV, _manifest(server, 5, flaky.url))
    server.wait_event(DEV, "activated", 5)
    agent.wait_idle()
    assert flaky.ranges == [
        f"bytes=0-{SIZE - 1}",
        f"bytes={6 * CS}-{SIZE - 1}",  # after the first cut: from chunk 6
        f"bytes={12 * CS}-{SIZE - 1}",  # 6 more chunks came before the second cut
    ]
    assert agent.stats["chunks_stored"] == TOTAL and "chunks_duplicate" not in agent.stats


def test_wrong_bytes_from_the_server_are_never_activated(server, start, faulty):
    liar = faulty(flip=3 * CS + 2)  # one byte of chunk 3
    agent = start(artifact_transport="http", http_download_retries=1)
    manifest = _manifest(server, 5, liar.url)
    server.desire(DEV, manifest)
    failed = server.wait_event(DEV, "failed", 5)
    assert failed["step"] == "download"
    url = manifest["artifact"]["url"]
    assert failed["reason"] == f"HTTP download failed: chunk 3 from {url} failed its SHA-256 check"
    assert liar.ranges == [f"bytes=0-{SIZE - 1}", f"bytes={3 * CS}-{SIZE - 1}"]  # one retry
    agent.wait_idle()
    assert "activated" not in server.event_kinds(DEV)
    assert agent.predictor.model is None and agent.store.active is None
    assert agent.stats["chunks_stored"] == 3 and "chunks_bad" not in agent.stats
    state = wait_until(lambda: (s := server.last_state(DEV)) and s["accepted_seq"] == 5 and s)
    assert state["model"] is None


def test_an_unknown_artifact_fails_at_once(server, start, registry):
    start(artifact_transport="http")
    manifest = _manifest(server, 5, registry.url)
    manifest["artifact"]["url"] = f"{registry.url}/artifacts/{'0' * 64}"
    server.desire(DEV, manifest)
    failed = server.wait_event(DEV, "failed", 5)
    assert failed["reason"] == (
        f"HTTP download failed: HTTP 404 from {manifest['artifact']['url']}"
    )
    assert len(registry.log) == 1  # a 404 is not tried again


def test_http_without_a_url_fails_with_the_reason(server, start):
    agent = start(artifact_transport="http")
    server.deploy(onnx_model(0), DEV, 5, chunk_size=CS)  # chunks on MQTT, no url
    failed = server.wait_event(DEV, "failed", 5)
    assert failed["step"] == "download"
    assert failed["reason"].startswith(
        "artifact_transport is 'http' but the manifest has no artifact.url; "
        "roll out with --artifact-url"
    )
    assert server.event_kinds(DEV, 5) == ["failed"]
    assert agent.predictor.model is None


def test_auto_takes_mqtt_chunks_when_there_is_no_url(server, start):
    agent = start(artifact_transport="auto")
    server.deploy(onnx_model(0), DEV, 5, chunk_size=CS)
    server.wait_event(DEV, "activated", 5)
    agent.wait_idle()
    assert agent.stats["chunks_stored"] == TOTAL and "http_chunks" not in agent.stats


def test_auto_falls_back_to_mqtt_when_http_fails(server, start):
    agent = start(artifact_transport="auto", http_download_retries=0)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server.publish_artifact(onnx_model(0).data, CS)
    server.desire(DEV, _manifest(server, 5, dead))
    server.wait_event(DEV, "activated", 5)
    agent.wait_idle()
    assert agent.stats["http_downloads_failed"] == 1
    assert agent.stats["chunks_stored"] == TOTAL and "http_chunks" not in agent.stats
    assert "failed" not in server.event_kinds(DEV)


# --- the fetcher alone -------------------------------------------------------------------


def _fetch(url: str, **kw: Any) -> tuple[HttpFetch, dict[int, bytes], list]:
    got: dict[int, bytes] = {}
    ended: list = []
    artifact = make_manifest(onnx_model(0), fleet="f", device="d", seq=1, chunk_size=CS)
    fetch = HttpFetch(
        f"{url}/artifacts/{artifact['artifact']['sha256']}",
        artifact["artifact"],
        kw.pop("missing", range(TOTAL)),
        deliver=lambda f, i, d: got.__setitem__(i, d) is None,
        finished=lambda f, error: ended.append(error),
        **kw,
    )
    fetch.start()
    assert fetch.join(30)
    return fetch, got, ended


def test_a_stalled_server_times_out_and_is_tried_a_bounded_number_of_times(faulty):
    slow = faulty(stall_s=3.0)
    started = time.monotonic()
    _, got, ended = _fetch(slow.url, timeout_s=0.3, retries=2, backoff_s=0.05)
    assert time.monotonic() - started < 3.0
    assert got == {} and len(slow.ranges) == 3  # the first attempt and 2 retries
    assert len(ended) == 1 and "timed out" in ended[0]


def test_the_fetcher_asks_for_each_missing_run(registry):
    data = onnx_model(0).data
    fetch, got, ended = _fetch(registry.url, missing=[0, 1, 7, TOTAL - 1])
    assert ended == [None]
    assert fetch.ranges == [f"bytes=0-{2 * CS - 1}", f"bytes={7 * CS}-{8 * CS - 1}",
                            f"bytes={(TOTAL - 1) * CS}-{SIZE - 1}"]  # fmt: skip
    assert got == {i: data[i * CS : (i + 1) * CS] for i in (0, 1, 7, TOTAL - 1)}


def test_a_server_that_ignores_ranges_still_serves_the_missing_chunks(faulty):
    plain = faulty(ignore_range=True)
    data = onnx_model(0).data
    _, got, ended = _fetch(plain.url, missing=[5, 6, TOTAL - 1])
    assert ended == [None] and len(plain.ranges) == 2
    assert got == {i: data[i * CS : (i + 1) * CS] for i in (5, 6, TOTAL - 1)}


def test_a_full_inbox_makes_the_fetcher_wait_not_drop(registry):
    data = onnx_model(0).data
    got: dict[int, bytes] = {}
    refusals = [3]  # the first offers of each chunk are refused, as by a full mailbox

    def deliver(fetch: HttpFetch, index: int, chunk: bytes) -> bool:
        if refusals[0] > 0:
            refusals[0] -= 1
            return False
        got[index] = chunk
        return True

    artifact = make_manifest(onnx_model(0), fleet="f", device="d", seq=1, chunk_size=CS)
    ended: list = []
    fetch = HttpFetch(
        f"{registry.url}/artifacts/{artifact['artifact']['sha256']}",
        artifact["artifact"],
        range(TOTAL),
        deliver=deliver,
        finished=lambda f, error: ended.append(error),
    )
    fetch.start()
    assert fetch.join(30) and ended == [None]
    assert b"".join(got[i] for i in range(TOTAL)) == data


# --- end to end: a rollout with --artifact-url, the artifact server, an HTTP agent --------


def test_a_rollout_with_an_artifact_url_reaches_an_http_agent(
    broker, server, start, tmp_path, monkeypatch
):
    from edgeops import Workspace
    from edgeops.artifact_server import registered_variants
    from edgeops.fleet.controller import RolloutController, RolloutOptions
    from edgeops.fleet.deploy import ManifestOptions
    from edgeops.fleet.keys import generate_key
    from edgeops.mqtt import MqttClient
    from edgeops.registry import NewVariant
    from test_agent_kit import FEATURES

    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    monkeypatch.setenv("EDGEOPS_FLEET", server.fleet)
    model = onnx_model(0)
    ws, _ = Workspace.init(tmp_path / "ws")
    meta = {
        "labels": ["no", "yes"],
        "feature_names": FEATURES,
        "features": model.features,
        "test_vectors": {
            "inputs": model.matrix[:4].tolist(),
            "outputs": model.probabilities[:4].tolist(),
        },
    }
    variant = NewVariant("onnx-f32", model.data, "onnx", {"latency_ms_p95": 1.0}, meta)
    ws.registry.register("demo", model.data, "onnx", variants=[variant])
    key = generate_key(tmp_path / "keys")
    # the agent trusts this workspace's key (not the test server's)
    agent = start(artifact_transport="http", public_keys=[base64.b64encode(key.public).decode()])
    client = MqttClient(broker.url).connect()
    try:
        with ArtifactServer(ws.artifacts, registered_variants(ws.db), port=0) as artifacts:
            ctl = RolloutController(ws, key, client)
            wait_until(lambda: ctl.fleet.sync(client, quiet=0.3) or ctl.fleet.devices())
            opts = RolloutOptions(
                stages=(1.0,),
                timeout=60,
                manifest=ManifestOptions(chunk_size=64, artifact_url_base=artifacts.url),
            )
            rid = ctl.create("demo@1", f"device:{DEV}", opts)
            ctl.run(until=lambda: ctl.status(rid)["status"] == "completed", max_seconds=60)
            assert ctl.status(rid)["status"] == "completed"
            assert _ranges(artifacts) == [f"bytes=0-{SIZE - 1}"]
        agent.wait_idle()
        assert agent.stats["http_chunks"] == -(-SIZE // 64)
        assert _serving_seq(agent) is not None
    finally:
        client.close()
        ws.close()
