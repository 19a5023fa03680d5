"""Opening the metadata database: connect, check or upgrade its schema, run transactions.

Writers are serialized where it matters: SQLite transactions start with
``BEGIN IMMEDIATE`` (one writer at a time, others wait up to the busy timeout),
and on PostgreSQL unique constraints catch races, which :meth:`Database.write`
retries. So two processes registering at once get distinct version numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session, sessionmaker

from ..config import _redact
from ..errors import (
    ConfigError,
    MissingExtra,
    SchemaMismatch,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .schema import Base, Meta

__all__ = ["SCHEMA_VERSION", "Database"]

T = TypeVar("T")
_RETRIES = 8
_PG_INIT_LOCK = 0x6564_6765  # "edge": advisory lock id for schema creation/upgrade
SQLITE_PAGE_SIZE = 16384  # bytes, for new SQLite stores (see _make_engine)


def _make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 60})

            @event.listens_for(engine, "connect")
            def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below rule
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout = 60000")
                cur.execute("PRAGMA foreign_keys = ON")
                # A new store gets 16 KiB pages (an existing one keeps its own: the pragma
                # only acts before the first table is written). Telemetry windows, most of
                # the data, are ~1.7 KB rows: two fit a 4 KiB page, nine a 16 KiB one, so the
                # file and what each commit writes shrink and ingest costs less CPU
                # (bench/ingest.py, docs/benchmarks.md).
                cur.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
                cur.execute("PRAGMA journal_mode = WAL")
                cur.close()

            @event.listens_for(engine, "begin")
            def _sqlite_begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            return engine
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError as exc:
        raise ConfigError(f"unsupported database URL {_redact(url)}: {exc}") from exc
    except ArgumentError as exc:
        raise ConfigError(f"bad database URL {_redact(url)}: {exc}") from exc
    except ModuleNotFoundError as exc:
        raise MissingExtra(exc.name or "the database driver", "postgres") from exc


def _first_line(exc: BaseException) -> str:
    msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


class Database:
    """A connection to the metadata store with a checked schema."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._prepare(create)

    # --- schema -----------------------------------------------------------------
    def _prepare(self, create: bool) -> None:
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_INIT_LOCK})
                tables = set(inspect(conn).get_table_names())
                if Meta.__tablename__ not in tables:
                    if tables - {Meta.__tablename__}:
                        raise StoreError(
                            f"the database at {_redact(self.url)} has tables but is not an "
                            "edgeops store; point EDGEOPS_DB_URL at an empty database"
                        )
                    if not create:
                        raise StoreError(
                            f"no edgeops store at {_redact(self.url)}; run `edgeops init`"
                        )
                    Base.metadata.create_all(conn)
                    conn.execute(
                        Meta.__table__.insert().values(
                            key="schema_version", value=str(SCHEMA_VERSION)
                        )
                    )
                    return
                found = conn.execute(
                    select(Meta.value).where(Meta.key == "schema_version")
                ).scalar_one_or_none()
                version = int(found or 0)
                if version > SCHEMA_VERSION:
                    raise SchemaMismatch(
                        f"the store at {_redact(self.url)} has schema {version}, newer than "
                        f"this edgeops understands ({SCHEMA_VERSION}); upgrade edgeops"
                    )
                if version < SCHEMA_VERSION:
                    self._upgrade(conn, version)
        except DBAPIError as exc:
            self.engine.dispose()
            raise StoreUnavailable(
                f"cannot open the store at {_redact(self.url)}: {_first_line(exc)}; "
                "check that the database is running and the URL is right"
            ) from exc

    def _upgrade(self, conn: Any, version: int) -> None:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[step](conn)
        conn.execute(
            Meta.__table__.update()
            .where(Meta.key == "schema_version")
            .values(value=str(SCHEMA_VERSION))
        )

    def schema_version(self) -> int:
        with self.session() as s:
            return int(
                s.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar_one()
            )

    # --- transactions -------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on a clean exit, rolled back on an error."""
        try:
            with self._sessions.begin() as s:
                yield s
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: DBAPIError) -> StoreError:
        """What a failed transaction (rolled back: nothing was written) tells the user."""
        where, first = _redact(self.url), _first_line(exc)
        if isinstance(exc, DataError):
            return StoreRejected(
                f"the store at {where} refused a value: {first}; nothing was written, "
                "check the values given"
            )
        if isinstance(exc, OperationalError) and any(
            word in first.lower()
            for word in ("lock", "busy")  # sqlite's; PostgreSQL's timeout
        ):
            return StoreUnavailable(
                f"the store at {where} is busy ({first}); nothing was written, "
                "another process holds it: try again"
            )
        if isinstance(exc, (OperationalError, InterfaceError)):
            return StoreUnavailable(
                f"the store at {where} failed: {first}; check that the database is running"
            )
        return StoreError(
            f"the store at {where} failed: {first}; nothing was written (this is a bug "
            "in edgeops or a store changed by hand: please report it)"
        )

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a write transaction, retrying when a concurrent writer won a race."""
        for attempt in range(_RETRIES):
            try:
                with self.session() as s:
                    return fn(s)
            except IntegrityError as exc:
                if attempt == _RETRIES - 1:
                    raise StoreError(
                        f"a concurrent change kept conflicting: {_first_line(exc)}; try again"
                    ) from exc
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()
