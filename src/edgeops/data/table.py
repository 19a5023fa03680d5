"""Reading CSV and Parquet files into data frames, with errors a user can act on."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from ..errors import InvalidInput, MissingExtra

__all__ = ["FORMATS", "format_of", "read_table"]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"{path.name}: unknown table format {path.suffix!r}; use a .csv or .parquet file"
        )
    return fmt


def read_table(path: Path | str) -> pd.DataFrame:
    """The table in ``path`` (CSV or Parquet); raises :class:`InvalidInput` when unusable."""
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path} is empty; give a file with a header and at least one row")
    try:
        if fmt == "csv":
            header = _csv_header(path)  # pandas would rename a repeated "x" to "x.1"
            df = pd.read_csv(path, encoding="utf-8")
            if len(set(header)) != len(header):
                df.columns = header
        else:
            try:
                import pyarrow  # noqa: F401
            except ModuleNotFoundError as exc:
                raise MissingExtra("pyarrow", "parquet") from exc
            df = pd.read_parquet(path)
    except MissingExtra:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text; save the CSV as UTF-8") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"cannot parse {path} as {fmt}: {first}; fix the file") from exc
    check_frame(df, str(path))
    return df


def check_frame(df: pd.DataFrame, where: str) -> None:
    if df.shape[1] == 0:
        raise InvalidInput(f"{where} has no columns; give a table with a header row")
    if len(df) == 0:
        raise InvalidInput(f"{where} has a header but no rows; add data")
    names = [str(c) for c in df.columns]
    if any(n.startswith("Unnamed: ") or not n.strip() for n in names):
        raise InvalidInput(f"{where} has a column without a name; name every column")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInput(f"{where} repeats column {dupes[0]!r}; make every column name unique")


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])
