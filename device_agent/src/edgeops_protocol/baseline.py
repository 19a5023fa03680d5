"""The baseline profile of a model variant: what its inputs and outputs looked like in training.

Devices receive it in the deployment manifest and histogram what they see over
the same edges with the same rule (:mod:`edgeops_protocol.histogram`), so the
server can compare live and baseline counts bin by bin.

Layout (``format`` 1)::

    {"format": 1, "rows": n,
     "features": [{"name": "ax_mean", "edges": [...], "counts": [...]}, ...],
     "outputs": {"labels": [...], "class_counts": [...],
                 "confidence_edges": [0.0, 0.1, ..., 1.0], "confidence_counts": [...]}}

``confidence`` is the largest output score of a row.

>>> import numpy as np
>>> b = baseline_profile(np.array([[0.0], [1.0], [2.0], [3.0]]), np.eye(2)[[0, 1, 1, 1]],
...                      ["x"], ["a", "b"], bins=2)
>>> b["features"][0]["edges"], b["features"][0]["counts"], b["outputs"]["class_counts"]
([0.0, 1.5, 3.0], [0, 2, 2, 0], [1, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .histogram import histogram, quantile_edges

__all__ = ["BASELINE_FORMAT", "CONFIDENCE_EDGES", "baseline_profile", "confidences", "labels_of"]

BASELINE_FORMAT = 1
CONFIDENCE_EDGES = [round(i / 10, 1) for i in range(11)]


def labels_of(outputs: np.ndarray) -> np.ndarray:
    """Predicted class index per row: argmax of scores (one column: threshold 0.5)."""
    out = np.asarray(outputs)
    if out.ndim == 2 and out.shape[1] > 1:
        return np.argmax(out, axis=1)
    if out.ndim == 2:
        return (out[:, 0] >= 0.5).astype(np.int64)
    return out.astype(np.int64)


def confidences(outputs: np.ndarray) -> np.ndarray:
    """The largest score of each row (for one sigmoid column: max(p, 1 - p))."""
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 2 and out.shape[1] > 1:
        return out.max(axis=1)
    p = out.reshape(len(out), -1)[:, 0]
    return np.maximum(p, 1.0 - p)


def baseline_profile(
    X: np.ndarray,
    outputs: np.ndarray,
    feature_names: Sequence[str],
    labels: Sequence[str],
    bins: int = 10,
) -> dict[str, Any]:
    """Edges and reference counts of each input feature and of the outputs."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise ValueError("X must have one column per feature name")
    features = []
    for j, name in enumerate(feature_names):
        edges = quantile_edges(X[:, j], bins)
        features.append({"name": str(name), "edges": edges, "counts": histogram(X[:, j], edges)})
    out = np.asarray(outputs)
    predicted = labels_of(out)
    class_counts = np.bincount(predicted, minlength=len(labels))[: len(labels)]
    return {
        "format": BASELINE_FORMAT,
        "rows": int(X.shape[0]),
        "features": features,
        "outputs": {
            "labels": [str(x) for x in labels],
            "class_counts": [int(c) for c in class_counts],
            "confidence_edges": list(CONFIDENCE_EDGES),
            "confidence_counts": histogram(confidences(out), CONFIDENCE_EDGES),
        },
    }
