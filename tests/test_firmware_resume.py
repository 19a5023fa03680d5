"""A download that outlives its firmware: the chunk progress in the state record.

The host firmware is killed (SIGKILL, as a power cut) in the middle of a download,
each time after the chunks the broker had for it were stored, and restarted: it keeps
the chunks it had (re-reading and re-hashing each one against the manifest first),
downloads only the missing ones, and the deployment completes. A stored chunk damaged
while the firmware was down is downloaded again. A state record written by the
previous firmware (format 1, no progress) still loads, with its ``accepted_seq``.

Needs gcc, emlearn and libmosquitto-dev, like ``test_firmware_host``.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

import test_firmware_host as fh
from edgeops.firmware.signing import load_device_keys
from edgeops_protocol.chunks import split_chunks
from edgeops_protocol.topics import chunk_topic, device_topic

# the fixtures of test_firmware_host: the digits workspace, the host firmware, the fleet
models = fh.models
firmware_bin = fh.firmware_bin
fleet = fh.fleet

N_CHUNKS = 8


def _online(watcher, device: str, after: str | None = None) -> dict:
    """The device's online state, from a boot other than ``after``."""

    def fresh():
        watcher.pump()
        st = watcher.states.get(device)
        return st if st and st["online"] and st["boot"] != after else None

    return fh.wait_until(fresh, what=f"{device} online")


def _publish_chunks(client, fleet_name: str, sha: str, chunks: list[bytes], indices) -> None:
    client.publish_all([(chunk_topic(fleet_name, sha, i), chunks[i], True) for i in indices])


