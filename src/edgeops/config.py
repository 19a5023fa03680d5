"""Settings: from a workspace's ``edgeops.toml``, overridden by ``EDGEOPS_*`` variables.

Nothing is read at import time; :func:`load_settings` reads when it is called.

``edgeops.toml``::

    [store]
    url = "sqlite:///.edgeops/edgeops.db"   # or postgresql+psycopg://user@host/db
    artifacts = ".edgeops/artifacts"

    [mqtt]
    url = "mqtt://127.0.0.1:1883"
    fleet = "default"                        # the fleet this workspace manages

Relative paths (the SQLite file, the artifact root) are taken from the folder
that holds ``edgeops.toml``. Environment variables win over the file:
``EDGEOPS_HOME`` (the workspace folder), ``EDGEOPS_DB_URL``, ``EDGEOPS_ARTIFACTS``,
``EDGEOPS_MQTT_URL``, ``EDGEOPS_FLEET``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "CONFIG_NAME",
    "Settings",
    "current_user",
    "find_workspace",
    "load_settings",
    "render_config",
    "settings_from",
]

CONFIG_NAME = "edgeops.toml"
_KNOWN = {"store": {"url", "artifacts"}, "mqtt": {"url", "fleet"}}


@dataclass(frozen=True)
class Settings:
    """Where a workspace keeps its things. Build with :func:`load_settings`."""

    home: Path
    db_url: str
    artifact_root: Path
    mqtt_url: str
    fleet: str = "default"

    @property
    def keys_dir(self) -> Path:
        """Where the fleet's manifest signing keys live."""
        return self.home / ".edgeops" / "keys"

    def describe(self) -> dict[str, str]:
        return {
            "home": str(self.home),
            "db_url": _redact(self.db_url),
            "artifacts": str(self.artifact_root),
            "mqtt_url": _redact(self.mqtt_url),
            "fleet": self.fleet,
        }


def _redact(url: str) -> str:
    """Hide a password in a URL so that settings can be printed."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"


def default_db_url(home: Path) -> str:
    return f"sqlite:///{(home / '.edgeops' / 'edgeops.db').as_posix()}"


def render_config(
    db_url: str | None = None, mqtt_url: str | None = None, fleet: str | None = None
) -> str:
    """The text of a new ``edgeops.toml``."""
    url = db_url or "sqlite:///.edgeops/edgeops.db"
    return (
        "# edgeops workspace settings; EDGEOPS_* environment variables override them.\n"
        "[store]\n"
        f'url = "{url}"\n'
        'artifacts = ".edgeops/artifacts"\n'
        "\n[mqtt]\n"
        f'url = "{mqtt_url or "mqtt://127.0.0.1:1883"}"\n'
        f'fleet = "{fleet or "default"}"\n'
    )


def find_workspace(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds ``edgeops.toml``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def _read_toml(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; check the file's permissions") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file") from exc
    for section, value in data.items():
        if section not in _KNOWN or not isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown section [{section}]; known: {', '.join(sorted(_KNOWN))}"
            )
        for key, item in value.items():
            if key not in _KNOWN[section]:
                raise ConfigError(f"{path}: unknown key {section}.{key}; remove it")
            if not isinstance(item, str):
                raise ConfigError(f"{path}: {section}.{key} must be a string")
    return data


def _resolve_sqlite(url: str, home: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////"):
        rel = url[len(prefix) :]
        if rel and rel != ":memory:" and not Path(rel).is_absolute():
            return prefix + (home / rel).as_posix()
    return url


def load_settings(
    workspace: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Settings for ``workspace`` (or ``$EDGEOPS_HOME``, or the nearest ``edgeops.toml``).

    Without a workspace, settings may come entirely from ``EDGEOPS_DB_URL`` and
    ``EDGEOPS_ARTIFACTS``; otherwise :class:`ConfigError` says to run ``edgeops init``.
    """
    env = os.environ if env is None else env
    home: Path | None
    if workspace is not None:
        home = Path(workspace).resolve()
        if not (home / CONFIG_NAME).is_file():
            raise ConfigError(f"{home} has no {CONFIG_NAME}; run `edgeops init {home}` first")
    elif env.get("EDGEOPS_HOME"):
        home = Path(env["EDGEOPS_HOME"]).resolve()
        if not (home / CONFIG_NAME).is_file():
            raise ConfigError(
                f"EDGEOPS_HOME={home} has no {CONFIG_NAME}; run `edgeops init {home}` first"
            )
    else:
        home = find_workspace(cwd or Path.cwd())

    data: dict = {}
    if home is not None:
        data = _read_toml(home / CONFIG_NAME)
    elif not (env.get("EDGEOPS_DB_URL") and env.get("EDGEOPS_ARTIFACTS")):
        raise ConfigError(
            "no edgeops workspace here; run `edgeops init` or set EDGEOPS_HOME "
            "(or both EDGEOPS_DB_URL and EDGEOPS_ARTIFACTS)"
        )
    return settings_from(home or (cwd or Path.cwd()).resolve(), data, env)


def settings_from(base: Path, data: Mapping, env: Mapping[str, str]) -> Settings:
    """Settings from parsed ``edgeops.toml`` ``data`` for a workspace at ``base``."""
    store = data.get("store", {})
    db_url = env.get("EDGEOPS_DB_URL") or store.get("url") or default_db_url(base)
    artifacts = env.get("EDGEOPS_ARTIFACTS") or store.get("artifacts") or ".edgeops/artifacts"
    mqtt_url = (
        env.get("EDGEOPS_MQTT_URL") or data.get("mqtt", {}).get("url") or ("mqtt://127.0.0.1:1883")
    )
    fleet = env.get("EDGEOPS_FLEET") or data.get("mqtt", {}).get("fleet") or "default"
    root = Path(artifacts)
    if not root.is_absolute():
        root = base / root
    return Settings(
        home=base,
        db_url=_resolve_sqlite(db_url, base),
        artifact_root=root,
        mqtt_url=mqtt_url,
        fleet=fleet,
    )


def current_user(env: Mapping[str, str] | None = None) -> str:
    """Who is acting: ``EDGEOPS_USER``, else the login name."""
    env = os.environ if env is None else env
    if env.get("EDGEOPS_USER"):
        return env["EDGEOPS_USER"]
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
