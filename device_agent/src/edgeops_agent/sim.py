"""A fleet of real agents in one process, for scale tests and benchmarks.

Each simulated device is a real :class:`~edgeops_agent.agent.Agent` with its own
state directory and MQTT connection (``sim-000``, ``sim-001``, ...); they share
one small :class:`~edgeops_agent.worker.WorkerPool`, so the per-agent cost is
one paho network thread and a mailbox. ``kill(i)`` stops a device as a crash
would (the broker publishes its last will); ``restart(i)`` brings it back on the
same state directory.

>>> import tempfile, pathlib
>>> from edgeops_agent.config import AgentConfig
>>> base = AgentConfig(device="x", fleet="lab", state_dir=pathlib.Path("/unused"),
...                    public_keys=(bytes(32),), runtimes=("onnxruntime",))
>>> fleet = SimulatedFleet(3, base, pathlib.Path(tempfile.mkdtemp()))
>>> fleet.devices
['sim-000', 'sim-001', 'sim-002']
"""

from __future__ import annotations

from pathlib import Path

from .agent import Agent
from .config import AgentConfig
from .worker import WorkerPool

__all__ = ["SimulatedFleet"]


class SimulatedFleet:
    """``n`` agents configured like ``base_config`` but with their own device id and state."""

    def __init__(
        self,
        n: int,
        base_config: AgentConfig,
        state_root: Path,
        *,
        prefix: str = "sim",
        threads: int | None = None,
    ) -> None:
        self.state_root = Path(state_root)
        self.configs = [
            base_config.replace(
                device=f"{prefix}-{i:03d}",
                state_dir=self.state_root / f"{prefix}-{i:03d}",
                http_port=None,
            )
            for i in range(n)
        ]
        self.pool = WorkerPool(threads or min(8, max(1, n // 16 + 1)), name=f"{prefix}-fleet")
        self.agents: list[Agent | None] = [None] * n
        self._started = False

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def devices(self) -> list[str]:
        return [c.device for c in self.configs]

    def agent(self, i: int) -> Agent:
        agent = self.agents[i]
        if agent is None:
            raise RuntimeError(f"simulated device {i} is not running; restart({i}) first")
        return agent

    def start(self) -> None:
        """Start every agent (they connect in the background)."""
        self.pool.start()
        self._started = True
        for i in range(len(self.configs)):
            if self.agents[i] is None:
                self.restart(i)

    def stop(self) -> None:
        """Stop every agent cleanly (offline states published), then the pool."""
        for i, agent in enumerate(self.agents):
            if agent is not None:
                agent.stop()
                self.agents[i] = None
        self.pool.stop()
        self._started = False

    def kill(self, i: int) -> None:
        """Stop agent ``i`` as a crash would: no offline state, the broker's will says it."""
        agent = self.agents[i]
        if agent is not None:
            agent.kill()
            self.agents[i] = None

    def restart(self, i: int) -> Agent:
        """(Re)start agent ``i`` on its state directory; a running one is stopped first."""
        if not self._started:
            raise RuntimeError("start() the fleet first")
        if self.agents[i] is not None:
            self.agent(i).stop()
        agent = Agent(self.configs[i], pool=self.pool)
        agent.start()
        self.agents[i] = agent
        return agent

    def __enter__(self) -> SimulatedFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
