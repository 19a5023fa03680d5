"""A new data version from labelled fleet samples: retraining data from the devices.

Each labelled sample the collector stored carries the raw ``input`` the device
received (``{"ax": [..], "temp": 21.5}``). :func:`add_from_samples` turns those
inputs into rows with the columns of a base version of the data set — a list
under ``ax`` fills the window columns ``ax_000 ..``, a scalar fills the column of
its name, the label fills the label column — appends them to the base table and
registers the result as the next version, with its origin recorded::

    {"kind": "fleet_samples", "base": "sensors@2", "fleet": "lab", "model": None,
     "since": 1795000000.0, "until": None, "samples": 42,
     "skipped": {"wrong_window_length": 1}, "devices": ["pi-07", "pi-09"],
     "sample_ids": ["pi-07/5f0c/4", ...], "sample_ids_sha256": "..."}

Samples already in the base — folded into it, or into a version it was made
from, by an earlier run — are left out, so running it again adds only what is
new. A sample whose input does not fit the columns is skipped and counted by
reason; it never stops the others. :class:`RowMapper` is the pure part.
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
from collections import Counter
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeops_protocol.feature_spec import window_columns

from ..errors import InvalidInput
from .store import AddResult

__all__ = ["ORIGIN_KIND", "Misfit", "RowMapper", "add_from_samples", "folded_sample_ids"]

ORIGIN_KIND = "fleet_samples"
_WINDOW_COLUMN = re.compile(r"(.+)_\d{3,}")


class Misfit(Exception):
    """A sample's input does not fit the table; ``reason`` is the key it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


class RowMapper:
    """Turns a sample's raw input and label into a row of a table with given columns.

    ``kinds`` maps every column to ``"int"``, ``"float"``, ``"bool"`` or ``"str"``
    (from the table's dtypes, see :meth:`from_frame`).

    >>> m = RowMapper({"ax_000": "float", "ax_001": "float", "t": "float", "label": "str"})
    >>> m.row({"ax": [0.5, 1], "t": 20.5}, "walk")
    {'ax_000': 0.5, 'ax_001': 1, 't': 20.5, 'label': 'walk'}
    >>> m.row({"ax": [0.5], "t": 20.5}, "walk")
    Traceback (most recent call last):
    ...
    edgeops.data.from_samples.Misfit: window 'ax' has 1 values; the table has 2 (ax_000..ax_001)
    """

    def __init__(self, kinds: Mapping[str, str], label_column: str = "label") -> None:
        if label_column not in kinds:
            cols = ", ".join(list(kinds)[:8])
            raise InvalidInput(
                f"the table has no label column {label_column!r} (its columns: {cols}); "
                "name it with label_column"
            )
        self.kinds = dict(kinds)
        self.label_column = label_column
        self.inputs = [c for c in kinds if c != label_column]
        self._groups: dict[str, list[str]] = {}
        for column in self.inputs:
            m = _WINDOW_COLUMN.fullmatch(column)
            if m:
                self._groups.setdefault(m.group(1), []).append(column)

    @classmethod
    def from_frame(cls, frame: Any, label_column: str = "label") -> RowMapper:
        import pandas as pd

        def kind(dtype: Any) -> str:
            if pd.api.types.is_bool_dtype(dtype):
                return "bool"
            if pd.api.types.is_integer_dtype(dtype):
                return "int"
            if pd.api.types.is_numeric_dtype(dtype):
                return "float"
            return "str"

        return cls({str(c): kind(frame[c].dtype) for c in frame.columns}, label_column)

    def _window_group(self, name: str) -> list[str]:
        """The table's columns ``name_000 ..`` (in table order), empty if it has none."""
        return self._groups.get(name, [])

    def _value(self, column: str, value: Any) -> Any:
        kind = self.kinds[column]
        if value is None:
            raise Misfit("missing_value", f"{column!r} is null")
        if kind == "bool":
            ok = type(value) is bool
        elif kind == "str":
            ok = type(value) is str
        else:
            ok = _number(value) and (kind == "float" or type(value) is int)
        if not ok:
            raise Misfit("wrong_type", f"{column!r} holds {value!r}; the table has {kind} values")
        return value

    def _label(self, label: str) -> Any:
        kind = self.kinds[self.label_column]
        try:
            if kind == "int":
                return int(label)
            if kind == "float":
                value = float(label)
                if math.isfinite(value):
                    return value
                raise ValueError(label)
        except ValueError:
            raise Misfit(
                "wrong_label", f"label {label!r} is not a number like the table's labels"
            ) from None
        if kind == "bool":
            raise Misfit("wrong_label", "the table's labels are true/false")
        return label

    def row(self, raw: Any, label: str | None) -> dict[str, Any]:
        """The row of ``raw`` (a sample's ``input``) with ``label``; raises :class:`Misfit`."""
        if not isinstance(raw, Mapping):
            raise Misfit("no_input", "the sample has no raw input")
        row: dict[str, Any] = {}
        for name, value in raw.items():
            if isinstance(value, list):
                cols = window_columns(name, len(value))
                group = self._window_group(name)
                if group and set(group) == set(cols):
                    row.update((c, self._value(c, v)) for c, v in zip(cols, value, strict=True))
                elif group:
                    raise Misfit(
                        "wrong_window_length",
                        f"window {name!r} has {len(value)} values; the table has {len(group)} "
                        f"({group[0]}..{group[-1]})",
                    )
                elif name in self.inputs:
                    raise Misfit("wrong_type", f"{name!r} is a list; the table has one value")
                else:
                    raise Misfit("unknown_column", f"the table has no column {name!r}")
            elif name in self.inputs:
                row[name] = self._value(name, value)
            elif group := self._window_group(name):
                raise Misfit("wrong_type", f"{name!r} is one value; the table has {len(group)}")
            else:
                raise Misfit("unknown_column", f"the table has no column {name!r}")
        missing = next((c for c in self.inputs if c not in row), None)
        if missing is not None:
            raise Misfit("missing_column", f"the input has no value for column {missing!r}")
        row[self.label_column] = None if label is None else self._label(label)
        return {c: row[c] for c in self.kinds}


