"""Signing key rotation: a new key announced under the old one, followed by real agents.

The chain logic is pinned as a pure function first (edgeops_protocol.keychain), then the
server's keys folder (edgeops.fleet.keys) and `edgeops keys rotate|retire|publish`, then
agents on Mosquitto that were configured with the old key only.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from typer.testing import CliRunner

from edgeops.cli import app as cli
from edgeops.errors import NotFound
from edgeops.fleet.keys import (
    generate_key,
    key_chain,
    load_key,
    retire_keys,
    rotate_key,
)
from edgeops_agent.agent import Agent
from edgeops_protocol.keychain import (
    KeyTrust,
    announce_key,
    follow_chain,
    keys_message,
    keys_topic,
    parse_keys_message,
)
from edgeops_protocol.manifest import generate_keypair, key_id, sign_manifest
from edgeops_protocol.topics import ProtocolError
from test_agent_kit import (
    Server,
    agent_config,
    make_manifest,
    onnx_model,
    retained_payload,
    wait_until,
)

DEV = "dev-1"
T0 = 1_900_000_000.0


def _pair():
    private, public = generate_keypair()
    return private, public, key_id(public)


# --- the chain, as a pure function ---------------------------------------------------------
def test_a_device_follows_the_chain_from_its_configured_key():
    a, a_pub, a_id = _pair()
    b, b_pub, b_id = _pair()
    _, c_pub, c_id = _pair()
    chain = [
        announce_key("lab", b_pub, a, issued_at=T0, retire_previous_at=T0 + 100),
        announce_key("lab", c_pub, b, issued_at=T0 + 50, retire_previous_at=T0 + 200),
    ]
    parsed = parse_keys_message(keys_message("lab", chain))["chain"]
    out = follow_chain(KeyTrust(), parsed, fleet="lab", configured={a_id: a_pub}, now=T0 + 60)
    assert out.added == (b_id, c_id) and out.rejected == () and out.changed
    assert out.trust.retire_at == {a_id: T0 + 100, b_id: T0 + 200}
    trust = out.trust
    assert set(trust.trusted({a_id: a_pub}, T0 + 60)) == {a_id, b_id, c_id}
    assert set(trust.trusted({a_id: a_pub}, T0 + 100)) == {b_id, c_id}  # a retired, config or not
    assert trust.trusted({a_id: a_pub}, T0 + 200) == {c_id: c_pub}
    assert KeyTrust.from_dict(json.loads(json.dumps(trust.to_dict()))) == trust

    again = follow_chain(trust, parsed, fleet="lab", configured={a_id: a_pub}, now=T0 + 300)
    assert (again.added, again.changed, again.rejected) == ((), False, ())  # old links: quiet
    fresh = follow_chain(KeyTrust(), parsed, fleet="lab", configured={c_id: c_pub}, now=T0)
    assert (fresh.added, fresh.rejected) == ((), ())  # provisioned with the newest key


def test_announcements_from_keys_not_trusted_are_refused():
    a, a_pub, a_id = _pair()
    z, _, z_id = _pair()  # an attacker's key
    w, w_pub, w_id = _pair()
    b, b_pub, b_id = _pair()
    configured = {a_id: a_pub}
    forged = announce_key("lab", w_pub, z, issued_at=T0, retire_previous_at=None)
    out = follow_chain(KeyTrust(), [forged], fleet="lab", configured=configured, now=T0)
    assert out.added == () and not out.changed
    assert out.rejected == (f"announcement of key {w_id} is signed by unknown key {z_id}",)

    _, v_pub, v_id = _pair()
    onward = announce_key("lab", v_pub, w, issued_at=T0, retire_previous_at=None)
    out = follow_chain(KeyTrust(), [forged, onward], fleet="lab", configured=configured, now=T0)
    assert out.rejected == (f"announcement of key {v_id} is signed by unknown key {w_id}",)

    tampered = announce_key("lab", b_pub, a, issued_at=T0, retire_previous_at=None)
    tampered["announcement"]["public_key"] = base64.b64encode(w_pub).decode()
    tampered["announcement"]["key_id"] = w_id
    out = follow_chain(KeyTrust(), [tampered], fleet="lab", configured=configured, now=T0)
    assert out.rejected == (f"announcement of key {w_id} has a bad signature",)

    other = announce_key("other", b_pub, a, issued_at=T0, retire_previous_at=None)
    out = follow_chain(KeyTrust(), [other], fleet="lab", configured=configured, now=T0)
    assert out.rejected == (f"announcement of key {b_id} is for fleet other, not lab",)

    # once a is retired, nothing it signs is believed, and a retired key never returns
    link = announce_key("lab", b_pub, a, issued_at=T0, retire_previous_at=T0)
    trust = follow_chain(KeyTrust(), [link], fleet="lab", configured=configured, now=T0).trust
    late = announce_key("lab", w_pub, a, issued_at=T0 + 1, retire_previous_at=None)
    out = follow_chain(trust, [link, late], fleet="lab", configured=configured, now=T0 + 1)
    assert out.rejected == (f"announcement of key {w_id} is signed by retired key {a_id}",)
    back = announce_key("lab", a_pub, b, issued_at=T0 + 2, retire_previous_at=None)
    out = follow_chain(trust, [back], fleet="lab", configured=configured, now=T0 + 2)
    assert out.rejected == (f"key {a_id} was retired; it cannot be announced again",)


def test_a_retirement_can_come_earlier_never_later():
    a, a_pub, a_id = _pair()
    _, b_pub, _ = _pair()
    configured = {a_id: a_pub}
    week = announce_key("lab", b_pub, a, issued_at=T0, retire_previous_at=T0 + 7 * 86400)
    now = announce_key("lab", b_pub, a, issued_at=T0, retire_previous_at=T0 + 10)
    never = announce_key("lab", b_pub, a, issued_at=T0, retire_previous_at=None)
    trust = follow_chain(KeyTrust(), [week], fleet="lab", configured=configured, now=T0).trust
    trust = follow_chain(trust, [now], fleet="lab", configured=configured, now=T0 + 1).trust
    assert trust.retire_at[a_id] == T0 + 10
    out = follow_chain(trust, [week, never], fleet="lab", configured=configured, now=T0 + 2)
    assert not out.changed and out.trust.retire_at[a_id] == T0 + 10


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(type="desired"), "expected a 'keys' message"),
        (lambda m: m.update(chain={}), "field 'chain' must be a list"),
        (lambda m: m["chain"][0]["announcement"].update(type="deploy"), "type must be 'key'"),
        (lambda m: m["chain"][0]["announcement"].update(key_id="XYZ"), "must be a key id"),
        (lambda m: m["chain"][0]["signature"].update(alg="hmac-sha256"), "ed25519 signature"),
        (lambda m: m["chain"][0]["signature"].update(value="AAAA"), "base64 of 64 bytes"),
        (lambda m: m["chain"][0]["announcement"].update(issued_at=True), "finite number"),
        (lambda m: m.update(chain=m["chain"] * 65), "at most 64 links"),
    ],
)
def test_malformed_keys_messages_are_protocol_errors(mutate, message):
    a, _, _ = _pair()
    _, b_pub, _ = _pair()
    msg = json.loads(
        keys_message("lab", [announce_key("lab", b_pub, a, issued_at=T0, retire_previous_at=1)])
    )
    mutate(msg)
    with pytest.raises(ProtocolError, match=message):
        parse_keys_message(json.dumps(msg).encode())


# --- the server's keys folder ---------------------------------------------------------------
def test_rotation_makes_the_new_key_active_and_keeps_the_old_ones(tmp_path):
    keys = tmp_path / "keys"
    first = generate_key(keys)
    r1 = rotate_key(keys, "lab", grace=3600, now=T0)
    r2 = rotate_key(keys, "lab", grace=None, now=T0 + 10)
    assert load_key(keys) == r2.new and r1.previous == first and r2.previous == r1.new
    assert (keys / "signing.pub").read_text().strip() == r2.new.public_b64
    assert sorted(p.stem for p in (keys / "archive").glob("*.key")) == sorted(
        k.key_id for k in (first, r1.new, r2.new)
    )
    assert oct((keys / "archive" / f"{first.key_id}.key").stat().st_mode & 0o777) == "0o600"
    chain = key_chain(keys)
    assert [(c["announcement"]["previous"], c["announcement"]["key_id"]) for c in chain] == [
        (first.key_id, r1.new.key_id),
        (r1.new.key_id, r2.new.key_id),
    ]
    assert [c["announcement"]["retire_previous_at"] for c in chain] == [T0 + 3600, None]

    assert retire_keys(keys, "lab", now=T0 + 20) == [first.key_id, r1.new.key_id]
    assert [c["announcement"]["retire_previous_at"] for c in key_chain(keys)] == [T0 + 20] * 2
    assert retire_keys(keys, "lab", now=T0 + 30) == []  # nothing left to retire
    trust = follow_chain(
        KeyTrust(),
        parse_keys_message(keys_message("lab", key_chain(keys)))["chain"],
        fleet="lab",
        configured={first.key_id: first.public},
        now=T0 + 20,
    ).trust
    assert trust.trusted({first.key_id: first.public}, T0 + 20) == {r2.new.key_id: r2.new.public}

    with pytest.raises(Exception, match="belongs to fleet 'lab', not 'other'"):
        rotate_key(keys, "other")
    generate_key(keys, force=True)  # a forced key is not announced: the chain starts again
    assert key_chain(keys) == []


def test_a_key_loaded_before_a_rotation_signs_with_the_new_key_after_it(tmp_path):
    keys = tmp_path / "keys"
    generate_key(keys)
    held = load_key(keys)  # as a long-running controller holds it
    before = held.current()
    rotation = rotate_key(keys, "lab")
    assert held.key_id == rotation.new.key_id and held.current() != before
    assert held == rotation.new and held.public_b64 == rotation.new.public_b64
    m = make_manifest(onnx_model(0), fleet="lab", device=DEV, seq=1)
    assert sign_manifest(m, held.private)["signature"]["key_id"] == rotation.new.key_id
    with pytest.raises(NotFound, match="run `edgeops keys generate`"):
        load_key(tmp_path / "none")


def test_a_rotation_stopped_before_signing_key_was_written_is_finished_by_load_key(tmp_path):
    keys = tmp_path / "keys"
    first = generate_key(keys)
    saved = (keys / "signing.key").read_bytes()
    rotation = rotate_key(keys, "lab", now=T0)
    (keys / "signing.key").write_bytes(saved)  # as if the process died before replacing it
    assert load_key(keys) == rotation.new != first


# --- the CLI ---------------------------------------------------------------------------------
def test_cli_rotate_retire_publish_and_the_audit_log(ws, broker, monkeypatch):
    from edgeops import audit

    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    runner = CliRunner()
    home = ["-w", str(ws.settings.home)]

    def run(*args, code=0):
        r = runner.invoke(cli, [*home, "keys", *args])
        assert r.exit_code == code, r.output
        return r

    first = generate_key(ws.settings.keys_dir)
    fleet = ws.settings.fleet
    assert "never rotated" in run("publish").output
    assert "grace '1y' is not a duration" in run("rotate", "--grace", "1y", code=2).output
    assert load_key(ws.settings.keys_dir) == first  # nothing rotated
    out = json.loads(run("rotate", "--grace", "12h", "--json").output)
    active = load_key(ws.settings.keys_dir).current()
    assert out["key_id"] == active.key_id and out["previous"] == first.key_id
    assert out["published"] and out["topic"] == keys_topic(fleet)
    assert out["retire_previous_at"] == pytest.approx(time.time() + 12 * 3600, abs=60)
    retained = parse_keys_message(retained_payload(broker, keys_topic(fleet)))
    assert retained["chain"] == key_chain(ws.settings.keys_dir)
    assert json.loads(run("show", "--json").output)["key_id"] == active.key_id

    plain = run("rotate", "--grace", "never", "--no-publish").output
    assert "NOT announced yet" in plain and "until `edgeops keys retire`" in plain
    third = load_key(ws.settings.keys_dir).current()
    assert len(parse_keys_message(retained_payload(broker, keys_topic(fleet)))["chain"]) == 1
    assert "Published" in run("publish").output
    assert len(parse_keys_message(retained_payload(broker, keys_topic(fleet)))["chain"]) == 2

    retired = json.loads(run("retire", "--json").output)
    assert retired == {
        "retired": [first.key_id, active.key_id],
        "active": third.key_id,
        "topic": keys_topic(fleet),
    }
    assert "Nothing to retire" in run("retire").output
    entries = [(e["action"], e["subject"]) for e in audit.entries(ws.db, action="key")][::-1]
    assert entries == [
        ("key.generate", first.key_id),
        ("key.rotate", active.key_id),
        ("key.rotate", third.key_id),
        ("key.retire", first.key_id),
        ("key.retire", active.key_id),
    ]

    monkeypatch.setenv("EDGEOPS_MQTT_URL", "mqtt://127.0.0.1:1")  # nothing listens there
    failed = run("rotate", code=6).output
    assert "is active, but the announcement was not published" in failed
    assert "edgeops keys publish" in failed


# --- agents on Mosquitto -----------------------------------------------------------------------
@pytest.fixture
def rig(broker, topic_prefix, tmp_path):
    """A keys folder with the fleet's first key, a server signing with it, and agents that
    were configured with that key only; ``clock`` shifts the agents' time."""
    keys = tmp_path / "keys"
    first = generate_key(keys)
    server = Server(broker, topic_prefix, first.private)
    shift = [0.0]
    started: list[Agent] = []

    def start(**over) -> Agent:
        config = agent_config(tmp_path / "state", broker, server.fleet, first.public, **over)
        agent = Agent(config, clock=lambda: time.time() + shift[0])
        agent.start()
        started.append(agent)
        wait_until(lambda: agent.connected, what="agent connected")
        return agent

    def publish_chain() -> None:
        server.publish(keys_topic(server.fleet), keys_message(server.fleet, key_chain(keys)))

    yield keys, first, server, start, publish_chain, shift
    for agent in started:
        agent.stop()
    server.close()


