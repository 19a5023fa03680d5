"""Data versioning on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import store_snapshot
from edgeops.errors import InvalidInput, InvalidReference, NotFound
from edgeops_protocol.histogram import histogram


def _frame(n: int = 200, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "temp": rng.normal(20 + shift, 2, n),
            "hum": rng.uniform(30, 60, n),
            "site": rng.choice(["a", "b", "c"], n),
            "label": rng.integers(0, 2, n),
        }
    )


def test_add_creates_versions_and_dedupes(ws, tmp_path):
    p1, p2 = tmp_path / "d1.csv", tmp_path / "d2.csv"
    _frame(seed=0).to_csv(p1, index=False)
    _frame(seed=1).to_csv(p2, index=False)

    first = ws.data.add(p1, "readings", message="first")
    again = ws.data.add(p1, "readings", message="ignored")
    second = ws.data.add(p2, "readings")

    assert (first.created, again.created, second.created) == (True, False, True)
    assert (first.version.version, again.version.version, second.version.version) == (1, 1, 2)
    assert again.version.message == "first"
    assert first.version.author == "tester"
    assert [v.version for v in ws.data.versions("readings")] == [1, 2]
    assert ws.data.get("readings").version == 2
    assert first.version.rows == 200
    assert [c["name"] for c in first.version.schema] == ["temp", "hum", "site", "label"]


def test_profile_values_match_pandas(ws, tmp_path):
    df = _frame()
    df.loc[3, "temp"] = np.nan
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    prof = ws.data.add(path, "readings").version.profile["columns"]

    temp = prof["temp"]
    assert temp["kind"] == "numeric"
    assert temp["missing"] == 1
    col = pd.read_csv(path)["temp"].dropna()
    assert temp["mean"] == pytest.approx(col.mean(), rel=1e-12)
    assert temp["std"] == pytest.approx(col.std(ddof=0), rel=1e-12)
    assert (temp["min"], temp["max"]) == (col.min(), col.max())
    assert len(temp["bin_edges"]) == 11
    assert temp["histogram"] == histogram(col.to_numpy(), temp["bin_edges"])
    assert sum(temp["histogram"]) == 199
    assert temp["histogram"][0] == 0 and temp["histogram"][-1] == 0  # no under/overflow
    assert prof["site"]["kind"] == "categorical"
    assert prof["site"]["distinct"] == 3
    assert sum(c for _, c in prof["site"]["top"]) == 200


def test_get_restores_exact_bytes(ws, tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,b\n1,2\n3,4\n")  # no trailing newline normalisation
    ws.data.add(path, "tiny")
    out = tmp_path / "out" / "restored.csv"
    ws.data.export("tiny@1", out)
    assert out.read_bytes() == b"a,b\n1,2\n3,4\n"


def test_parquet_version(ws, tmp_path):
    path = tmp_path / "d.parquet"
    _frame().to_parquet(path)
    dv = ws.data.add(path, "pq").version
    assert dv.format == "parquet"
    assert ws.data.load_frame("pq@1").shape == (200, 4)


def test_diff_reports_schema_stats_and_psi(ws, tmp_path):
    a = _frame(seed=0)
    b = _frame(seed=1, shift=3.0).drop(columns=["hum"]).assign(extra=1.0)
    pa, pb = tmp_path / "a.csv", tmp_path / "b.csv"
    a.to_csv(pa, index=False)
    b.to_csv(pb, index=False)
    ws.data.add(pa, "r")
    ws.data.add(pb, "r")
    d = ws.data.diff("r@1", "r@2")

    assert d["added"] == ["extra"]
    assert d["removed"] == ["hum"]
    by_col = {c["column"]: c for c in d["columns"]}
    assert by_col["temp"]["mean"]["to"] - by_col["temp"]["mean"]["from"] == pytest.approx(
        b.temp.mean() - a.temp.mean()
    )
    assert by_col["temp"]["psi"] > 1.0  # a 1.5-sigma shift
    assert by_col["label"]["psi"] < 0.1  # same distribution


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.csv", "does not exist"),
        (b"", "empty.csv", "is empty"),
        (b'a,b\n1,2\n3\n"x,5\n', "bad.csv", "cannot parse"),
        (b"a,a\n1,2\n", "dupe.csv", "repeats column 'a'"),
        (b"a,b\n", "header.csv", "no rows"),
        (b"\xff\xfe\x00garbage\x81", "bin.csv", "not UTF-8"),
        (b"a\n1\n", "data.xlsx", "unknown table format"),
    ],
)
def test_bad_files_leave_the_store_unchanged(ws, tmp_path, content, name, message):
    good = tmp_path / "good.csv"
    _frame().to_csv(good, index=False)
    ws.data.add(good, "r")
    before = store_snapshot(ws)
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message):
        ws.data.add(path, "r")
    assert store_snapshot(ws) == before


def test_unknown_refs(ws, tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    ws.data.add(path, "r")
    with pytest.raises(NotFound, match="no dataset named 'nope'"):
        ws.data.get("nope@1")
    with pytest.raises(NotFound, match="has no version 7"):
        ws.data.get("r@7")
    with pytest.raises(InvalidReference):
        ws.data.get("r@@1")
    with pytest.raises(InvalidReference):
        ws.data.add(path, "bad name")


def test_corrupt_artifact_is_detected(ws, tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    dv = ws.data.add(path, "r").version
    blob = ws.artifacts.path_for(dv.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0x01
    blob.write_bytes(bytes(data))
    from edgeops.errors import ArtifactCorrupt

    with pytest.raises(ArtifactCorrupt, match="SHA-256 mismatch"):
        ws.data.export("r@1", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
