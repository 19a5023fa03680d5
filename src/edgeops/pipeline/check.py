"""``edgeops check``: a registered version's tests, for CI.

Every variant is loaded from its stored bytes and run in its runtime on the
version's held-out split (rebuilt from its run, like ``quantize`` does); each
check compares a measured value with a limit: the pipeline's gates, no
non-finite outputs, agreement with the original, and the accuracy recorded at
registration reproduced (a changed runtime or library shows up here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..convert.measure import measure
from ..errors import InvalidInput
from .run import QuietReporter, Reporter, evaluate, load_labels, prepare
from .spec import parse_pipeline
from .trainers import load_trained

__all__ = ["Check", "CheckResult", "check_version", "variant_predict"]

DEFAULT_MIN_AGREEMENT = 0.95
REPRODUCE_TOLERANCE = 0.005  # accuracy may move this much between runtimes' builds


@dataclass(frozen=True)
class Check:
    subject: str  # "original" or a variant name
    name: str
    value: float
    limit: float
    op: str  # "<=" or ">="
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class CheckResult:
    ref: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def add(self, subject: str, name: str, value: float, limit: float, op: str) -> None:
        ok = value <= limit if op == "<=" else value >= limit
        self.checks.append(Check(subject, name, float(value), float(limit), op, bool(ok)))


def variant_predict(variant: Any, data: bytes, n_features: int) -> tuple[Any, Any]:
    """``(predict, close)`` for a stored variant, in the runtime it is meant for."""
    from edgeops_agent.runtime import load_runner

    if variant.format in ("tflite", "onnx"):
        return load_runner(variant.format, data).predict, lambda: None
    if variant.format == "c-tflm":
        from ..convert.tflm import TFLMRunner, c_array_bytes

        arena = int(variant.metrics.get("arena_bytes") or 1 << 20)
        return TFLMRunner(c_array_bytes(data.decode()), arena).predict, lambda: None
    if variant.format == "c-emlearn" and data[:4] == b"EOML":  # emlearn-loadable
        from ..firmware.runner import EomlRunner

        eoml = EomlRunner(data)
        return eoml.predict, eoml.close
    if variant.format == "c-emlearn":
        from ..convert.emlearn_c import EmlearnCRunner
        from .variants import C_SYMBOL

        runner = EmlearnCRunner(data.decode(), C_SYMBOL, n_features)
        return runner.predict, runner.close
    raise InvalidInput(
        f"variant {variant.name} has format {variant.format}, which edgeops cannot run"
    )


def check_version(ws: Any, ref: str, reporter: Reporter | None = None) -> CheckResult:
    rep = reporter or QuietReporter()
    mv = ws.registry.get_version(ref)
    run = mv.run
    if run is None or not run.config_name.startswith("pipeline:") or run.dataset_version is None:
        raise InvalidInput(
            f"{mv.ref} was not trained by `edgeops train`; its held-out split "
            "is unknown, so it cannot be checked"
        )
    spec = parse_pipeline(yaml.safe_load(run.config_text), run.config_text)
    frame, labels, y = load_labels(ws, spec, run.dataset_version)
    p = prepare(ws, spec, run.dataset_version, frame, labels, y, mv.feature_ref, rep)
    original = ws.registry.variant_bytes(mv.ref, "original")
    trained = load_trained(spec.model_kind, original, mv.params)
    reference = evaluate(trained, p, latency_samples=20)
    result = CheckResult(mv.ref)
    gates = spec.gates
    recorded = mv.metrics.get("accuracy")
    if recorded is not None:
        result.add(
            "original",
            "accuracy reproduced (abs diff)",
            abs(reference["accuracy"] - recorded),
            REPRODUCE_TOLERANCE,
            "<=",
        )
    if "min_accuracy" in gates:
        result.add("original", "accuracy", reference["accuracy"], gates["min_accuracy"], ">=")
    rep.step("original", f"accuracy {reference['accuracy']:.4f}")
    for v in mv.variants:
        if v.name == "original":
            continue
        data = ws.artifacts.read_bytes(v.sha256)
        predict, close = variant_predict(v, data, p.X_test.shape[1])
        try:
            m = measure(
                predict,
                p.X_test,
                p.y_test,
                reference["labels"],
                reference["accuracy"],
                latency_samples=50,
            )
        finally:
            close()
        result.add(v.name, "non-finite outputs", m["non_finite"], 0, "<=")
        result.add(
            v.name,
            "agreement with the original",
            m["agreement"],
            gates.get("min_agreement", DEFAULT_MIN_AGREEMENT),
            ">=",
        )
        if "accuracy" in v.metrics:
            result.add(
                v.name,
                "accuracy reproduced (abs diff)",
                abs(m["accuracy"] - v.metrics["accuracy"]),
                REPRODUCE_TOLERANCE,
                "<=",
            )
        if "min_accuracy" in gates:
            result.add(v.name, "accuracy", m["accuracy"], gates["min_accuracy"], ">=")
        if "max_accuracy_drop" in gates:
            result.add(
                v.name, "accuracy drop", -m["accuracy_delta"], gates["max_accuracy_drop"], "<="
            )
        if "max_size_bytes" in gates:
            result.add(
                v.name,
                "size bytes",
                v.metrics.get("size_bytes", v.size),
                gates["max_size_bytes"],
                "<=",
            )
        if "max_latency_ms" in gates and v.format not in ("c-emlearn",):
            result.add(v.name, "p95 latency ms", m["latency_ms_p95"], gates["max_latency_ms"], "<=")
        rep.step(
            f"variant {v.name}", f"accuracy {m['accuracy']:.4f}, agreement {m['agreement']:.4f}"
        )
    return result
