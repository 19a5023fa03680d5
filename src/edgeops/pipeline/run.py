"""Run a pipeline: each step recorded on the run, unchanged steps reused from the cache.

Steps: data → features → split → train → evaluate → export (one per variant
format) → gates → register. A gate that fails finishes the run as ``gated`` with
the reason and registers nothing; an error finishes it as ``failed``. The model
version and all its variants are registered in one transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidInput
from ..registry import NewVariant
from .cache import StepCacheStore, cache_key
from .spec import PipelineSpec
from .trainers import Trained, load_trained, train
from .variants import FORMATS, export_variant, variant_record

__all__ = [
    "PipelineResult",
    "Prepared",
    "Reporter",
    "build_variant",
    "evaluate",
    "load_labels",
    "prepare",
    "run_pipeline",
    "split_indices",
]


class Reporter(Protocol):
    def step(self, name: str, detail: str = "", cached: bool = False) -> None: ...

    def progress(self, name: str, done: int, total: int) -> None: ...


class QuietReporter:
    def __init__(self) -> None:
        self.steps: list[tuple[str, str, bool]] = []

    def step(self, name: str, detail: str = "", cached: bool = False) -> None:
        self.steps.append((name, detail, cached))

    def progress(self, name: str, done: int, total: int) -> None:
        pass


@dataclass
class PipelineResult:
    run_id: str
    status: str  # "registered", "existing" (same model already registered) or "gated"
    model_ref: str | None
    metrics: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    gate_failures: list[str] = field(default_factory=list)


def split_indices(y: np.ndarray, test_size: float, seed: int, stratify: bool):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        return train_test_split(
            idx, test_size=test_size, random_state=seed, stratify=y if stratify else None
        )
    except ValueError as exc:
        raise InvalidInput(f"pipeline field 'split': {exc}") from exc


def _auto_features(ws: Any, spec: PipelineSpec, frame: Any) -> str:
    numeric = [c for c in frame.columns if c != spec.label and frame[c].dtype.kind in "fiu"]
    if not numeric:
        raise InvalidInput(
            f"{spec.data} has no numeric columns besides {spec.label!r}; give a 'features' version"
        )
    bad = [c for c in numeric if not c.isidentifier()]
    if bad:
        raise InvalidInput(
            f"column {bad[0]!r} cannot be a feature input name; rename it or write a feature spec"
        )
    fv, _ = ws.features.add(
        {
            "name": f"{spec.name}-auto",
            "description": f"every numeric column of {spec.data} except {spec.label}",
            "inputs": [{"name": c, "kind": "numeric"} for c in numeric],
            "steps": [{"op": "select", "columns": numeric}],
        }
    )
    return fv.ref


def _gate_failures(
    gates: dict[str, float], original: dict[str, Any], variants: dict[str, dict[str, Any]]
) -> list[str]:
    fails = []
    if "min_accuracy" in gates and original["accuracy"] < gates["min_accuracy"]:
        fails.append(
            f"original: accuracy {original['accuracy']:.4f} < min_accuracy {gates['min_accuracy']}"
        )
    for name, m in variants.items():
        checks = [
            ("min_accuracy", m["accuracy"], "<", "accuracy"),
            ("max_accuracy_drop", -m["accuracy_delta"], ">", "accuracy drop"),
            ("min_agreement", m["agreement"], "<", "agreement"),
            ("max_size_bytes", m["size_bytes"], ">", "size"),
            ("max_latency_ms", m["latency_ms_p95"], ">", "p95 latency ms"),
        ]
        for gate, value, op, label in checks:
            if gate not in gates:
                continue
            bad = value < gates[gate] if op == "<" else value > gates[gate]
            if bad:
                fails.append(f"{name}: {label} {value:.4g} {op} {gate} {gates[gate]:g}")
    return fails


@dataclass
class Prepared:
    """Everything up to the split, shared by training and by ``quantize`` of a version."""

    dv: Any
    fv: Any
    mat: Any
    labels: list[str]
    split_tag: str
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def load_labels(ws: Any, spec: PipelineSpec, dv: Any) -> tuple[Any, list[str], np.ndarray]:
    """The table of ``dv``, its sorted label names, and each row's label index."""
    frame = ws.data.load_frame(dv.ref)
    if spec.label not in frame.columns:
        cols = ", ".join(map(str, list(frame.columns)[:8]))
        raise InvalidInput(f"label column {spec.label!r} is not in {dv.ref}; its columns: {cols}")
    raw_labels = frame[spec.label].astype(str).to_numpy()
    labels = sorted(set(raw_labels))
    if len(labels) < 2:
        raise InvalidInput(
            f"label column {spec.label!r} of {dv.ref} has one class ({labels[0]!r}); "
            "a classifier needs at least two"
        )
    return frame, labels, np.searchsorted(np.array(labels), raw_labels)


