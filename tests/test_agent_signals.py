"""A stop request (SIGTERM) that arrives while the agent is still starting stops it as soon
as it has started, instead of being lost (found by the kill-point sweep)."""

from __future__ import annotations

import threading

from edgeops_agent.agent import Agent
from edgeops_agent.config import AgentConfig


def test_stop_while_starting_is_not_lost(tmp_path):
    config = AgentConfig(
        device="d1",
        fleet="lab",
        state_dir=tmp_path / "state",
        public_keys=(bytes(32),),
        runtimes=("onnxruntime",),
        broker="mqtt://127.0.0.1:1",  # nothing listens: the agent connects in the background
    )
    agent = Agent(config)
    agent.stop()  # what the SIGTERM handler does before run_forever() has started the agent
    done = threading.Event()
    runner = threading.Thread(target=lambda: (agent.run_forever(), done.set()), daemon=True)
    runner.start()
    assert done.wait(15), "run_forever() did not return after a stop during start-up"
    assert agent._stopped.is_set() and not agent._running
