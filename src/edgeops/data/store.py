"""Dataset versions: add, list, show, diff and restore immutable tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from edgeops_protocol.histogram import histogram

from ..artifacts import ArtifactStore
from ..config import current_user
from ..errors import InvalidInput, NotFound
from ..refs import Ref, check_name
from ..store import Database
from ..store.schema import Dataset, DatasetVersion
from .profile import diff_profiles, profile_frame, schema_of
from .table import format_of, read_table

__all__ = ["AddResult", "DatasetStore"]


@dataclass(frozen=True)
class AddResult:
    version: DatasetVersion
    created: bool  # False when identical content was already a version


class DatasetStore:
    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    def add(
        self,
        path: Path | str,
        name: str,
        message: str = "",
        author: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> AddResult:
        """Register the table at ``path`` as the next version of ``name``.

        Identical bytes already registered under ``name`` return that version
        with ``created=False``. The file is parsed and profiled before anything
        is written, so a bad file changes nothing.
        """
        check_name(name, "dataset name")
        path = Path(path)
        fmt = format_of(path)
        df = read_table(path)
        profile = profile_frame(df)
        schema = schema_of(df)
        blob = self.artifacts.put_file(path)
        who = author or current_user()

        def write(s: Session) -> AddResult:
            ds = s.execute(select(Dataset).where(Dataset.name == name)).scalar_one_or_none()
            if ds is None:
                ds = Dataset(name=name)
                s.add(ds)
                s.flush()
            same = s.execute(
                select(DatasetVersion).where(
                    DatasetVersion.dataset_id == ds.id, DatasetVersion.sha256 == blob.sha256
                )
            ).scalar_one_or_none()
            if same is not None:
                return AddResult(same, created=False)
            latest = s.execute(
                select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == ds.id)
            ).scalar_one()
            dv = DatasetVersion(
                dataset=ds,
                version=(latest or 0) + 1,
                sha256=blob.sha256,
                size=blob.size,
                format=fmt,
                filename=path.name,
                rows=len(df),
                schema=schema,
                profile=profile,
                message=message,
                author=who,
                origin=origin or {},
            )
            s.add(dv)
            s.flush()
            return AddResult(dv, created=True)

        try:
            result = self.db.write(write)
        except BaseException:
            self.artifacts.discard(blob)
            raise
        return result

    # --- reading ----------------------------------------------------------------
    def names(self) -> list[dict[str, Any]]:
        """Every dataset with its latest version."""
        with self.db.session() as s:
            rows = s.execute(
                select(Dataset).options(selectinload(Dataset.versions)).order_by(Dataset.name)
            ).scalars()
            return [
                {
                    "name": ds.name,
                    "versions": len(ds.versions),
                    "latest": ds.versions[-1].version,
                    "rows": ds.versions[-1].rows,
                    "columns": len(ds.versions[-1].schema),
                    "created_at": ds.versions[-1].created_at,
                    "message": ds.versions[-1].message,
                }
                for ds in rows
                if ds.versions
            ]

    def versions(self, name: str) -> list[DatasetVersion]:
        with self.db.session() as s:
            ds = self._dataset(s, name)
            return list(ds.versions)

    def get(self, ref: str | Ref) -> DatasetVersion:
        """The version ``NAME@VERSION`` (or the latest for a bare ``NAME``)."""
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        with self.db.session() as s:
            return self._resolve(s, r)

    def _dataset(self, s: Session, name: str) -> Dataset:
        ds = s.execute(
            select(Dataset).where(Dataset.name == name).options(selectinload(Dataset.versions))
        ).scalar_one_or_none()
        if ds is None:
            raise NotFound(f"no dataset named {name!r}; see `edgeops data list`")
        return ds

    def _resolve(self, s: Session, r: Ref) -> DatasetVersion:
        ds = self._dataset(s, r.name)
        if r.alias not in (None, "latest"):
            raise InvalidInput(f"datasets have no aliases; use {r.name}@VERSION")
        if r.version is None:
            return ds.versions[-1]
        for v in ds.versions:
            if v.version == r.version:
                return v
        raise NotFound(
            f"dataset {r.name} has no version {r.version} (latest is {ds.versions[-1].version})"
        )

    def load_frame(self, ref: str | Ref):  # -> pandas.DataFrame
        """The table of a version, read from verified bytes."""
        import io

        import pandas as pd

        dv = self.get(ref)
        data = self.artifacts.read_bytes(dv.sha256)
        if dv.format == "csv":
            return pd.read_csv(io.BytesIO(data))
        return pd.read_parquet(io.BytesIO(data))

    def export(self, ref: str | Ref, out: Path) -> DatasetVersion:
        """Write the exact bytes of a version to ``out``."""
        dv = self.get(ref)
        self.artifacts.export(dv.sha256, Path(out))
        return dv

    def diff(self, a: str, b: str) -> dict[str, Any]:
        va, vb = self.get(a), self.get(b)
        frame_b = self.load_frame(vb.ref)
        on_a_bins: dict[str, list[int]] = {}
        for col, prof in va.profile["columns"].items():
            if "bin_edges" in prof and col in frame_b and prof["kind"] == "numeric":
                values = frame_b[col].to_numpy(dtype=np.float64, na_value=np.nan)
                on_a_bins[col] = histogram(values, prof["bin_edges"])
        out = diff_profiles(va.profile, vb.profile, on_a_bins)
        out["from"], out["to"] = va.ref, vb.ref
        return out
