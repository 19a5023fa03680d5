"""The loadable emlearn variant of a registered scikit-learn version (for over-the-air MCUs).

:func:`add_loadable_variant` reads the version's ``original`` model (a safe skops
file), writes it as an EOML artifact (:mod:`.artifact`) and attaches it as the
variant ``emlearn-loadable`` with format ``c-emlearn`` (runtime ``emlearn``). Its
meta is the ``c-emlearn`` variant's — labels, feature names, baseline, test
vectors — because it predicts the same classes bit for bit, so telemetry from a
microcontroller is judged against the same baseline and its health check uses the
same vectors.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from .artifact import FORMAT_VERSION, emlearn_loadable, read_header
from .signing import LOADABLE_VARIANT

__all__ = ["add_loadable_variant"]


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
