"""Tampering: whatever an attacker on the broker or the artifact server changes, the device
activates nothing and keeps serving the model it had.

Two real agents on Mosquitto run v1 (seq 5): ``dev-1`` downloads chunks over MQTT,
``dev-2`` over HTTP from a server of the test that can lie. Manifests are built and
signed by the server's own code (:func:`edgeops.fleet.deploy.build_manifest` and
:func:`~edgeops.fleet.deploy.sign`), then each case delivers something tampered: chunks or
artifacts with flipped bytes, truncated or extended; replayed manifests (the same seq,
a lower seq, and a lower seq after the agent restarted); expired, wrong-hardware,
unsigned, ``alg: none``, unknown-key, forged-key-id and modified-after-signing manifests;
and a valid manifest for another device. Each case must end with the event and reason
docs/protocol.md gives (or silence, where it says so), v1 still serving, and no
``activated`` event.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeops.fleet.deploy import ManifestOptions, build_manifest, sign
from edgeops.fleet.keys import SigningKey
from edgeops_agent.agent import Agent
from edgeops_protocol.chunks import split_chunks
from edgeops_protocol.manifest import generate_keypair
from edgeops_protocol.topics import chunk_topic
from faults.kit import figure, wait_until
from test_agent_kit import Server, agent_config, onnx_model, read_retained

CHUNK = 64  # 399 bytes in 7 chunks
V1_SEQ = 5


class LyingServer:
    """An artifact server that serves whatever the test puts in ``blobs`` (and ignores
    ``Range``, as a plain file server may): the device must trust none of it."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        blobs = self.blobs

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = blobs.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


@dataclass
class Case:
    name: str
    device: str
    deliver: Callable[[], None]  # publishes the tampered thing
    event: str | None  # the event the device must publish, or None: it must stay silent
    reason: str  # ... with this in its reason; or the agent counter that must grow
    before: Callable[[], None] | None = None  # done before the device's events are counted


class Campaign:
    """The server's side: the registry's demo models, the fleet key, the broker, and the
    lying artifact server."""

    def __init__(self, ws: Any, key: SigningKey, server: Server, http: LyingServer) -> None:
        self.ws, self.key, self.server, self.http = ws, key, server, http
        self.fleet = server.fleet
        self.versions = {v: ws.registry.get_version(f"demo@{v}") for v in (1, 2)}
        self.data = {
            v: ws.registry.variant_bytes(mv.ref, "onnx-f32") for v, mv in self.versions.items()
        }
        self.seq = V1_SEQ
        self.accepted: dict[str, dict] = {}  # the last genuine envelope a device accepted

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def manifest(self, version: int, device: str, seq: int, *, http: bool = False, **kw) -> dict:
        mv = self.versions[version]
        variant = next(v for v in mv.variants if v.name == "onnx-f32")
        opts = ManifestOptions(
            chunk_size=CHUNK,
            ttl=kw.pop("ttl", 3600.0),
            artifact_url_base=self.http.base if http else None,
        )
        return build_manifest(
            fleet=kw.pop("fleet", self.fleet),
            device=device,
            seq=seq,
            rollout=f"r-{seq}",
            mv=mv,
            variant=variant,
            data=self.data[version],
            hardware=kw.pop("hardware", ["test-hw"]),
            opts=opts,
            now=kw.pop("now", None),
        )

    def envelope(self, manifest: dict, key: SigningKey | None = None) -> dict:
        return sign(manifest, key or self.key)

    def desire(self, device: str, envelope: dict | bytes) -> None:
        payload = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
        self.server.desire(device, payload)

    def chunks(self, manifest: dict, data: bytes) -> None:
        """Publish ``data`` cut in chunks on the artifact topics of ``manifest``'s artifact."""
        sha = manifest["artifact"]["sha256"]
        for i, chunk in enumerate(split_chunks(data, CHUNK)):
            self.server.publish(chunk_topic(self.fleet, sha, i), chunk)

    def clear_chunks(self, manifest: dict, n: int = 16) -> None:
        sha = manifest["artifact"]["sha256"]
        for i in range(n):  # an empty retained message clears the topic
            self.server.publish(chunk_topic(self.fleet, sha, i), b"")


