"""``edgeops firmware generate``: a buildable firmware project for one model variant.

A project holds the portable core (``templates/core``), the port of its target,
the application glue (``templates/app``) and four generated parts:

- ``app/edgeops_feature_params.{h,c}``: the model's fitted feature spec as C data
  (:func:`feature_params_c`), run by ``core/edgeops_features.c``;
- ``app/edgeops_model_data.{h,c}``: the model — the loadable emlearn artifact
  (EOML) as a C array, emlearn's inline C (``c-emlearn``), or the TFLite
  flatbuffer for TFLite Micro (``tflm``, ``c-tflm``, ``tflite-*``);
- ``app/edgeops_board_config.h``: the buffer sizes (``edgeops_config.h``), sized for
  this model and its manifest on ``cortex-m4`` and ``esp32`` (:func:`board_config`);
- ``test/``: the held-out samples of the version's own split as raw inputs
  (``vectors.txt``) and what the Python reference makes of them
  (``expected.json``: float32 features, the reference's classes, the original
  model's, the true labels), with a host Makefile.

Targets: ``host`` (gcc + libmosquitto: the host firmware; for a TFLite model built with
``EDGEOPS_WITH_TFLM=1``, its runner ``ports/host/host_tflm.c`` running the tflite-micro
interpreter in a coprocess, so it takes TFLite models over the air), ``cortex-m4``
(arm-none-eabi-gcc: a static library and a footprint image, no board HAL), and
``esp32`` (an ESP-IDF project with an ``edgeops`` component; not built here). The
project is written to a temporary folder next to ``out`` and renamed into place;
a non-empty ``out`` is refused unless ``force``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeops_protocol.baseline import labels_of

from ..errors import ConfigError, Conflict, InvalidInput

__all__ = [
    "DEFAULT_VECTORS",
    "PROJECT_FILE",
    "TARGETS",
    "TOLERANCE",
    "Generated",
    "board_config",
    "c_string",
    "feature_params_c",
    "features_fingerprint",
    "generate",
    "pick_variant",
]

TARGETS = ("host", "cortex-m4", "esp32")
PROJECT_FILE = "edgeops-project.json"
PROJECT_FORMAT = 1
DEFAULT_VECTORS = 1000
# float32 features from C against Python's: |c - py| <= abs + rel * |py| (docs/firmware.md)
TOLERANCE = {"rel": 1e-5, "abs": 1e-6}
# variant -> how the firmware holds it, in the order a project picks one
VARIANT_FORMS = {
    "emlearn-loadable": "eoml",
    "c-emlearn": "inline",
    "tflm": "tflm",  # the flatbuffer TFLite Micro devices take over the air
    "c-tflm": "tflm",
    "tflite-int8": "tflm",
    "tflite-f32": "tflm",
}
# functions emlearn 0.23's eml_net.h defines without static
EML_NET_FUNCTIONS = (
    "eml_net_argmax",
    "eml_net_forward",
    "eml_net_layer_forward",
    "eml_net_infer",
    "eml_net_predict_proba",
    "eml_net_predict",
    "eml_net_regress",
    "eml_net_regress1",
)
EMLEARN_HEADERS = ("eml_common.h", "eml_log.h", "eml_net.h", "eml_net_common.h", "eml_trees.h")
_WINDOW_STATS = ("mean", "std", "min", "max", "rms", "ptp", "zcr")
_OPS = {
    "window_stats": "EDGEOPS_FEATURE_WINDOW_STATS",
    "fft_bands": "EDGEOPS_FEATURE_FFT_BANDS",
    "window_raw": "EDGEOPS_FEATURE_WINDOW_RAW",
    "select": "EDGEOPS_FEATURE_SELECT",
    "clip": "EDGEOPS_FEATURE_CLIP",
    "scale": "EDGEOPS_FEATURE_SCALE",
    "one_hot": "EDGEOPS_FEATURE_ONE_HOT",
}
_KINDS = {
    "window": "EDGEOPS_FEATURE_INPUT_WINDOW",
    "numeric": "EDGEOPS_FEATURE_INPUT_NUMERIC",
    "categorical": "EDGEOPS_FEATURE_INPUT_CATEGORICAL",
}


@dataclass
class Generated:
    """What :func:`generate` wrote."""

    out: Path
    target: str
    model: str
    variant: str
    form: str
    vectors: int
    n_features: int
    files: list[str]
    config: dict[str, int]
    footprint: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "target": self.target,
            "model": self.model,
            "variant": self.variant,
            "form": self.form,
            "vectors": self.vectors,
            "n_features": self.n_features,
            "files": self.files,
            "config": self.config,
            "footprint": self.footprint,
            "notes": self.notes,
        }


# --- C text --------------------------------------------------------------------------------


def c_string(text: str) -> str:
    """A C99 string literal for ``text`` (UTF-8; octal escapes outside printable ASCII, and
    ``?`` escaped so no trigraph forms).

    >>> c_string('a"b?\\u00e9')
    '"a\\\\"b\\\\?\\\\303\\\\251"'
    """
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _double(v: float) -> str:
    """A C double literal equal to ``v`` (repr is the shortest round-trip form)."""
    if not math.isfinite(v):
        raise InvalidInput(f"{v!r} cannot be a C constant; the fitted features hold a non-finite")
    text = repr(float(v))
    return text if any(c in text for c in ".en") else text + ".0"


def _rows(values: list[str], per_line: int = 8, indent: str = "    ") -> str:
    lines = [", ".join(values[i : i + per_line]) for i in range(0, len(values), per_line)]
    return ",\n".join(indent + ln for ln in lines)


def _array(ctype: str, name: str, values: list[str], static: bool = True) -> str:
    head = ("static " if static else "") + f"const {ctype} {name}[{max(1, len(values))}]"
    return f"{head} = {{\n{_rows(values or ['0'])}\n}};\n"


def feature_params_c(fitted: Any, n_classes: int, labels: list[str]) -> tuple[str, str]:
    """Header and source of ``app/edgeops_feature_params``: the fitted spec as
    ``edgeops_feature_spec_t`` data, the raw-sample layout and the labels."""
    spec, params, names = fitted.spec, fitted.params["steps"], list(fitted.feature_names)
    inputs = spec["inputs"]
    index = {inp["name"]: i for i, inp in enumerate(inputs)}
    position = {n: j for j, n in enumerate(names)}
    offsets, raw = [], 0
    for inp in inputs:
        offsets.append(raw)
        raw += inp["length"] if inp["kind"] == "window" else (1 if inp["kind"] == "numeric" else 0)
    max_window = max((i["length"] for i in inputs if i["kind"] == "window"), default=0)
    decls: list[str] = []
    steps: list[str] = []
    tables: set[int] = set()
    for k, (step, p) in enumerate(zip(spec["steps"], params, strict=True)):
        op = step["op"]
        fields = {"op": _OPS[op], "input": "0u", "count": "0u"}
        if op in ("window_stats", "fft_bands", "window_raw"):
            fields["input"] = f"{index[step['input']]}u"
        if op == "window_stats":
            stats = [f"{_WINDOW_STATS.index(s)}u" for s in step["stats"]]
            decls.append(_array("uint8_t", f"step{k}_stats", stats))
            fields.update(count=f"{len(stats)}u", stats=f"step{k}_stats")
        elif op == "fft_bands":
            length = next(i["length"] for i in inputs if i["name"] == step["input"])
            tables.add(length)
            fields.update(
                count=f"{step['bands']}u", cos_table=f"cos_{length}", sin_table=f"sin_{length}"
            )
        elif op == "window_raw":
            length = next(i["length"] for i in inputs if i["name"] == step["input"])
            fields["count"] = f"{length}u"
        elif op == "select":
            idx = [f"{index[c]}u" for c in step["columns"]]
            decls.append(_array("uint16_t", f"step{k}_inputs", idx))
            fields.update(count=f"{len(idx)}u", indices=f"step{k}_inputs")
        elif op == "one_hot":
            cats = [c_string(c) for c in p["categories"]]
            decls.append(_array("char *const", f"step{k}_categories", cats))
            fields.update(
                input=f"{index[step['column']]}u",
                count=f"{len(cats)}u",
                categories=f"step{k}_categories",
                unknown_is_error="1u" if step.get("unknown") == "error" else "0u",
            )
        elif op in ("scale", "clip"):
            cols = p["columns"]
            decls.append(_array("uint16_t", f"step{k}_columns", [f"{position[c]}u" for c in cols]))
            first, second = ("center", "scale") if op == "scale" else ("lower", "upper")
            for key, arr in ((first, "first"), (second, "second")):
                values = [_double(v if v is not None else 0.0) for v in p[key]]
                decls.append(_array("double", f"step{k}_{arr}", values))
                if op == "clip":
                    given = ["1u" if v is not None else "0u" for v in p[key]]
                    decls.append(_array("uint8_t", f"step{k}_has_{arr}", given))
                    fields[f"has_{arr}"] = f"step{k}_has_{arr}"
                fields[arr] = f"step{k}_{arr}"
            fields.update(count=f"{len(cols)}u", indices=f"step{k}_columns")
        body = ", ".join(f".{key} = {value}" for key, value in fields.items())
        steps.append(f"    {{{body}}}, /* {op} */")
    for length in sorted(tables):
        cos = [_double(math.cos(2.0 * math.pi * m / length)) for m in range(length)]
        sin = [_double(math.sin(2.0 * math.pi * m / length)) for m in range(length)]
        decls.append(f"/* cos and sin of 2 pi m / {length}, m = 0 .. {length - 1} */\n")
        decls.append(_array("double", f"cos_{length}", cos, static=True))
        decls.append(_array("double", f"sin_{length}", sin, static=True))
    input_rows = [
        f"    {{{c_string(i['name'])}, {_KINDS[i['kind']]}, "
        f"{i.get('length', 1 if i['kind'] == 'numeric' else 0)}u}},"
        for i in inputs
    ]
    header = f"""/* Generated by edgeops firmware generate: the model's features. Do not edit.
 * spec {spec["name"]} (spec_hash {fitted.spec_hash}): {len(names)} features from
 * {len(inputs)} raw inputs. */
