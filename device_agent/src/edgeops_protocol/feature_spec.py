"""Feature definitions: the declarative spec, its validation and its hash.

A spec is a plain mapping that YAML or JSON can hold::

    format: 1                  # on-disk format of the spec (optional, default 1)
    name: wrist-motion         # letters, digits, '.', '_', '-'
    description: "..."         # optional
    tags: [imu, har]           # optional; a set: stored sorted, without repeats
    inputs:
      - {name: ax, kind: window, length: 64}   # table columns ax_000 .. ax_063
      - {name: temp, kind: numeric}
      - {name: site, kind: categorical}
    steps:
      - {op: window_stats, input: ax, stats: [mean, std, rms, zcr]}
      - {op: fft_bands, input: ax, bands: 4}
      - {op: select, columns: [temp]}
      - {op: clip, columns: [temp], quantiles: [0.01, 0.99]}
      - {op: scale, method: standard}
      - {op: one_hot, column: site}

Inputs are raw table columns. Input names look like identifiers
(``[A-Za-z_][A-Za-z0-9_]*``). A ``window`` input ``ax`` of length ``L``
(``2 <= L <= 1000``) is stored in a table as the columns ``ax_000 .. ax_{L-1}``:
the name, an underscore and the sample index zero-padded to three digits.

Steps run in order. Each step either *produces* named feature columns, which are
appended to the output in the order they are produced, or *rewrites* features an
earlier step produced, in place:

========================  ===================================================
op                        what it does
========================  ===================================================
``window_stats``          produces ``<input>_<stat>`` for each of ``stats``
                          (default: all of mean, std, min, max, rms, ptp, zcr)
``fft_bands``             produces ``<input>_fft0 .. <input>_fft{bands-1}``
``window_raw``            produces the window's samples ``<input>_000 ..``
                          as they are (for models that learn from raw
                          windows, e.g. a 1-D CNN)
``select``                produces each numeric input of ``columns`` as is
``one_hot``               produces ``<column>=<category>`` per category
``clip``                  rewrites ``columns``: ``min(max(x, lower), upper)``
``scale``                 rewrites ``columns``: ``(x - center) / scale``
========================  ===================================================

Rules: every input is used by at least one step; a feature name is produced only
once; ``clip`` and ``scale`` name features produced by earlier steps (omit
``columns`` to take every one produced so far); one-hot indicators are final, so
``clip`` and ``scale`` never touch them. ``clip`` takes either fitted
``quantiles: [lo, hi]`` or fixed ``min`` and/or ``max``. ``scale`` takes
``method: standard`` (the default) or ``minmax``. ``one_hot`` fits its
categories from training data unless ``categories`` is given, and maps an unseen
or missing value to all zeros (``unknown: zeros``, the default) or refuses it
(``unknown: error``). The formulas are in :mod:`edgeops_protocol.transforms`.

:func:`validate_spec` returns a normalized copy (defaults filled in, numbers as
floats, tags sorted) and :func:`spec_hash` hashes its canonical JSON, so the same
definition has the same hash however it was written down.

>>> spec = {"name": "demo", "inputs": [{"name": "t", "kind": "numeric"}],
...         "steps": [{"op": "select", "columns": ["t"]}]}
>>> validate_spec(spec)["format"]
1
>>> spec_hash(spec) == spec_hash({"steps": spec["steps"], "inputs": spec["inputs"],
...                               "name": "demo", "format": 1, "tags": []})
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "INPUT_KINDS",
    "MAX_WINDOW_LENGTH",
    "OPS",
    "SPEC_FORMAT",
    "WINDOW_STATS",
    "FeatureSpecError",
    "canonical_json",
    "required_columns",
    "spec_hash",
    "validate_spec",
    "window_columns",
]

SPEC_FORMAT = 1
INPUT_KINDS = ("window", "numeric", "categorical")
WINDOW_STATS = ("mean", "std", "min", "max", "rms", "ptp", "zcr")
OPS = ("window_stats", "fft_bands", "window_raw", "select", "clip", "scale", "one_hot")
SCALE_METHODS = ("standard", "minmax")
UNKNOWN_POLICIES = ("zeros", "error")
MAX_WINDOW_LENGTH = 1000

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SPEC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")

# op -> (required keys, optional keys); "op" itself is always required.
_STEP_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "window_stats": (("input",), ("stats",)),
    "fft_bands": (("input", "bands"), ()),
    "window_raw": (("input",), ()),
    "select": (("columns",), ()),
    "clip": ((), ("columns", "quantiles", "min", "max")),
    "scale": ((), ("columns", "method")),
    "one_hot": (("column",), ("categories", "unknown")),
}


class FeatureSpecError(ValueError):
    """A feature spec, its fitted parameters or the data given to it cannot be used."""


def window_columns(name: str, length: int) -> list[str]:
    """Table columns of a window input: ``name_000 .. name_{length-1}``.

    >>> window_columns("ax", 3)
    ['ax_000', 'ax_001', 'ax_002']
    """
    return [f"{name}_{i:03d}" for i in range(length)]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise FeatureSpecError(f"{where}: must be a mapping, got {_type_name(value)}")
    return value


def _check_keys(obj: dict, where: str, required: Sequence[str], optional: Sequence[str]) -> None:
    allowed = set(required) | set(optional)
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise FeatureSpecError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}"
        )
    for key in required:
        if key not in obj:
            raise FeatureSpecError(f"{where}: missing field {key!r}; add it")


def _str(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise FeatureSpecError(f"{where}: field {key!r} must be a string, got {_type_name(value)}")
    return value


def _int(value: Any, where: str, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FeatureSpecError(
            f"{where}: field {key!r} must be an integer, got {_type_name(value)}"
        )
    if not lo <= value <= hi:
        raise FeatureSpecError(f"{where}: field {key!r} must be in {lo}..{hi}, got {value}")
    return value


def _float(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FeatureSpecError(f"{where}: field {key!r} must be a number, got {_type_name(value)}")
    out = float(value)
    if out != out or out in (float("inf"), float("-inf")):
        raise FeatureSpecError(f"{where}: field {key!r} must be finite, got {out}")
    return out


def _str_list(value: Any, where: str, key: str, *, unique: bool = True) -> list[str]:
    if not isinstance(value, list) or not value:
        raise FeatureSpecError(f"{where}: field {key!r} must be a non-empty list of strings")
    for item in value:
        _str(item, where, key)
    if unique and len(set(value)) != len(value):
        dup = next(v for v in value if value.count(v) > 1)
        raise FeatureSpecError(f"{where}: field {key!r} lists {dup!r} twice; remove one")
    return list(value)


def _one_of(value: Any, where: str, key: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise FeatureSpecError(
            f"{where}: field {key!r} must be one of {', '.join(choices)}, got {value!r}"
        )
    return str(value)


def _validate_input(raw: Any, i: int) -> dict:
    where = f"inputs[{i}]"
    obj = _mapping(raw, where)
    _check_keys(obj, where, ("name", "kind"), ("length",))
    name = _str(obj["name"], where, "name")
    if not _IDENT.match(name):
        raise FeatureSpecError(f"{where}: name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
    kind = _one_of(obj["kind"], f"{where} ({name})", "kind", INPUT_KINDS)
    if kind == "window":
        if "length" not in obj:
            raise FeatureSpecError(f"{where} ({name}): missing field 'length'; add it")
        length = _int(obj["length"], f"{where} ({name})", "length", 2, MAX_WINDOW_LENGTH)
        return {"name": name, "kind": kind, "length": length}
    if "length" in obj:
        raise FeatureSpecError(f"{where} ({name}): 'length' is only for window inputs; remove it")
    return {"name": name, "kind": kind}


class _Context:
    """What the steps validated so far have declared: used inputs, produced features."""

    def __init__(self, inputs: list[dict]) -> None:
        self.inputs = {inp["name"]: inp for inp in inputs}
        self.used: set[str] = set()
        self.features: list[str] = []  # produced so far, one-hot indicators excluded
        self.one_hot_columns: set[str] = set()

    def input_of(self, name: str, kind: str, where: str) -> dict:
        inp = self.inputs.get(name)
        if inp is None:
            raise FeatureSpecError(f"{where}: {name!r} is not a declared input; add it to inputs")
        if inp["kind"] != kind:
            raise FeatureSpecError(
                f"{where}: input {name!r} is {inp['kind']}, this step needs {kind}"
            )
        self.used.add(name)
        return inp

    def produce(self, names: list[str], where: str) -> None:
        for name in names:
            if name in self.features:
                raise FeatureSpecError(f"{where}: feature {name!r} is already produced; remove one")
            self.features.append(name)

    def resolve(self, step: dict, where: str) -> list[str]:
        if "columns" not in step:
            if not self.features:
                raise FeatureSpecError(f"{where}: no features produced before this step; move it")
            return list(self.features)
        for name in step["columns"]:
            if name not in self.features:
                raise FeatureSpecError(
                    f"{where}: column {name!r} is not a feature produced by an earlier step "
                    "(one-hot indicators cannot be rewritten); fix the name or move the step"
                )
        return list(step["columns"])


def _validate_step(raw: Any, i: int, ctx: _Context) -> tuple[dict, list[str] | None]:
    obj = _mapping(raw, f"steps[{i}]")
    if "op" not in obj:
        raise FeatureSpecError(f"steps[{i}]: missing field 'op'; add one of {', '.join(OPS)}")
    op = _one_of(obj["op"], f"steps[{i}]", "op", OPS)
    where = f"steps[{i}] ({op})"
    required, optional = _STEP_KEYS[op]
    _check_keys(obj, where, ("op", *required), optional)
    step: dict[str, Any] = {"op": op}
    if op in ("window_stats", "fft_bands", "window_raw"):
        inp = ctx.input_of(_str(obj["input"], where, "input"), "window", where)
        step["input"] = inp["name"]
        if op == "window_raw":
            ctx.produce(window_columns(inp["name"], inp["length"]), where)
        elif op == "window_stats":
            stats = _str_list(obj.get("stats", list(WINDOW_STATS)), where, "stats")
            for stat in stats:
                _one_of(stat, where, "stats", WINDOW_STATS)
            step["stats"] = stats
            ctx.produce([f"{inp['name']}_{s}" for s in stats], where)
        else:
            step["bands"] = _int(obj["bands"], where, "bands", 1, inp["length"] // 2)
            ctx.produce([f"{inp['name']}_fft{b}" for b in range(step["bands"])], where)
        return step, None
    if op == "select":
        step["columns"] = _str_list(obj["columns"], where, "columns")
        for name in step["columns"]:
            ctx.input_of(name, "numeric", where)
        ctx.produce(step["columns"], where)
        return step, None
    if op == "one_hot":
        column = ctx.input_of(_str(obj["column"], where, "column"), "categorical", where)["name"]
        if column in ctx.one_hot_columns:
            raise FeatureSpecError(f"{where}: {column!r} is already one-hot encoded; remove one")
        ctx.one_hot_columns.add(column)
        step["column"] = column
        if "categories" in obj:
            step["categories"] = _str_list(obj["categories"], where, "categories")
        step["unknown"] = _one_of(obj.get("unknown", "zeros"), where, "unknown", UNKNOWN_POLICIES)
        return step, None
    if "columns" in obj:
        step["columns"] = _str_list(obj["columns"], where, "columns")
    if op == "scale":
        step["method"] = _one_of(obj.get("method", "standard"), where, "method", SCALE_METHODS)
    else:
        step.update(_clip_bounds(obj, where))
    return step, ctx.resolve(step, where)


def _clip_bounds(obj: dict, where: str) -> dict:
    fixed = [k for k in ("min", "max") if k in obj]
    if "quantiles" in obj:
        if fixed:
            raise FeatureSpecError(f"{where}: give either 'quantiles' or 'min'/'max', not both")
        q = obj["quantiles"]
        if not isinstance(q, list) or len(q) != 2:
            raise FeatureSpecError(f"{where}: field 'quantiles' must be a list [low, high]")
        lo, hi = (_float(v, where, "quantiles") for v in q)
        if not 0.0 <= lo < hi <= 1.0:
            raise FeatureSpecError(f"{where}: 'quantiles' need 0 <= low < high <= 1, got {q}")
        return {"quantiles": [lo, hi]}
    if not fixed:
        raise FeatureSpecError(f"{where}: missing field 'quantiles' or 'min'/'max'; add one")
    bounds = {k: _float(obj[k], where, k) for k in fixed}
    if len(bounds) == 2 and not bounds["min"] < bounds["max"]:
        raise FeatureSpecError(f"{where}: 'min' must be below 'max'")
    return bounds


def plan_spec(spec: Any) -> tuple[dict, list[list[str] | None]]:
    """Normalized spec and, per step, the features a ``clip``/``scale`` step rewrites."""
    top = _mapping(spec, "spec")
    _check_keys(top, "spec", ("name", "inputs", "steps"), ("format", "description", "tags"))
    fmt = top.get("format", SPEC_FORMAT)
    if isinstance(fmt, bool) or fmt != SPEC_FORMAT:
        raise FeatureSpecError(
            f"spec: format {fmt!r} is not supported (this edgeops reads {SPEC_FORMAT}); upgrade"
        )
    name = _str(top["name"], "spec", "name")
    if not _SPEC_NAME.match(name):
        raise FeatureSpecError(f"spec: name {name!r} must be 1-100 of A-Z a-z 0-9 . _ -")
    description = _str(top.get("description", ""), "spec", "description")
    tags = top.get("tags", [])
    tags = sorted(set(_str_list(tags, "spec", "tags", unique=False))) if tags != [] else []

    if not isinstance(top["inputs"], list) or not top["inputs"]:
        raise FeatureSpecError("spec: field 'inputs' must be a non-empty list")
    inputs = [_validate_input(raw, i) for i, raw in enumerate(top["inputs"])]
    seen: set[str] = set()
    for i, inp in enumerate(inputs):
        own = window_columns(inp["name"], inp["length"]) if inp["kind"] == "window" else []
        for col in [inp["name"], *own]:
            if col in seen:
                raise FeatureSpecError(f"inputs[{i}]: table column {col!r} is declared twice")
            seen.add(col)

    if not isinstance(top["steps"], list) or not top["steps"]:
        raise FeatureSpecError("spec: field 'steps' must be a non-empty list")
    ctx = _Context(inputs)
    steps, resolved = [], []
    for i, raw in enumerate(top["steps"]):
        step, cols = _validate_step(raw, i, ctx)
        steps.append(step)
        resolved.append(cols)
    unused = [inp["name"] for inp in inputs if inp["name"] not in ctx.used]
    if unused:
        raise FeatureSpecError(f"spec: input {unused[0]!r} is not used by any step; remove it")
    normalized = {
        "format": SPEC_FORMAT,
        "name": name,
        "description": description,
        "tags": tags,
        "inputs": inputs,
        "steps": steps,
    }
    return normalized, resolved


def validate_spec(spec: Any) -> dict:
    """A normalized copy of ``spec``, or :class:`FeatureSpecError` naming what is wrong."""
    return plan_spec(spec)[0]


def canonical_json(spec: Any) -> str:
    """The normalized spec as compact JSON with sorted keys: the form that is hashed."""
    return json.dumps(
        validate_spec(spec),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def spec_hash(spec: Any) -> str:
    """SHA-256 (hex) of :func:`canonical_json`: equal for equal definitions."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def required_columns(spec: Any) -> list[str]:
    """The raw table columns a spec reads, in input order (windows expanded).

    >>> required_columns({"name": "d", "inputs": [{"name": "g", "kind": "window", "length": 2}],
    ...                   "steps": [{"op": "window_stats", "input": "g", "stats": ["mean"]}]})
    ['g_000', 'g_001']
    """
    cols: list[str] = []
    for inp in validate_spec(spec)["inputs"]:
        if inp["kind"] == "window":
            cols.extend(window_columns(inp["name"], inp["length"]))
        else:
            cols.append(inp["name"])
    return cols