def prepare(
    ws: Any,
    spec: PipelineSpec,
    dv: Any,
    frame: Any,
    labels: list[str],
    y: np.ndarray,
    feature_ref: str,
    rep: Reporter,
) -> Prepared:
    """Split (seeded), then features fitted on the training rows only (cached)."""
    fv = ws.features.get(feature_ref)
    train_idx, test_idx = split_indices(y, spec.test_size, spec.split_seed, spec.stratify)
    split_tag = f"split:test={spec.test_size},seed={spec.split_seed},strat={spec.stratify}"
    mat = ws.features.materialize(fv.ref, dv, frame, fit_rows=train_idx, fit_on=split_tag)
    rep.step("features", f"{fv.ref}: {mat.X.shape[1]} features", cached=mat.cached)
    X = mat.X.astype(np.float32)
    rep.step("split", f"{len(train_idx)} train / {len(test_idx)} test (seed {spec.split_seed})")
    return Prepared(
        dv, fv, mat, labels, split_tag, X[train_idx], X[test_idx], y[train_idx], y[test_idx]
    )


def variant_context(p: Prepared, spec: PipelineSpec) -> dict[str, Any]:
    """What every variant of the model carries besides its own tensors and metrics."""
    return {
        "feature_ref": p.fv.ref,
        "features": p.mat.fitted.to_dict(),
        "calibration": {
            "dataset": p.dv.ref,
            "samples": spec.calibration_samples,
            "seed": spec.calibration_seed,
            "rows_from": "train split",
        },
    }


def build_variant(
    ws: Any,
    fmt: str,
    trained: Trained,
    model_sha: str,
    p: Prepared,
    spec: PipelineSpec,
    reference: dict[str, Any],
    rep: Reporter,
) -> NewVariant:
    """Export, measure and describe one variant, or reuse it from the step cache."""
    cache = StepCacheStore(ws.db)
    key = cache_key(
        "export",
        model=model_sha,
        fmt=fmt,
        features=p.mat.record.sha256,
        cal=[spec.calibration_samples, spec.calibration_seed],
        split=p.split_tag,
    )
    hit = cache.get(key)
    if hit is not None:
        data = ws.artifacts.read_bytes(hit.sha256)
        metrics, meta = hit.value["metrics"], hit.value["meta"]
    else:
        exp = export_variant(
            fmt, trained, p.X_train, spec.calibration_samples, spec.calibration_seed
        )
        try:
            metrics, meta = variant_record(
                exp,
                X_train=p.X_train,
                X_test=p.X_test,
                y_test=p.y_test,
                reference_labels=reference["labels"],
                reference_accuracy=reference["accuracy"],
                feature_names=list(p.mat.fitted.feature_names),
                labels=p.labels,
                context=variant_context(p, spec),
            )
        finally:
            exp.close()
        data = exp.data
        # for C arrays, what the device stores is the model, not the source text
        metrics["size_bytes"] = metrics.get("model_bytes", len(data))
        blob = ws.artifacts.put_bytes(data)
        cache.put(key, "export", blob.sha256, {"metrics": metrics, "meta": meta})
    rep.step(
        f"export {fmt}",
        f"accuracy {metrics['accuracy']:.4f}, agreement "
        f"{metrics['agreement']:.4f}, {metrics['size_bytes']} B",
        cached=hit is not None,
    )
    return NewVariant(fmt, data, FORMATS[fmt][0], metrics, meta)


def train_or_reuse(
    ws: Any, spec: PipelineSpec, p: Prepared, rep: Reporter
) -> tuple[Trained, bytes, str]:
    cache = StepCacheStore(ws.db)
    key = cache_key(
        "train",
        features=p.mat.record.sha256,
        split=p.split_tag,
        label=spec.label,
        kind=spec.model_kind,
        params=spec.model_params,
        seed=spec.model_seed,
        labels=p.labels,
    )
    hit = cache.get(key)
    if hit is not None:
        model_bytes, model_fmt = ws.artifacts.read_bytes(hit.sha256), hit.value["format"]
        trained = load_trained(spec.model_kind, model_bytes, hit.value.get("params"))
    else:
        trained = train(
            spec.model_kind,
            spec.model_params,
            spec.model_seed,
            p.X_train,
            p.y_train,
            len(p.labels),
            progress=lambda d, t: rep.progress("train", d, t),
        )
        model_bytes, model_fmt = trained.to_bytes()
        blob = ws.artifacts.put_bytes(model_bytes)
        cache.put(key, "train", blob.sha256, {"format": model_fmt, "params": trained.params})
    rep.step("train", spec.model_kind, cached=hit is not None)
    return trained, model_bytes, model_fmt