#ifndef EDGEOPS_FEATURE_PARAMS_H
#define EDGEOPS_FEATURE_PARAMS_H

#include <stdint.h>

#include "edgeops_features.h"

#define EDGEOPS_APP_N_INPUTS {len(inputs)}u
#define EDGEOPS_APP_N_FEATURES {len(names)}u
#define EDGEOPS_APP_MAX_WINDOW {max_window}u
/* doubles of one raw sample for edgeops_app_raw(): windows and numeric inputs in order */
#define EDGEOPS_APP_RAW_DOUBLES {raw}u
#define EDGEOPS_APP_N_CLASSES {n_classes}u
#define EDGEOPS_APP_SPEC_HASH "{fitted.spec_hash}"

extern const edgeops_feature_spec_t edgeops_app_feature_spec;
/* where each input starts in the raw sample buffer (categorical inputs take none) */
extern const uint32_t edgeops_app_raw_offsets[EDGEOPS_APP_N_INPUTS];
/* the class names, by class index */
extern const char *const edgeops_app_labels[EDGEOPS_APP_N_CLASSES];

#endif /* EDGEOPS_FEATURE_PARAMS_H */
"""
    feature_list = "\n".join(f" *   {j:3d} {n}" for j, n in enumerate(names))
    source = f"""/* Generated by edgeops firmware generate: the model's features. Do not edit.
 * Features, in order:
{feature_list}
 */
