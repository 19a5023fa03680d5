"""Turning a registered variant into a signed manifest for one device, and publishing it.

Which variant a device gets: the one named, or else the best its runtimes can
run — ``tflite-int8`` then ``tflite-f32`` for TFLite runtimes, ``onnx-int8`` then
``onnx-f32`` for onnxruntime, ``tflm`` for TFLite Micro (the int8 flatbuffer,
format ``tflite`` with runtime ``tflm``: :func:`edgeops.firmware.variants.add_tflm_variant`),
and for emlearn firmware ``emlearn-loadable`` (the model as data, loaded over the air)
then ``c-emlearn``. ``c-tflm`` (the flatbuffer as a C array, for ``edgeops firmware
generate``) is never sent over the air. A device that declares ``flash_bytes`` /
``ram_bytes`` in its state is skipped when that variant's measured footprint
(``metrics["footprint"]``, from ``edgeops firmware generate --target cortex-m4``) needs more
(:func:`footprint_misfit`, :func:`choose_fitting_variant`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from edgeops_protocol.chunks import DEFAULT_CHUNK_SIZE, describe_chunks, split_chunks
from edgeops_protocol.manifest import RUNTIME_FAMILY, sign_manifest
from edgeops_protocol.topics import chunk_topic, device_topic

from ..errors import InvalidInput

__all__ = [
    "DEFAULT_TTL",
    "PREFERENCE",
    "ManifestOptions",
    "build_manifest",
    "choose_fitting_variant",
    "choose_variant",
    "declared_memory",
    "footprint_misfit",
    "publish_artifact",
    "variant_family",
]

DEFAULT_TTL = 7 * 24 * 3600.0  # a desired state is valid for a week and re-signed before then
# runtime family -> variants it runs, best first
PREFERENCE = {
    "tflite": ("tflite-int8", "tflite-f32"),
    "onnx": ("onnx-int8", "onnx-f32"),
    "tflm": ("tflm",),  # the flatbuffer for TFLite Micro (firmware.variants.add_tflm_variant)
    "emlearn": ("emlearn-loadable", "c-emlearn"),
}
MEMORY_FIELDS = ("flash_bytes", "ram_bytes")  # optional state fields (docs/protocol.md)
# stored format -> the runtime families that run it, the default first: a TFLite flatbuffer
# is run by the TFLite interpreter or, as the ``tflm`` variant (meta runtime "tflm"), by
# TFLite Micro
_FORMAT_FAMILIES = {
    "tflite": ("tflite", "tflm"),
    "onnx": ("onnx",),
    "c-tflm": ("tflm",),
    "c-emlearn": ("emlearn",),
}


@dataclass(frozen=True)
class ManifestOptions:
    ttl: float = DEFAULT_TTL
    probation_s: float = 60.0
    max_error_rate: float = 0.05
    latency_budget_ms: float | None = None  # default: from the variant's measured latency
    chunk_size: int = DEFAULT_CHUNK_SIZE
    artifact_url_base: str | None = None  # http://host:port of `edgeops artifacts serve`

    def __post_init__(self) -> None:
        base = self.artifact_url_base
        if base is not None and not re.fullmatch(r"https?://[^/?#\s@]+(/[^?#\s]*)?", base):
            raise InvalidInput(
                f"artifact URL {base!r} must be http://HOST:PORT (the address of "
                "`edgeops artifacts serve`)"
            )


def device_families(state: dict[str, Any]) -> list[str]:
    return sorted({RUNTIME_FAMILY.get(r, r) for r in state.get("runtimes", [])})


def variant_family(variant: Any) -> str | None:
    """The runtime family a manifest names for ``variant``: its meta's ``runtime`` when
    that family runs its format (``tflm`` for the TFLite Micro flatbuffer), else the
    format's own (``tflite`` for a ``.tflite``); None for formats no device runs."""
    families = _FORMAT_FAMILIES.get(variant.format, ())
    runtime = (variant.meta or {}).get("runtime")
    if runtime in families:
        return str(runtime)
    return families[0] if families else None


def choose_variant(mv: Any, state: dict[str, Any], wanted: str | None = None) -> Any | None:
    """The variant of version ``mv`` this device should run, or None if it can run none."""
    families = device_families(state)
    by_name = {v.name: v for v in mv.variants}
    if wanted:
        v = by_name.get(wanted)
        if v is None:
            raise InvalidInput(
                f"{mv.ref} has no variant {wanted!r}; it has {', '.join(sorted(by_name))}"
            )
        if v.format == "c-tflm":
            raise InvalidInput(
                f"{mv.ref} c-tflm is the model as C source for a firmware build (edgeops "
                "firmware generate); over the air TFLite Micro devices take the tflm variant "
                "(the flatbuffer: edgeops.firmware.variants.add_tflm_variant)"
            )
        return v if variant_family(v) in families else None
    for family in PREFERENCE:  # in preference order: TFLite first on a device with both
        if family not in families:
            continue
        for name in PREFERENCE[family]:
            if name in by_name:
                return by_name[name]
    return None


def declared_memory(state: dict[str, Any]) -> dict[str, int]:
    """The ``flash_bytes`` / ``ram_bytes`` a device declares in its state (positive ints)."""
    out = {}
    for k in MEMORY_FIELDS:
        v = state.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out[k] = v
    return out


def _size(n: int) -> str:
    return f"{n} B"


