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
5. an index on device events by (fleet, device, seq), for de-duplicating them.
6. retraining: policies and decisions.
7. access: API tokens (hashes only) and the audit log.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection

SCHEMA_VERSION = 7


def _create(tables_attr: str) -> Callable[[Connection], None]:
    """A step that creates the tables a schema version introduced (listed in schema.py)."""

    def step(conn: Connection) -> None:
        from . import schema

        names = getattr(schema, tables_attr)
        schema.Base.metadata.create_all(
            conn, tables=[schema.Base.metadata.tables[t] for t in names]
        )

    return step


def _index_device_events(conn: Connection) -> None:
    from .schema import DeviceEvent

    for index in DeviceEvent.__table__.indexes:
        index.create(conn, checkfirst=True)


# version -> step from version-1 to version; 1 is the initial create_all.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _create("SCHEMA_2_TABLES"),
    3: _create("SCHEMA_3_TABLES"),
    4: _create("SCHEMA_4_TABLES"),
    5: _index_device_events,
    6: _create("SCHEMA_6_TABLES"),
    7: _create("SCHEMA_7_TABLES"),
}