#include "edgeops_feature_params.h"

{"".join(decls)}
static const edgeops_feature_input_t inputs[EDGEOPS_APP_N_INPUTS] = {{
{chr(10).join(input_rows)}
}};

static const edgeops_feature_step_t steps[{len(steps)}] = {{
{chr(10).join(steps)}
}};

const edgeops_feature_spec_t edgeops_app_feature_spec = {{
    inputs, EDGEOPS_APP_N_INPUTS, steps, {len(steps)}u, EDGEOPS_APP_N_FEATURES,
    EDGEOPS_APP_MAX_WINDOW, EDGEOPS_APP_SPEC_HASH}};

{_array("uint32_t", "edgeops_app_raw_offsets", [f"{o}u" for o in offsets], static=False)}
const char *const edgeops_app_labels[EDGEOPS_APP_N_CLASSES] = {{
{_rows([c_string(str(lb)) for lb in labels])}
}};
"""
    return header, source


def _bytes_c(data: bytes) -> str:
    return _rows([f"0x{b:02x}" for b in data], per_line=12)


def model_data_c(form: str, variant: Any, data: bytes) -> dict[str, str]:
    """``app/`` files holding the model: ``edgeops_model_data.{h,c}`` (and, for the
    inline form, ``edgeops_model_inline.h``)."""
    sha = hashlib.sha256(data).hexdigest()
    flags = {
        "EDGEOPS_APP_MODEL_EOML": int(form == "eoml"),
        "EDGEOPS_APP_MODEL_INLINE": int(form == "inline"),
        "EDGEOPS_APP_MODEL_TFLM": int(form == "tflm"),
    }
    fmt = {"eoml": "c-emlearn", "inline": "c-emlearn", "tflm": "tflite"}[form]
    lines = "\n".join(f"#define {k} {v}" for k, v in flags.items())
    header = f"""/* Generated by edgeops firmware generate: the model. Do not edit.
 * variant {variant.name} (format {variant.format}), {len(data)} bytes, sha256 {sha}. */
#ifndef EDGEOPS_MODEL_DATA_H
#define EDGEOPS_MODEL_DATA_H

#include <stdint.h>

#define EDGEOPS_APP_MODEL_VARIANT {c_string(variant.name)}
#define EDGEOPS_APP_MODEL_FORMAT {c_string(fmt)}
#define EDGEOPS_APP_MODEL_SHA256 "{sha}"
{lines}

"""
    files: dict[str, str] = {}
    if form == "inline":
        # the variant's C, with its edgeops_model_* names moved out of the core's way
        code = re.sub(r"\bedgeops_model", "edgeops_inline", data.decode())
        files["edgeops_model_inline.h"] = code
        header += (
            "/* emlearn's inline C of the model (edgeops_model_inline.h): class index or < 0 */\n"
            "int32_t edgeops_app_inline_predict(const float *features, int32_t n_features);\n"
        )
        # eml_net.h defines its functions in the header, not static; the core's EOML loader
        # includes it too, so this copy takes other names
        renames = (
            "".join(f"#define {fn} edgeops_inline_{fn}\n" for fn in EML_NET_FUNCTIONS)
            if "eml_net" in code
            else ""
        )
        source = (
            "/* Generated by edgeops firmware generate. Do not edit. */\n"
            '#include "edgeops_model_data.h"\n\n'
            + renames
            + '#include "edgeops_model_inline.h"\n\n'
            "int32_t edgeops_app_inline_predict(const float *features, int32_t n_features)\n{\n"
            "    return edgeops_inline_predict(features, n_features);\n}\n"
        )
    else:
        header += (
            "/* the model's bytes (16-byte aligned: TFLite Micro and the EOML MLP read them in "
            "place) */\nextern const uint8_t edgeops_app_model[];\n"
            "extern const uint32_t edgeops_app_model_len;\n"
        )
        source = f"""/* Generated by edgeops firmware generate. Do not edit. */
