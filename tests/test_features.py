"""The feature-transform library: exact formulas, spec rules, fit/transform contracts."""

from __future__ import annotations

import copy
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops_protocol import transforms as tf
from edgeops_protocol.features import (
    FITTED_FORMAT,
    FeatureSpecError,
    FittedFeatures,
    fit,
    required_columns,
    spec_hash,
    validate_spec,
    window_columns,
)

L = 16


def make_spec() -> dict:
    return {
        "format": 1,
        "name": "wrist-motion",
        "description": "one axis, a temperature and the site",
        "tags": ["imu", "har"],
        "inputs": [
            {"name": "ax", "kind": "window", "length": L},
            {"name": "temp", "kind": "numeric"},
            {"name": "site", "kind": "categorical"},
        ],
        "steps": [
            {"op": "window_stats", "input": "ax", "stats": list(tf_stats())},
            {"op": "fft_bands", "input": "ax", "bands": 4},
            {"op": "select", "columns": ["temp"]},
            {"op": "clip", "columns": ["temp"], "quantiles": [0.1, 0.9]},
            {"op": "scale", "method": "standard"},
            {"op": "one_hot", "column": "site"},
        ],
    }


def tf_stats() -> tuple[str, ...]:
    return ("mean", "std", "min", "max", "rms", "ptp", "zcr")


