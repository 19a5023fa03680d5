"""The metadata store of training runs: seeds, parameters, metrics, config, lineage, environment.

A run is created when training starts and finished with a status: ``finished``,
``failed`` (an error), or ``gated`` (trained but stopped by a pipeline gate; the
reason says which). Everything needed to reproduce it is kept on the run: every
random seed including the split's, the hyper-parameters, the config file's text,
the dataset and feature versions, the package versions and the git commit.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .config import current_user
from .errors import InvalidInput, NotFound
from .store import Database
from .store.schema import DatasetVersion, Run

__all__ = ["RunStore", "environment", "git_state", "run_record"]

RUN_STATUSES = ("running", "finished", "failed", "gated")
_PACKAGES = (
    "edgeops",
    "edgeops-agent",
    "numpy",
    "pandas",
    "scikit-learn",
    "skops",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "ai-edge-litert",
    "onnx",
    "onnxruntime",
    "skl2onnx",
    "tf2onnx",
    "emlearn",
    "tflite-micro",
)


def environment() -> dict[str, str]:
    """Versions of the installed packages that affect training and conversion."""
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import platform

    found["python"] = platform.python_version()
    return found


def git_state(folder: Path | None) -> tuple[str, bool]:
    """The commit checked out at ``folder`` and whether the tree has changes ('' if no git)."""
    if folder is None:
        return "", False
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return "", False
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return "", False


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def start(
        self,
        *,
        name: str = "",
        kind: str = "train",
        seeds: dict[str, int] | None = None,
        params: dict[str, Any] | None = None,
        config_name: str = "",
        config_text: str = "",
        dataset_version_id: int | None = None,
        feature_ref: str = "",
        tags: dict[str, Any] | None = None,
        git_folder: Path | None = None,
    ) -> Run:
        commit, dirty = git_state(git_folder)
        run = Run(
            id=uuid.uuid4().hex[:16],
            name=name,
            kind=kind,
            status="running",
            seeds=dict(seeds or {}),
            params=dict(params or {}),
            metrics={},
            config_name=config_name,
            config_text=config_text,
            dataset_version_id=dataset_version_id,
            feature_ref=feature_ref,
            packages=environment(),
            git_commit=commit,
            git_dirty=dirty,
            author=current_user(),
            tags=dict(tags or {}),
        )

        def write(s: Session) -> Run:
            if dataset_version_id is not None and s.get(DatasetVersion, dataset_version_id) is None:
                raise NotFound(f"dataset version id {dataset_version_id} does not exist")
            s.add(run)
            s.flush()
            return run

        return self.db.write(write)

    def log(
        self,
        run_id: str,
        *,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        seeds: dict[str, int] | None = None,
    ) -> None:
        def write(s: Session) -> None:
            run = self._get(s, run_id)
            if metrics:
                run.metrics = {**run.metrics, **metrics}
            if params:
                run.params = {**run.params, **params}
            if seeds:
                run.seeds = {**run.seeds, **seeds}

        self.db.write(write)

    def finish(
        self,
        run_id: str,
        status: str = "finished",
        reason: str = "",
        metrics: dict[str, Any] | None = None,
    ) -> Run:
        if status not in RUN_STATUSES or status == "running":
            raise InvalidInput(f"cannot finish a run as {status!r}")

        def write(s: Session) -> Run:
            run = self._get(s, run_id)
            if metrics:
                run.metrics = {**run.metrics, **metrics}
            run.status, run.reason, run.finished_at = status, reason, _now()
            return run

        return self.db.write(write)

    @contextmanager
    def track(self, **start: Any) -> Iterator[Run]:
        """Start a run; finish it as ``failed`` with the error if the block raises."""
        run = self.start(**start)
        try:
            yield run
        except BaseException as exc:
            self.finish(run.id, "failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        with self.db.session() as s:
            status = self._get(s, run.id).status
        if status == "running":
            self.finish(run.id, "finished")

    # --- reading ----------------------------------------------------------------
    def _get(self, s: Session, run_id: str) -> Run:
        if not run_id or len(run_id) < 4:
            raise InvalidInput("give at least 4 characters of the run id; see `edgeops runs list`")
        found = list(s.execute(select(Run).where(Run.id.startswith(run_id))).scalars())
        if not found:
            raise NotFound(f"no run {run_id!r}; see `edgeops runs list`")
        if len(found) > 1:
            raise InvalidInput(f"run id {run_id!r} is ambiguous; give more characters")
        return found[0]

    def get(self, run_id: str) -> Run:
        with self.db.session() as s:
            return self._get(s, run_id)

    def list(
        self, limit: int = 50, status: str | None = None, name: str | None = None
    ) -> list[Run]:
        with self.db.session() as s:
            q = select(Run).order_by(Run.started_at.desc(), Run.id).limit(limit)
            if status:
                q = q.where(Run.status == status)
            if name:
                q = q.where(Run.name == name)
            return list(s.execute(q).scalars())

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        """Params, metrics and seeds side by side; ``differs`` lists keys whose values differ."""
        if len(run_ids) < 2:
            raise InvalidInput("compare needs at least two run ids")
        runs = [self.get(r) for r in run_ids]
        out: dict[str, Any] = {"runs": [r.id for r in runs]}
        for part in ("seeds", "params", "metrics"):
            keys = sorted({k for r in runs for k in getattr(r, part)})
            table = {k: [getattr(r, part).get(k) for r in runs] for k in keys}
            out[part] = table
            out[f"{part}_differ"] = [
                k for k, vals in table.items() if len({repr(v) for v in vals}) > 1
            ]
        return out


def run_record(run: Run, full: bool = True) -> dict[str, Any]:
    """A run as the CLI and the API show it (``full``: with config text and packages)."""
    out = {
        "id": run.id,
        "name": run.name,
        "kind": run.kind,
        "status": run.status,
        "reason": run.reason,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "dataset": run.dataset_version.ref if run.dataset_version else None,
        "features": run.feature_ref or None,
        "seeds": run.seeds,
        "params": run.params,
        "metrics": run.metrics,
        "git_commit": run.git_commit,
        "git_dirty": run.git_dirty,
        "author": run.author,
        "tags": run.tags,
    }
    if full:
        out.update(config_name=run.config_name, config_text=run.config_text, packages=run.packages)
    return out