def _cases(c: Campaign, old_v2: dict, restart: Callable[[], None]) -> list[Case]:
    v2 = c.data[2]
    other = SigningKey(*generate_keypair())

    def artifact(device: str, body: Callable[[bytes], bytes], over_http: bool) -> Callable:
        def deliver() -> None:
            m = c.manifest(2, device, c.next_seq(), http=over_http)
            if over_http:
                c.http.blobs[m["artifact"]["sha256"]] = body(v2)
            else:
                c.clear_chunks(m)
                c.chunks(m, body(v2))
            c.accepted[device] = c.envelope(m)
            c.desire(device, c.accepted[device])

        return deliver

    def signed(change: Callable[[dict], Any], key: SigningKey | None = None) -> Callable:
        """A v2 manifest for dev-1 at a new seq, signed, then ``change``d (envelope out)."""

        def deliver() -> None:
            env = c.envelope(c.manifest(2, "dev-1", c.next_seq()), key)
            c.desire("dev-1", json.dumps(change(env) or env).encode())

        return deliver

    def unsigned(env: dict) -> dict:
        return {k: v for k, v in env.items() if k != "signature"}

    def alg_none(env: dict) -> None:
        env["signature"] = {"alg": "none", "key_id": c.key.key_id, "value": ""}

    def forged_key_id(env: dict) -> None:
        env["signature"]["key_id"] = c.key.key_id

    def modified(env: dict) -> None:
        env["manifest"]["target"]["hardware"] = ["*"]

    def manifest_case(**kw: Any) -> Callable:
        return lambda: c.desire("dev-1", c.envelope(c.manifest(2, "dev-1", c.next_seq(), **kw)))

    def replay_same_seq() -> None:  # the manifest the device accepted last, again
        c.desire("dev-1", c.accepted["dev-1"])

    for_other = lambda: c.desire("dev-1", c.envelope(c.manifest(2, "dev-9", c.next_seq())))  # noqa: E731
    cut = lambda b: b[:-40]  # noqa: E731
    longer = lambda b: b + bytes(100)  # noqa: E731
    return [
        Case("chunk with a flipped byte (MQTT)", "dev-1",
             artifact("dev-1", lambda b: _flip(b, 150), False),
             "failed", "chunks 2 failed their SHA-256 check"),
        Case("artifact truncated by 40 bytes (MQTT)", "dev-1",
             artifact("dev-1", cut, False), "failed", "missing chunks 5, 6"),
        Case("artifact extended by 100 bytes (MQTT)", "dev-1",
             artifact("dev-1", longer, False), "failed", "chunks 6 failed their SHA-256 check"),
        Case("artifact with a flipped byte (HTTP)", "dev-2",
             artifact("dev-2", lambda b: _flip(b, 150), True),
             "failed", "chunk 2 from http"),
        Case("artifact truncated by 40 bytes (HTTP)", "dev-2",
             artifact("dev-2", cut, True), "failed", "closed the connection in chunk 5"),
        Case("artifact extended by 100 bytes in front (HTTP)", "dev-2",
             artifact("dev-2", lambda b: bytes(100) + b, True),
             "failed", "chunk 0 from http"),
        Case("replayed manifest, same seq", "dev-1", replay_same_seq,
             None, "desired_already_handled"),
        Case("replayed manifest, lower seq", "dev-1", lambda: c.desire("dev-1", old_v2),
             "rejected", "replayed manifest: seq 4 is below"),
        Case("expired manifest", "dev-1",
             manifest_case(now=time.time() - 7200, ttl=3600.0), "rejected", "expired at"),
        Case("manifest for other hardware", "dev-1", manifest_case(hardware=["rpi5"]),
             "rejected", "targets hardware rpi5, this is test-hw"),
        Case("manifest for another fleet", "dev-1", manifest_case(fleet="elsewhere"),
             None, "other_device"),
        Case("manifest for another device", "dev-1", for_other, None, "other_device"),
        Case("unsigned manifest", "dev-1", signed(unsigned),
             "rejected", "malformed desired state: field 'signature'"),
        Case("signature alg none", "dev-1", signed(alg_none),
             "rejected", "unsupported signature algorithm 'none'"),
        Case("signed by an unknown key", "dev-1", signed(lambda e: None, other),
             "rejected", "unknown signing key"),
        Case("unknown key under the fleet key's id", "dev-1",
             signed(forged_key_id, other), "rejected", "bad signature"),
        Case("manifest changed after signing", "dev-1", signed(modified),
             "rejected", "bad signature"),
        Case("replayed manifest, lower seq, after an agent restart", "dev-1",
             lambda: c.desire("dev-1", old_v2), "rejected", "replayed manifest: seq 4 is below",
             before=restart),
    ]  # fmt: skip


