"""The model registry: named models, immutable numbered versions, aliases and variants.

A version records what it was trained from (run, dataset version, feature
version), its hyper-parameters and metrics, and holds variants: the original
model (variant ``original``) and later its TFLite, ONNX and C forms, each with
format, size, SHA-256 and its own measured metrics. Aliases (``production``,
``staging``, ...) point at versions; every move is kept in ``alias_events``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import audit
from .artifacts import ArtifactStore
from .config import current_user
from .errors import Conflict, InvalidInput, NotFound
from .model_io import FLAVOR_OF_FORMAT, check_model_bytes, format_for_file
from .refs import LATEST, Ref, check_alias, check_name
from .store import Database
from .store.schema import (
    Alias,
    AliasEvent,
    DatasetVersion,
    Model,
    ModelVersion,
    Run,
    Variant,
    utcnow,
)

__all__ = ["AliasMove", "NewVariant", "Registry", "version_card"]

ORIGINAL = "original"
VARIANT_NAME_HELP = "use lowercase letters, digits and '-' (e.g. tflite-int8)"


@dataclass(frozen=True)
class NewVariant:
    """A variant to attach when a version is registered."""

    name: str
    data: bytes
    format: str
    metrics: dict[str, Any]
    meta: dict[str, Any]


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    from_version: int | None
    to_version: int | None


def _check_variant_name(name: str) -> str:
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", name or ""):
        raise InvalidInput(f"variant name {name!r} is not valid; {VARIANT_NAME_HELP}")
    return name


class Registry:
    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    # --- writing ----------------------------------------------------------------
    def register(
        self,
        name: str,
        data: bytes,
        fmt: str,
        *,
        run_id: str | None = None,
        dataset_version_id: int | None = None,
        feature_ref: str = "",
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        labels: list[Any] | None = None,
        description: str = "",
        variant_meta: dict[str, Any] | None = None,
        variants: list[NewVariant] | None = None,
    ) -> ModelVersion:
        """Register ``data`` (a model in format ``fmt``) as the next version of ``name``.

        When a run is given and no dataset version, the run's dataset version and
        feature version are taken, so lineage is complete. ``variants`` are
        attached in the same transaction: the version appears whole or not at all.
        """
        check_name(name, "model name")
        check_model_bytes(data, fmt)
        for nv in variants or []:
            _check_variant_name(nv.name)
        blobs = [self.artifacts.put_bytes(data)]
        blobs += [self.artifacts.put_bytes(nv.data) for nv in variants or []]
        blob = blobs[0]
        who = current_user()

        def write(s: Session) -> ModelVersion:
            nonlocal dataset_version_id, feature_ref
            run = None
            if run_id is not None:
                run = s.get(Run, run_id)
                if run is None:
                    raise NotFound(f"no run {run_id!r}; see `edgeops runs list`")
                dataset_version_id = dataset_version_id or run.dataset_version_id
                feature_ref = feature_ref or run.feature_ref
            if dataset_version_id is not None and s.get(DatasetVersion, dataset_version_id) is None:
                raise NotFound(f"dataset version id {dataset_version_id} does not exist")
            model = s.execute(select(Model).where(Model.name == name)).scalar_one_or_none()
            if model is None:
                model = Model(name=name)
                s.add(model)
                s.flush()
            latest = s.execute(
                select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
            ).scalar_one()
            mv = ModelVersion(
                model=model,
                version=(latest or 0) + 1,
                flavor=FLAVOR_OF_FORMAT[fmt],
                run_id=run_id,
                dataset_version_id=dataset_version_id,
                feature_ref=feature_ref,
                params=dict(params if params is not None else (run.params if run else {})),
                metrics=dict(metrics if metrics is not None else (run.metrics if run else {})),
                labels=list(labels or []),
                description=description,
                author=who,
            )
            s.add(mv)
            s.flush()
            s.add(
                Variant(
                    model_version=mv,
                    name=ORIGINAL,
                    format=fmt,
                    sha256=blob.sha256,
                    size=blob.size,
                    metrics={},
                    meta=dict(variant_meta or {}),
                )
            )
            for nv, b in zip(variants or [], blobs[1:]):  # noqa: B905 - same length
                s.add(
                    Variant(
                        model_version=mv,
                        name=nv.name,
                        format=nv.format,
                        sha256=b.sha256,
                        size=b.size,
                        metrics=dict(nv.metrics),
                        meta=dict(nv.meta),
                    )
                )
            s.flush()
            s.refresh(mv)
            return mv

        try:
            return self.db.write(write)
        except BaseException:
            for b in blobs:
                self.artifacts.discard(b)
            raise

    def register_file(self, name: str, path: Path, **kwargs: Any) -> ModelVersion:
        path = Path(path)
        fmt = format_for_file(path)
        if not path.is_file():
            raise InvalidInput(f"{path} does not exist; check the path")
        return self.register(name, path.read_bytes(), fmt, **kwargs)

    def add_variant(
        self,
        ref: str | Ref,
        name: str,
        data: bytes,
        fmt: str,
        metrics: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Variant:
        """Attach a variant to a version. Variants are immutable: a name is used once."""
        _check_variant_name(name)
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        blob = self.artifacts.put_bytes(data)

        def write(s: Session) -> Variant:
            mv = self._resolve(s, r)
            if any(v.name == name for v in mv.variants):
                raise Conflict(f"{mv.ref} already has a variant {name!r}; variants are immutable")
            v = Variant(
                version_id=mv.id,
                name=name,
                format=fmt,
                sha256=blob.sha256,
                size=blob.size,
                metrics=dict(metrics or {}),
                meta=dict(meta or {}),
            )
            s.add(v)
            s.flush()
            return v

        try:
            return self.db.write(write)
        except BaseException:
            self.artifacts.discard(blob)
            raise

    def record_variant_metrics(self, ref: str | Ref, name: str, metrics: dict[str, Any]) -> Variant:
        """Add measurements made after registration (e.g. ``footprint`` from ``edgeops
        firmware generate``) to a variant's metrics, replacing those keys. The bytes, the
        format and the other metrics stay as they are."""
        r = Ref.parse(ref) if isinstance(ref, str) else ref

        def write(s: Session) -> Variant:
            mv = self._resolve(s, r)
            for v in mv.variants:
                if v.name == name:
                    v.metrics = {**(v.metrics or {}), **metrics}  # a new dict: seen as changed
                    s.flush()
                    return v
            have = ", ".join(v.name for v in mv.variants)
            raise NotFound(f"{mv.ref} has no variant {name!r}; it has: {have}")

        return self.db.write(write)

    def set_alias(self, ref: str | Ref, alias: str) -> AliasMove:
        """Point ``alias`` at the version ``ref``; moving it to where it is already is an error."""
        check_alias(alias)
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        if r.version is None and r.alias is None:
            raise InvalidInput(f"say which version gets {alias!r}: {r.name}@VERSION")

        def write(s: Session) -> AliasMove:
            mv = self._resolve(s, r)
            current = s.execute(
                select(Alias).where(Alias.model_id == mv.model_id, Alias.alias == alias)
            ).scalar_one_or_none()
            before = current.model_version.version if current else None
            if current is not None and current.version_id == mv.id:
                raise Conflict(f"{alias} already points to {mv.ref}; nothing to move")
            if current is None:
                s.add(Alias(model_id=mv.model_id, alias=alias, version_id=mv.id))
            else:
                current.version_id = mv.id
                current.updated_at = utcnow()
            s.add(
                AliasEvent(
                    model_id=mv.model_id,
                    alias=alias,
                    from_version=before,
                    to_version=mv.version,
                    author=current_user(),
                )
            )
            audit.record(
                s, "alias.move", f"{mv.model.name}@{alias}", {"from": before, "to": mv.version}
            )
            return AliasMove(mv.model.name, alias, before, mv.version)

        return self.db.write(write)

    def remove_alias(self, name: str, alias: str) -> AliasMove:
        def write(s: Session) -> AliasMove:
            model = self._model(s, name)
            current = s.execute(
                select(Alias).where(Alias.model_id == model.id, Alias.alias == alias)
            ).scalar_one_or_none()
            if current is None:
                raise NotFound(f"{name} has no alias {alias!r}")
            before = current.model_version.version
            s.delete(current)
            s.add(
                AliasEvent(
                    model_id=model.id,
                    alias=alias,
                    from_version=before,
                    to_version=None,
                    author=current_user(),
                )
            )
            return AliasMove(name, alias, before, None)

        return self.db.write(write)

    # --- reading ----------------------------------------------------------------
    def _model(self, s: Session, name: str) -> Model:
        model = s.execute(select(Model).where(Model.name == name)).unique().scalar_one_or_none()
        if model is None:
            raise NotFound(f"no model named {name!r}; see `edgeops models list`")
        return model

    def _resolve(self, s: Session, r: Ref) -> ModelVersion:
        model = self._model(s, r.name)
        q = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if r.version is not None:
            mv = s.execute(q.where(ModelVersion.version == r.version)).unique().scalar_one_or_none()
            if mv is None:
                raise NotFound(f"model {r.name} has no version {r.version}")
            return mv
        if r.alias is not None and r.alias != LATEST:
            alias = s.execute(
                select(Alias).where(Alias.model_id == model.id, Alias.alias == r.alias)
            ).scalar_one_or_none()
            if alias is None:
                raise NotFound(
                    f"model {r.name} has no alias {r.alias!r}; "
                    f"set one with `edgeops models alias {r.name}@VERSION {r.alias}`"
                )
            return alias.model_version
        mv = (
            s.execute(q.order_by(ModelVersion.version.desc()).limit(1))
            .unique()
            .scalar_one_or_none()
        )
        if mv is None:
            raise NotFound(f"model {r.name} has no versions")
        return mv

    def get_version(self, ref: str | Ref) -> ModelVersion:
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        with self.db.session() as s:
            return self._resolve(s, r)

    def models(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            out = []
            for model in s.execute(select(Model).order_by(Model.name)).unique().scalars():
                versions = list(model.versions)
                out.append(
                    {
                        "name": model.name,
                        "versions": len(versions),
                        "latest": versions[-1].version if versions else None,
                        "aliases": {a.alias: a.model_version.version for a in model.aliases},
                        "updated_at": versions[-1].created_at if versions else model.created_at,
                    }
                )
            return out

    def versions(self, name: str) -> list[ModelVersion]:
        with self.db.session() as s:
            model = self._model(s, name)
            q = (
                select(ModelVersion)
                .where(ModelVersion.model_id == model.id)
                .order_by(ModelVersion.version)
            )
            return list(s.execute(q).unique().scalars())

    def aliases_of(self, name: str) -> dict[str, int]:
        with self.db.session() as s:
            return {a.alias: a.model_version.version for a in self._model(s, name).aliases}

    def alias_history(self, name: str) -> list[AliasEvent]:
        with self.db.session() as s:
            model = self._model(s, name)
            q = select(AliasEvent).where(AliasEvent.model_id == model.id).order_by(AliasEvent.id)
            return list(s.execute(q).scalars())

    def variant(self, ref: str | Ref, name: str = ORIGINAL) -> Variant:
        mv = self.get_version(ref)
        for v in mv.variants:
            if v.name == name:
                return v
        have = ", ".join(v.name for v in mv.variants)
        raise NotFound(f"{mv.ref} has no variant {name!r}; it has: {have}")

    def variant_bytes(self, ref: str | Ref, name: str = ORIGINAL) -> bytes:
        return self.artifacts.read_bytes(self.variant(ref, name).sha256)

    def export_variant(self, ref: str | Ref, name: str, out: Path) -> Variant:
        v = self.variant(ref, name)
        self.artifacts.export(v.sha256, Path(out))
        return v

    def lineage(self, ref: str | Ref) -> dict[str, Any]:
        """Where a version came from (run, data, features) and what it became (variants)."""
        mv = self.get_version(ref)
        with self.db.session() as s:
            aliases = [
                a.alias for a in s.execute(select(Alias).where(Alias.version_id == mv.id)).scalars()
            ]
        run = mv.run
        dv = mv.dataset_version
        return {
            "model": mv.ref,
            "aliases": sorted(aliases),
            "created_at": mv.created_at.isoformat(),
            "author": mv.author,
            "run": None
            if run is None
            else {
                "id": run.id,
                "status": run.status,
                "seeds": run.seeds,
                "config": run.config_name,
                "git_commit": run.git_commit,
                "git_dirty": run.git_dirty,
            },
            "dataset": None
            if dv is None
            else {"ref": dv.ref, "sha256": dv.sha256, "rows": dv.rows, "origin": dv.origin},
            "features": mv.feature_ref or None,
            "variants": [
                {"name": v.name, "format": v.format, "sha256": v.sha256, "size": v.size}
                for v in mv.variants
            ],
            "retraining": self._retraining(mv.ref),
        }

    def _retraining(self, ref: str) -> dict[str, Any] | None:
        """The retraining decision that produced ``ref``, if a retraining did."""
        from .store.schema import RetrainDecision

        with self.db.session() as s:
            row = s.execute(
                select(RetrainDecision)
                .where(RetrainDecision.challenger_ref == ref)
                .order_by(RetrainDecision.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            if row is None:
                return None
            return {
                "decision_id": row.id,
                "trigger": row.trigger,
                "cause": row.cause,
                "champion": row.champion_ref,
                "data": row.data_ref,
                "decision": row.decision,
                "status": row.status,
                "reason": row.reason,
                "rollout": row.rollout_id,
            }


def version_card(mv: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    """A version as the CLI and the API show it: lineage, params, metrics, variants."""
    return {
        "ref": mv.ref,
        "name": mv.model.name,
        "version": mv.version,
        "flavor": mv.flavor,
        "aliases": aliases,
        "created_at": mv.created_at,
        "author": mv.author,
        "description": mv.description,
        "run": mv.run_id,
        "dataset": mv.dataset_version.ref if mv.dataset_version else None,
        "features": mv.feature_ref or None,
        "labels": mv.labels,
        "params": mv.params,
        "metrics": mv.metrics,
        "variants": [
            {
                "name": v.name,
                "format": v.format,
                "size": v.size,
                "sha256": v.sha256,
                "metrics": v.metrics,
                "meta": v.meta,
            }
            for v in mv.variants
        ],
    }
