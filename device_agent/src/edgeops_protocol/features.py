"""Fit a feature spec on a training table, then run the same transforms anywhere.

Training calls :func:`fit` on raw table columns; the :class:`FittedFeatures` it
returns holds the normalized spec and every fitted parameter as plain JSON
values (``to_dict``/``from_dict``, format :data:`FITTED_FORMAT`). The device
loads that dict and calls ``transform_row`` on one raw sample at a time; the
server calls ``transform`` on whole columns. Both run the same float64 code
(:mod:`edgeops_protocol.transforms`) and return float32, bit for bit equal.

The spec format and its rules are in :mod:`edgeops_protocol.feature_spec`.

Raw data comes as ``columns``: anything with ``name in columns`` and
``columns[name]`` giving a 1-D array (a dict of numpy arrays, or a pandas
DataFrame). A window input ``ax`` of length ``L`` is read from the columns
``ax_000 .. ax_{L-1}``, or from an ``(n, L)`` array under ``ax`` itself when
present. A row for ``transform_row`` is a mapping column -> value, where a
window is either the expanded ``ax_000 ..`` keys or a length-``L`` sequence
under ``ax`` (used when present). Numeric values go through ``float64`` (None
becomes NaN); categorical values are compared as ``str(value)``, with None and
NaN counting as unknown. Non-finite inputs are not repaired at transform time,
but :func:`fit` refuses non-finite values where it fits clip or scale bounds.

>>> spec = {"name": "demo",
...         "inputs": [{"name": "g", "kind": "window", "length": 4},
...                    {"name": "site", "kind": "categorical"}],
...         "steps": [{"op": "window_stats", "input": "g", "stats": ["mean", "ptp"]},
...                   {"op": "one_hot", "column": "site"}]}
>>> table = {"g_000": [0.0, 1.0], "g_001": [2.0, 1.0], "g_002": [0.0, 1.0],
...          "g_003": [2.0, 1.0], "site": ["lab", "field"]}
>>> fitted = fit(spec, table)
>>> fitted.feature_names
('g_mean', 'g_ptp', 'site=field', 'site=lab')
>>> fitted.transform_row({"g": [1.0, 3.0, 1.0, 3.0], "site": "mars"}).tolist()
[2.0, 2.0, 0.0, 0.0]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeops_protocol import transforms as tf
from edgeops_protocol.feature_spec import (
    FeatureSpecError,
    plan_spec,
    required_columns,
    spec_hash,
    validate_spec,
    window_columns,
)

__all__ = [
    "FITTED_FORMAT",
    "FeatureSpecError",
    "FittedFeatures",
    "fit",
    "required_columns",
    "spec_hash",
    "validate_spec",
    "window_columns",
]

FITTED_FORMAT = 1


def _where(i: int, step: dict) -> str:
    return f"steps[{i}] ({step['op']})"


def _floats(value: Any, where: str, key: str, n: int, *, nullable: bool = False) -> list:
    if not isinstance(value, list) or len(value) != n:
        raise FeatureSpecError(f"{where}: params {key!r} must be a list of {n} numbers")
    out: list[float | None] = []
    for v in value:
        if v is None and nullable:
            out.append(None)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
        else:
            raise FeatureSpecError(f"{where}: params {key!r} holds {v!r}, not a finite number")
    return out


def _check_step_params(step: dict, cols: list[str] | None, raw: Any, where: str) -> dict:
    """A normalized copy of one step's fitted parameters, checked against the step."""
    if not isinstance(raw, dict):
        raise FeatureSpecError(f"{where}: params must be a mapping")
    op = step["op"]
    keys = {
        "clip": {"columns", "lower", "upper"},
        "scale": {"columns", "center", "scale"},
        "one_hot": {"categories"},
    }.get(op, set())
    if set(raw) != keys:
        raise FeatureSpecError(f"{where}: params need exactly the keys {sorted(keys)}")
    if op == "one_hot":
        cats = raw["categories"]
        if not isinstance(cats, list) or not cats or not all(isinstance(c, str) for c in cats):
            raise FeatureSpecError(f"{where}: params 'categories' must be a non-empty string list")
        if len(set(cats)) != len(cats) or cats != step.get("categories", cats):
            raise FeatureSpecError(f"{where}: params 'categories' repeat or differ from the spec")
        return {"categories": list(cats)}
    if cols is None:
        return {}
    if raw["columns"] != cols:
        raise FeatureSpecError(f"{where}: params 'columns' must be {cols}")
    if op == "scale":
        center = _floats(raw["center"], where, "center", len(cols))
        scale = _floats(raw["scale"], where, "scale", len(cols))
        if any(s <= 0 for s in scale):
            raise FeatureSpecError(f"{where}: params 'scale' must be positive")
        return {"columns": list(cols), "center": center, "scale": scale}
    lower = _floats(raw["lower"], where, "lower", len(cols), nullable=True)
    upper = _floats(raw["upper"], where, "upper", len(cols), nullable=True)
    if "quantiles" not in step and (
        lower != [step.get("min")] * len(cols) or upper != [step.get("max")] * len(cols)
    ):
        raise FeatureSpecError(f"{where}: params 'lower'/'upper' differ from the spec's min/max")
    for lo, hi in zip(lower, upper):  # noqa: B905 - equal lengths checked; zip(strict) needs 3.10
        if lo is not None and hi is not None and lo > hi:
            raise FeatureSpecError(f"{where}: params 'lower' is above 'upper'")
    return {"columns": list(cols), "lower": lower, "upper": upper}


