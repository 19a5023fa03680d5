"""Variants that microcontrollers take over the air.

:func:`add_loadable_variant` reads the version's ``original`` model (a safe skops
file), writes it as an EOML artifact (:mod:`.artifact`) and attaches it as the
variant ``emlearn-loadable`` with format ``c-emlearn`` (runtime ``emlearn``). Its
meta is the ``c-emlearn`` variant's — labels, feature names, baseline, test
vectors — because it predicts the same classes bit for bit, so telemetry from a
microcontroller is judged against the same baseline and its health check uses the
same vectors.

:func:`add_tflm_variant` attaches the ``tflm`` variant of a Keras version: the
``.tflite`` flatbuffer of its ``tflite-int8`` variant (the same bytes, so the same
SHA-256 and the same chunks on MQTT) with format ``tflite`` and runtime ``tflm``,
which is what a TFLite Micro firmware loads from its slot. It measures the smallest
tensor arena with the tflite-micro interpreter (``metrics["arena_bytes"]``) and
records the health vectors' outputs as TFLite Micro computes them, so a device's
health check compares like with like; the rest of the meta (labels, baseline,
tensors with their quantization) is the source variant's. The pipeline's ``tflm``
export (``export: [tflite-int8, tflm]``) makes the same variant with
:func:`tflm_runner`.
"""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, InvalidInput
from .artifact import FORMAT_VERSION, emlearn_loadable, read_header
from .signing import LOADABLE_VARIANT

__all__ = [
    "TFLM_SOURCES",
    "TFLM_VARIANT",
    "add_loadable_variant",
    "add_tflm_variant",
    "tflm_runner",
]

TFLM_VARIANT = "tflm"
# where the flatbuffer is taken from, in order (c-tflm holds it as a C array)
TFLM_SOURCES = ("tflite-int8", "c-tflm", "tflite-f32")


def add_loadable_variant(ws: Any, ref: str, name: str = LOADABLE_VARIANT) -> Any:
    """Attach the loadable emlearn variant to version ``ref``; returns the new variant."""
    from ..model_io import load_sklearn

    mv = ws.registry.get_version(ref)
    source = next((v for v in mv.variants if v.name == "c-emlearn"), None)
    if source is None:
        raise InvalidInput(
            f"{mv.ref} has no c-emlearn variant to take labels, baseline and test vectors "
            "from; train it with export: [c-emlearn]"
        )
    original = next((v for v in mv.variants if v.name == "original"), None)
    if original is None or original.format != "skops":
        raise InvalidInput(f"{mv.ref} is not a scikit-learn model; emlearn needs one")
    estimator = load_sklearn(ws.registry.variant_bytes(mv.ref, "original"))
    data = emlearn_loadable(estimator)
    header = read_header(data)
    meta = {
        **source.meta,
        "variant": name,
        "conversion": {
            "artifact": "EOML",
            "artifact_format": FORMAT_VERSION,
            "kind": "trees" if header.kind == 1 else "mlp",
            "from": "original",
        },
    }
    metrics = {**source.metrics, "model_bytes": len(data)}
    return ws.registry.add_variant(mv.ref, name, data, "c-emlearn", metrics, meta)


def _flatbuffer(ws: Any, mv: Any, source: Any) -> bytes:
    data = ws.registry.variant_bytes(mv.ref, source.name)
    if source.format == "c-tflm":
        from ..convert.tflm import c_array_bytes

        data = c_array_bytes(data.decode("utf-8", errors="replace"))
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InvalidInput(
            f"{mv.ref} {source.name} is not a TFLite flatbuffer (no TFL3 identifier)"
        )
    return data


def tflm_runner(data: bytes, sample: Any) -> tuple[int, Any]:
    """``(arena_bytes, runner)``: the smallest tensor arena that runs ``sample`` (float32
    rows) on flatbuffer ``data`` and a checked tflite-micro runner with that arena. Needs
    the ``mcu`` extra (tflite-micro)."""
    from ..convert.tflm import TFLMRunner, smallest_arena

    arena = smallest_arena(data, sample)
    return arena, TFLMRunner(data, arena, checked=True)


def add_tflm_variant(ws: Any, ref: str, name: str = TFLM_VARIANT, source: str | None = None) -> Any:
    """Attach the TFLite Micro variant (format ``tflite``, runtime ``tflm``) to version
    ``ref``, from ``source`` (default: the first of :data:`TFLM_SOURCES` it has); returns
    the new variant. Needs the ``mcu`` extra (tflite-micro)."""
    import numpy as np

    mv = ws.registry.get_version(ref)
    by_name = {v.name: v for v in mv.variants}
    if name in by_name:
        raise Conflict(f"{mv.ref} already has a variant {name!r}; variants are immutable")
    if source is None:
        source = next((s for s in TFLM_SOURCES if s in by_name), None)
        if source is None:
            raise InvalidInput(
                f"{mv.ref} has no TFLite variant ({', '.join(TFLM_SOURCES)}) to take the "
                "flatbuffer from; train it with export: [tflite-int8]"
            )
    elif source not in by_name:
        raise InvalidInput(f"{mv.ref} has no variant {source!r}; it has {', '.join(by_name)}")
    src = by_name[source]
    if src.format not in ("tflite", "c-tflm"):
        raise InvalidInput(f"{mv.ref} {source} is {src.format}, not a TFLite model")
    data = _flatbuffer(ws, mv, src)
    vectors = src.meta.get("test_vectors") or {}
    inputs = np.asarray(vectors.get("inputs") or [], dtype=np.float32)
    if inputs.ndim != 2 or len(inputs) == 0:
        raise InvalidInput(
            f"{mv.ref} {source} records no test vectors to size the TFLite Micro arena with"
        )
    arena, runner = tflm_runner(data, inputs)
    outputs = runner.predict(inputs).reshape(len(inputs), -1)
    recorded = np.asarray(vectors.get("outputs") or [], dtype=np.float32)
    diff = (
        float(np.max(np.abs(recorded.reshape(outputs.shape) - outputs)))
        if recorded.size == outputs.size
        else None
    )
    meta = {k: v for k, v in src.meta.items() if k != "c_header"}
    meta.update(
        variant=name,
        runtime="tflm",
        test_vectors={"inputs": inputs.tolist(), "outputs": outputs.tolist()},
        conversion={
            **(src.meta.get("conversion") or {}),
            "from": source,
            "runner": "tflite-micro",
            "arena_bytes": arena,
            "max_abs_diff_from_source": diff,
        },
    )
    metrics = {k: v for k, v in src.metrics.items() if k != "footprint"}
    metrics.update(arena_bytes=arena, model_bytes=len(data))
    return ws.registry.add_variant(mv.ref, name, data, "tflite", metrics, meta)