def test_tampered_artifacts_and_manifests_activate_nothing(
    workspace, signing_key, broker, topic_prefix, tmp_path
):
    server = Server(broker, topic_prefix, signing_key.private)
    http = LyingServer()
    c = Campaign(workspace, signing_key, server, http)
    agents: dict[str, Agent] = {}
    v1 = onnx_model(0)

    def start(device: str, **over: Any) -> Agent:
        config = agent_config(
            tmp_path / device, broker, topic_prefix, signing_key.public, device=device,
            download_timeout_s=1.5, download_stall_s=0.5, **over,
        )  # fmt: skip
        agent = Agent(config)
        agent.start()
        agents[device] = agent
        wait_until(lambda: agent.connected, what=f"{device} connected")
        return agent

    def restart() -> None:  # a new agent process would do the same: same state directory
        agents.pop("dev-1").stop()
        again = start("dev-1")
        wait_until(lambda: again.stats.get("messages_received"), what="the retained desired")
        again.wait_idle()

    def serving_v1(agent: Agent) -> bool:
        model = agent.predictor.model
        if model is None or model.ref()["seq"] != V1_SEQ:
            return False
        scores = [p["scores"] for p in agent.predictor.predict_features(v1.matrix)]
        np.testing.assert_allclose(scores, v1.probabilities, atol=1e-5)
        return True

    rows = []
    try:
        start("dev-1")
        start("dev-2", artifact_transport="http", http_download_retries=1)
        http.blobs[hashlib.sha256(c.data[1]).hexdigest()] = c.data[1]
        for device, over_http in (("dev-1", False), ("dev-2", True)):  # v1, genuinely
            m = c.manifest(1, device, V1_SEQ, http=over_http)
            c.chunks(m, c.data[1])
            c.desire(device, c.envelope(m))
            server.wait_event(device, "activated", V1_SEQ)
            wait_until(lambda d=device: serving_v1(agents[d]), what=f"{device} serving v1")
        old_v2 = c.envelope(c.manifest(2, "dev-1", 4))  # genuine once, captured by an attacker
        for case in _cases(c, old_v2, restart):
            if case.before is not None:
                case.before()
            agent = agents[case.device]
            events_before = len(server.events(case.device))
            counters_before = agent.stats
            case.deliver()
            if case.event is not None:
                got = wait_until(
                    lambda d=case.device, n=events_before, e=case.event: next(
                        (x for x in server.events(d)[n:] if x["event"] == e), None
                    ),
                    15,
                    f"{case.name}: a {case.event} event",
                )
                outcome = f"{got['event']}" + (f" at {got['step']}" if got.get("step") else "")
                reason = got["reason"]
            else:
                wait_until(
                    lambda a=agent, k=case.reason, n=counters_before.get(case.reason, 0): (
                        a.stats.get(k, 0) > n
                    ),
                    15,
                    f"{case.name}: counter {case.reason}",
                )
                outcome, reason = "ignored", f"counted as {case.reason}"
            agent.wait_idle()
            new_events = server.events(case.device)[events_before:]
            rows.append(
                {
                    "case": case.name,
                    "outcome": outcome,
                    "reason": reason,
                    "right": case.reason in reason,
                    "activated": sum(1 for x in new_events if x["event"] == "activated"),
                    "v1 serving": serving_v1(agent),
                }
            )
        states = {
            d: read_retained(broker, f"edgeops/{topic_prefix}/devices/{d}/state") for d in agents
        }
    finally:
        for agent in agents.values():
            agent.stop()
        http.close()
        server.close()

    print()
    for r in rows:
        print(f"  {r['case']:<52} {r['outcome']:<20} {r['reason'][:90]}")
    activated = sum(r["activated"] for r in rows)
    wrong = [r for r in rows if not r["right"]]
    lost_v1 = [r["case"] for r in rows if not r["v1 serving"]]
    figure(
        f"tampering: activated {activated} of {len(rows)} tampered deliveries; "
        f"{len(rows) - len(wrong)} of {len(rows)} refused with the expected event and reason; "
        f"v1 kept serving after {len(rows) - len(lost_v1)} of {len(rows)}"
    )
    assert activated == 0
    assert not wrong, wrong
    assert not lost_v1, lost_v1
    for device, state in states.items():
        assert state["online"] and state["model"]["seq"] == V1_SEQ, (device, state)