def _serving_seq(agent):
    model = agent.predictor.model
    return None if model is None else model.ref()["seq"]


def test_after_rotation_an_agent_configured_with_the_old_key_accepts_the_new_one(rig):
    keys, first, server, start, publish_chain, _ = rig
    agent = start()
    server.deploy(onnx_model(0), DEV, seq=5)
    server.wait_event(DEV, "activated", 5)

    rotation = rotate_key(keys, server.fleet, now=time.time())
    publish_chain()
    wait_until(lambda: agent.stats.get("keys_added") == 1, what="new key trusted")
    stored = json.loads((agent.config.state_dir / "keys.json").read_bytes())
    assert list(stored["announced"]) == [rotation.new.key_id]
    assert stored["retire_at"] == {first.key_id: rotation.retire_previous_at}

    server.private_key = load_key(keys).private  # what the controller signs with now
    assert key_id(load_key(keys).public) == rotation.new.key_id
    manifest = server.deploy(onnx_model(1), DEV, seq=6)
    server.wait_event(DEV, "activated", 6)
    wait_until(lambda: _serving_seq(agent) == 6, what="seq 6 serving")
    assert agent.config.public_keys == (first.public,)  # agent.toml was never changed

    # across a restart, with the announcement gone from the broker: keys.json remembers
    agent.stop()
    server.publish(keys_topic(server.fleet), b"")  # clears the retained chain
    again = start()
    server.desire(DEV, {**manifest, "seq": 7, "deployment": f"r7/{DEV}"})
    server.wait_event(DEV, "activated", 7)
    assert again.stats.get("rejected", 0) == 0


