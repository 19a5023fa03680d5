"""The artifact server over real sockets: ranges, statuses, ETag, hashing once, refusing
corrupt blobs and unregistered ones; rollouts that put its URL into signed manifests;
``edgeops artifacts serve`` as a process."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgeops.artifact_server as artifact_server
from edgeops.artifact_server import ArtifactServer, parse_range, registered_variants
from edgeops.artifacts import ArtifactStore
from edgeops.errors import ArtifactCorrupt, InvalidInput

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes
SHA = hashlib.sha256(DATA).hexdigest()
CSV = b"a,b\n1,2\n"  # a data set's bytes: in the store, never served


@pytest.fixture
def store(tmp_path):
    s = ArtifactStore(tmp_path / "artifacts")
    s.put_bytes(DATA)
    s.put_bytes(CSV)
    return s


@pytest.fixture
def server(store):
    with ArtifactServer(store, {SHA}.__contains__, port=0) as srv:
        yield srv


def request(srv, method="GET", path=f"/artifacts/{SHA}", **headers):
    """One request on a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection(*srv.address, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_a_whole_artifact_with_its_headers(server):
    status, headers, body = request(server)
    assert (status, body) == (200, DATA)
    assert headers["Content-Length"] == str(len(DATA))
    assert headers["ETag"] == f'"{SHA}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert "immutable" in headers["Cache-Control"]
    assert "Content-Range" not in headers
    assert server.url == f"http://127.0.0.1:{server.address[1]}"


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=1000-", 1000, len(DATA) - 1),
        ("bytes=0-0", 0, 0),
        ("bytes=16-31", 16, 31),
        ("bytes=10000-99999", 10000, len(DATA) - 1),  # the end is clamped to the size
        ("bytes=-4", len(DATA) - 4, len(DATA) - 1),  # a suffix
    ],
)
def test_ranges_are_partial_content(server, header, first, last):
    status, headers, body = request(server, Range=header)
    assert status == 206
    assert body == DATA[first : last + 1]
    assert headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert headers["Content-Length"] == str(last - first + 1)
    assert headers["ETag"] == f'"{SHA}"'


@pytest.mark.parametrize(
    "header",
    [f"bytes={len(DATA)}-", "bytes=50-10", "bytes=abc", "bytes=-", "items=0-5", "bytes=0-1,4-5"],
)
def test_bad_ranges_are_416(server, header):
    status, headers, body = request(server, Range=header)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert DATA[:16] not in body and len(body.decode().splitlines()) == 1


def test_head_has_the_headers_and_no_body(server):
    status, headers, body = request(server, "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(DATA)) and headers["ETag"] == f'"{SHA}"'
    status, headers, body = request(server, "HEAD", Range="bytes=10-19")
    assert (status, body, headers["Content-Length"]) == (206, b"", "10")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/artifacts/{'0' * 64}", 404),  # a digest nobody has
        (f"/artifacts/{hashlib.sha256(CSV).hexdigest()}", 404),  # stored, not served
        ("/", 404),
        ("/artifacts", 404),
        (f"/blobs/{SHA}", 404),
        ("/artifacts/", 400),
        ("/artifacts/xyz", 400),
        (f"/artifacts/{SHA.upper()}", 400),
        (f"/artifacts/{SHA}/", 400),
        (f"/artifacts/{SHA}/../{SHA}", 400),
        ("/artifacts/../../../../etc/passwd", 400),
        ("/artifacts/%2e%2e%2fetc%2fpasswd", 400),
        (f"/artifacts/sha256/{SHA[:2]}/{SHA}", 400),  # the store's layout is not a path here
    ],
)
def test_only_digest_paths_of_served_blobs(server, path, status):
    got, headers, body = request(server, path=path)
    assert got == status
    assert len(body.decode().splitlines()) == 1 and int(headers["Content-Length"]) == len(body)