#include "edgeops_model_data.h"

#if defined(__GNUC__) || defined(__clang__)
#define EDGEOPS_APP_ALIGN __attribute__((aligned(16)))
#else
#define EDGEOPS_APP_ALIGN
#endif

EDGEOPS_APP_ALIGN const uint8_t edgeops_app_model[{len(data)}] = {{
{_bytes_c(data)}
}};

const uint32_t edgeops_app_model_len = {len(data)}u;
"""
    header += "\n#endif /* EDGEOPS_MODEL_DATA_H */\n"
    files["edgeops_model_data.h"] = header
    files["edgeops_model_data.c"] = source
    return files


# --- buffer sizes ----------------------------------------------------------------------------


def _round_up(n: float, step: int) -> int:
    return int(math.ceil(n / step) * step)


def _json_tokens(value: Any) -> int:
    """Tokens edgeops_json makes of a value: one per value, one more per object key."""
    if isinstance(value, dict):
        return 1 + sum(1 + _json_tokens(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_json_tokens(v) for v in value)
    return 1


def _manifest_envelope(mv: Any, variant: Any, data: bytes) -> dict[str, Any]:
    """The signed envelope a rollout would send for this variant, with the longest ids."""
    from edgeops_protocol.manifest import sign_manifest_hmac

    from ..fleet.deploy import ManifestOptions, build_manifest

    manifest = build_manifest(
        fleet="f" * 64,
        device="d" * 64,
        seq=2**40,
        rollout="r-" + "0" * 8,
        mv=mv,
        variant=variant,
        data=data,
        hardware=["*"],
        opts=ManifestOptions(),
        now=1.8e9,
    )
    return sign_manifest_hmac(manifest, b"k" * 32, "d" * 64 + "-00000000")


def _mlp_shape(eoml: bytes | None) -> tuple[int, int]:
    """(widest layer, layers) of an EOML MLP; (8, 2) for trees and other models."""
    from .artifact import KIND_MLP, read_header

    if eoml is None or read_header(eoml).kind != KIND_MLP:
        return 8, 2
    import struct

    n_layers = read_header(eoml).fields[0]
    widths = [max(struct.unpack_from("<II", eoml, 32 + 16 * i)) for i in range(n_layers)]
    return max(widths), n_layers


HOST_DEFAULTS = {
    "EDGEOPS_MANIFEST_MAX_BYTES": 65536,
    "EDGEOPS_JSON_MAX_TOKENS": 8192,
    "EDGEOPS_MODEL_MAX_BYTES": 262144,
    "EDGEOPS_MAX_CHUNKS": 256,
    "EDGEOPS_CHUNK_MAX_BYTES": 65536,
    "EDGEOPS_MAX_FEATURES": 256,
    "EDGEOPS_MAX_EDGE_VALUES": 4096,
    "EDGEOPS_MAX_CLASSES": 64,
    "EDGEOPS_MAX_CONFIDENCE_EDGES": 32,
    "EDGEOPS_LABELS_BYTES": 2048,
    "EDGEOPS_MESSAGE_MAX_BYTES": 16384,
    "EDGEOPS_OUTBOX_BYTES": 32768,
    "EDGEOPS_PROBATION_LATENCIES": 64,
    "EDGEOPS_MLP_MAX_WIDTH": 256,
    "EDGEOPS_MLP_MAX_LAYERS": 8,
}


def board_config(
    target: str, mv: Any, variant: Any, data: bytes, eoml: bytes | None, labels: list[str]
) -> dict[str, int]:
    """``edgeops_config.h`` limits for this model on ``target``.

    ``host``: the host defaults, raised where the model needs more. ``cortex-m4`` and
    ``esp32``: sized for this model with headroom for a retrained one of about the same
    size — the model buffers (two) at 1.5 x its bytes, the manifest buffer and JSON
    tokens at 1.25 x this variant's signed manifest, the telemetry message for its
    features and classes (at most 6 digits per count), the outbox for two of them."""
    from edgeops_protocol.chunks import DEFAULT_CHUNK_SIZE

    envelope = _manifest_envelope(mv, variant, data)
    manifest_bytes = len(json.dumps(envelope).encode())
    tokens = _json_tokens(envelope)
    baseline = variant.meta.get("baseline") or {}
    features = baseline.get("features") or []
    n_features = len(variant.meta.get("feature_names") or []) or len(features)
    edges = sum(len(f.get("edges", [])) for f in features)
    n_classes = max(len(labels), 2)
    cells = sum(len(f.get("edges", [])) + 2 for f in features) + n_classes + 12 + 16
    width, layers = _mlp_shape(eoml)
    model_bytes = len(eoml) if eoml is not None else len(data)
    need = {
        "EDGEOPS_MANIFEST_MAX_BYTES": _round_up(manifest_bytes * 1.25 + 1024, 1024),
        "EDGEOPS_JSON_MAX_TOKENS": _round_up(tokens * 1.25 + 64, 64),
        "EDGEOPS_MODEL_MAX_BYTES": _round_up(max(model_bytes * 1.5, model_bytes + 1024), 1024),
        "EDGEOPS_MAX_FEATURES": max(n_features, 1),
        "EDGEOPS_MAX_EDGE_VALUES": max(_round_up(edges * 1.25, 16), 16),
        "EDGEOPS_MAX_CLASSES": n_classes,
        "EDGEOPS_MAX_CONFIDENCE_EDGES": 16,
        "EDGEOPS_LABELS_BYTES": _round_up(sum(len(str(x).encode()) + 1 for x in labels) + 1, 64),
        "EDGEOPS_MESSAGE_MAX_BYTES": max(_round_up(cells * 7 + 1536, 1024), 4096),
        "EDGEOPS_MLP_MAX_WIDTH": width,
        "EDGEOPS_MLP_MAX_LAYERS": max(layers, 2),
    }
    need["EDGEOPS_OUTBOX_BYTES"] = 2 * need["EDGEOPS_MESSAGE_MAX_BYTES"]
    need["EDGEOPS_CHUNK_MAX_BYTES"] = DEFAULT_CHUNK_SIZE  # what a rollout sends by default
    need["EDGEOPS_MAX_CHUNKS"] = max(8, math.ceil(need["EDGEOPS_MODEL_MAX_BYTES"] / 1024))
    need["EDGEOPS_PROBATION_LATENCIES"] = 64
    if target == "host":
        return {k: max(v, need.get(k, 0)) for k, v in HOST_DEFAULTS.items()}
    return {k: need[k] for k in HOST_DEFAULTS}


def features_fingerprint(features: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a manifest's ``serving.features`` (the fitted
    feature transforms, or None): what a firmware built with ``EDGEOPS_FEATURES_SHA256``
    compares a deployed manifest's with (``core/edgeops_deploy.c``)."""
    from edgeops_protocol.manifest import canonical_json

    return hashlib.sha256(canonical_json(features)).hexdigest()


