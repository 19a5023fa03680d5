"""Kill-point sweep: SIGKILL the agent at every durable write, fsync and rename of a
deployment, then restart it on the same state directory.

The agent's hook (``EDGEOPS_AGENT_KILL_AT``, edgeops_agent/fsutil.py) counts the durable
operations of the process and kills it just before the N-th. A dry run (``=0``) deploys
the new model once and lists every operation; then, for each N, a copy of the same
starting state directory is deployed to by an agent killed at N. After each kill the
device must still have a loadable model (the old one or the new one, never none) and,
restarted without the hook, it must converge to the new model.

The device has a history — v0 then v1 — so the new model is written over the previous
slot's files, and the model is cut into 34 chunks so that most kill points fall in the
download. Four devices share the work, one agent process each at a time.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgeops_agent.agent import Agent
from edgeops_protocol.manifest import generate_keypair
from faults.kit import (
    agent_values,
    figure,
    model_sha,
    serving,
    start_agent,
    state_json,
    stop_agent,
    wait_until,
    write_config,
)
from test_agent_kit import Server, agent_config, onnx_model

pytestmark = pytest.mark.slow

WORKERS = 4
CHUNK_SIZE = 12  # 399 bytes in 34 chunks
OLD, NEW = 5, 6  # manifest seqs of v1 (serving) and v2 (being deployed)
TRACE = re.compile(rb"^edgeops-agent kill point (\d+) (\w+) (.+)$", re.M)


def _models() -> dict:
    return {"v0": onnx_model(2), "v1": onnx_model(0), "v2": onnx_model(1)}


def _where(path: str, state_dir: Path) -> str:
    """An operation's file, the same in every run: relative to the state directory, with
    mkstemp's random part and the chunk number left out."""
    rel = path.split(str(state_dir) + "/", 1)[-1] if path != str(state_dir) else "."
    rel = re.sub(r"^(.*/)?\.(.+)\.[A-Za-z0-9_]+\.tmp$", r"\1.\2.<tmp>", rel)
    return re.sub(
        r"\d+\.chunk", "<i>.chunk", re.sub(r"downloads/[0-9a-f]{64}", "downloads/<sha>", rel)
    )


def _trace(log: Path, state_dir: Path) -> list[tuple[int, str, str]]:
    return [
        (int(n), op.decode(), _where(path.decode(), state_dir))
        for n, op, path in TRACE.findall(log.read_bytes())
    ]


def _converged(state_dir: Path, sha: str) -> bool:
    state = state_json(state_dir)
    if not state or state.get("deploying") or state.get("active") is None:
        return False
    return (state["slots"][state["active"]] or {}).get("sha256") == sha


