"""The health check a model must pass before it is activated (docs/protocol.md, step 4).

The model loads in this device's runtime; the manifest's ``health.inputs`` run
through it one row at a time; every output must be finite and within
``health.atol`` (largest absolute difference) of ``health.outputs``; and the median
latency of those single-row calls must be within ``health.latency_budget_ms``
(0 means no budget). Microcontroller formats (``c-tflm``, ``c-emlearn``) never get
here on a Linux agent: their runtime families are not among its runtimes, so the
manifest is rejected when it is checked.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DeployFailed
from .runtime import Runner, RuntimeMissing, load_runner

__all__ = ["LINUX_FORMATS", "HealthReport", "health_check"]

LINUX_FORMATS = ("tflite", "onnx")


@dataclass(frozen=True)
class HealthReport:
    rows: int
    max_abs_diff: float
    median_latency_ms: float


def _fail(reason: str) -> DeployFailed:
    return DeployFailed("health", reason)


def health_check(
    fmt: str,
    model_bytes: bytes,
    health: dict[str, Any],
    *,
    simulate_failure: bool = False,
    loader: Callable[[str, bytes], Runner] = load_runner,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Runner, HealthReport]:
    """The loaded runner and what was measured; :class:`DeployFailed` (step ``health``)."""
    if fmt not in LINUX_FORMATS:
        runs = ", ".join(LINUX_FORMATS)
        raise _fail(f"format {fmt!r} does not run on this agent (it runs {runs})")
    try:
        runner = loader(fmt, model_bytes)
    except RuntimeMissing as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:  # a runtime's own error types; the message is what matters
        raise _fail(f"model does not load: {exc}") from exc
    try:
        inputs = np.asarray(health.get("inputs", []), dtype=np.float32)
        expected = np.asarray(health.get("outputs", []), dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _fail(f"health vectors are not numeric arrays: {exc}") from exc
    outputs, latencies = [], []
    for i in range(len(inputs)):
        start = clock()
        try:
            out = np.asarray(runner.predict(inputs[i : i + 1]), dtype=np.float32)
        except Exception as exc:  # any runtime failure is a failed check, not a crash
            raise _fail(f"prediction on health input {i} failed: {exc}") from exc
        latencies.append((clock() - start) * 1000.0)
        outputs.append(out)
    report = HealthReport(0, 0.0, 0.0)
    if outputs:
        got = np.concatenate(outputs)
        if got.size != expected.size:
            raise _fail(f"outputs have shape {got.shape}, the manifest expects {expected.shape}")
        got = got.reshape(expected.shape)
        if not np.all(np.isfinite(got)):
            raise _fail("outputs are not finite")
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        report = HealthReport(len(inputs), diff, float(statistics.median(latencies)))
        if diff > float(health["atol"]):
            raise _fail(f"outputs differ from the expected by {diff:.4g} (atol {health['atol']})")
        budget = float(health.get("latency_budget_ms", 0))
        if budget > 0 and report.median_latency_ms > budget:
            raise _fail(
                f"median latency {report.median_latency_ms:.1f} ms is over the budget of "
                f"{budget:g} ms"
            )
    if simulate_failure:
        raise _fail("simulated failure (simulate.fail_health)")
    return runner, report