def tflm_arena_config(target: str, variant: Any, model: bytes, X: np.ndarray) -> int:
    """``EDGEOPS_TFLM_ARENA_BYTES`` for a TFLite model: the variant's measured
    ``arena_bytes`` (measured here when it has none) with a quarter and 1 KiB to spare;
    at least the 64 KiB default on the host."""
    arena = int((variant.metrics or {}).get("arena_bytes") or 0)
    if arena <= 0:
        from ..convert.tflm import smallest_arena

        arena = smallest_arena(model, X[:1])
    need = _round_up(arena * 1.25 + 1024, 1024)
    return max(need, 65536) if target == "host" else need


def board_config_h(
    config: dict[str, int],
    target: str,
    ref: str,
    variant: str,
    features_sha256: str | None = None,
) -> str:
    lines = "\n".join(f"#ifndef {k}\n#define {k} {v}u\n#endif" for k, v in sorted(config.items()))
    if features_sha256 is not None:  # a manifest with other fitted features is rejected
        lines += (
            "\n/* the fitted feature transforms compiled in (app/edgeops_feature_params.c) */"
            "\n#ifndef EDGEOPS_FEATURES_SHA256"
            f'\n#define EDGEOPS_FEATURES_SHA256 "{features_sha256}"'
            "\n#endif"
        )
    return f"""/* Generated by edgeops firmware generate: the buffer sizes of edgeops_config.h for
 * {ref} ({variant}) on {target}. Every buffer of the core is a static array sized by
 * these (docs/firmware.md, "Memory budget"); a -D on the command line wins. */
#ifndef EDGEOPS_BOARD_CONFIG_H
#define EDGEOPS_BOARD_CONFIG_H

{lines}

#endif /* EDGEOPS_BOARD_CONFIG_H */
"""


# --- choosing the variant, the held-out rows and the reference ---------------------------------


def pick_variant(mv: Any, wanted: str | None) -> tuple[Any, str]:
    """``(variant, form)``: ``wanted``, or the first of :data:`VARIANT_FORMS` the version has."""
    by_name = {v.name: v for v in mv.variants}
    if wanted:
        v = by_name.get(wanted)
        if v is None:
            raise InvalidInput(f"{mv.ref} has no variant {wanted!r}; it has {', '.join(by_name)}")
        if wanted not in VARIANT_FORMS:
            raise InvalidInput(
                f"variant {wanted} does not run on a microcontroller; firmware takes "
                f"{', '.join(VARIANT_FORMS)}"
            )
        return v, VARIANT_FORMS[wanted]
    for name, form in VARIANT_FORMS.items():
        if name in by_name:
            return by_name[name], form
    raise InvalidInput(
        f"{mv.ref} has no variant a microcontroller runs ({', '.join(VARIANT_FORMS)}); "
        "train it with export: [emlearn-loadable] (scikit-learn) or [tflite-int8] (Keras)"
    )