def test_a_manifest_signed_by_a_new_key_before_its_announcement_is_taken_after_it(rig):
    keys, _, server, start, publish_chain, _ = rig
    agent = start()
    rotate_key(keys, server.fleet)
    server.private_key = load_key(keys).private
    server.deploy(onnx_model(0), DEV, seq=5)
    assert "unknown signing key" in server.wait_event(DEV, "rejected", 5)["reason"]
    publish_chain()
    server.wait_event(DEV, "activated", 5)
    wait_until(lambda: _serving_seq(agent) == 5, what="seq 5 serving")


def test_an_announcement_signed_by_an_unknown_key_is_rejected(rig):
    _, _, server, start, _, _ = rig
    agent = start()
    z, _, z_id = _pair()
    w, w_pub, w_id = _pair()
    forged = announce_key(server.fleet, w_pub, z, issued_at=time.time(), retire_previous_at=None)
    server.publish(keys_topic(server.fleet), keys_message(server.fleet, [forged]))
    wait_until(lambda: agent.stats.get("keys_rejected") == 1, what="announcement refused")
    assert "keys_added" not in agent.stats
    assert not (agent.config.state_dir / "keys.json").exists()

    m = make_manifest(onnx_model(0), fleet=server.fleet, device=DEV, seq=5)
    server.desire(DEV, json.dumps(sign_manifest(m, w)).encode())
    event = server.wait_event(DEV, "rejected", 5)
    assert event["reason"] == f"unknown signing key {w_id!r}"
    assert agent.store.accepted_seq == 0 and _serving_seq(agent) is None
    assert z_id != w_id