def make_table(n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(L)
    freq = rng.uniform(0.5, 6.0, n)
    windows = np.sin(2 * np.pi * freq[:, None] * t / L) + 0.3 * rng.standard_normal((n, L))
    table: dict[str, np.ndarray] = {c: windows[:, j] for j, c in enumerate(window_columns("ax", L))}
    table["temp"] = rng.normal(25.0, 4.0, n)
    table["site"] = rng.choice(np.array(["lab", "field", "home"], dtype=object), n)
    return table


def rows_of(table: dict[str, np.ndarray]) -> list[dict]:
    n = len(next(iter(table.values())))
    return [{k: v[i] for k, v in table.items()} for i in range(n)]


# --- exact formulas, against independent computations ---------------------------------------

WINDOW = [0.5, -1.25, 3.0, 2.0, -0.75, 0.0, 1.5, -2.5]


def expected_stats(x: list[float]) -> dict[str, float]:
    n = len(x)
    mean = sum(x) / n
    y = [v - mean for v in x]
    crossings = sum(1 for a, b in itertools.pairwise(y) if (a < 0 < b) or (b < 0 < a))
    return {
        "mean": mean,
        "std": math.sqrt(sum(v * v for v in y) / n),
        "min": min(x),
        "max": max(x),
        "rms": math.sqrt(sum(v * v for v in x) / n),
        "ptp": max(x) - min(x),
        "zcr": crossings / (n - 1),
    }


@pytest.mark.parametrize("stat", tf_stats())
def test_window_stat_matches_direct_formula(stat: str) -> None:
    got = tf.window_stat(np.array([WINDOW, WINDOW[::-1]]), stat)
    assert got[0] == pytest.approx(expected_stats(WINDOW)[stat], rel=1e-12, abs=1e-15)
    assert got[1] == pytest.approx(expected_stats(WINDOW[::-1])[stat], rel=1e-12, abs=1e-15)


def test_window_stat_values_by_hand() -> None:
    x = np.array([[1.0, -1.0, 1.0, -1.0]])
    assert [float(tf.window_stat(x, s)[0]) for s in tf_stats()] == [
        0.0,
        1.0,
        -1.0,
        1.0,
        1.0,
        2.0,
        1.0,
    ]


def test_zcr_hand_made_windows() -> None:
    # mean 0: signs + + - - + + - -, crossings at pairs (1,2), (3,4), (5,6)
    assert tf.window_stat(np.array([[3.0, 1, -1, -3, 1, 3, -1, -3]]), "zcr")[0] == 3 / 7
    # mean 10: y = 1, -1, 1, -1, 0; the pair ending on the mean sample is no crossing
    assert tf.window_stat(np.array([[11.0, 9, 11, 9, 10]]), "zcr")[0] == 3 / 4
    # a constant window has no crossings
    assert tf.window_stat(np.full((1, 6), 0.1), "zcr")[0] == 0.0


def direct_band_energies(x: np.ndarray, bins: list[list[int]]) -> np.ndarray:
    length = x.shape[1]
    y = x - x.sum(axis=1, keepdims=True) / length
    k = np.arange(length // 2 + 1)[:, None]
    i = np.arange(length)[None, :]
    re = y @ np.cos(2 * np.pi * k * i / length).T
    im = -(y @ np.sin(2 * np.pi * k * i / length).T)
    power = (re**2 + im**2) / length
    return np.stack([power[:, b].sum(axis=1) for b in bins], axis=1)


@pytest.mark.parametrize(
    ("length", "bins"),
    [
        (64, [list(range(1, 9)), list(range(9, 17)), list(range(17, 25)), list(range(25, 33))]),
        (10, [[1], [2, 3], [4, 5]]),  # M = 5 bins over 3 bands
        (7, [[1], [2], [3]]),  # odd length: no Nyquist bin
    ],
)
def test_fft_bands_match_direct_dft(length: int, bins: list[list[int]]) -> None:
    x = np.random.default_rng(3).normal(1.0, 2.0, (5, length))
    got = tf.fft_band_energies(x, len(bins))
    np.testing.assert_allclose(got, direct_band_energies(x, bins), rtol=1e-10, atol=1e-12)
    assert tf.band_bins(length, len(bins)) == [(b[0], b[-1] + 1) for b in bins]


def test_fft_bands_pure_tone_lands_in_one_band() -> None:
    i = np.arange(64)
    x = 5.0 + np.cos(2 * np.pi * 10 * i / 64)  # bin 10 -> band 1 of 4; the offset is removed
    energies = tf.fft_band_energies(x[None, :], 4)[0]
    np.testing.assert_allclose(energies, [0.0, 16.0, 0.0, 0.0], atol=1e-9)  # half of sum(y^2)


def test_transform_outputs_match_formulas_in_float32() -> None:
    table = make_table()
    fitted = fit(make_spec(), table)
    out = fitted.transform(table)
    windows = np.column_stack([table[c] for c in window_columns("ax", L)])
    assert out.dtype == np.float32
    assert out.shape == (40, 7 + 4 + 1 + 3)
    raw = np.column_stack(
        [[expected_stats(list(w))[s] for w in windows] for s in tf_stats()]
        + list(direct_band_energies(windows, [[1, 2], [3, 4], [5, 6], [7, 8]]).T)
    )
    params = fitted.params["steps"][4]
    expected = (raw - np.array(params["center"][:11])) / np.array(params["scale"][:11])
    np.testing.assert_allclose(out[:, :11], expected.astype(np.float32), rtol=2e-6, atol=2e-6)


# --- fitted parameters ----------------------------------------------------------------------


def test_fitted_params_have_the_documented_values() -> None:
    table = make_table()
    fitted = fit(make_spec(), table)
    steps = fitted.params["steps"]
    lo, hi = np.quantile(table["temp"], [0.1, 0.9])
    assert steps[3] == {"columns": ["temp"], "lower": [lo], "upper": [hi]}
    clipped = np.clip(table["temp"], lo, hi)
    assert steps[4]["columns"][-1] == "temp"
    assert steps[4]["center"][-1] == pytest.approx(clipped.mean(), rel=1e-12)
    assert steps[4]["scale"][-1] == pytest.approx(clipped.std(), rel=1e-12)
    assert steps[5] == {"categories": ["field", "home", "lab"]}
    assert steps[:3] == [{}, {}, {}]
    out = fitted.transform(table)
    np.testing.assert_allclose(out[:, :12].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:, [0, 1, 5, 7, 11]].std(axis=0), 1.0, rtol=1e-5)
    assert fitted.feature_names == (
        "ax_mean",
        "ax_std",
        "ax_min",
        "ax_max",
        "ax_rms",
        "ax_ptp",
        "ax_zcr",
        "ax_fft0",
        "ax_fft1",
        "ax_fft2",
        "ax_fft3",
        "temp",
        "site=field",
        "site=home",
        "site=lab",
    )


def test_fixed_clip_minmax_scale_and_constant_feature() -> None:
    spec = {
        "name": "fixed",
        "inputs": [{"name": "a", "kind": "numeric"}, {"name": "b", "kind": "numeric"}],
        "steps": [
            {"op": "select", "columns": ["a", "b"]},
            {"op": "clip", "columns": ["a"], "max": 3},
            {"op": "scale", "method": "minmax"},
        ],
    }
    table = {"a": np.array([0.0, 2.0, 4.0, 5.0]), "b": np.array([7.0, 7.0, 7.0, 7.0])}
    fitted = fit(spec, table)
    assert fitted.params["steps"][1] == {"columns": ["a"], "lower": [None], "upper": [3.0]}
    assert fitted.params["steps"][2] == {
        "columns": ["a", "b"],
        "center": [0.0, 7.0],
        "scale": [3.0, 1.0],
    }
    expected = np.array([[0, 0], [2 / 3, 0], [1, 0], [1, 0]], dtype=np.float32)
    assert np.array_equal(fitted.transform(table), expected)
    assert fitted.transform_row({"a": -3.0, "b": 9.0}).tolist() == [-1.0, 2.0]
    tampered = fitted.to_dict()
    tampered["params"]["steps"][1]["upper"] = [4.0]
    with pytest.raises(
        FeatureSpecError, match=r"steps\[1\] \(clip\): params 'lower'/'upper' differ"
    ):
        FittedFeatures.from_dict(tampered)


def test_fit_is_deterministic() -> None:
    a = fit(make_spec(), make_table())
    b = fit(copy.deepcopy(make_spec()), make_table())
    assert a == b
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def test_fit_refuses_non_finite_training_values() -> None:
    table = make_table()
    table["temp"] = table["temp"].copy()
    table["temp"][3] = np.nan
    with pytest.raises(FeatureSpecError, match=r"steps\[3\] \(clip\): feature 'temp' has 1 non"):
        fit(make_spec(), table)


# --- serialization and row/batch identity ----------------------------------------------------


def test_round_trip_through_json() -> None:
    table = make_table()
    fitted = fit(make_spec(), table)
    data = json.loads(json.dumps(fitted.to_dict(), allow_nan=False))
    assert data["format"] == FITTED_FORMAT
    assert data["spec_hash"] == spec_hash(make_spec())
    loaded = FittedFeatures.from_dict(data)
    assert loaded == fitted
    assert loaded.feature_names == fitted.feature_names
    new = make_table(n=25, seed=9)
    assert np.array_equal(loaded.transform(new), fitted.transform(new))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format=2), "format 2 is not supported"),
        (lambda d: d.update(spec_hash="0" * 64), "spec_hash does not match"),
        (lambda d: d["params"]["steps"][4]["scale"].__setitem__(0, -1.0), "must be positive"),
        (lambda d: d["params"]["steps"][3].__setitem__("lower", [None, 1.0]), "list of 1"),
        (lambda d: d["params"]["steps"].pop(), "5 step entries for 6 steps"),
        (lambda d: d["params"]["steps"][5].update(categories=["a", "a"]), "repeat"),
        (lambda d: d["feature_names"].reverse(), "feature_names do not match"),
        (lambda d: d["params"]["steps"][4].update(center="x"), "list of 12 numbers"),
    ],
)
def test_from_dict_refuses_bad_data(mutate, message: str) -> None:
    data = fit(make_spec(), make_table()).to_dict()
    mutate(data)
    with pytest.raises(FeatureSpecError, match=message):
        FittedFeatures.from_dict(data)