def footprint_misfit(variant: Any, state: dict[str, Any]) -> str | None:
    """Why ``variant`` does not fit the device, or None (it fits, or nothing is known).

    The variant's ``metrics["footprint"]`` gives the flash (text + data) and RAM
    (data + bss, plus the TFLM tensor arena) of the firmware built for it; the device
    declares what it offers in its state. Unknown on either side is not a misfit."""
    fp = (variant.metrics or {}).get("footprint") or {}
    mem = declared_memory(state)
    flash = int(fp.get("flash_bytes") or 0)
    ram = int(fp.get("ram_bytes") or 0) + int(fp.get("arena_bytes") or 0)
    if not fp or not mem:
        return None
    short = ("flash_bytes" in mem and flash > mem["flash_bytes"]) or (
        "ram_bytes" in mem and ram > mem["ram_bytes"]
    )
    if not short:
        return None
    has = " / ".join(
        f"{_size(mem[k])} {'flash' if k == 'flash_bytes' else 'RAM'}"
        for k in MEMORY_FIELDS
        if k in mem
    )
    return (
        f"variant {variant.name} needs {_size(flash)} flash / {_size(ram)} RAM "
        f"({fp.get('target', 'measured')}), device has {has}"
    )


def choose_fitting_variant(
    mv: Any, state: dict[str, Any], wanted: str | None = None
) -> tuple[Any | None, str]:
    """``(variant, "")``: the variant :func:`choose_variant` gives the device, when it fits
    the device's declared flash and RAM; else ``(None, why)``. A variant that does not fit
    is not swapped for a less preferred one: the device is skipped with the reason."""
    variant = choose_variant(mv, state, wanted)
    if variant is None:
        runtimes = ", ".join(state.get("runtimes", []) or ["(none reported)"])
        why = f"no variant for its runtimes {runtimes}"
        names = {v.name for v in mv.variants}
        if not wanted and "tflm" in device_families(state) and names & {"tflite-int8", "c-tflm"}:
            why += (
                f" (TFLite Micro takes the tflm variant: attach it to {mv.ref} with "
                "edgeops.firmware.variants.add_tflm_variant)"
            )
        return None, why
    why = footprint_misfit(variant, state)
    return (None, why) if why else (variant, "")


def _atol(variant: Any) -> float:
    return 0.1 if variant.meta.get("quantization") == "int8" else 1e-3


def build_manifest(
    *,
    fleet: str,
    device: str,
    seq: int,
    rollout: str | None,
    mv: Any,
    variant: Any,
    data: bytes,
    hardware: list[str],
    opts: ManifestOptions,
    now: float | None = None,
    chunks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest (unsigned) deploying ``variant`` of ``mv`` to ``device``.

    ``chunks`` is ``describe_chunks(data, opts.chunk_size)`` when the caller has it
    already (it hashes every chunk; a rollout computes it once per artifact)."""
    now = time.time() if now is None else now
    meta = variant.meta
    family = variant_family(variant)
    if family is None:
        raise InvalidInput(f"variant {variant.name} (format {variant.format}) runs on no device")
    budget = opts.latency_budget_ms
    if budget is None:  # generous: a Pi is slower than the build machine
        budget = max(50.0, 50.0 * float(variant.metrics.get("latency_ms_p95", 1.0)))
    vectors = meta.get("test_vectors", {"inputs": [], "outputs": []})
    artifact = dict(chunks) if chunks is not None else describe_chunks(data, opts.chunk_size)
    if opts.artifact_url_base:
        artifact["url"] = f"{opts.artifact_url_base.rstrip('/')}/artifacts/{artifact['sha256']}"
    return {
        "fleet": fleet,
        "device": device,
        "seq": seq,
        "action": "deploy",
        "deployment": f"{rollout or 'direct'}/{device}/{seq}",
        "rollout": rollout,
        "issued_at": now,
        "expires_at": now + opts.ttl,
        "target": {"hardware": hardware, "runtime": [family]},
        "model": {
            "name": mv.model.name,
            "version": mv.version,
            "variant": variant.name,
            "format": variant.format,
            "runtime": family,
        },
        "artifact": artifact,
        "health": {
            "inputs": vectors["inputs"],
            "outputs": vectors["outputs"],
            "atol": _atol(variant),
            "latency_budget_ms": budget,
            "probation_s": opts.probation_s,
            "max_error_rate": opts.max_error_rate,
        },
        "serving": {
            "labels": meta.get("labels", []),
            "feature_names": meta.get("feature_names", []),
            "features": meta.get("features"),
            "baseline": meta.get("baseline"),
            "inputs": meta.get("inputs", []),
            "outputs": meta.get("outputs", []),
        },
    }


def sign(manifest: dict[str, Any], key: Any) -> dict[str, Any]:
    return sign_manifest(manifest, key.private)


def publish_artifact(client: Any, fleet: str, data: bytes, chunk_size: int) -> int:
    """Publish the artifact's chunks retained; returns the number of chunks."""
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    chunks = split_chunks(data, chunk_size)
    client.publish_all([(chunk_topic(fleet, sha, i), c, True) for i, c in enumerate(chunks)])
    return len(chunks)


def publish_desired(client: Any, fleet: str, device: str, envelope: dict[str, Any]) -> None:
    import json

    client.publish_all(
        [(device_topic(fleet, device, "desired"), json.dumps(envelope).encode(), True)]
    )
