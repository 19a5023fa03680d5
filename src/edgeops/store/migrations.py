"""Schema versions of the metadata store and the steps between them.

``SCHEMA_VERSION`` is the version this release writes. ``MIGRATIONS[n]`` turns a
store at version ``n - 1`` into version ``n``; they run in order inside one
transaction when an older store is opened, so an older store is upgraded, never
broken. A store newer than ``SCHEMA_VERSION`` is refused (the user must upgrade
edgeops). Old steps are kept forever and tested from a version-1 store
(``tests/data/store_v1_sqlite.sql``).

1. datasets, runs, models, versions, aliases, variants (edgeops 0.1).
2. feature store (feature sets, versions, events, materializations) and the
   pipeline's step cache.
3. fleet: devices, device events, the fleet's deployment sequence, desired
   states, rollouts.
4. monitoring: telemetry windows, samples and labels, ingest counters, alerts.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection

SCHEMA_VERSION = 4


def _to_2(conn: Connection) -> None:
    from .schema import SCHEMA_2_TABLES, Base

    Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in SCHEMA_2_TABLES])


def _to_3(conn: Connection) -> None:
    from .schema import SCHEMA_3_TABLES, Base

    Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in SCHEMA_3_TABLES])


def _to_4(conn: Connection) -> None:
    from .schema import SCHEMA_4_TABLES, Base

    Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in SCHEMA_4_TABLES])


# version -> step from version-1 to version; 1 is the initial create_all.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _to_2, 3: _to_3, 4: _to_4}
