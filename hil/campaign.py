"""A campaign: set up the targets, the broker, the model and the server side, run the
scenarios, tear everything down.

:class:`Campaign` is a context manager; ``with Campaign(spec, workdir) as c:
report = c.run()``. Setup, in order:

1. a signing key and, for ``netns`` targets, a namespace and link each (:mod:`hil.netns`);
2. the broker: the operator's (``broker.url``) or Mosquitto started here;
3. on every target: install the agent, write its config, start it (:mod:`hil.hosts`);
4. the run's own workspace (SQLite, in ``workdir/workspace``) and the model, trained
   and registered there (:mod:`hil.model`) while the agents connect;
5. the real server side on this machine: an MQTT client, the
   :class:`~edgeops.fleet.controller.RolloutController`, and the
   :class:`~edgeops.monitoring.collector.Collector` on a thread of its own;
6. wait until every target's agent says it is online.

Teardown stops the agents (SIGTERM), copies their logs to ``workdir/logs``, stops the
collector and the broker, removes the namespaces and, with ``uninstall``, what was
installed on the SSH targets. Each step runs even if the one before failed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil.agentconf import agent_toml
from hil.bundle import Bundle
from hil.errors import HilError
from hil.hosts import Host, NetnsHost, SshHost
from hil.netns import Network, namespaces_available
from hil.report import Report
from hil.targets import NetnsTarget, Spec

__all__ = ["ISOLATING_ENV", "Campaign"]

# settings that would point the run's workspace somewhere else: refused, not obeyed
ISOLATING_ENV = (
    "EDGEOPS_HOME",
    "EDGEOPS_DB_URL",
    "EDGEOPS_ARTIFACTS",
    "EDGEOPS_FLEET",
    "EDGEOPS_MQTT_URL",
)


def _stderr(line: str) -> None:
    print(f"[hil] {line}", file=sys.stderr, flush=True)


class Campaign:
    def __init__(
        self,
        spec: Spec,
        workdir: Path,
        *,
        log: Callable[[str], None] | None = None,
        uninstall: bool = False,
        ssh: str = "ssh",
        token: str | None = None,
    ) -> None:
        self.spec = spec
        self.workdir = Path(workdir).resolve()
        self.log = log or _stderr
        self.uninstall = uninstall
        self.ssh = ssh
        self.token = token or secrets.token_hex(3)
        self.fleet = spec.campaign.fleet or f"hil-{self.token}"
        self.hosts: list[Host] = []
        self.network: Network | None = None
        self.broker: Any = None
        self.server_url = ""
        self.broker_info: dict[str, Any] = {}
        self.ws: Any = None
        self.key: Any = None
        self.model_ref = ""
        self.client: Any = None
        self.controller: Any = None
        self.collector: Any = None
        self._collector_thread: threading.Thread | None = None
        self.rolled_out = False
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}

    # --- setup ---------------------------------------------------------------------------
    def __enter__(self) -> Campaign:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        set_env = [v for v in ISOLATING_ENV if os.environ.get(v)]
        if set_env:
            raise HilError(f"unset {', '.join(set_env)}: the campaign uses a workspace of its own")
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise HilError(f"{self.workdir} is not empty: give each run a folder of its own")
        self.workdir.mkdir(parents=True, exist_ok=True)
        from edgeops.fleet.keys import generate_key

        self.key = generate_key(self.workdir / "keys")
        self._hosts()
        self._broker()
        self._agents()  # first: an unreachable device is found before the model is trained
        self._model()
        self._server()
        self._wait_online()

    def _hosts(self) -> None:
        netns = [t for t in self.spec.targets if isinstance(t, NetnsTarget)]
        if netns:
            ok, why = namespaces_available()
            if not ok:
                raise HilError(f"netns targets cannot run here: {why}")
            self.network = Network(self.workdir / "net", self.token)
        for i, t in enumerate(self.spec.targets):
            if isinstance(t, NetnsTarget):
                assert self.network is not None
                link = self.network.add(t.netem, t.link, seed=i)
                self.log(f"{t.name}: namespace {link.namespace}, {link.describe()}")
                self.hosts.append(NetnsHost(t, link, self.workdir / "targets" / t.name))
            else:
                self.hosts.append(SshHost(t, self.ssh))

    def _broker(self) -> None:
        b = self.spec.broker
        ssh_targets = [h for h in self.hosts if isinstance(h, SshHost)]
        if not b.start:
            assert b.url is not None
            self.server_url = b.url
            self.broker_info = {"url": b.url, "kind": "the operator's"}
            for h in ssh_targets:
                h.broker_url = b.device_url or b.url
            self.log(f"broker: {b.url} (the operator's)")
            return
        if ssh_targets and not (b.advertise or b.device_url):
            raise HilError(
                "SSH targets and the harness's broker: set broker.advertise to this machine's "
                "address as the devices see it (and broker.listen, default 0.0.0.0)"
            )
        addresses = [h.link.host_addr for h in self.hosts if isinstance(h, NetnsHost)]
        if ssh_targets:
            addresses.append(b.listen or "0.0.0.0")
        elif b.listen:
            addresses.append(b.listen)
        from hil import broker

        self.broker = broker.start(self.workdir / "broker", b.port, addresses)
        port = self.broker.port
        self.server_url = f"mqtt://127.0.0.1:{port}"
        self.broker_info = {
            "url": self.server_url,
            "kind": "mosquitto, started by the harness",
            "listeners": broker.listen_addresses(addresses),
        }
        for h in self.hosts:
            if isinstance(h, NetnsHost):
                h.broker_url = f"mqtt://{h.link.host_addr}:{port}"
            else:
                h.broker_url = b.device_url or f"mqtt://{b.advertise}:{port}"
        listeners = ", ".join(self.broker_info["listeners"])
        self.log(f"broker: Mosquitto on port {port} ({listeners})")

    def _model(self) -> None:
        from edgeops import Workspace
        from hil.model import register_model

        t0 = time.monotonic()
        self.ws, _ = Workspace.init(
            self.workdir / "workspace", mqtt_url=self.server_url, fleet=self.fleet
        )
        self.model_ref = register_model(self.ws, self.workdir / "data")
        self.timings["model_s"] = time.monotonic() - t0
        self.log(f"model {self.model_ref} trained and registered ({self.timings['model_s']:.1f} s)")

    def _agents(self) -> None:
        c = self.spec.campaign
        bundle = Bundle(self.workdir / "bundle")
        for h in self.hosts:
            t0 = time.monotonic()
            h.prepare(bundle)
            h.write(
                "agent.toml",
                agent_toml(
                    device=h.name,
                    fleet=self.fleet,
                    broker=h.broker_url,
                    public_key=self.key.public,
                    hardware=h.spec.hardware,
                    runtimes=h.spec.runtimes,
                    tags=("hil", f"hil-{h.spec.kind}"),
                    http_port=h.spec.http_port,
                    window=c.window,
                    keepalive=c.keepalive,
                ).encode(),
            )
            h.start_agent()
            self.log(
                f"{h.name}: agent started ({h.facts.get('agent')}; {time.monotonic() - t0:.1f} s)"
            )

    def _server(self) -> None:
        from edgeops.fleet.controller import RolloutController
        from edgeops.monitoring.collector import Collector, CollectorOptions
        from edgeops.monitoring.ingest import Ingestor
        from edgeops.mqtt import MqttClient

        self.client = MqttClient(self.server_url).connect()
        self.controller = RolloutController(self.ws, self.key, self.client)
        opts = CollectorOptions(client_id=f"hil-collector-{self.token}", batch_size=50, linger=0.02)
        self.collector = Collector(Ingestor(self.ws.db, self.fleet), self.server_url, opts)
        self.collector.start()
        self._collector_thread = threading.Thread(
            target=self.collector.run,
            kwargs={"report_every": 3600.0},
            name="hil-collector",
            daemon=True,
        )
        self._collector_thread.start()

    def online(self) -> set[str]:
        """The targets whose agent's retained state says online."""
        self.controller.fleet.sync(self.client, quiet=0.3)
        names = {h.name for h in self.hosts}
        return {d.device_id for d in self.controller.fleet.devices() if d.online} & names

    def _wait_online(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.spec.campaign.online_timeout_s
        want = {h.name for h in self.hosts}
        while (up := self.online()) != want:
            if time.monotonic() > deadline:
                missing = sorted(want - up)
                tails = {h.name: h.logs()[-300:] for h in self.hosts if h.name in missing}
                raise HilError(
                    f"agents not online after {self.spec.campaign.online_timeout_s:.0f}"
                    f" s: {', '.join(missing)}; their logs end: {tails}"
                )
            time.sleep(0.3)
        self.timings["online_s"] = time.monotonic() - t0
        self.log(f"{len(want)} agents online ({self.timings['online_s']:.1f} s)")

    # --- running -------------------------------------------------------------------------
    def report(self) -> Report:
        broker = dict(self.broker_info)
        targets = []
        for h in self.hosts:
            entry: dict[str, Any] = {
                "name": h.name,
                "kind": h.spec.kind,
                "broker": h.broker_url,
                "facts": dict(h.facts),
            }
            if isinstance(h, NetnsHost):
                entry["impairment"] = h.spec.netem.to_dict()
                entry["wire"] = h.link.wire_stats()
            targets.append(entry)
        return Report(self.token, self.fleet, broker, targets)

    def run(self, report: Report | None = None) -> Report:
        """Run the spec's scenarios (the rollout first when telemetry needs a model)."""
        from hil.scenarios import SCENARIOS

        report = report or self.report()
        wanted = self.spec.campaign.scenarios
        order = [s for s in ("rollout", "telemetry") if s in wanted]
        if "telemetry" in order and "rollout" not in order:
            order.insert(0, "rollout")  # telemetry needs the model active on every target
        for name in order:
            self.log(f"scenario {name} ...")
            result = SCENARIOS[name](self)
            if name not in wanted:
                result.summary += " (run because telemetry needs the model active)"
            report.scenarios.append(result)
            self.log(f"scenario {name}: {'ok' if result.ok else 'FAILED'}: {result.summary}")
        fresh = self.report()
        report.targets = fresh.targets
        report.seconds = round(time.monotonic() - self.started, 1)
        return report

    # --- teardown ------------------------------------------------------------------------
    def _step(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:  # teardown goes on: every step must get its chance
            self.log(f"teardown: {what} failed: {exc}")

    def teardown(self) -> None:
        logs = self.workdir / "logs"
        for h in self.hosts:
            self._step(f"stopping {h.name}'s agent", h.stop_agent)

            def save(h: Host = h) -> None:
                logs.mkdir(parents=True, exist_ok=True)
                (logs / f"{h.name}.log").write_text(h.logs())

            self._step(f"fetching {h.name}'s log", save)
        if self.collector is not None:
            self.collector.stop()
            if self._collector_thread is not None:
                self._collector_thread.join(30)
            self._step("closing the collector", self.collector.close)
            self.collector = None
        if self.client is not None:
            self._step("closing the MQTT client", self.client.close)
            self.client = None
        if self.broker is not None:
            self._step("stopping the broker", self.broker.stop)
            self.broker = None
        if self.network is not None:
            self._step("removing the namespaces", self.network.close)
        if self.uninstall:
            for h in self.hosts:
                self._step(f"uninstalling from {h.name}", h.uninstall)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None
