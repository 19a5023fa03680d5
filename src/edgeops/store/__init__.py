"""The metadata database (SQLAlchemy 2; SQLite by default, PostgreSQL by URL)."""

from .db import SCHEMA_VERSION, Database

__all__ = ["SCHEMA_VERSION", "Database"]
