"""The edgeops device agent. It must not import TensorFlow, pandas, SQLAlchemy or FastAPI.

Public names (imported on first use, so ``import edgeops_agent`` stays cheap)::

    Agent(config)            the agent: start(), stop(), run_forever(), predictor, stats
    AgentConfig, load_config the configuration (agent.toml)
    Predictor                local predictions with the active model
    SimulatedFleet           N real agents in one process, for scale tests
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "Predictor",
    "SimulatedFleet",
    "__version__",
    "load_config",
]

_LAZY = {
    "Agent": "agent",
    "AgentConfig": "config",
    "load_config": "config",
    "AgentError": "errors",
    "Predictor": "serve",
    "SimulatedFleet": "sim",
}

if TYPE_CHECKING:
    from .agent import Agent
    from .config import AgentConfig, load_config
    from .errors import AgentError
    from .serve import Predictor
    from .sim import SimulatedFleet


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edgeops_agent' has no attribute {name!r}")
