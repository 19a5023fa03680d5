"""The agent's errors: one tree, each message one line that says what to do.

::

    AgentError
     ├── ConfigError        the agent.toml is wrong (the CLI exits 2)
     ├── StoreError         the state directory cannot be read or written, or is locked
     ├── DeployFailed       a deployment step failed; ``step`` names it (download, verify,
     │                      install, health, activate, probation); the previous model serves on
     └── PredictionError    a prediction request is invalid or the model failed on it
          └── NoModel       no model is active (yet)

Manifests the device refuses are not errors of the agent: they raise
:class:`edgeops_protocol.manifest.Rejected` and become ``rejected`` events.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "DeployFailed",
    "NoModel",
    "PredictionError",
    "StoreError",
]


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration file (or a value in it) is invalid."""


class StoreError(AgentError):
    """The state directory cannot be used."""


class DeployFailed(AgentError):
    """A deployment step failed; the device keeps its previous model."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class PredictionError(AgentError):
    """A prediction request that cannot be served (bad input, or the model failed)."""


class NoModel(PredictionError):
    """No model is active on this device yet."""