def test_rows_and_batch_give_identical_float32() -> None:
    table = make_table(n=300, seed=4)
    fitted = fit(make_spec(), make_table())
    batch = fitted.transform(table)
    rows = rows_of(table)
    assert np.array_equal(fitted.transform_rows(rows), batch)
    assert all(np.array_equal(fitted.transform_row(r), batch[i]) for i, r in enumerate(rows))


def test_window_may_come_as_a_list_or_a_2d_array_or_a_dataframe() -> None:
    table = make_table(n=12)
    fitted = fit(make_spec(), table)
    batch = fitted.transform(table)
    windows = np.column_stack([table[c] for c in window_columns("ax", L)])
    packed = [
        {"ax": list(w), "temp": t, "site": s}
        for w, t, s in zip(windows, table["temp"], table["site"], strict=True)
    ]
    assert np.array_equal(fitted.transform_rows(packed), batch)
    assert np.array_equal(
        fitted.transform({"ax": windows, "temp": table["temp"], "site": table["site"]}), batch
    )
    assert np.array_equal(fitted.transform(pd.DataFrame(table)), batch)
    assert fitted.transform_rows([]).shape == (0, len(fitted.feature_names))


# --- one-hot ----------------------------------------------------------------------------------


def one_hot_spec(**options) -> dict:
    return {
        "name": "sites",
        "inputs": [{"name": "site", "kind": "categorical"}],
        "steps": [{"op": "one_hot", "column": "site", **options}],
    }