def evaluate(trained: Trained, p: Prepared, latency_samples: int = 50) -> dict[str, Any]:
    """Metrics of the original model on the held-out split; ``labels`` are its predictions."""
    from ..convert.measure import measure

    metrics = measure(trained.scores, p.X_test, p.y_test, latency_samples=latency_samples)
    metrics["labels"] = np.argmax(trained.scores(p.X_test), axis=1)
    return metrics


def run_pipeline(
    ws: Any, spec: PipelineSpec, reporter: Reporter | None = None, git_folder: Any = None
) -> PipelineResult:
    """Run ``spec`` in workspace ``ws``; see the module docstring for the steps."""
    rep = reporter or QuietReporter()
    dv = ws.data.get(spec.data)
    frame, labels, y = load_labels(ws, spec, dv)
    rep.step("data", f"{dv.ref}: {dv.rows} rows, {len(labels)} classes")
    feature_ref = _auto_features(ws, spec, frame) if spec.features == "auto" else spec.features
    fv = ws.features.get(feature_ref)
    seeds = {
        "split": spec.split_seed,
        "model": spec.model_seed,
        "calibration": spec.calibration_seed,
    }
    with ws.runs.track(
        name=spec.name,
        seeds=seeds,
        params=dict(spec.model_params),
        config_name=f"pipeline:{spec.name}",
        config_text=spec.source,
        dataset_version_id=dv.id,
        feature_ref=fv.ref,
        tags={"model_kind": spec.model_kind},
        git_folder=git_folder,
    ) as run:
        p = prepare(ws, spec, dv, frame, labels, y, fv.ref, rep)
        trained, model_bytes, model_fmt = train_or_reuse(ws, spec, p, rep)
        reference = evaluate(trained, p)
        original = {k: v for k, v in reference.items() if k not in ("labels", "non_finite")}
        original["size_bytes"] = len(model_bytes)
        ws.runs.log(
            run.id,
            metrics={"accuracy": original["accuracy"], "test_rows": len(p.y_test)},
            params=trained.params,
        )
        rep.step("evaluate", f"accuracy {original['accuracy']:.4f} on {len(p.y_test)} rows")

        model_sha = hashlib.sha256(model_bytes).hexdigest()
        new_variants = [
            build_variant(ws, fmt, trained, model_sha, p, spec, reference, rep)
            for fmt in spec.export
        ]
        variant_metrics = {v.name: v.metrics for v in new_variants}
        ws.runs.log(
            run.id,
            metrics={
                f"{name}.{m}": vm[m]
                for name, vm in variant_metrics.items()
                for m in ("accuracy", "agreement", "size_bytes", "latency_ms_p95")
                if m in vm
            },
        )

        failures = _gate_failures(spec.gates, original, variant_metrics)
        if failures:
            reason = "; ".join(failures)
            ws.runs.finish(run.id, "gated", reason=reason)
            rep.step("gates", f"failed: {reason}")
            return PipelineResult(run.id, "gated", None, original, variant_metrics, failures)
        rep.step("gates", f"{len(spec.gates)} passed" if spec.gates else "none configured")

        existing = _same_model(ws, spec.name, model_sha, fv.ref, set(variant_metrics))
        if existing is not None:
            ws.runs.finish(run.id, "finished", reason=f"unchanged: already {existing}")
            rep.step("register", f"unchanged model, already {existing}", cached=True)
            return PipelineResult(run.id, "existing", existing, original, variant_metrics)
        context = variant_context(p, spec)
        mv = ws.registry.register(
            spec.name,
            model_bytes,
            model_fmt,
            run_id=run.id,
            params=trained.params,
            metrics=original,
            labels=labels,
            description=spec.description,
            variant_meta={
                "model_kind": spec.model_kind,
                **context,
                "feature_names": list(p.mat.fitted.feature_names),
                "labels": labels,
            },
            variants=new_variants,
        )
        if spec.alias:
            ws.registry.set_alias(mv.ref, spec.alias)
        rep.step("register", mv.ref + (f" ({spec.alias})" if spec.alias else ""))
        return PipelineResult(run.id, "registered", mv.ref, original, variant_metrics)


def _same_model(ws: Any, name: str, sha: str, feature_ref: str, variants: set[str]) -> str | None:
    """A version of ``name`` with the same original bytes, features and variants, if any."""
    from ..errors import NotFound

    try:
        versions = ws.registry.versions(name)
    except NotFound:
        return None
    for mv in reversed(versions):
        names = {v.name for v in mv.variants}
        original = next(v for v in mv.variants if v.name == "original")
        if (
            original.sha256 == sha
            and mv.feature_ref == feature_ref
            and names - {"original"} == variants
        ):
            return mv.ref
    return None
