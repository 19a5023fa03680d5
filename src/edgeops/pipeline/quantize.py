"""``edgeops quantize``: add a variant to a version trained by a pipeline.

The version's run holds the pipeline file, its data version and seeds, so the
same training split (for calibration) and held-out split (for measurement) are
rebuilt exactly, with the version's own feature version.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from ..errors import Conflict, InvalidInput
from .run import QuietReporter, Reporter, build_variant, evaluate, load_labels, prepare
from .spec import parse_pipeline
from .trainers import load_trained

__all__ = ["quantize_version"]


def quantize_version(ws: Any, ref: str, fmt: str, reporter: Reporter | None = None) -> Any:
    """Export version ``ref`` to ``fmt``, measure it, and attach it; returns the Variant."""
    rep = reporter or QuietReporter()
    mv = ws.registry.get_version(ref)
    if any(v.name == fmt for v in mv.variants):
        raise Conflict(f"{mv.ref} already has a {fmt} variant; see `edgeops models show {mv.ref}`")
    run = mv.run
    if run is None or not run.config_name.startswith("pipeline:") or run.dataset_version is None:
        raise InvalidInput(
            f"{mv.ref} was not trained by `edgeops train`, so its data split is unknown; "
            "train it with a pipeline file to quantize it"
        )
    raw = yaml.safe_load(run.config_text)
    spec = parse_pipeline({**raw, "export": [fmt]}, run.config_text)  # checks fmt fits the kind
    dv = run.dataset_version
    frame, labels, y = load_labels(ws, spec, dv)
    p = prepare(ws, spec, dv, frame, labels, y, mv.feature_ref, rep)
    original = ws.registry.variant_bytes(mv.ref, "original")
    trained = load_trained(spec.model_kind, original, mv.params)
    reference = evaluate(trained, p)
    nv = build_variant(
        ws, fmt, trained, hashlib.sha256(original).hexdigest(), p, spec, reference, rep
    )
    return ws.registry.add_variant(mv.ref, nv.name, nv.data, nv.format, nv.metrics, nv.meta)