def _feature_names(spec: dict, params: dict) -> list[str]:
    names: list[str] = []
    for step, p in zip(spec["steps"], params["steps"]):  # noqa: B905 - lengths checked
        op = step["op"]
        if op == "window_stats":
            names.extend(f"{step['input']}_{s}" for s in step["stats"])
        elif op == "fft_bands":
            names.extend(f"{step['input']}_fft{b}" for b in range(step["bands"]))
        elif op == "window_raw":
            length = next(i["length"] for i in spec["inputs"] if i["name"] == step["input"])
            names.extend(window_columns(step["input"], length))
        elif op == "select":
            names.extend(step["columns"])
        elif op == "one_hot":
            names.extend(f"{step['column']}={c}" for c in p["categories"])
    return names


def _float_array(values: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FeatureSpecError(f"column {name!r} is not numeric ({exc}); fix the data") from exc


def _gather(inputs: list[dict], columns: Any) -> tuple[dict[str, np.ndarray], int]:
    """Raw input arrays by input name, and the common row count."""
    raw: dict[str, np.ndarray] = {}
    lengths: dict[str, int] = {}
    for inp in inputs:
        name, kind = inp["name"], inp["kind"]
        if kind == "window":
            length = inp["length"]
            if name in columns:
                arr = np.asarray(columns[name])
                if arr.dtype == object and arr.ndim == 1:  # a column holding sequences
                    arr = np.array([_float_array(v, name) for v in arr]).reshape(-1, length)
                arr = _float_array(arr, name)
                if arr.ndim != 2 or arr.shape[1] != length:
                    raise FeatureSpecError(
                        f"window {name!r} must have shape (n, {length}), got {arr.shape}"
                    )
            else:
                cols = window_columns(name, length)
                for col in cols:
                    if col not in columns:
                        raise FeatureSpecError(
                            f"missing column {col!r} of window input {name!r}; pass "
                            f"{cols[0]}..{cols[-1]} or an (n, {length}) array under {name!r}"
                        )
                arr = np.empty((len(columns[cols[0]]), length), dtype=np.float64)
                for j, col in enumerate(cols):
                    arr[:, j] = _column(columns, col, np.float64)
        else:
            if name not in columns:
                raise FeatureSpecError(f"missing column {name!r} ({kind} input); add it")
            arr = _column(columns, name, np.float64 if kind == "numeric" else object)
        raw[name] = arr
        lengths[name] = arr.shape[0]
    if len(set(lengths.values())) > 1:
        raise FeatureSpecError(f"columns differ in length: {lengths}; give equal-length columns")
    return raw, next(iter(lengths.values()))


def _column(columns: Any, name: str, dtype: Any) -> np.ndarray:
    if dtype is object:
        arr = np.asarray(columns[name], dtype=object)
    else:
        arr = _float_array(columns[name], name)
    if arr.ndim != 1:
        raise FeatureSpecError(f"column {name!r} must be 1-D, got shape {arr.shape}")
    return arr


def _rows_to_columns(inputs: list[dict], rows: Sequence[Mapping[str, Any]]) -> dict:
    """Columns from single-sample dicts (see the module docstring for the row shape)."""
    for r, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise FeatureSpecError(f"rows[{r}]: must be a mapping column -> value")
    out: dict[str, np.ndarray] = {}
    for inp in inputs:
        name = inp["name"]
        if inp["kind"] == "window":
            length, cols = inp["length"], window_columns(inp["name"], inp["length"])
            mat = np.empty((len(rows), length), dtype=np.float64)
            for r, row in enumerate(rows):
                if name in row:
                    vec = _float_array(row[name], name)
                    if vec.shape != (length,):
                        raise FeatureSpecError(
                            f"rows[{r}]: window {name!r} must hold {length} values, got {vec.shape}"
                        )
                    mat[r] = vec
                    continue
                missing = next((c for c in cols if c not in row), None)
                if missing is not None:
                    raise FeatureSpecError(
                        f"rows[{r}]: missing column {missing!r}; pass {cols[0]}..{cols[-1]} "
                        f"or a list of {length} values under {name!r}"
                    )
                mat[r] = _float_array([row[c] for c in cols], name)
            out[name] = mat
            continue
        for r, row in enumerate(rows):
            if name not in row:
                raise FeatureSpecError(f"rows[{r}]: missing column {name!r}; add it")
        values = [row[name] for row in rows]
        if inp["kind"] == "numeric":
            out[name] = _float_array(values, name)
        else:
            cats = np.empty(len(rows), dtype=object)
            cats[:] = values
            out[name] = cats
    return out


def _fit_check(values: np.ndarray, name: str, where: str) -> np.ndarray:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise FeatureSpecError(
            f"{where}: feature {name!r} has {bad} non-finite training values; "
            "clean or impute them before fitting"
        )
    return values


def _run(
    spec: dict, resolved: list[list[str] | None], raw: dict, fitted: list | None
) -> tuple[dict, list]:
    """Run the steps; fit each step's parameters on the way when ``fitted`` is None."""
    feats: dict[str, np.ndarray] = {}
    params: list[dict] = []
    for i, step in enumerate(spec["steps"]):
        op, where, cols = step["op"], _where(i, step), resolved[i]
        p: dict = {} if fitted is None else fitted[i]
        if op == "window_stats":
            for stat in step["stats"]:
                feats[f"{step['input']}_{stat}"] = tf.window_stat(raw[step["input"]], stat)
        elif op == "fft_bands":
            energies = tf.fft_band_energies(raw[step["input"]], step["bands"])
            for b in range(step["bands"]):
                feats[f"{step['input']}_fft{b}"] = energies[:, b]
        elif op == "window_raw":
            windows = raw[step["input"]]
            for j, name in enumerate(window_columns(step["input"], windows.shape[1])):
                feats[name] = windows[:, j]
        elif op == "select":
            for name in step["columns"]:
                feats[name] = raw[name]
        elif op == "one_hot":
            values = raw[step["column"]]
            if fitted is None:
                cats = step.get("categories") or tf.fit_one_hot(values)
                if not cats:
                    raise FeatureSpecError(
                        f"{where}: column {step['column']!r} has no training values; "
                        "give 'categories' in the spec"
                    )
                p = {"categories": cats}
            matrix, unknown = tf.one_hot(values, p["categories"])
            if step["unknown"] == "error" and unknown.any():
                r = int(np.argmax(unknown))
                raise FeatureSpecError(
                    f"{where}: row {r} has unknown category {values[r]!r} in column "
                    f"{step['column']!r}; refit the features or use unknown: zeros"
                )
            for j, cat in enumerate(p["categories"]):
                feats[f"{step['column']}={cat}"] = matrix[:, j]
        elif op == "scale":
            assert cols is not None
            if fitted is None:
                fits = [tf.fit_scale(_fit_check(feats[c], c, where), step["method"]) for c in cols]
                p = {"columns": cols, "center": [f[0] for f in fits], "scale": [f[1] for f in fits]}
            for j, name in enumerate(cols):
                feats[name] = tf.apply_scale(feats[name], p["center"][j], p["scale"][j])
        elif op == "clip":
            assert cols is not None
            if fitted is None:
                p = _fit_clip(step, cols, feats, where)
            for j, name in enumerate(cols):
                feats[name] = tf.apply_clip(feats[name], p["lower"][j], p["upper"][j])
        params.append(p)
    return feats, params


def _fit_clip(step: dict, cols: list[str], feats: dict, where: str) -> dict:
    if "quantiles" not in step:
        n = len(cols)
        return {"columns": cols, "lower": [step.get("min")] * n, "upper": [step.get("max")] * n}
    low, high = step["quantiles"]
    bounds = [tf.fit_clip_quantiles(_fit_check(feats[c], c, where), low, high) for c in cols]
    return {"columns": cols, "lower": [b[0] for b in bounds], "upper": [b[1] for b in bounds]}


class FittedFeatures:
    """A feature spec with its fitted parameters: the transform a device runs.

    Build one with :func:`fit` or :meth:`from_dict`; it checks that ``params``
    belong to ``spec`` and refuses them otherwise.
    """

    def __init__(self, spec: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self._spec, self._resolved = plan_spec(spec)
        steps = params.get("steps") if isinstance(params, Mapping) else None
        if not isinstance(steps, list) or set(params) != {"steps"}:
            raise FeatureSpecError("params: must be a mapping with one key 'steps' (a list)")
        if len(steps) != len(self._spec["steps"]):
            raise FeatureSpecError(
                f"params: {len(steps)} step entries for {len(self._spec['steps'])} steps"
            )
        checked = [
            _check_step_params(step, self._resolved[i], steps[i], _where(i, step))
            for i, step in enumerate(self._spec["steps"])
        ]
        self._params = {"steps": checked}
        self._names = tuple(_feature_names(self._spec, self._params))

    @property
    def spec(self) -> dict:
        """The normalized spec (a copy)."""
        return copy.deepcopy(self._spec)

    @property
    def params(self) -> dict:
        """Fitted parameters, ``{"steps": [one dict per spec step]}`` (a copy)."""
        return copy.deepcopy(self._params)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the output columns, in order."""
        return self._names

    @property
    def spec_hash(self) -> str:
        """:func:`spec_hash` of the spec."""
        return spec_hash(self._spec)

    def to_dict(self) -> dict:
        """JSON-ready form, read back by :meth:`from_dict`."""
        return {
            "format": FITTED_FORMAT,
            "spec_hash": self.spec_hash,
            "spec": self.spec,
            "params": self.params,
            "feature_names": list(self._names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FittedFeatures:
        """Read :meth:`to_dict` output, checking its format, hash and parameters."""
        if not isinstance(data, Mapping) or "format" not in data:
            raise FeatureSpecError("fitted features: missing field 'format'; not a to_dict() form")
        if data["format"] != FITTED_FORMAT or isinstance(data["format"], bool):
            raise FeatureSpecError(
                f"fitted features: format {data['format']!r} is not supported "
                f"(this edgeops reads {FITTED_FORMAT}); upgrade"
            )
        expected = {"format", "spec_hash", "spec", "params", "feature_names"}
        if set(data) != expected:
            raise FeatureSpecError(f"fitted features: keys must be {sorted(expected)}")
        fitted = cls(data["spec"], data["params"])
        if data["spec_hash"] != fitted.spec_hash:
            raise FeatureSpecError("fitted features: spec_hash does not match the spec; re-export")
        if list(data["feature_names"]) != list(fitted.feature_names):
            raise FeatureSpecError("fitted features: feature_names do not match the params")
        return fitted

    def transform(self, columns: Any) -> np.ndarray:
        """``(n, len(feature_names))`` float32 features of raw ``columns``."""
        raw, n = _gather(self._spec["inputs"], columns)
        return self._finish(raw, n)

    def transform_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Features of single-sample dicts; equal to :meth:`transform` on the same data."""
        raw = _rows_to_columns(self._spec["inputs"], rows)
        return self._finish(raw, len(rows))

    def transform_row(self, row: Mapping[str, Any]) -> np.ndarray:
        """``(len(feature_names),)`` float32 features of one raw sample."""
        return self.transform_rows([row])[0]

    def _finish(self, raw: dict, n: int) -> np.ndarray:
        feats, _ = _run(self._spec, self._resolved, raw, self._params["steps"])
        out = np.empty((n, len(self._names)), dtype=np.float32)
        for j, name in enumerate(self._names):
            out[:, j] = feats[name]
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FittedFeatures):
            return NotImplemented
        return self._spec == other._spec and self._params == other._params

    __hash__ = None  # type: ignore[assignment]  # mutable-looking contents; compare by value

    def __repr__(self) -> str:
        return f"FittedFeatures({self._spec['name']!r}, {len(self._names)} features)"


def fit(spec: Mapping[str, Any], columns: Any) -> FittedFeatures:
    """Fit ``spec`` on raw training ``columns`` (see the module docstring)."""
    normalized, resolved = plan_spec(spec)
    raw, n = _gather(normalized["inputs"], columns)
    if n == 0:
        raise FeatureSpecError("fit: the training columns have no rows; give at least one")
    _, params = _run(normalized, resolved, raw, None)
    return FittedFeatures(normalized, {"steps": params})