def folded_sample_ids(versions: list[Any], base: Any) -> set[str]:
    """Sample ids already in ``base``: its own and those of the versions it was made from."""
    by_ref = {v.ref: v for v in versions}
    out: set[str] = set()
    dv = base
    while dv is not None and (dv.origin or {}).get("kind") == ORIGIN_KIND:
        out.update(dv.origin.get("sample_ids", []))
        dv = by_ref.get(dv.origin.get("base"))
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def add_from_samples(
    ws: Any,
    name: str,
    *,
    since: float | None = None,
    until: float | None = None,
    model: str | None = None,
    device: str | None = None,
    labelled_only: bool = True,
    base: str | None = None,
    message: str = "",
    label_column: str = "label",
    exclude: Collection[str] = (),
) -> AddResult:
    """Append the fleet's labelled samples (device time ``ts`` in ``[since, until)``) to the
    latest version of ``name`` (or ``base``, e.g. ``sensors@2``) as its next version.

    ``model`` (``NAME`` or ``NAME@VERSION``/``@ALIAS``) and ``device`` narrow the
    samples. With ``labelled_only=False`` unlabelled samples come too, with an
    empty label cell (for labelling elsewhere; training needs every row labelled).
    Samples whose id is in ``exclude`` (e.g. held out for evaluation) are left out
    and counted as ``excluded``.
    Raises :class:`InvalidInput` — and writes nothing — when no sample is left to add.
    """
    from ..datasets import write_table
    from ..monitoring.store import MonitoringStore

    base_dv = ws.data.get(base or name)
    if base_dv.dataset.name != name:
        raise InvalidInput(f"--base {base} is not a version of {name}; use {name}@VERSION")
    frame = ws.data.load_frame(base_dv.ref)
    mapper = RowMapper.from_frame(frame, label_column)
    if model and "@" in model:
        model = ws.registry.get_version(model).ref  # an alias names one version
    fleet = ws.settings.fleet
    samples = MonitoringStore(ws.db, fleet).samples(
        model,
        device=device,
        labelled=True if labelled_only else None,
        since=since,
        until=until,
        limit=None,
    )
    window = f" since {_iso(since)}" if since is not None else ""
    window += f" until {_iso(until)}" if until is not None else ""
    scope = "".join(f" {k} {v}" for k, v in (("of model", model), ("from device", device)) if v)
    if not samples:
        what = "labelled samples" if labelled_only else "samples"
        raise InvalidInput(f"no {what}{scope} in fleet {fleet}{window}; see `edgeops labels list`")

    folded = folded_sample_ids(ws.data.versions(name), base_dv)
    exclude = set(exclude)
    skipped: Counter[str] = Counter()
    first_misfit = ""
    rows, ids, devices = [], [], set()
    for sample in sorted(samples, key=lambda s: (s.ts, s.sample_id)):
        if sample.sample_id in folded:
            skipped["already_in_base"] += 1
            continue
        if sample.sample_id in exclude:
            skipped["excluded"] += 1
            continue
        try:
            rows.append(mapper.row(sample.input, sample.label))
        except Misfit as exc:
            skipped[exc.reason] += 1
            first_misfit = first_misfit or f"sample {sample.sample_id}: {exc}"
            continue
        ids.append(sample.sample_id)
        devices.add(sample.device_id)
    if not rows:
        already = skipped.pop("already_in_base", 0)
        excluded = skipped.pop("excluded", 0)
        if excluded and not skipped:
            raise InvalidInput(
                f"no new samples{scope}{window}: of the {already + excluded} found, {excluded} "
                f"are excluded and {already} in {base_dv.ref} already"
            )
        if not skipped:
            raise InvalidInput(
                f"no new samples{scope}{window}: the {already} found are all in "
                f"{base_dv.ref} already; see `edgeops labels list`"
            )
        counts = ", ".join(f"{k} {n}" for k, n in sorted(skipped.items()))
        raise InvalidInput(
            f"no new sample{scope}{window} fits the columns of {base_dv.ref} "
            f"(skipped: {counts}); first: {first_misfit}"
        )

    import pandas as pd

    table = pd.concat([frame, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True)
    origin = {
        "kind": ORIGIN_KIND,
        "base": base_dv.ref,
        "fleet": fleet,
        "model": model,
        "device": device,
        "since": since,
        "until": until,
        "samples": len(rows),
        "skipped": dict(sorted(skipped.items())),
        "devices": sorted(devices),
        "sample_ids": ids,
        "sample_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }
    suffix = ".csv" if base_dv.format == "csv" else ".parquet"
    filename = Path(base_dv.filename).stem + suffix
    with tempfile.TemporaryDirectory(prefix="edgeops-samples-") as tmp:
        path = write_table(table, Path(tmp) / filename)
        return ws.data.add(
            path,
            name,
            message=message
            or f"{len(rows)} {'labelled ' * labelled_only}samples from fleet {fleet}",
            origin=origin,
        )