@dataclass
class HeldOut:
    raw: Any  # DataFrame: the raw columns of the held-out rows
    y: np.ndarray  # true label indices
    fitted: Any  # FittedFeatures
    X: np.ndarray  # float32 features, the Python reference


def held_out(ws: Any, mv: Any, variant: Any, limit: int) -> HeldOut:
    """The first ``limit`` held-out rows of the version's own split, raw and as features."""
    import yaml

    from edgeops_protocol.features import FittedFeatures, required_columns

    from ..pipeline.run import load_labels, split_indices
    from ..pipeline.spec import parse_pipeline

    run = mv.run
    if run is None or not run.config_name.startswith("pipeline:") or run.dataset_version is None:
        raise InvalidInput(
            f"{mv.ref} was not trained by `edgeops train`; its held-out rows are unknown, so "
            "there are no test vectors to generate"
        )
    if "features" not in variant.meta:
        raise InvalidInput(f"{mv.ref} {variant.name} records no fitted features")
    spec = parse_pipeline(yaml.safe_load(run.config_text), run.config_text)
    frame, _labels, y = load_labels(ws, spec, run.dataset_version)
    _train, test = split_indices(y, spec.test_size, spec.split_seed, spec.stratify)
    test = np.asarray(test)[: max(1, int(limit))]
    fitted = FittedFeatures.from_dict(variant.meta["features"])
    raw = frame.iloc[test][required_columns(fitted.spec)].reset_index(drop=True)
    X = fitted.transform(raw)
    recorded = np.asarray(variant.meta.get("test_vectors", {}).get("inputs", []), np.float32)
    k = min(len(recorded), len(X))
    if k and not np.array_equal(recorded[:k], X[:k]):
        raise InvalidInput(
            f"the features of {mv.ref}'s held-out rows no longer match its recorded test "
            "vectors (the data set or the feature code changed); retrain it"
        )
    return HeldOut(raw, np.asarray(y)[test], fitted, X)


def _original(ws: Any, mv: Any) -> Any:
    import yaml

    from ..pipeline.spec import parse_pipeline
    from ..pipeline.trainers import load_trained

    spec = parse_pipeline(yaml.safe_load(mv.run.config_text), mv.run.config_text)
    return load_trained(spec.model_kind, ws.registry.variant_bytes(mv.ref, "original"), mv.params)


def reference_classes(ws: Any, mv: Any, form: str, model: bytes, X: np.ndarray) -> np.ndarray:
    """The Python reference's classes for features ``X``: emlearn's inline C compiled by
    gcc (from the original model, independent of the firmware's EOML loader) for emlearn
    variants, the tflite-micro interpreter for TFLite ones."""
    if form in ("eoml", "inline"):
        from ..convert.emlearn_c import EmlearnCRunner, sklearn_to_emlearn_c
        from ..model_io import load_sklearn

        estimator = load_sklearn(ws.registry.variant_bytes(mv.ref, "original"))
        code = sklearn_to_emlearn_c(estimator, "reference")
        with EmlearnCRunner(code, "reference", X.shape[1]) as runner:
            return runner.predict(X)
    from ..convert.tflm import TFLMRunner, smallest_arena

    arena = smallest_arena(model, X[:1])
    out = TFLMRunner(model, arena, checked=True).predict(X)
    return labels_of(out.reshape(len(X), -1))


def _raw_token(value: Any, kind: str) -> list[str]:
    from edgeops_protocol.transforms import category_key

    if kind == "categorical":
        key = category_key(value)
        return ["-"] if key is None else ["s:" + key.encode("utf-8").hex()]
    return [repr(float(value))]


def vectors_text(h: HeldOut) -> str:
    """``test/vectors.txt``: the raw held-out samples (see ``templates/app/edgeops_vectors.c``)."""
    from edgeops_protocol.feature_spec import window_columns

    lines = [f"edgeops-vectors 1 {len(h.raw)}"]
    columns = {c: h.raw[c].to_numpy() for c in h.raw.columns}
    for r in range(len(h.raw)):
        tokens: list[str] = []
        for inp in h.fitted.spec["inputs"]:
            if inp["kind"] == "window":
                for col in window_columns(inp["name"], inp["length"]):
                    tokens += _raw_token(columns[col][r], "window")
            else:
                tokens += _raw_token(columns[inp["name"]][r], inp["kind"])
        lines.append(" ".join(tokens))
    return "\n".join(lines) + "\n"


def _float_list(row: np.ndarray) -> list[Any]:
    return [float(v) if math.isfinite(v) else repr(float(v)) for v in row]


# --- the project ---------------------------------------------------------------------------