def test_a_killed_download_resumes_with_the_chunks_it_had(
    models, firmware_bin, fleet, broker, tmp_path
):
    ws, _key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    fw = fh._firmware(firmware_bin, tmp_path, broker, name, "mcu-r", keys_dir,
                      download_timeout_s=120.0)  # fmt: skip
    dk = load_device_keys(keys_dir)["mcu-r"]
    X = fh._digits()[:200]
    try:
        data = ws.registry.variant_bytes("digits@1", fh.LOADABLE_VARIANT)
        chunk_size = -(-len(data) // N_CHUNKS)  # 8 chunks: every chunk is a tenth or more
        manifest, _ = fh._manifest(
            ws, "digits@1", fleet=name, device="mcu-r", seq=30, chunk_size=chunk_size
        )
        sha = manifest["artifact"]["sha256"]
        chunks = split_chunks(data, chunk_size)
        assert len(chunks) == N_CHUNKS
        envelope = json.dumps(fh._sign(manifest, dk)).encode()
        client.publish_all([(device_topic(name, "mcu-r", "desired"), envelope, True)])

        def held(n: int, boot: str, seq: int) -> dict:
            """The downloading event of ``boot`` for ``seq`` that reports ``n`` chunks held."""
            want = {"seq": seq, "boot": boot, "chunks_held": n}
            return fh.wait_until(
                lambda: watcher.raw_event("mcu-r", "downloading", **want), what=f"{n} chunks held"
            )

        boot = _online(watcher, "mcu-r")["boot"]
        # 1. the broker has chunks 0-2: the firmware stores them, then loses its power
        _publish_chunks(client, name, sha, chunks, range(3))
        first = held(3, boot, 30)
        assert (first["chunks_total"], first["chunks_resumed"], first["chunks_written"]) == (
            N_CHUNKS, 0, 3,
        )  # fmt: skip
        fw.kill()

        # 2. while it is off, the rollout retries with a new seq (the same artifact), and
        # chunks 3-5 appear. After the restart it resumes seq 30, which seq 31 supersedes:
        # the chunks are the artifact's, so 0-2 are kept and only 3-5 written (the broker
        # sends 0-5 again: 0-2 are duplicates); then it loses its power again
        manifest["seq"] = 31
        envelope = json.dumps(fh._sign(manifest, dk)).encode()
        client.publish_all([(device_topic(name, "mcu-r", "desired"), envelope, True)])
        _publish_chunks(client, name, sha, chunks, range(3, 6))
        fw.start()
        boot = _online(watcher, "mcu-r", after=boot)["boot"]
        second = held(6, boot, 31)
        assert (second["chunks_resumed"], second["chunks_damaged"], second["chunks_written"]) == (
            3, 0, 3,
        )  # fmt: skip
        fw.kill()

        # 3. while it is off, chunk 1 is damaged in its slot; chunks 6-7 appear. After the
        # restart the damaged chunk fails its SHA-256, is dropped and downloaded again
        slot = fw.folder / "state" / "slot-0.artifact"
        raw = bytearray(slot.read_bytes())
        raw[chunk_size + 5] ^= 0xFF
        slot.write_bytes(bytes(raw))
        _publish_chunks(client, name, sha, chunks, range(6, N_CHUNKS))
        fw.start()
        boot = _online(watcher, "mcu-r", after=boot)["boot"]
        verified = fh.wait_until(
            lambda: watcher.raw_event("mcu-r", "verified", seq=31, boot=boot), what="verified"
        )
        assert (
            verified["chunks_total"],
            verified["chunks_held"],
            verified["chunks_resumed"],
            verified["chunks_damaged"],
            verified["chunks_written"],
        ) == (N_CHUNKS, N_CHUNKS, 5, 1, 3)  # 5 kept; chunk 1, 6 and 7 written
        assert fh.wait_until(lambda: watcher.event("mcu-r", "activated", 31), what="activated")
        failed = [e for e in watcher.events if e["device"] == "mcu-r" and e["event"] == "failed"]
        assert [(e["seq"], e["step"]) for e in failed] == [(30, "superseded")]
        # no boot ever wrote a chunk twice: 3 + 3 + 3 writes for 8 chunks and 1 damaged
        written = {}
        for e in watcher.raw_events:
            if e["device"] == "mcu-r" and e["event"] in ("downloading", "verified"):
                written[e["boot"]] = max(written.get(e["boot"], 0), e["chunks_written"])
        assert sorted(written.values()) == [3, 3, 3]
        expected = fh._reference(ws, "digits@1", X)
        assert np.array_equal([a["class"] for a in fw.predict(X.tolist())], expected)
        watcher.pump(0.5)
        assert watcher.states["mcu-r"]["model"]["sha256"] == sha
    finally:
        fw.stop()


def _format1_record(generation: int, boot: int, accepted_seq: int) -> bytes:
    """A state record as the previous firmware wrote it (format 1: no download progress)."""
    body = struct.pack("<IIIIqbbqI", 0x5453454F, 1, generation, boot, accepted_seq, -1, -1, 0, 0)
    for _ in range(2):  # two empty slots: flags, seq, version, sizes, time, sha, 4 strings
        body += struct.pack("<BBBqqIId", 0, 0, 0, 0, 0, 0, 0, 0.0) + bytes(32) + bytes(8)
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_state_record_of_the_previous_format_still_loads(
    models, firmware_bin, fleet, broker, tmp_path
):
    ws, _key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    state = tmp_path / "mcu-o" / "state"
    state.mkdir(parents=True)
    (state / "record-1").write_bytes(_format1_record(generation=1, boot=4, accepted_seq=41))
    fw = fh._firmware(firmware_bin, tmp_path, broker, name, "mcu-o", keys_dir)
    dk = load_device_keys(keys_dir)["mcu-o"]
    try:
        st = _online(watcher, "mcu-o")
        assert st["accepted_seq"] == 41 and st["model"] is None
        assert st["boot"].startswith("5-")  # boot 4 + 1
        # anti-rollback holds across the firmware upgrade
        manifest, data = fh._manifest(ws, "digits@1", fleet=name, device="mcu-o", seq=40)
        fh._publish_deployment(client, name, fh._sign(manifest, dk), data)
        replay = fh.wait_until(lambda: watcher.event("mcu-o", "rejected", 40), what="rejected")
        assert replay["reason"] == "replayed manifest: seq 40 is below the accepted 41"
        # and the record it writes now (format 2) loads too: a deployment, then a restart
        manifest, data = fh._manifest(ws, "digits@1", fleet=name, device="mcu-o", seq=42)
        fh._publish_deployment(client, name, fh._sign(manifest, dk), data)
        assert fh.wait_until(lambda: watcher.event("mcu-o", "activated", 42), what="activated")
        assert fw.stop() == 0
        fw.start()
        st = _online(watcher, "mcu-o", after=st["boot"])
        assert st["accepted_seq"] == 42 and st["model"]["version"] == 1
    finally:
        fw.stop()


def test_on_nor_flash_a_damaged_chunk_restarts_the_download_from_an_erased_slot(
    models, firmware_bin, fleet, broker, tmp_path, monkeypatch
):
    """NOR flash (the ESP-IDF and Zephyr ports) cannot rewrite a damaged chunk in place: the
    new bytes read back wrong, so the firmware erases the slot once and downloads every
    chunk again. The host port's slot files act as NOR flash with EDGEOPS_HOST_FLASH=nor."""
    monkeypatch.setenv("EDGEOPS_HOST_FLASH", "nor")
    ws, _key, client, watcher = fleet
    name = ws.settings.fleet
    keys_dir = tmp_path / "device-keys"
    fw = fh._firmware(firmware_bin, tmp_path, broker, name, "mcu-n", keys_dir)
    dk = load_device_keys(keys_dir)["mcu-n"]
    try:
        boot = _online(watcher, "mcu-n")["boot"]
        data = ws.registry.variant_bytes("digits@1", fh.LOADABLE_VARIANT)
        chunk_size = -(-len(data) // N_CHUNKS)
        manifest, _ = fh._manifest(
            ws, "digits@1", fleet=name, device="mcu-n", seq=50, chunk_size=chunk_size
        )
        sha = manifest["artifact"]["sha256"]
        chunks = split_chunks(data, chunk_size)
        envelope = json.dumps(fh._sign(manifest, dk)).encode()
        client.publish_all([(device_topic(name, "mcu-n", "desired"), envelope, True)])
        _publish_chunks(client, name, sha, chunks, range(3))
        want = {"seq": 50, "boot": boot, "chunks_held": 3}
        fh.wait_until(lambda: watcher.raw_event("mcu-n", "downloading", **want), what="3 held")
        fw.kill()
        slot = fw.folder / "state" / "slot-0.artifact"
        raw = bytearray(slot.read_bytes())
        assert len(raw) == 256 * 1024 and raw[len(data) :] == b"\xff" * (len(raw) - len(data))
        at = chunk_size + next(i for i, b in enumerate(chunks[1]) if b)  # a byte with 1 bits
        raw[at] ^= 0xFF
        slot.write_bytes(bytes(raw))
        _publish_chunks(client, name, sha, chunks, range(3, N_CHUNKS))
        fw.start()
        boot = _online(watcher, "mcu-n", after=boot)["boot"]
        verified = fh.wait_until(
            lambda: watcher.raw_event("mcu-n", "verified", seq=50, boot=boot), what="verified"
        )
        # chunks 0 and 2 kept, 1 damaged; its rewrite reads back wrong: the slot is erased
        # and all 8 chunks are written again (what was kept no longer counts)
        assert (verified["chunks_resumed"], verified["chunks_damaged"]) == (0, 1)
        assert (verified["chunks_held"], verified["chunks_written"]) == (N_CHUNKS, N_CHUNKS)
        assert "the slot is erased and the download starts over" in fw.log()
        assert fh.wait_until(lambda: watcher.event("mcu-n", "activated", 50), what="activated")
        X = fh._digits()[:100]
        expected = fh._reference(ws, "digits@1", X)
        assert np.array_equal([a["class"] for a in fw.predict(X.tolist())], expected)
    finally:
        fw.stop()
