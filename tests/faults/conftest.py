"""Fixtures of the fault campaign: a workspace holding the demo models, and a signing key.

The broker is tests/conftest.py's: Mosquitto of the test's own, with persistence (so a
restart keeps retained messages, sessions and their queued messages).
"""

from __future__ import annotations

import pytest

from edgeops_protocol.manifest import generate_keypair
from faults.kit import register_demo


@pytest.fixture
def workspace(tmp_path, monkeypatch, broker, topic_prefix):
    """A workspace on SQLite whose fleet is this test's, with ``demo`` v1 and v2 registered."""
    from edgeops import Workspace

    monkeypatch.setenv("EDGEOPS_DB_URL", f"sqlite:///{tmp_path / 'store' / 'edgeops.db'}")
    monkeypatch.setenv("EDGEOPS_MQTT_URL", broker.url)
    monkeypatch.setenv("EDGEOPS_FLEET", topic_prefix)
    ws, _ = Workspace.init(tmp_path / "ws")
    register_demo(ws)
    yield ws
    ws.close()


@pytest.fixture
def signing_key():
    """The fleet's signing key (edgeops.fleet.keys.SigningKey), kept in memory only."""
    from edgeops.fleet.keys import SigningKey

    return SigningKey(*generate_keypair())