def _templates() -> Path:
    from .build import templates_dir

    return templates_dir()


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _emlearn_headers(dst: Path) -> None:
    """emlearn's C headers (MIT) the core and the inline form include, with its license
    (the MIT terms ask for the notice to go with the copies)."""
    from importlib import metadata

    from .build import emlearn_include

    inc = emlearn_include()
    for name in EMLEARN_HEADERS:
        if (inc / name).is_file():
            _copy(inc / name, dst / name)
    text, version = None, "?"
    try:
        dist = metadata.distribution("emlearn")
        version = dist.version
        for f in dist.files or []:
            if f.name.upper().startswith(("LICENSE", "COPYING")):
                text = f.read_text()
                break
    except (metadata.PackageNotFoundError, OSError):
        pass
    if not text:
        raise ConfigError(
            "emlearn's license file is not installed with it; the generated project must "
            "carry it (reinstall emlearn)"
        )
    (dst / "LICENSE.md").write_text(text)
    (dst / "VERSION").write_text(f"emlearn {version}\n")


def _render(name: str, values: dict[str, str]) -> str:
    text = (_templates() / "project" / name).read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    return text


def _write_layout(
    root: Path, target: str, app_files: dict[str, str], values: dict[str, str]
) -> Path:
    """Copy the templates for ``target`` into ``root``; the folder holding core/ and app/."""
    tpl = _templates()
    base = root / "components" / "edgeops" if target == "esp32" else root
    for src in sorted((tpl / "core").glob("*")):
        if src.suffix in (".c", ".h"):
            _copy(src, base / "core" / src.name)
    for name in ("edgeops_app.h", "edgeops_app.c"):
        _copy(tpl / "app" / name, base / "app" / name)
    for name, text in app_files.items():
        (base / "app" / name).write_text(text)
    _emlearn_headers(base / "third_party" / "emlearn")
    _copy(
        tpl / "runners" / "tflm" / "edgeops_model_tflm.cc",
        base / "runners" / "tflm" / "edgeops_model_tflm.cc",
    )
    _copy(tpl / "runners" / "tflm" / "README.md", base / "runners" / "tflm" / "README.md")
    test = root / "test"
    _copy(tpl / "app" / "edgeops_vectors.c", test / "edgeops_vectors.c")
    (test / "Makefile").write_text(_render("test.mk", values))
    if target == "host":
        for src in sorted((tpl / "ports" / "host").glob("*")):
            _copy(src, root / "ports" / "host" / src.name)
        (root / "Makefile").write_text(_render("host.mk", values))
    elif target == "cortex-m4":
        _copy(tpl / "app" / "edgeops_footprint.c", root / "footprint" / "edgeops_footprint.c")
        (root / "Makefile").write_text(_render("cortex-m4.mk", values))
    else:
        esp = tpl / "ports" / "esp-idf"
        for name in ("partitions.csv", "sdkconfig.defaults"):
            _copy(esp / name, root / name)
        _copy(esp / "main" / "edgeops_port_esp.c", root / "main" / "edgeops_port_esp.c")
        (root / "CMakeLists.txt").write_text(_render("esp32-project.cmake", values))
        (root / "main" / "CMakeLists.txt").write_text(_render("esp32-main.cmake", values))
        (base / "CMakeLists.txt").write_text(_render("esp32-component.cmake", values))
    return base