def test_one_hot_unknown_and_missing_become_zeros() -> None:
    fitted = fit(one_hot_spec(), {"site": np.array(["b", "a", "b", None], dtype=object)})
    assert fitted.feature_names == ("site=a", "site=b")
    rows = [{"site": "a"}, {"site": "b"}, {"site": "zzz"}, {"site": None}, {"site": float("nan")}]
    assert fitted.transform_rows(rows).tolist() == [[1, 0], [0, 1], [0, 0], [0, 0], [0, 0]]


def test_one_hot_unknown_error_and_fixed_categories() -> None:
    fitted = fit(one_hot_spec(unknown="error", categories=["x", "3"]), {"site": [3, "x"]})
    assert fitted.feature_names == ("site=x", "site=3")
    assert fitted.transform_row({"site": 3}).tolist() == [0.0, 1.0]
    with pytest.raises(FeatureSpecError, match=r"row 0 has unknown category 'y' in column 'site'"):
        fitted.transform_row({"site": "y"})


# --- the spec: validation, hash, required columns ---------------------------------------------


def reorder(obj):
    if isinstance(obj, dict):
        return {k: reorder(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [reorder(v) for v in obj]
    return obj


def test_spec_hash_ignores_key_order_formatting_and_defaults() -> None:
    spec = make_spec()
    h = spec_hash(spec)
    assert len(h) == 64 and int(h, 16) >= 0
    assert spec_hash(reorder(spec)) == h
    assert spec_hash(yaml.safe_load(yaml.safe_dump(spec, default_flow_style=False))) == h
    assert spec_hash(json.loads(json.dumps(spec, indent=3))) == h
    implicit = copy.deepcopy(spec)
    del implicit["format"]
    implicit["tags"] = ["har", "imu", "har"]
    del implicit["steps"][0]["stats"]  # the default is all stats, in this order
    del implicit["steps"][4]["method"]
    assert spec_hash(implicit) == h
    changed = copy.deepcopy(spec)
    changed["steps"][1]["bands"] = 2
    assert spec_hash(changed) != h


def test_validate_spec_normalizes_numbers_and_defaults() -> None:
    spec = {
        "name": "n",
        "inputs": [{"name": "a", "kind": "numeric"}],
        "steps": [{"op": "select", "columns": ["a"]}, {"op": "clip", "min": 0, "max": 1}],
    }
    out = validate_spec(spec)
    assert out == {
        "format": 1,
        "name": "n",
        "description": "",
        "tags": [],
        "inputs": [{"name": "a", "kind": "numeric"}],
        "steps": [{"op": "select", "columns": ["a"]}, {"op": "clip", "min": 0.0, "max": 1.0}],
    }
    assert isinstance(out["steps"][1]["min"], float)
    assert spec_hash(spec) == spec_hash(
        {**spec, "steps": [spec["steps"][0], {"op": "clip", "min": 0.0, "max": 1.0}]}
    )


def spec_with(path: tuple, value) -> dict:
    spec = make_spec()
    target = spec
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("steps", 1, "op"), "fft", r"steps\[1\]: field 'op' must be one of window_stats"),
        (("steps", 1, "band"), 4, r"steps\[1\] \(fft_bands\): unknown key 'band'; allowed"),
        (("steps", 1, "bands"), KeyError, r"steps\[1\] \(fft_bands\): missing field 'bands'"),
        (("steps", 1, "bands"), "4", r"field 'bands' must be an integer, got str"),
        (("steps", 1, "bands"), 9, r"field 'bands' must be in 1..8, got 9"),
        (("steps", 1, "bands"), True, r"field 'bands' must be an integer, got bool"),
        (("steps", 0, "stats"), ["mean", "median"], r"field 'stats' must be one of mean"),
        (("steps", 0, "stats"), ["mean", "mean"], r"lists 'mean' twice"),
        (("steps", 0, "input"), "temp", r"input 'temp' is numeric, this step needs window"),
        (("steps", 2, "columns"), ["humidity"], r"'humidity' is not a declared input"),
        (("steps", 3, "columns"), ["site=lab"], r"column 'site=lab' is not a feature produced"),
        (("steps", 3, "min"), 0.0, r"either 'quantiles' or 'min'/'max'"),
        (("steps", 3, "quantiles"), [0.9, 0.1], r"0 <= low < high <= 1"),
        (("steps", 4, "method"), "robust", r"field 'method' must be one of standard, minmax"),
        (("steps", 5, "unknown"), "ignore", r"field 'unknown' must be one of zeros, error"),
        (("inputs", 0, "length"), 1, r"inputs\[0\] \(ax\): field 'length' must be in 2..1000"),
        (("inputs", 0, "length"), KeyError, r"inputs\[0\] \(ax\): missing field 'length'"),
        (("inputs", 1, "kind"), "vector", r"field 'kind' must be one of window, numeric"),
        (("inputs", 1, "name"), "ax_001", r"table column 'ax_001' is declared twice"),
        (("inputs", 2, "name"), "bad name", r"must match \[A-Za-z_\]"),
        (("name",), 7, r"spec: field 'name' must be a string, got int"),
        (("tags",), "imu", r"field 'tags' must be a non-empty list of strings"),
        (("format",), 2, r"format 2 is not supported"),
        (("colour",), "red", r"spec: unknown key 'colour'"),
        (("steps",), [], r"field 'steps' must be a non-empty list"),
    ],
)
def test_validation_errors_name_the_field(path: tuple, value, message: str) -> None:
    with pytest.raises(FeatureSpecError, match=message):
        validate_spec(spec_with(path, value))


