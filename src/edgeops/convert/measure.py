"""Measure a variant the way it will run: accuracy, agreement with the original, latency.

Pure apart from the clock: ``predict`` is any callable from a batch of inputs to
a batch of outputs (class scores/probabilities of shape ``(n, classes)``, or
class labels of shape ``(n,)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeops_protocol.baseline import labels_of

__all__ = ["labels_of", "latency_ms", "measure"]


def latency_ms(
    predict: Callable[[np.ndarray], Any], X: np.ndarray, samples: int = 200, warmup: int = 5
) -> dict[str, float]:
    """Median and p95 of single-input latency in milliseconds over ``samples`` rows."""
    rows = np.asarray(X)[: max(1, samples)]
    for i in range(min(warmup, len(rows))):
        predict(rows[i : i + 1])
    times = []
    for i in range(len(rows)):
        t0 = time.perf_counter()
        predict(rows[i : i + 1])
        times.append((time.perf_counter() - t0) * 1000.0)
    arr = np.asarray(times)
    return {
        "latency_ms_p50": float(np.median(arr)),
        "latency_ms_p95": float(np.quantile(arr, 0.95)),
    }


def measure(
    predict: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    reference_accuracy: float | None = None,
    latency_samples: int = 200,
) -> dict[str, float]:
    """Metrics of one variant on held-out data.

    Returns ``accuracy`` (when ``y`` is given), ``accuracy_delta`` (variant minus
    original, when ``reference_accuracy`` is given), ``agreement`` (share of
    predictions equal to the original's, when ``reference_labels`` is given),
    ``non_finite`` (count of NaN/inf outputs) and single-inference latency.
    """
    outputs = np.asarray(predict(np.asarray(X)))
    metrics: dict[str, float] = {
        "non_finite": float(np.count_nonzero(~np.isfinite(outputs.astype(np.float64))))
    }
    labels = labels_of(outputs)
    if y is not None:
        metrics["accuracy"] = float(np.mean(labels == np.asarray(y)))
        if reference_accuracy is not None:
            metrics["accuracy_delta"] = metrics["accuracy"] - float(reference_accuracy)
    if reference_labels is not None:
        metrics["agreement"] = float(np.mean(labels == np.asarray(reference_labels)))
    metrics.update(latency_ms(predict, X, samples=latency_samples))
    return metrics
