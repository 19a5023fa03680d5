"""``edgeops ci init``: a GitHub Actions workflow that trains, checks and packages a model.

:func:`plan` reads the model repository — pipeline files, the data files and
feature definitions they need — and :func:`workflow_yaml` turns that plan into
the workflow's text; both are pure apart from reading files. The workflow runs
in a throwaway SQLite workspace under ``$RUNNER_TEMP``, so it needs no database
or broker: ``edgeops init``, ``data add`` and ``features add`` for the
repository's files, ``train`` each pipeline, ``check NAME@latest`` (its exit
status fails the job), ``package NAME@latest`` where the model has a TFLite or
ONNX variant, and the check reports and packages uploaded as artifacts.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import Conflict, InvalidInput
from ..refs import Ref, check_name
from ._common import JSON_HELP, console, print_json

app = typer.Typer(help="Continuous integration for a model repository: init.", no_args_is_help=True)

WORKFLOW = Path(".github/workflows/edgeops.yml")
PACKAGE_FORMATS = ("tflite-int8", "tflite-f32", "onnx-int8", "onnx-f32")  # what package serves
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
NIGHTLY = "17 3 * * *"  # off the hour: GitHub delays schedules at :00
PYTHON = "3.11"


@dataclass
class CiPlan:
    """What the workflow does, with every path relative to the repository (POSIX)."""

    pipelines: list[str]
    models: list[str]
    packaged: list[str]
    data: dict[str, str]  # data set name -> file
    features: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipelines": self.pipelines,
            "models": self.models,
            "packaged": self.packaged,
            "data": self.data,
            "features": self.features,
            "notes": self.notes,
        }


def _inside(root: Path, path: Path, what: str) -> str:
    """``path`` (relative to the current folder) relative to the repository ``root``."""
    full = path.resolve()
    if not full.is_file():
        raise InvalidInput(f"{what} {path} does not exist; check the path")
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        raise InvalidInput(
            f"{what} {path} is outside {root}; the workflow only sees the repository's files"
        ) from None


def _load(load: Any, path: Path, rel: str) -> Any:
    try:
        return load(path)
    except InvalidInput as exc:
        msg = str(exc)
        raise InvalidInput(msg if str(path) in msg else f"{rel}: {msg}") from exc


def _found(root: Path, folder: str, suffixes: tuple[str, ...]) -> list[Path]:
    where = root / folder
    return sorted(p for p in where.iterdir() if p.suffix in suffixes) if where.is_dir() else []


def plan(
    root: Path,
    pipelines: list[Path] | None = None,
    model: str | None = None,
    data: list[Path] | None = None,
    features: list[Path] | None = None,
) -> CiPlan:
    """Which files the workflow versions, trains on and checks; errors say what is missing.

    Defaults: pipelines in ``pipelines/``, each pipeline's data set ``NAME`` in
    ``data/NAME.csv`` (or ``.parquet``), feature definitions in ``features/``.
    """
    from ..features.store import checked_spec, load_spec
    from ..pipeline import load_pipeline

    root = root.resolve()
    data, features = data or None, features or None  # an option not given may come as []
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder; give the model repository's folder")
    files = pipelines or _found(root, "pipelines", SPEC_SUFFIXES)
    if not files:
        raise InvalidInput(f"no pipeline files in {root / 'pipelines'}; pass --pipeline FILE")
    rels = [_inside(root, Path(f), "pipeline") for f in files]
    specs = {rel: _load(load_pipeline, root / rel, rel) for rel in rels}
    if model is not None:
        built = ", ".join(dict.fromkeys(s.name for s in specs.values()))
        specs = {f: s for f, s in specs.items() if s.name == check_name(model, "--model")}
        if not specs:
            raise InvalidInput(f"no pipeline builds the model {model!r} (they build {built})")
    notes: list[str] = []

    tables: dict[str, str] = {}
    for f in data or []:
        rel = _inside(root, Path(f), "data file")
        if Path(rel).suffix.lower() not in TABLE_SUFFIXES:
            raise InvalidInput(f"data file {rel} is not a .csv or .parquet table")
        tables.setdefault(check_name(Path(rel).stem, f"data file {rel}: data set name"), rel)
    for f, spec in specs.items():
        ref = Ref.parse(spec.data)
        if ref.name not in tables and data is None:
            candidates = [f"data/{ref.name}{s}" for s in TABLE_SUFFIXES]
            found = next((c for c in candidates if (root / c).is_file()), None)
            if found is None:
                raise InvalidInput(
                    f"{f} trains on data set {ref.name!r}, but there is no data/{ref.name}.csv "
                    f"or data/{ref.name}.parquet in {root}; add it or pass --data FILE"
                )
            tables[ref.name] = found
        if ref.name not in tables:
            raise InvalidInput(f"{f} trains on data set {ref.name!r}; pass --data {ref.name}.csv")
        if ref.version not in (None, 1):
            notes.append(
                f"{f} pins {spec.data}, but the CI workspace starts empty and holds "
                f"{ref.name}@1 only; write `data: {ref.name}` to train on the latest"
            )

    feature_files = [_inside(root, Path(f), "feature file") for f in features or []]
    if features is None:
        feature_files = [
            p.relative_to(root).as_posix() for p in _found(root, "features", SPEC_SUFFIXES)
        ]
    defined = {checked_spec(load_spec(root / f), f)["name"] for f in feature_files}
    for f, spec in specs.items():
        if spec.features != "auto" and Ref.parse(spec.features).name not in defined:
            raise InvalidInput(
                f"{f} uses the features {spec.features}, but no file in "
                f"{', '.join(feature_files) or 'features/'} defines them; add one or pass "
                "--features FILE"
            )

    models = list(dict.fromkeys(s.name for s in specs.values()))
    packaged = [
        m
        for m in models
        if any(s.name == m and set(s.export) & set(PACKAGE_FORMATS) for s in specs.values())
    ]
    notes += [
        f"{m} exports no TFLite or ONNX variant, so it is checked but not packaged"
        for m in models
        if m not in packaged
    ]
    return CiPlan(list(specs), models, packaged, dict(sorted(tables.items())), feature_files, notes)


_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 ._/@,()-]*")
_GLOB = re.compile(r"[*?+\[\]!]")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _q(text: str) -> str:
    """``text`` as a YAML scalar: plain where that reads back as the same string, else
    double-quoted (a JSON string is a valid YAML one)."""
    plain = _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS and text == text.strip()
    return text if plain else json.dumps(text)


def _literal_glob(path: str) -> str:
    """``path`` as a GitHub path filter that matches only itself."""
    return _GLOB.sub(lambda m: "\\" + m.group(0), path)


def _step(name: str, run: list[str]) -> list[str]:
    return [f"      - name: {_q(name)}", "        run: |", *(f"          {ln}" for ln in run)]


def workflow_yaml(p: CiPlan, version: str) -> str:
    """The GitHub Actions workflow of ``p``, pinned to edgeops ``version``."""
    sh = shlex.quote
    watched = [*p.pipelines, *p.data.values(), *p.features, WORKFLOW.as_posix()]
    paths = [f"      - {_q(_literal_glob(x))}" for x in watched]
    lines = [
        f"# Written by `edgeops ci init` (edgeops {version}). Rewrite it with",
        "# `edgeops ci init --force` after adding pipelines, data or feature files.",
        f"# Trains {', '.join(p.models)} when those files change, nightly and on demand; a failed",
        "# `edgeops check` fails the job. The store is a throwaway SQLite workspace in",
        "# $RUNNER_TEMP, so no database or MQTT broker is needed.",
        "name: edgeops",
        "",
        '"on":',
        "  push:",
        "    paths:",
        *paths,
        "  pull_request:",
        "    paths:",
        *paths,
        "  schedule:",
        f"    - cron: {_q(NIGHTLY)}",
        "  workflow_dispatch: {}",
        "",
        "permissions:",
        "  contents: read",
        "",
        "jobs:",
        "  train:",
        "    name: train, check and package",
        "    runs-on: ubuntu-latest",
        "    timeout-minutes: 60",
        "    defaults:",
        "      run:",
        "        shell: bash  # -eo pipefail: a failing command fails the step",
        "    steps:",
        "      - uses: actions/checkout@v4",
        "      - uses: actions/setup-python@v5",
        "        with:",
        f"          python-version: {_q(PYTHON)}",
        *_step("Install edgeops", [f"python -m pip install {sh(f'edgeops[all]=={version}')}"]),
        *_step(
            "Create the workspace",
            [
                'echo "EDGEOPS_HOME=$RUNNER_TEMP/edgeops" >> "$GITHUB_ENV"',
                'edgeops init "$RUNNER_TEMP/edgeops"',
            ],
        ),
        *_step(
            "Version the data",
            [
                f'edgeops data add {sh(f)} --name {sh(n)} -m "commit $GITHUB_SHA"'
                for n, f in p.data.items()
            ],
        ),
    ]
    if p.features:
        lines += _step("Add the features", [f"edgeops features add {sh(f)}" for f in p.features])
    for f in p.pipelines:
        lines += _step(f"Train {f}", [f"edgeops train {sh(f)}"])
    for m in p.models:
        report = f"reports/check-{m}.json"
        lines += _step(
            f"Check {m}",
            ["mkdir -p reports", f"edgeops check {sh(m + '@latest')} --json | tee {sh(report)}"],
        )
    for m in p.packaged:
        lines += _step(
            f"Package {m}", [f"edgeops package {sh(m + '@latest')} --out {sh('dist/' + m)}"]
        )
    lines += [
        "      - name: Upload the check reports",
        "        if: always()",
        "        uses: actions/upload-artifact@v4",
        "        with:",
        "          name: edgeops-check-reports",
        "          path: reports/",
        "          if-no-files-found: ignore",
    ]
    if p.packaged:
        lines += [
            "      - name: Upload the packages",
            "        uses: actions/upload-artifact@v4",
            "        with:",
            "          name: edgeops-packages",
            "          path: dist/",
        ]
    return "\n".join(lines) + "\n"


@app.command("init")
def init(
    folder: Annotated[
        Path, typer.Argument(help="The model repository (default: the current folder).")
    ] = Path("."),
    pipeline: Annotated[
        list[Path] | None,
        typer.Option(help="Pipeline file to train (repeatable). Default: pipelines/*.yaml."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Only the pipelines that build this model.")
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            help="Table to version, named by its stem (repeatable). Default: data/NAME.csv "
            "for each pipeline's data set NAME."
        ),
    ] = None,
    features: Annotated[
        list[Path] | None,
        typer.Option(help="Feature definition to add (repeatable). Default: features/*.yaml."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing workflow.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write .github/workflows/edgeops.yml: train, check and package on new data.

    The workflow runs on pushes and pull requests that change the pipelines, data
    or feature files, nightly, and on demand.

    Example: `edgeops ci init --pipeline pipelines/wrist.yaml --model wrist`
    """
    from .. import __version__
    from ..fsutil import atomic_write_bytes

    p = plan(folder, pipeline, model, data, features)
    target = folder.resolve() / WORKFLOW
    if target.exists() and not force:
        raise Conflict(f"{target} exists; pass --force to replace it")
    atomic_write_bytes(target, workflow_yaml(p, __version__).encode())
    if json_out:
        print_json({"path": target, **p.to_dict()})
        return
    console.print(f"Wrote [bold]{target}[/]")
    console.print(f"  trains {', '.join(p.pipelines)}; checks {', '.join(p.models)}")
    if p.packaged:
        console.print(f"  packages {', '.join(p.packaged)} into dist/")
    for note in p.notes:
        console.print(f"  note: {note}")