def test_structural_rules() -> None:
    spec = make_spec()
    spec["steps"].append({"op": "select", "columns": ["temp"]})
    with pytest.raises(FeatureSpecError, match=r"steps\[6\] \(select\): feature 'temp' is already"):
        validate_spec(spec)
    spec = make_spec()
    spec["steps"] = spec["steps"][:2] + spec["steps"][4:]
    with pytest.raises(FeatureSpecError, match="input 'temp' is not used by any step"):
        validate_spec(spec)
    spec = make_spec()
    spec["steps"].insert(0, {"op": "scale"})
    with pytest.raises(FeatureSpecError, match=r"steps\[0\] \(scale\): no features produced"):
        validate_spec(spec)
    with pytest.raises(FeatureSpecError, match="spec: must be a mapping, got list"):
        validate_spec([])


def test_required_columns_and_missing_columns() -> None:
    cols = required_columns(make_spec())
    assert cols == [*(f"ax_{i:03d}" for i in range(L)), "temp", "site"]
    table = make_table(n=3)
    fitted = fit(make_spec(), table)
    for name in ("ax_015", "temp", "site"):
        partial = {k: v for k, v in table.items() if k != name}
        with pytest.raises(FeatureSpecError, match=f"missing column '{name}'"):
            fitted.transform(partial)
        row = rows_of(partial)[0]
        with pytest.raises(FeatureSpecError, match=rf"rows\[0\]: missing column '{name}'"):
            fitted.transform_row(row)


def test_bad_data_at_transform() -> None:
    table = make_table(n=3)
    fitted = fit(make_spec(), table)
    with pytest.raises(FeatureSpecError, match="column 'temp' is not numeric"):
        fitted.transform({**table, "temp": np.array(["warm", "cold", "hot"])})
    with pytest.raises(FeatureSpecError, match="columns differ in length"):
        fitted.transform({**table, "temp": table["temp"][:2]})
    with pytest.raises(FeatureSpecError, match=r"window 'ax' must hold 16 values"):
        fitted.transform_row({"ax": [1.0, 2.0], "temp": 1.0, "site": "lab"})


def test_protocol_package_imports_no_heavy_packages() -> None:
    code = (
        "import sys, edgeops_protocol.features, edgeops_protocol.transforms\n"
        "heavy = {'pandas', 'scipy', 'sklearn', 'edgeops'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- properties --------------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=False)


@st.composite
def tables(draw, min_rows: int = 0, missing: bool = True) -> dict[str, np.ndarray]:
    n = draw(st.integers(min_value=min_rows, max_value=12))
    choices = ["lab", "field", "home", "new", None] if missing else ["lab", "field"]
    table = {
        c: np.array(draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float64)
        for c in [*window_columns("ax", L), "temp"]
    }
    sites = draw(st.lists(st.sampled_from(choices), min_size=n, max_size=n))
    table["site"] = np.array(sites, dtype=object)
    return table


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(train=tables(min_rows=1, missing=False), new=tables())
def test_finite_in_finite_out_and_rows_equal_batch(train, new) -> None:
    fitted = fit(make_spec(), train)
    for table in (train, new):
        batch = fitted.transform(table)
        assert batch.shape == (len(table["temp"]), len(fitted.feature_names))
        assert np.isfinite(batch).all()
        assert np.array_equal(fitted.transform_rows(rows_of(table)), batch)
