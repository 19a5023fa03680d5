"""Data versioning: immutable, content-addressed versions of tables with profiles."""

from .profile import profile_frame
from .store import DatasetStore
from .table import read_table

__all__ = ["DatasetStore", "profile_frame", "read_table"]