def _readme(values: dict[str, str]) -> str:
    return _render("README.md", values)


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished project in ``tmp`` to ``out`` (rename: all or nothing)."""
    if out.exists():
        if not force:
            raise Conflict(f"{out} is not empty; pick another folder or use --force")
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            old.rename(out)
            raise
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        tmp.rename(out)


def generate(
    ws: Any,
    ref: str,
    target: str,
    out: Path,
    *,
    variant: str | None = None,
    force: bool = False,
    vectors: int = DEFAULT_VECTORS,
    footprint: bool = True,
) -> Generated:
    """Write the firmware project for ``ref`` on ``target`` to ``out`` (see the module
    docstring); on ``cortex-m4`` also measure its footprint and record it on the variant
    (:func:`edgeops.firmware.footprint.measure_footprint`)."""
    from .. import __version__

    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}; targets: {', '.join(TARGETS)}")
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise Conflict(f"{out} is not empty; pick another folder or use --force")
    if out.exists() and not out.is_dir():
        raise Conflict(f"{out} exists and is not a folder")
    if target == "cortex-m4" and footprint:
        from .footprint import check_toolchain

        check_toolchain()  # before anything is written
    mv = ws.registry.get_version(ref)
    chosen, form = pick_variant(mv, variant)
    data = ws.registry.variant_bytes(mv.ref, chosen.name)
    eoml: bytes | None = None
    model = data
    if form == "eoml":
        from .artifact import read_header

        read_header(data)
        eoml = data
    elif form == "inline":
        if not data.startswith(b"/*"):
            raise InvalidInput(f"{mv.ref} {chosen.name} is not emlearn C source")
        from ..model_io import load_sklearn
        from .artifact import emlearn_loadable

        eoml = emlearn_loadable(load_sklearn(ws.registry.variant_bytes(mv.ref, "original")))
    elif chosen.format == "c-tflm":
        from ..convert.tflm import c_array_bytes

        model = c_array_bytes(data.decode())
    labels = [str(x) for x in (chosen.meta.get("labels") or mv.labels or [])]
    if len(labels) < 2:
        raise InvalidInput(f"{mv.ref} {chosen.name} records no class labels")
    h = held_out(ws, mv, chosen, vectors)
    if eoml is not None:
        from .artifact import read_header

        head = read_header(eoml)
        if head.n_features != h.X.shape[1] or head.n_classes != len(labels):
            raise InvalidInput(
                f"the model takes {head.n_features} features and {head.n_classes} classes; "
                f"its feature spec gives {h.X.shape[1]} and it has {len(labels)} labels"
            )
    expected = reference_classes(ws, mv, form, model, h.X)
    original = labels_of(_original(ws, mv).scores(h.X))
    config = board_config(target, mv, chosen, eoml if eoml is not None else model, eoml, labels)
    if form == "tflm":
        config["EDGEOPS_TFLM_ARENA_BYTES"] = tflm_arena_config(target, chosen, model, h.X)

    params_h, params_c = feature_params_c(h.fitted, len(labels), labels)
    app_files = {
        "edgeops_feature_params.h": params_h,
        "edgeops_feature_params.c": params_c,
        "edgeops_board_config.h": board_config_h(
            config, target, mv.ref, chosen.name, features_fingerprint(chosen.meta["features"])
        ),
        **model_data_c(form, chosen, data if form == "inline" else model),
    }
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    project = {
        "format": PROJECT_FORMAT,
        "generated_by": f"edgeops {__version__}",
        "generated_at": now.isoformat(),
        "target": target,
        "model": mv.ref,
        "variant": chosen.name,
        "variant_format": chosen.format,
        "variant_sha256": chosen.sha256,
        "form": form,
        "model_bytes": len(model),
        "n_features": int(h.X.shape[1]),
        "n_classes": len(labels),
        "labels": labels,
        "feature_spec_hash": h.fitted.spec_hash,
        "features_sha256": features_fingerprint(chosen.meta["features"]),
        "feature_names": list(h.fitted.feature_names),
        "config": config,
        "tolerance": TOLERANCE,
        "root": "components/edgeops" if target == "esp32" else ".",
    }
    expected_doc = {
        "format": PROJECT_FORMAT,
        "rows": len(h.X),
        "tolerance": TOLERANCE,
        "reference": "emlearn C (gcc)" if form != "tflm" else "tflite-micro (Python)",
        "features": [_float_list(row) for row in h.X],
        "classes": [int(c) for c in expected],
        "original_classes": [int(c) for c in original],
        "labels": [int(c) for c in h.y],
    }
    values = {
        "MODEL": mv.ref,
        "VARIANT": chosen.name,
        "TARGET": target,
        "FORM": form,
        "ROOT": ".." if target != "esp32" else "../components/edgeops",
        "N_FEATURES": str(h.X.shape[1]),
        "N_CLASSES": str(len(labels)),
        "ROWS": str(len(h.X)),
        "SPEC": h.fitted.spec["name"],
        "REL": repr(TOLERANCE["rel"]),
        "ABS": repr(TOLERANCE["abs"]),
        "DATE": now.date().isoformat(),
        "EDGEOPS": __version__,
        "FORMAT_NOTE": {
            "eoml": "EOML, the loadable emlearn artifact as a C array",
            "inline": "emlearn inline C",
            "tflm": "TFLite flatbuffer for TFLite Micro",
        }[form],
        # host: TFLite models run in the host's TFLM runner (ports/host/host_tflm.c)
        "WITH_TFLM": "1" if form == "tflm" else "0",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_layout(tmp, target, app_files, values)
        (tmp / "test" / "vectors.txt").write_text(vectors_text(h))
        (tmp / "test" / "expected.json").write_text(json.dumps(expected_doc) + "\n")
        (tmp / PROJECT_FILE).write_text(json.dumps(project, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(values))
        os.chmod(tmp, 0o755)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        _place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = Generated(
        out, target, mv.ref, chosen.name, form, len(h.X), int(h.X.shape[1]), files, config
    )
    if target == "cortex-m4" and footprint:
        from .footprint import measure_footprint

        result.footprint = measure_footprint(ws, mv, chosen, out, model, h.X)
    elif target == "cortex-m4":
        result.notes.append("footprint not measured (--no-footprint); run `make size` in it")
    if form == "tflm" and target == "host":
        result.notes.append(
            "TFLite Micro runs in a coprocess on the host: `python3 -m "
            "edgeops.firmware.tflm_worker` (set EDGEOPS_TFLM_PYTHON to a Python with edgeops "
            "and tflite-micro)"
        )
    elif form == "tflm":
        result.notes.append(
            "TFLite Micro comes from the board SDK: build with -DEDGEOPS_WITH_TFLM=1 and "
            "runners/tflm/edgeops_model_tflm.cc"
        )
    return result
