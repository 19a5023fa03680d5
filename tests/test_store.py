"""The store's schema versioning, reachability errors and concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text

from edgeops import Workspace
from edgeops.errors import SchemaMismatch, StoreError, StoreRejected, StoreUnavailable
from edgeops.store import Database
from edgeops.store import db as db_module


def test_newer_schema_is_refused(ws):
    with ws.db.engine.begin() as conn:
        conn.execute(text("UPDATE edgeops_meta SET value = '999' WHERE key = 'schema_version'"))
    with pytest.raises(SchemaMismatch, match="schema 999, newer than this edgeops understands"):
        Database(ws.db.url)


def test_older_schema_is_upgraded_in_order(ws, monkeypatch):
    """A store at the current version N opened by a release at N+2 runs steps N+1, N+2 once."""
    url = ws.db.url
    ws.close()
    applied = []

    def step(n):
        def run(conn):
            applied.append(n)
            conn.execute(text(f"CREATE TABLE upgrade_step_{n} (id INTEGER PRIMARY KEY)"))

        return run

    n = db_module.SCHEMA_VERSION
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", n + 2)
    monkeypatch.setitem(db_module.MIGRATIONS, n + 1, step(n + 1))
    monkeypatch.setitem(db_module.MIGRATIONS, n + 2, step(n + 2))
    upgraded = Database(url)
    assert applied == [n + 1, n + 2]
    assert upgraded.schema_version() == n + 2
    upgraded.close()
    Database(url).close()
    assert applied == [n + 1, n + 2]


def test_foreign_database_is_not_touched(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="has tables but is not an edgeops store"):
        Database(f"sqlite:///{path}")
    con = sqlite3.connect(path)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["customers"]


def test_unreachable_database_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailable) as info:
        Database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing?connect_timeout=3")
    message = str(info.value)
    assert "cannot open the store" in message
    assert "check that the database is running" in message
    assert "\n" not in message


def test_a_failed_transaction_says_what_failed_and_writes_nothing(pg_database):
    """A refused value is the caller's (422), a lock timeout is "busy, try again", a
    broken statement is a bug: none of them "check that the database is running"."""
    import psycopg
    from sqlalchemy import text

    db = Database(pg_database)
    version = db.schema_version()
    with pytest.raises(StoreRejected) as refused, db.session() as s:
        s.execute(text("UPDATE edgeops_meta SET value = 'x' WHERE key = 'schema_version'"))
        s.execute(text("SELECT CAST(:v AS integer)"), {"v": 2**40})
    message = str(refused.value)
    assert "refused a value" in message and "out of range" in message
    assert "nothing was written" in message and "\n" not in message
    assert refused.value.http_status == 422 and refused.value.exit_code == 6
    assert db.schema_version() == version  # the UPDATE before it was rolled back
    plain = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain) as holder:
        holder.execute("LOCK TABLE edgeops_meta IN ACCESS EXCLUSIVE MODE")
        busy = pytest.raises(StoreUnavailable, match=r"is busy \(.*lock timeout.*try again")
        with busy, db.session() as s:
            s.execute(text("SET LOCAL lock_timeout = '200ms'"))
            s.execute(text("SELECT value FROM edgeops_meta"))
        holder.rollback()
    with pytest.raises(StoreError, match="this is a bug") as broken, db.session() as s:
        s.execute(text("SELECT * FROM no_such_table"))
    assert not isinstance(broken.value, StoreUnavailable)
    assert "check that the database is running" not in str(broken.value)
    db.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from edgeops import Workspace
    ws = Workspace.open(sys.argv[1])
    blob = open(sys.argv[2], "rb").read()
    for _ in range(int(sys.argv[3])):
        ws.registry.register("shared", blob, "skops")
        ws.data.add(sys.argv[4], "shared-data")
    """
)


def test_two_processes_registering_get_distinct_versions(ws, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from edgeops.model_io import save_sklearn

    blob = tmp_path / "m.skops"
    blob.write_bytes(save_sklearn(LogisticRegression().fit([[0.0], [1.0]], [0, 1])))
    data = tmp_path / "d.csv"
    data.write_text("a,b\n1,2\n")
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    per_process = 15
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(ws.settings.home),
                str(blob),
                str(per_process),
                str(data),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    versions = [mv.version for mv in ws.registry.versions("shared")]
    assert versions == list(range(1, 2 * per_process + 1))
    # the same bytes added from two processes stay one data version
    assert [v.version for v in ws.data.versions("shared-data")] == [1]


def test_workspace_init_is_idempotent(tmp_path):
    ws, created = Workspace.init(tmp_path / "w")
    ws.close()
    again, created_again = Workspace.init(tmp_path / "w")
    again.close()
    assert (created, created_again) == (True, False)
    assert (tmp_path / "w" / "edgeops.toml").read_text().startswith("# edgeops workspace")


def test_a_schema_1_store_from_edgeops_0_1_is_upgraded(tmp_path):
    """The SQLite store of the 0.1 demo opens, upgrades to the current schema, keeps its data."""
    import sqlite3
    from pathlib import Path

    from edgeops.store import SCHEMA_VERSION

    dump = Path(__file__).parent / "data" / "store_v1_sqlite.sql"
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(dump.read_text())
    con.close()
    db = Database(f"sqlite:///{path}")
    assert db.schema_version() == SCHEMA_VERSION
    with db.session() as s:
        assert s.execute(text("SELECT name FROM models")).scalars().all() == ["digits"]
        assert s.execute(text("SELECT count(*) FROM model_versions")).scalar_one() == 1
        assert s.execute(text("SELECT count(*) FROM feature_sets")).scalar_one() == 0
    db.close()
