"""Feature definitions as versions, with a current pointer that can be reverted.

A feature set is a name; each distinct definition (inputs and steps; see
``edgeops_protocol.feature_spec``) is a numbered, immutable version, identified
by the hash of its definition. Adding a definition that already exists returns
that version (and makes it current again if it was not). ``NAME`` alone means
the *current* version, ``NAME@latest`` the newest, ``NAME@N`` version N. Models
keep the version they were trained with, whatever becomes current later.

Materialization computes a feature table for (feature version, data version,
rows the fitted steps were fitted on) once, stores it as an ``.npz`` artifact
(no pickles) with its fitted parameters, and reuses it afterwards.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from edgeops_protocol.feature_spec import (
    FeatureSpecError,
    required_columns,
    spec_hash,
    validate_spec,
)
from edgeops_protocol.features import FittedFeatures, fit

from ..artifacts import ArtifactStore
from ..config import current_user
from ..errors import Conflict, InvalidInput, NotFound
from ..fsutil import load_document
from ..refs import LATEST, Ref
from ..store import Database
from ..store.schema import (
    DatasetVersion,
    FeatureEvent,
    FeatureSet,
    FeatureVersion,
    Materialization,
    ModelVersion,
)

__all__ = ["FeatureStore", "Materialized", "definition_hash", "load_spec"]


def load_spec(path: Path | str) -> dict[str, Any]:
    """Read a feature spec from a YAML or JSON file; errors name the file and the problem."""
    spec, _ = load_document(path)
    if not isinstance(spec, dict):
        raise InvalidInput(f"{path} must hold a mapping with name, inputs and steps")
    return spec


def checked_spec(spec: dict[str, Any], where: str = "feature spec") -> dict[str, Any]:
    try:
        return validate_spec(spec)
    except FeatureSpecError as exc:
        raise InvalidInput(f"{where}: {exc}") from exc


def definition_hash(spec: dict[str, Any]) -> str:
    """Hash of what the features compute (format, name, inputs, steps), not of their prose."""
    return spec_hash({k: spec[k] for k in ("format", "name", "inputs", "steps")})


@dataclass(frozen=True)
class Materialized:
    record: Materialization
    fitted: FittedFeatures
    X: np.ndarray
    cached: bool


class FeatureStore:
    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    # --- writing ----------------------------------------------------------------
    def add(self, spec: dict[str, Any] | Path | str) -> tuple[FeatureVersion, bool]:
        """Register a definition; ``(version, created)``. It becomes the current version."""
        raw = spec if isinstance(spec, dict) else load_spec(spec)
        norm = checked_spec(raw, "feature spec" if isinstance(spec, dict) else str(spec))
        digest = definition_hash(norm)
        who = current_user()

        def write(s: Session) -> tuple[FeatureVersion, bool]:
            fs = s.execute(
                select(FeatureSet).where(FeatureSet.name == norm["name"])
            ).scalar_one_or_none()
            if fs is None:
                fs = FeatureSet(name=norm["name"], current_version=1)
                s.add(fs)
                s.flush()
            same = next((v for v in fs.versions if v.definition_hash == digest), None)
            if same is not None:
                if fs.current_version != same.version:
                    s.add(
                        FeatureEvent(
                            set_id=fs.id,
                            action="readd",
                            author=who,
                            from_version=fs.current_version,
                            to_version=same.version,
                        )
                    )
                    fs.current_version = same.version
                return same, False
            number = max((v.version for v in fs.versions), default=0) + 1
            fv = FeatureVersion(
                feature_set=fs,
                version=number,
                definition_hash=digest,
                spec=norm,
                description=norm.get("description", ""),
                tags=list(norm.get("tags", [])),
                columns=required_columns(norm),
                author=who,
            )
            s.add(fv)
            s.add(
                FeatureEvent(
                    set_id=fs.id,
                    action="add",
                    author=who,
                    from_version=fs.current_version if number > 1 else None,
                    to_version=number,
                )
            )
            fs.current_version = number
            s.flush()
            return fv, True

        return self.db.write(write)

    def revert(self, name: str, to: int) -> tuple[int, int]:
        """Make version ``to`` current again; ``(from, to)``. History keeps every change."""

        def write(s: Session) -> tuple[int, int]:
            fs = self._set(s, name)
            if not any(v.version == to for v in fs.versions):
                raise NotFound(f"feature set {name} has no version {to}")
            if fs.current_version == to:
                raise Conflict(f"{name}@{to} is already the current version; nothing to revert")
            before = fs.current_version
            fs.current_version = to
            s.add(
                FeatureEvent(
                    set_id=fs.id,
                    action="revert",
                    from_version=before,
                    to_version=to,
                    author=current_user(),
                )
            )
            return before, to

        return self.db.write(write)

    # --- reading ----------------------------------------------------------------
    def _set(self, s: Session, name: str) -> FeatureSet:
        fs = s.execute(select(FeatureSet).where(FeatureSet.name == name)).scalar_one_or_none()
        if fs is None:
            raise NotFound(f"no feature set named {name!r}; see `edgeops features list`")
        return fs

    def get(self, ref: str | Ref) -> FeatureVersion:
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        with self.db.session() as s:
            fs = self._set(s, r.name)
            if r.alias not in (None, LATEST):
                raise InvalidInput(f"feature sets have no aliases; use {r.name}@VERSION")
            want = (
                r.version
                if r.version is not None
                else fs.versions[-1].version
                if r.alias == LATEST
                else fs.current_version
            )
            for v in fs.versions:
                if v.version == want:
                    return v
            raise NotFound(f"feature set {r.name} has no version {want}")

    def sets(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            out = []
            for fs in s.execute(select(FeatureSet).order_by(FeatureSet.name)).scalars():
                cur = next(v for v in fs.versions if v.version == fs.current_version)
                out.append(
                    {
                        "name": fs.name,
                        "current": fs.current_version,
                        "versions": len(fs.versions),
                        "description": cur.description,
                        "tags": cur.tags,
                        "columns": cur.columns,
                        "updated_at": fs.versions[-1].created_at,
                    }
                )
            return out

    def search(self, text: str) -> list[dict[str, Any]]:
        """Feature versions whose name, description, tags or input columns contain ``text``."""
        needle = text.strip().lower()
        if not needle:
            raise InvalidInput("give some text to search for")
        with self.db.session() as s:
            like = f"%{needle}%"
            q = (
                select(FeatureVersion)
                .join(FeatureSet)
                .where(
                    or_(
                        func.lower(FeatureSet.name).like(like),
                        func.lower(FeatureVersion.description).like(like),
                    )
                )
            )
            hits = {v.id: v for v in s.execute(q).scalars()}
            for v in s.execute(select(FeatureVersion)).scalars():  # tags and columns are JSON
                if any(needle in str(t).lower() for t in [*v.tags, *v.columns]):
                    hits[v.id] = v
            rows = []
            for v in sorted(hits.values(), key=lambda v: (v.feature_set.name, v.version)):
                where = [
                    field
                    for field, values in (
                        ("name", [v.feature_set.name]),
                        ("description", [v.description]),
                        ("tags", v.tags),
                        ("columns", v.columns),
                    )
                    if any(needle in str(x).lower() for x in values)
                ]
                rows.append(
                    {
                        "ref": v.ref,
                        "current": v.feature_set.current_version == v.version,
                        "matched": where,
                        "description": v.description,
                        "tags": v.tags,
                    }
                )
            return rows

    def history(self, name: str) -> list[FeatureEvent]:
        with self.db.session() as s:
            fs = self._set(s, name)
            q = select(FeatureEvent).where(FeatureEvent.set_id == fs.id).order_by(FeatureEvent.id)
            return list(s.execute(q).scalars())

    def models_using(self, ref: str) -> list[str]:
        with self.db.session() as s:
            q = select(ModelVersion).where(ModelVersion.feature_ref == ref)
            return [mv.ref for mv in s.execute(q).unique().scalars()]

    # --- materialization ----------------------------------------------------------
    def materialize(
        self,
        feature_ref: str,
        dataset: DatasetVersion,
        frame: Any,
        fit_rows: np.ndarray | None = None,
        fit_on: str = "all",
    ) -> Materialized:
        """The feature table of ``frame`` (the table of ``dataset``), computed once.

        Fitted steps are fitted on ``fit_rows`` (row indices; all rows when None),
        named by ``fit_on`` in the cache key.
        """
        fv = self.get(feature_ref)
        with self.db.session() as s:
            found = s.execute(
                select(Materialization).where(
                    Materialization.feature_version_id == fv.id,
                    Materialization.dataset_version_id == dataset.id,
                    Materialization.fit_on == fit_on,
                )
            ).scalar_one_or_none()
        if found is not None:
            X, _ = self._load(found.sha256)
            return Materialized(found, FittedFeatures.from_dict(found.fitted), X, cached=True)

        missing = [c for c in fv.columns if c not in frame.columns]
        if missing:
            raise InvalidInput(
                f"{fv.ref} needs column {missing[0]!r}, which {dataset.ref} does not have"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        train = frame if fit_rows is None else frame.iloc[fit_rows]
        try:
            fitted = fit(fv.spec, train)
            X = fitted.transform(frame)
        except FeatureSpecError as exc:
            raise InvalidInput(f"{fv.ref} on {dataset.ref}: {exc}") from exc
        buf = io.BytesIO()
        np.savez(buf, X=X, feature_names=np.array(fitted.feature_names, dtype=np.str_))
        blob = self.artifacts.put_bytes(buf.getvalue())

        def write(s: Session) -> Materialization:
            m = Materialization(
                feature_version_id=fv.id,
                dataset_version_id=dataset.id,
                fit_on=fit_on,
                fitted=fitted.to_dict(),
                sha256=blob.sha256,
                rows=int(X.shape[0]),
                n_features=int(X.shape[1]),
            )
            s.add(m)
            s.flush()
            s.refresh(m)  # loads its feature and data versions for use after the session
            return m

        try:
            record = self.db.write(write)
        except BaseException:
            self.artifacts.discard(blob)
            raise
        return Materialized(record, fitted, X, cached=False)

    def _load(self, sha256: str) -> tuple[np.ndarray, list[str]]:
        with np.load(io.BytesIO(self.artifacts.read_bytes(sha256)), allow_pickle=False) as z:
            return z["X"], [str(n) for n in z["feature_names"]]
