"""Shared fixtures: a fresh store per test on SQLite and on PostgreSQL.

PostgreSQL tests use the server at ``EDGEOPS_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``), creating and dropping a database
of their own. Where it cannot be reached they are skipped locally, but they FAIL
in CI (``CI`` set) or when ``EDGEOPS_REQUIRE_POSTGRES=1``: CI must prove the
store works on PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("EDGEOPS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _require_services() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("EDGEOPS_REQUIRE_POSTGRES") == "1"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's workspace or settings."""
    for var in ("EDGEOPS_HOME", "EDGEOPS_DB_URL", "EDGEOPS_ARTIFACTS", "EDGEOPS_MQTT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EDGEOPS_USER", "tester")
    monkeypatch.chdir(tmp_path)


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; dropped afterwards."""
    try:
        import psycopg
    except ModuleNotFoundError:
        if _require_services():
            pytest.fail("psycopg is not installed; install edgeops[postgres]")
        pytest.skip("psycopg is not installed")
    name = f"edgeops_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if _require_services():
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name).replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'edgeops.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
def ws(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh workspace (edgeops.toml in tmp_path/ws) on the parametrized database."""
    from edgeops import Workspace

    monkeypatch.setenv("EDGEOPS_DB_URL", db_url)
    workspace, created = Workspace.init(tmp_path / "ws")
    assert created
    yield workspace
    workspace.close()


def store_snapshot(workspace) -> dict:
    """Row counts of every table and the artifact files: what 'unchanged' is checked against."""
    from sqlalchemy import func, select

    from edgeops.store.schema import Base

    with workspace.db.session() as s:
        counts = {
            t.name: s.execute(select(func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
        }
    root = workspace.settings.artifact_root
    files = (
        sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "staging" not in p.parts
        )
        if root.exists()
        else []
    )
    return {"rows": counts, "files": files}


@pytest.fixture
def broker(tmp_path):
    """A Mosquitto broker of this test's own, on a free port; stopped afterwards."""
    from brokers import start_broker

    b = start_broker(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def topic_prefix(request) -> str:
    """A fleet name unique to this test, so tests never hear each other."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:40] + "-" + uuid.uuid4().hex[:6]


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled digits as float32, split 75/25 with random_state 0."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return tuple(train_test_split(X.astype(np.float32), y, random_state=0))
