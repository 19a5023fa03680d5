"""The wire protocol's pure parts: topics, messages, manifests and their checks, fuzzed."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops_protocol.chunks import describe_chunks
from edgeops_protocol.manifest import (
    DeviceFacts,
    Rejected,
    canonical_json,
    check_manifest,
    generate_keypair,
    key_id,
    parse_envelope,
    sign_manifest,
    sign_manifest_hmac,
    verify_envelope,
)
from edgeops_protocol.messages import event_message, parse_event, parse_state, state_message
from edgeops_protocol.topics import (
    ProtocolError,
    chunk_filter,
    chunk_topic,
    device_topic,
    parse_chunk_topic,
    parse_device_topic,
)

NOW = 1_800_000_000.0
FACTS = DeviceFacts("lab", "pi-1", "rpi4", ("ai-edge-litert",))


def manifest(**over) -> dict:
    data = b"model-bytes" * 100
    m = {
        "fleet": "lab",
        "device": "pi-1",
        "seq": 5,
        "action": "deploy",
        "deployment": "r1/pi-1",
        "rollout": "r1",
        "issued_at": NOW - 10,
        "expires_at": NOW + 3600,
        "target": {"hardware": ["rpi4", "rpi3"], "runtime": ["tflite"]},
        "model": {
            "name": "m",
            "version": 2,
            "variant": "tflite-int8",
            "format": "tflite",
            "runtime": "tflite",
        },
        "artifact": describe_chunks(data, 256),
        "health": {
            "inputs": [[0.0, 1.0]],
            "outputs": [[0.5, 0.5]],
            "atol": 0.05,
            "latency_budget_ms": 50,
            "probation_s": 30,
            "max_error_rate": 0.05,
        },
        "serving": {"labels": ["a", "b"]},
    }
    m.update(over)
    return m


@pytest.fixture(scope="module")
def keys():
    return generate_keypair()


def test_topics_round_trip_and_refuse_wildcards():
    t = device_topic("lab", "pi-1", "desired")
    assert t == "edgeops/lab/devices/pi-1/desired"
    assert parse_device_topic(t) == ("lab", "pi-1", "desired")
    sha = "a" * 64
    assert parse_chunk_topic(chunk_topic("lab", sha, 12)) == ("lab", sha, 12)
    assert chunk_filter("lab", sha) == f"edgeops/lab/artifacts/{sha}/+"
    for bad in ("a/b", "+", "#", "", "x" * 65, "-lead", "pi-1\n"):
        with pytest.raises(ProtocolError):
            device_topic("lab", bad, "state")
    with pytest.raises(ProtocolError):
        parse_device_topic("edgeops/lab/devices/pi-1/other")


def test_sign_and_verify(keys):
    private, public = keys
    env = sign_manifest(manifest(), private)
    assert env["signature"]["key_id"] == key_id(public)
    payload = json.dumps(env).encode()
    m = verify_envelope(parse_envelope(payload), {key_id(public): public})
    assert m["seq"] == 5
    assert check_manifest(m, FACTS, accepted_seq=4, now=NOW) is True
    assert check_manifest(m, FACTS, accepted_seq=5, now=NOW) is False  # already handled


def test_canonical_form_is_independent_of_key_order():
    a = manifest()
    b = json.loads(json.dumps(dict(reversed(list(a.items())))))
    assert canonical_json(a) == canonical_json(b)
    assert b"\n" not in canonical_json(a) and b", " not in canonical_json(a)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e["manifest"].update(seq=6), "bad signature"),
        (lambda e: e["manifest"]["artifact"].update(size=1101), "bad signature"),
        (
            lambda e: e["signature"].update(value="AAAA" + e["signature"]["value"][4:]),
            "bad signature",
        ),
        (lambda e: e["signature"].update(key_id="0" * 16), "unknown signing key"),
        (lambda e: e["signature"].update(alg="rsa"), "unsupported signature algorithm"),
        (lambda e: e["signature"].update(value="%%%"), "not base64"),
    ],
)
def test_tampered_envelopes_are_rejected(keys, mutate, reason):
    private, public = keys
    env = json.loads(json.dumps(sign_manifest(manifest(), private)))
    mutate(env)
    with pytest.raises(Rejected, match=reason):
        verify_envelope(env, {key_id(public): public})


def test_a_key_the_device_does_not_trust_is_rejected(keys):
    other_private, _ = generate_keypair()
    _, public = keys
    env = sign_manifest(manifest(), other_private)
    with pytest.raises(Rejected, match="unknown signing key"):
        verify_envelope(env, {key_id(public): public})


@pytest.mark.parametrize(
    ("over", "accepted", "reason"),
    [
        ({"seq": 3}, 4, "replayed manifest: seq 3 is below the accepted 4"),
        ({"expires_at": NOW - 1}, 0, "manifest expired"),
        ({"target": {"hardware": ["esp32"], "runtime": ["tflite"]}}, 0, "targets hardware esp32"),
        (
            {
                "target": {"hardware": ["*"], "runtime": ["onnx"]},
                "model": {
                    "name": "m",
                    "version": 2,
                    "variant": "onnx-f32",
                    "format": "onnx",
                    "runtime": "onnx",
                },
            },
            0,
            "needs runtime onnx",
        ),
        ({"device": "pi-2"}, 0, "not this device"),
    ],
)
def test_device_checks(keys, over, accepted, reason):
    m = manifest(**over)
    with pytest.raises(Rejected, match=reason):
        check_manifest(m, FACTS, accepted_seq=accepted, now=NOW)


def test_hmac_envelopes():
    key = b"k" * 32
    env = sign_manifest_hmac(manifest(), key, "dev-key-1")
    assert verify_envelope(env, hmac_keys={"dev-key-1": key})["seq"] == 5
    with pytest.raises(Rejected, match="bad signature"):
        verify_envelope(env, hmac_keys={"dev-key-1": b"x" * 32})


def test_state_and_event_messages_round_trip():
    state = state_message(
        fleet="lab",
        device="pi-1",
        online=True,
        boot="b1",
        ts=time.time(),
        hardware="rpi4",
        runtimes=["ai-edge-litert"],
        accepted_seq=3,
        model={"name": "m", "version": 1, "variant": "v", "sha256": "a" * 64, "seq": 3},
        previous=None,
        tags=["x"],
    )
    parsed = parse_state(state)
    assert parsed["model"]["version"] == 1 and parsed["previous"] is None
    offline = parse_state(state_message(fleet="lab", device="pi-1", online=False))
    assert offline["online"] is False
    ev = parse_event(
        event_message(
            fleet="lab",
            device="pi-1",
            boot="b1",
            ts=1.0,
            seq=3,
            deployment="r/pi-1",
            rollout="r",
            event="downloading",
            progress=1.7,
        )
    )
    assert ev["progress"] == 1.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"protocol": 2, "type": "state"}', "unsupported protocol 2"),
        (b'{"protocol": true, "type": "state"}', "unsupported protocol True"),
        (b'{"protocol": 1.0, "type": "state"}', "unsupported protocol 1.0"),
        (b'{"protocol": 1, "type": "event"}', "expected a 'state' message"),
        (
            b'{"protocol": 1, "type": "state", "fleet": "lab", "device": "a/b", "online": true}',
            "not valid",
        ),
        (
            b'{"protocol": 1, "type": "state", "fleet": "lab", "device": "d", "online": "yes"}',
            "'online' must be true or false",
        ),
        (b'{"protocol": 1, "type": "state", "x": NaN}', "non-standard JSON constant"),
        (b"x" * (70 * 1024), "over the"),
    ],
)
def test_bad_state_messages(payload, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_state(payload)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_parsers_never_crash_on_junk(payload):
    for parse in (parse_state, parse_event, parse_envelope):
        with contextlib.suppress(ProtocolError):
            parse(payload)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_envelopes_never_verify(keys, data):
    private, public = keys
    env = sign_manifest(manifest(), private)
    raw = bytearray(json.dumps(env).encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    try:
        m = verify_envelope(parse_envelope(bytes(raw)), {key_id(public): public})
    except (ProtocolError, Rejected):
        return
    # only a change outside what is signed (whitespace, equivalent JSON) may still verify
    assert canonical_json(m) == canonical_json(env["manifest"])