class Device:
    """One device of the sweep: a starting state directory (v1 active, v0 previous, v2
    desired on the broker) copied afresh for every kill point."""

    def __init__(self, root: Path, name: str, broker, server: Server, public: bytes) -> None:
        self.name, self.root, self.server = name, root / name, server
        self.template = self.root / "template"
        models = _models()
        agent = Agent(agent_config(self.template, broker, server.fleet, public, device=name))
        agent.start()
        try:
            for seq, model in ((OLD - 1, models["v0"]), (OLD, models["v1"])):
                server.deploy(model, name, seq)
                server.wait_event(name, "activated", seq)
        finally:
            agent.stop()
        assert _converged(self.template, model_sha(models["v1"]))
        values = agent_values(name, server.fleet, broker, public)
        self.config = write_config(self.root / "run", values)
        self.state_dir = self.root / "run" / "state"
        self.log = self.root / "run" / "agent.log"
        self.new_sha = model_sha(models["v2"])

    def fresh(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.copytree(self.template, self.state_dir)
        self.log.write_bytes(b"")

    def deploy(self, kill_at: int, timeout: float = 30.0) -> int | None:
        """Start an agent on the state directory with the hook; wait until it killed itself,
        or converged in this run (its boot counted, the new model active and reported in a
        state message) and then stop it. The process's return code."""
        boot = (state_json(self.state_dir) or {}).get("boot", 0)
        seen = len(self.server.states(self.name))  # earlier runs' states do not count
        proc = start_agent(self.config, {"EDGEOPS_AGENT_KILL_AT": str(kill_at)})

        def done() -> bool:
            if proc.poll() is not None:
                return True
            state = state_json(self.state_dir) or {}
            return (
                state.get("boot", 0) > boot
                and _converged(self.state_dir, self.new_sha)
                and any(
                    s.get("boot", "").startswith(f"{state['boot']}-")
                    and (s.get("model") or {}).get("seq") == NEW
                    for s in self.server.states(self.name)[seen:]
                )
            )

        try:
            wait_until(done, timeout, f"{self.name}: the agent to converge or die at {kill_at}")
        finally:
            stop_agent(proc)
        return proc.returncode


def _sweep(device: Device, points: list[int], dry: list[tuple[int, str, str]]) -> list[dict]:
    results = []
    models = _models()
    for n in points:
        device.fresh()
        rc = device.deploy(kill_at=n)
        trace = _trace(device.log, device.state_dir)
        result = {"n": n, "point": dry[n - 1], "killed": rc == -signal.SIGKILL, "seen": trace[-1:]}
        try:
            result["after_kill"] = serving(device.config, models)
        except AssertionError as exc:
            result["after_kill"] = f"none: {exc}"
        device.log.write_bytes(b"")
        restarted = device.deploy(kill_at=0)  # =0: counts, never kills
        result["restart_rc"] = restarted
        try:
            result["after_restart"] = serving(device.config, models)
        except AssertionError as exc:
            result["after_restart"] = f"none: {exc}"
        results.append(result)
    return results


def test_a_kill_at_any_durable_operation_leaves_a_loadable_model_and_the_device_converges(
    broker, topic_prefix, tmp_path
):
    started = time.monotonic()
    private, public = generate_keypair()
    server = Server(broker, topic_prefix, private)
    try:
        devices = [Device(tmp_path, f"kp-{i}", broker, server, public) for i in range(WORKERS)]
        for d in devices:  # v2 is what every device is told to run now
            server.deploy(onnx_model(1), d.name, NEW, chunk_size=CHUNK_SIZE)

        # the dry run: every durable operation of the deployment, in order
        probe = devices[0]
        probe.fresh()
        assert probe.deploy(kill_at=0) == 0
        dry = _trace(probe.log, probe.state_dir)
        assert [n for n, _, _ in dry] == list(range(1, len(dry) + 1))
        assert serving(probe.config, _models()) == "v2"
        total = len(dry)
        assert total >= 100, f"only {total} kill points"
        ops = Counter(op for _, op, _ in dry)

        with ThreadPoolExecutor(WORKERS) as pool:
            parts = pool.map(
                lambda i: _sweep(devices[i], list(range(i + 1, total + 1, WORKERS)), dry),
                range(WORKERS),
            )
            results = sorted((r for part in parts for r in part), key=lambda r: r["n"])
    finally:
        server.close()

    # each kill happened where the dry run said that operation would be
    assert [r["n"] for r in results] == list(range(1, total + 1))
    not_killed = [r["n"] for r in results if not r["killed"]]
    assert not not_killed, f"the agent did not die at kill points {not_killed}"
    moved = [r for r in results if r["seen"] != [r["point"]]]
    assert not moved, f"kill points that differ from the dry run: {moved[:3]}"

    without = [r for r in results if r["after_kill"] not in ("v1", "v2")]
    converged = [r for r in results if r["after_restart"] == "v2" and r["restart_rc"] == 0]
    after = Counter(r["after_kill"] for r in results if r["after_kill"] in ("v1", "v2"))
    figure(
        f"kill-point sweep: {len(without)} of {total} kill points left a device without a "
        f"loadable model; {len(converged)} of {total} converged to the new model after a "
        f"restart ({ops['write']} writes, {ops['fsync']} fsyncs, {ops['rename']} renames; "
        f"after the kill {after['v1']} served the old model and {after['v2']} the new one; "
        f"{time.monotonic() - started:.0f} s)"
    )
    assert not without, without[:3]
    assert len(converged) == total, [r for r in results if r not in converged][:3]