def test_a_manifest_signed_by_a_retired_key_is_rejected_after_retirement(rig):
    keys, first, server, start, publish_chain, shift = rig
    agent = start()
    rotate_key(keys, server.fleet, grace=600)
    publish_chain()
    wait_until(lambda: agent.stats.get("keys_added") == 1, what="new key trusted")
    # within the grace period the old key still signs: the retained manifest of a device
    # that the controller has not re-signed yet must still install
    server.deploy(onnx_model(0), DEV, seq=5)
    server.wait_event(DEV, "activated", 5)

    shift[0] = 601.0  # the grace period is over on the device
    server.deploy(onnx_model(1), DEV, seq=6)  # still signed with the old key
    assert server.wait_event(DEV, "rejected", 6)["reason"] == (
        f"signing key {first.key_id!r} was retired"
    )
    server.private_key = load_key(keys).private
    server.deploy(onnx_model(1), DEV, seq=7)
    server.wait_event(DEV, "activated", 7)


def test_keys_retire_is_followed_at_once(rig):
    keys, first, server, start, publish_chain, _ = rig
    agent = start()
    rotate_key(keys, server.fleet, grace=None)
    publish_chain()
    wait_until(lambda: agent.stats.get("keys_added") == 1, what="new key trusted")
    server.deploy(onnx_model(0), DEV, seq=5)  # old key, no retirement time yet: fine
    server.wait_event(DEV, "activated", 5)

    retire_keys(keys, server.fleet)
    publish_chain()
    wait_until(lambda: first.key_id in agent.keys.retired(time.time()), what="old key retired")
    server.deploy(onnx_model(1), DEV, seq=6)
    assert "was retired" in server.wait_event(DEV, "rejected", 6)["reason"]
    assert _serving_seq(agent) == 5
