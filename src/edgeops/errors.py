"""The one error tree of edgeops.

Library code raises these; only the CLI and the HTTP API turn them into exit
codes and HTTP statuses. Every message is one line that says what went wrong
and what to do about it.

::

    EdgeopsError                  base; .exit_code, .http_status
    ├── ConfigError               no workspace, bad edgeops.toml or environment value
    ├── InvalidInput              a file, argument or message that cannot be used
    │   └── InvalidReference      a NAME@VERSION that does not parse
    ├── NotFound                  a name, version, alias, run or artifact that is not there
    ├── Conflict                  the change is already in place, or clashes with one
    ├── MissingExtra              an optional package is not installed
    ├── StoreError                the metadata database or the artifact store
    │   ├── StoreUnavailable      the database cannot be reached, or is busy
    │   ├── StoreRejected         the database refused a value (HTTP 422); nothing written
    │   ├── SchemaMismatch        the database was made by a newer edgeops
    │   └── ArtifactCorrupt       stored bytes no longer match their SHA-256
    ├── BrokerUnavailable         the MQTT broker cannot be reached
    └── GateFailed                a trained model did not pass a pipeline gate
"""

from __future__ import annotations

__all__ = [
    "ArtifactCorrupt",
    "BrokerUnavailable",
    "ConfigError",
    "Conflict",
    "EdgeopsError",
    "GateFailed",
    "InvalidInput",
    "InvalidReference",
    "MissingExtra",
    "NotFound",
    "SchemaMismatch",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
]


class EdgeopsError(Exception):
    """Base of all edgeops errors."""

    exit_code = 1
    http_status = 500


class ConfigError(EdgeopsError):
    exit_code = 2
    http_status = 500


class InvalidInput(EdgeopsError):
    exit_code = 2
    http_status = 422


class InvalidReference(InvalidInput):
    pass


class NotFound(EdgeopsError):
    exit_code = 3
    http_status = 404


class Conflict(EdgeopsError):
    exit_code = 4
    http_status = 409


class MissingExtra(EdgeopsError):
    exit_code = 5
    http_status = 501

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'edgeops[{extra}]'"
        )
        self.package = package
        self.extra = extra


class StoreError(EdgeopsError):
    exit_code = 6
    http_status = 503


class StoreUnavailable(StoreError):
    pass


class StoreRejected(StoreError):
    """The database refused a value (out of its type's range, say); nothing was written."""

    http_status = 422


class SchemaMismatch(StoreError):
    pass


class ArtifactCorrupt(StoreError):
    pass


class BrokerUnavailable(EdgeopsError):
    exit_code = 6
    http_status = 503


class GateFailed(EdgeopsError):
    exit_code = 7
    http_status = 422
