"""The feature store: versioned feature definitions, their history, and materialized tables."""

from .store import FeatureStore, load_spec

__all__ = ["FeatureStore", "load_spec"]
