"""Settings: edgeops.toml, environment overrides, and errors that say what to do."""

from __future__ import annotations

import pytest

from edgeops.config import load_settings, render_config
from edgeops.errors import ConfigError
from edgeops.refs import Ref


def _write(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edgeops.toml").write_text(text)
    return folder


def test_relative_paths_are_taken_from_the_workspace(tmp_path):
    home = _write(tmp_path / "w", render_config())
    s = load_settings(home, env={})
    assert s.db_url == f"sqlite:///{(home / '.edgeops' / 'edgeops.db').resolve().as_posix()}"
    assert s.artifact_root == home.resolve() / ".edgeops" / "artifacts"
    assert s.mqtt_url == "mqtt://127.0.0.1:1883"


def test_environment_wins_over_the_file(tmp_path):
    home = _write(tmp_path / "w", render_config())
    env = {
        "EDGEOPS_DB_URL": "postgresql://u:secret@db/x",
        "EDGEOPS_MQTT_URL": "mqtt://b:1884",
        "EDGEOPS_ARTIFACTS": "/srv/artifacts",
    }
    s = load_settings(home, env=env)
    assert (s.db_url, s.mqtt_url, str(s.artifact_root)) == (
        "postgresql://u:secret@db/x",
        "mqtt://b:1884",
        "/srv/artifacts",
    )
    assert s.describe()["db_url"] == "postgresql://u:***@db/x"


def test_workspace_is_found_above_the_current_folder(tmp_path):
    home = _write(tmp_path / "w", render_config())
    deep = home / "a" / "b"
    deep.mkdir(parents=True)
    assert load_settings(env={}, cwd=deep).home == home.resolve()
    assert load_settings(env={"EDGEOPS_HOME": str(home)}, cwd=tmp_path).home == home.resolve()


def test_environment_alone_is_enough(tmp_path):
    env = {"EDGEOPS_DB_URL": "sqlite:///x.db", "EDGEOPS_ARTIFACTS": str(tmp_path / "a")}
    s = load_settings(env=env, cwd=tmp_path)
    assert s.db_url == f"sqlite:///{(tmp_path / 'x.db').resolve().as_posix()}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[store]\nurl = \n", "is not valid TOML"),
        ("[stor]\nurl = 'x'\n", "unknown section [stor]"),
        ("[store]\nurll = 'x'\n", "unknown key store.urll"),
        ("[store]\nurl = 3\n", "store.url must be a string"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    home = _write(tmp_path / "w", text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(home, env={})


def test_missing_workspace(tmp_path):
    with pytest.raises(ConfigError, match="run `edgeops init"):
        load_settings(env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"has no edgeops\.toml"):
        load_settings(tmp_path / "nope", env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("m", Ref("m")),
        ("m@3", Ref("m", 3)),
        ("m@v12", Ref("m", 12)),
        ("m@production", Ref("m", alias="production")),
        ("m.x-1@latest", Ref("m.x-1", alias="latest")),
    ],
)
def test_refs_parse(text, expected):
    assert Ref.parse(text) == expected
    assert str(Ref.parse(text)).split("@")[0] == expected.name


@pytest.mark.parametrize("text", ["", "@1", "m@", "m@0", "m@Prod", "m@1@2", "a b", "m@-x"])
def test_bad_refs(text):
    from edgeops.errors import InvalidReference

    with pytest.raises(InvalidReference):
        Ref.parse(text)
