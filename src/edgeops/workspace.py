"""A workspace: settings plus the stores they point at, opened on first use."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from .artifacts import ArtifactStore
from .config import CONFIG_NAME, Settings, load_settings, render_config, settings_from, tomllib
from .errors import ConfigError
from .fsutil import atomic_write_bytes

__all__ = ["Workspace"]


class Workspace:
    """Entry point of the library: ``Workspace.open()`` then ``.data``, ``.runs``, ``.registry``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def open(cls, workspace: Path | str | None = None) -> Workspace:
        return cls(load_settings(workspace))

    @classmethod
    def init(
        cls,
        folder: Path | str = ".",
        db_url: str | None = None,
        mqtt_url: str | None = None,
        fleet: str | None = None,
    ) -> tuple[Workspace, bool]:
        """Create ``edgeops.toml`` and the store in ``folder``; ``(workspace, created)``.

        An existing workspace is opened, not overwritten.
        """
        home = Path(folder).resolve()
        config = home / CONFIG_NAME
        created = False
        if not config.exists():
            try:
                home.mkdir(parents=True, exist_ok=True)
                (home / ".edgeops").mkdir(exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create a workspace in {home}: {exc}") from exc
            text = render_config(db_url, mqtt_url, fleet)
            ws = cls(settings_from(home, tomllib.loads(text), os.environ))
            _ = ws.db  # create (or check) the store before the config file marks a workspace
            ws.close()
            atomic_write_bytes(config, text.encode())
            created = True
        ws = cls.open(home)
        _ = ws.db
        ws.settings.artifact_root.mkdir(parents=True, exist_ok=True)
        return ws, created

    @cached_property
    def db(self):  # -> Database
        from .store import Database

        url = self.settings.db_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return Database(url)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifact_root)

    @cached_property
    def data(self):  # -> DatasetStore
        from .data.store import DatasetStore

        return DatasetStore(self.db, self.artifacts)

    @cached_property
    def features(self):  # -> FeatureStore
        from .features import FeatureStore

        return FeatureStore(self.db, self.artifacts)

    @cached_property
    def runs(self):  # -> RunStore
        from .runs import RunStore

        return RunStore(self.db)

    @cached_property
    def registry(self):  # -> Registry
        from .registry import Registry

        return Registry(self.db, self.artifacts)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.close()