def test_a_query_string_is_ignored_and_other_methods_are_refused(server):
    assert request(server, path=f"/artifacts/{SHA}?x=1")[2] == DATA
    status, headers, _ = request(server, "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert request(server, "DELETE")[0] == 405
    assert request(server)[2] == DATA  # still there


def test_the_request_log_records_ranges(server):
    request(server, Range="bytes=64-127")
    request(server)
    request(server, path="/artifacts/nope")
    assert [(e["method"], e["range"], e["status"], e["sent"]) for e in server.log] == [
        ("GET", "bytes=64-127", 206, "64-127"),
        ("GET", None, 200, f"0-{len(DATA) - 1}"),
        ("GET", None, 400, None),
    ]


def test_a_blob_is_hashed_once_then_again_when_its_file_changes(store, monkeypatch):
    calls = []
    real = artifact_server.sha256_file

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(artifact_server, "sha256_file", counting)
    with ArtifactServer(store, {SHA}.__contains__, port=0) as srv:
        for header in (None, "bytes=0-9", "bytes=100-"):
            assert request(srv, **({"Range": header} if header else {}))[0] in (200, 206)
        assert len(calls) == 1
        _replace(store.path_for(SHA), DATA)  # restored from a backup: a new file
        assert request(srv)[2] == DATA
        assert len(calls) == 2


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name("restore.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_corrupt_blob_is_never_served(store):
    path = store.path_for(SHA)
    bad = bytearray(DATA)
    bad[5000] ^= 0xFF
    _replace(path, bytes(bad))
    with ArtifactServer(store, {SHA}.__contains__, port=0) as srv:
        for header in ({}, {"Range": "bytes=0-99"}, {"Range": "bytes=4990-5010"}):
            status, _, body = request(srv, **header)
            assert status == ArtifactCorrupt.http_status == 503  # a server-side fault
            assert b"corrupt" in body and bytes(bad)[4990:5010] not in body
        assert request(srv, "HEAD")[0] == 503
        _replace(path, DATA)  # restored: served again
        assert request(srv)[2] == DATA


def test_a_registered_blob_missing_from_the_store_is_404(store):
    os.chmod(store.path_for(SHA), 0o644)
    os.unlink(store.path_for(SHA))
    with ArtifactServer(store, {SHA}.__contains__, port=0) as srv:
        status, _, body = request(srv)
    assert status == 404 and b"missing from the store" in body


def test_a_busy_port_is_a_one_line_error(server, store):
    with pytest.raises(InvalidInput, match=r"cannot listen on 127\.0\.0\.1:\d+: .*--port"):
        ArtifactServer(store, {SHA}.__contains__, port=server.address[1])


def test_parse_range_is_pure():
    assert parse_range("bytes=0-", 1) == (0, 0)
    assert parse_range(" bytes=2-3 ", 10) == (2, 3)
    for bad in ("bytes=0-", "bytes=-1"):
        with pytest.raises(ValueError, match="Range"):
            parse_range(bad, 0)  # nothing satisfies a range of an empty blob
    with pytest.raises(ValueError, match="asks for no bytes"):
        parse_range("bytes=-0", 10)


# --- with a workspace: the registry decides, rollouts carry the URL ---------------------


def test_only_variants_of_registered_models_are_served(ws, monkeypatch):
    from edgeops import Workspace
    from edgeops.fleet.controller import RolloutController, RolloutOptions
    from edgeops.fleet.deploy import ManifestOptions
    from edgeops.fleet.keys import generate_key
    from edgeops.fleet.store import FleetStore
    from edgeops_protocol.manifest import key_id, verify_envelope
    from edgeops_protocol.messages import state_message
    from test_rollout_controller import FakeClient, _version

    monkeypatch.setenv("EDGEOPS_FLEET", "lab")
    ws = Workspace.open(ws.settings.home)  # again, to read EDGEOPS_FLEET
    mv = _version(ws, "m", 1)
    dataset = ws.artifacts.put_bytes(b"t,x\n0,1\n").sha256
    fleet = FleetStore(ws.db, "lab")
    fleet.apply_state(
        json.loads(
            state_message(
                fleet="lab", device="d0", online=True, boot="b", ts=0.0, hardware="rpi4",
                runtimes=["onnxruntime"], accepted_seq=0, model=None, previous=None, tags=[],
            )
        )
    )  # fmt: skip
    key = generate_key(ws.settings.keys_dir)
    client = FakeClient()
    ctl = RolloutController(ws, key, client)
    opts = RolloutOptions(
        stages=(1.0,), manifest=ManifestOptions(artifact_url_base="http://reg.local:8471/")
    )
    ctl.create("m@1", "all", opts)
    ctl.run(max_seconds=0)
    env = client.desired("d0")
    manifest = verify_envelope(env, {key_id(key.public): key.public})  # the url is signed
    onnx = next(v for v in mv.variants if v.name == "onnx-f32")
    art = manifest["artifact"]
    assert art["sha256"] == onnx.sha256
    assert art["url"] == f"http://reg.local:8471/artifacts/{onnx.sha256}"

    with ArtifactServer(ws.artifacts, registered_variants(ws.db), port=0) as srv:
        for variant in mv.variants:  # the original and both converted forms
            status, _, body = request(srv, path=f"/artifacts/{variant.sha256}")
            assert status == 200 and body == ws.registry.variant_bytes(mv.ref, variant.name)
        status, _, body = request(srv, path=f"/artifacts/{dataset}")
        assert status == 404 and b"not a registered model variant" in body
    ws.close()


def test_manifest_options_check_the_artifact_url():
    from edgeops.fleet.deploy import ManifestOptions

    assert ManifestOptions(artifact_url_base="https://h:1/base").artifact_url_base
    for bad in ("ftp://h/x", "h:8471", "http://", "http://u:p@h", "http://h/?q=1", "file:///x"):
        with pytest.raises(InvalidInput, match="must be http://HOST:PORT"):
            ManifestOptions(artifact_url_base=bad)


def test_the_serve_command_runs_until_interrupted(tmp_path):
    from brokers import free_port
    from edgeops import Workspace
    from test_agent_kit import onnx_model

    ws, _ = Workspace.init(tmp_path / "w")
    mv = ws.registry.register("m", onnx_model(0).data, "onnx")
    sha = mv.variants[0].sha256
    ws.close()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeops", "-w", str(tmp_path / "w"), "artifacts", "serve",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", f"/artifacts/{sha}", headers={"Range": "bytes=0-9"})
                resp = conn.getresponse()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        assert resp.status == 206 and resp.read() == onnx_model(0).data[:10]
        conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/artifacts/<sha256>" in out and "stopped" in out
