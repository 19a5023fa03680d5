"""Per-column profiles of a table: types, missing values, statistics and baseline bins.

A numeric column's ``bin_edges`` are quantile edges of its values and its
``histogram`` counts them with the protocol's bin rule
(``edgeops_protocol.histogram``), so a profile doubles as the drift baseline
that devices later report against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from edgeops_protocol.histogram import histogram, quantile_edges

from ..monitoring.metrics import psi

__all__ = ["PROFILE_FORMAT", "diff_profiles", "kind_of", "profile_frame", "schema_of"]

PROFILE_FORMAT = 1
DEFAULT_BINS = 10
TOP_CATEGORIES = 20
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def kind_of(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    return "categorical"


def schema_of(df: pd.DataFrame) -> list[dict[str, str]]:
    return [{"name": str(c), "dtype": str(df[c].dtype), "kind": kind_of(df[c])} for c in df.columns]


def _profile_numeric(values: np.ndarray, bins: int) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    out: dict[str, Any] = {"non_finite": int(values.size - finite.size)}
    if finite.size == 0:
        return out
    edges = quantile_edges(finite, bins)
    out.update(
        min=float(finite.min()),
        max=float(finite.max()),
        mean=float(finite.mean()),
        std=float(finite.std()),
        quantiles={f"p{int(q * 100):02d}": float(np.quantile(finite, q)) for q in _QUANTILES},
        bin_edges=edges,
        histogram=histogram(finite, edges),
    )
    return out


def profile_frame(df: pd.DataFrame, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The profile of ``df``: ``{"format", "rows", "columns": {name: column profile}}``."""
    columns: dict[str, Any] = {}
    for name in df.columns:
        s = df[name]
        kind = kind_of(s)
        col: dict[str, Any] = {"kind": kind, "dtype": str(s.dtype), "missing": int(s.isna().sum())}
        present = s.dropna()
        if kind == "numeric":
            col.update(_profile_numeric(present.to_numpy(dtype=np.float64), bins))
        elif kind == "boolean":
            col["true"] = int(present.astype(bool).sum())
            col["false"] = int(len(present) - col["true"])
        else:
            counts = present.astype(str).value_counts()
            col["distinct"] = int(counts.size)
            col["top"] = [[str(k), int(v)] for k, v in counts.head(TOP_CATEGORIES).items()]
        columns[str(name)] = col
    return {"format": PROFILE_FORMAT, "rows": len(df), "bins": bins, "columns": columns}


_STATS = ("missing", "min", "max", "mean", "std")


def diff_profiles(
    a: dict[str, Any], b: dict[str, Any], b_on_a_bins: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    """Schema changes and per-column statistic changes from profile ``a`` to ``b``.

    ``b_on_a_bins`` maps numeric columns to the counts of ``b``'s values over
    ``a``'s baseline bins; for those columns the change carries ``psi``, the
    population stability index of the values between the two versions.
    """
    b_on_a_bins = b_on_a_bins or {}
    ca, cb = a["columns"], b["columns"]
    added = [c for c in cb if c not in ca]
    removed = [c for c in ca if c not in cb]
    retyped = [
        {"column": c, "from": ca[c]["kind"], "to": cb[c]["kind"]}
        for c in ca
        if c in cb and ca[c]["kind"] != cb[c]["kind"]
    ]
    changes = []
    for c in ca:
        if c not in cb:
            continue
        row: dict[str, Any] = {"column": c}
        for stat in _STATS:
            va, vb = ca[c].get(stat), cb[c].get(stat)
            if va is None and vb is None:
                continue
            row[stat] = {"from": va, "to": vb}
        if c in b_on_a_bins and "histogram" in ca[c] and sum(b_on_a_bins[c]) > 0:
            row["psi"] = psi(ca[c]["histogram"], b_on_a_bins[c])
        changes.append(row)
    return {
        "rows": {"from": a["rows"], "to": b["rows"]},
        "added": added,
        "removed": removed,
        "retyped": retyped,
        "columns": changes,
    }
