"""One retraining: new data, the pipeline again, challenger against champion, a decision.

:func:`retrain` does, for a model's :class:`~edgeops.retrain.policy.RetrainPolicy`
and the :class:`Trigger` that fired:

1. the champion is the version the policy's alias names; its run's pipeline is
   what is re-run (only pipeline-trained versions can be retrained);
2. with ``data.from_samples``, labelled fleet samples of the model are split by
   a hash of their id: ``holdout`` of them are kept for evaluation only, the rest
   become a new version of the champion's data set (origin recorded);
3. the pipeline runs on the newest version of that data set, its gates included,
   and registers the challenger (without moving any alias);
4. both are measured on the same evaluation data: the held-out split of the new
   data set version (the challenger never trained on it) plus the held-out fleet
   samples, for every variant that would be deployed, each in its own runtime
   with its own fitted feature transforms;
5. the policy decides: the challenger wins when its accuracy exceeds the
   champion's by more than ``min_improvement`` on every compared variant; then
   it is registered (and the ``promote`` alias moved), or a canary rollout
   starts with the policy's stages and quality gates, and the alias moves when
   that rollout completes (:func:`settle`).

Every outcome is a ``retrain_decisions`` record with its reason, the trigger and
what caused it (alert ids, data version), the data version and run, and the
comparison; ``edgeops models lineage`` shows the chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import audit
from ..errors import InvalidInput, NotFound
from ..store.schema import RetrainDecision
from .policy import RetrainPolicy

__all__ = ["Trigger", "decision_dict", "decisions", "retrain", "settle"]

log = logging.getLogger("edgeops.retrain")
RUNNABLE = ("tflite", "onnx", "c-tflm", "c-emlearn")


@dataclass(frozen=True)
class Trigger:
    kind: str  # alert, new_data, labelled_samples, schedule, manual
    reason: str
    cause: dict[str, Any] = field(default_factory=dict)


def _say(reporter: Callable[[str], None] | None, text: str) -> None:
    log.info("%s", text)
    if reporter is not None:
        reporter(text)


def holdout_ids(sample_ids: list[str], share: float) -> set[str]:
    """The sample ids kept for evaluation: a stable ``share`` of them, by a hash of the id."""
    if share <= 0:
        return set()
    cut = int(share * 2**32)
    return {s for s in sample_ids if int.from_bytes(hashlib.sha256(s.encode()).digest()[:4]) < cut}


def _champion(ws: Any, policy: RetrainPolicy) -> Any:
    try:
        return ws.registry.get_version(f"{policy.model}@{policy.champion}")
    except NotFound:
        raise NotFound(
            f"{policy.model} has no version named {policy.champion!r} to challenge; "
            f"set it with `edgeops models alias {policy.model}@VERSION {policy.champion}`"
        ) from None


def _pipeline(mv: Any) -> Any:
    from ..pipeline import parse_pipeline

    run = mv.run
    if run is None or not run.config_name.startswith("pipeline:") or mv.dataset_version is None:
        raise InvalidInput(
            f"{mv.ref} was not trained by `edgeops train`, so there is no pipeline to re-run; "
            "train it with a pipeline file first"
        )
    return parse_pipeline(yaml.safe_load(run.config_text), run.config_text)


def _record(ws: Any, **fields: Any) -> dict[str, Any]:
    fleet = ws.settings.fleet

    def write(s: Session) -> int:
        row = RetrainDecision(fleet=fleet, **fields)
        s.add(row)
        s.flush()
        audit.record(
            s,
            "retrain.decision",
            row.model,
            {
                "id": row.id,
                "trigger": row.trigger,
                "decision": row.decision,
                "status": row.status,
                "champion": row.champion_ref,
                "challenger": row.challenger_ref,
                "rollout": row.rollout_id,
                "reason": row.reason,
            },
        )
        return row.id

    did = ws.db.write(write)
    return decision(ws, did)


def decision(ws: Any, did: int) -> dict[str, Any]:
    with ws.db.session() as s:
        row = s.get(RetrainDecision, did)
        if row is None:
            raise NotFound(f"no retraining decision {did}; see `edgeops retrain list`")
        return decision_dict(row)


def decision_dict(r: RetrainDecision) -> dict[str, Any]:
    return {
        "id": r.id,
        "model": r.model,
        "trigger": r.trigger,
        "cause": r.cause,
        "champion": r.champion_ref,
        "challenger": r.challenger_ref,
        "data": r.data_ref,
        "run": r.run_id,
        "decision": r.decision,
        "status": r.status,
        "reason": r.reason,
        "rollout": r.rollout_id,
        "comparison": r.comparison,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def decisions(ws: Any, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Retraining decisions, newest first."""
    with ws.db.session() as s:
        q = select(RetrainDecision).where(RetrainDecision.fleet == ws.settings.fleet)
        if model:
            q = q.where(RetrainDecision.model == model)
        rows = s.execute(q.order_by(RetrainDecision.id.desc()).limit(limit)).scalars()
        return [decision_dict(r) for r in rows]


# --- data -----------------------------------------------------------------------------------
def _fleet_samples(ws: Any, model: str) -> list[Any]:
    from ..monitoring.store import MonitoringStore

    rows = MonitoringStore(ws.db, ws.settings.fleet).samples(model, labelled=True, limit=None)
    return [r for r in rows if isinstance(r.input, dict) and r.input]


def _fold_samples(
    ws: Any, dataset: str, model: str, exclude: set[str], say: Any
) -> tuple[str | None, int]:
    """A new version of ``dataset`` with the labelled samples not in ``exclude``."""
    from ..data.from_samples import add_from_samples

    try:
        res = add_from_samples(ws, dataset, model=model, exclude=exclude)
    except InvalidInput as exc:
        _say(say, f"no new training data from the fleet ({exc})")
        return None, 0
    dv = res.version
    n = int((dv.origin or {}).get("samples", 0))
    _say(say, f"fleet samples: {n} labelled samples folded into {dv.ref}")
    return dv.ref, n


# --- comparison -------------------------------------------------------------------------------
def _deployed_variants(ws: Any, champion: Any, challenger: Any) -> list[str]:
    from ..fleet.store import FleetStore

    theirs = {v.name for v in challenger.variants if v.format in RUNNABLE}
    ours = {v.name for v in champion.variants if v.format in RUNNABLE}
    common = ours & theirs
    running: set[str] = set()
    for d in FleetStore(ws.db, ws.settings.fleet).devices():
        m = (d.state or {}).get("model") or {}
        if m.get("name") == champion.model.name and m.get("variant") in common:
            running.add(m["variant"])
    return sorted(running or common)


def _accuracy(ws: Any, mv: Any, variant: str, sets: dict[str, Any]) -> dict[str, Any]:
    from edgeops_protocol.features import FittedFeatures

    from ..pipeline.check import variant_predict

    v = next(x for x in mv.variants if x.name == variant)
    fitted = FittedFeatures.from_dict(v.meta["features"])
    labels = np.asarray([str(x) for x in mv.labels], dtype=object)
    predict, close = variant_predict(
        v, ws.artifacts.read_bytes(v.sha256), len(fitted.feature_names)
    )
    out: dict[str, Any] = {}
    right_all = n_all = 0
    try:
        for name, (kind, data, truth) in sets.items():
            if not len(truth):
                continue
            X = fitted.transform(data) if kind == "frame" else fitted.transform_rows(data)
            scores = np.asarray(predict(X.astype(np.float32)))
            # class scores, or class indices from the emlearn variants
            idx = scores.astype(np.int64) if scores.ndim == 1 else np.argmax(scores, axis=1)
            right = int((labels[idx] == np.asarray(truth, object)).sum())
            out[name] = {"n": len(truth), "correct": right, "accuracy": right / len(truth)}
            right_all, n_all = right_all + right, n_all + len(truth)
    finally:
        close()
    out["all"] = {
        "n": n_all,
        "correct": right_all,
        "accuracy": right_all / n_all if n_all else None,
    }
    return out


def compare(
    ws: Any, champion: Any, challenger: Any, spec: Any, holdout: list[Any]
) -> dict[str, Any]:
    """Accuracy of both on the new data's held-out split and the held-out fleet samples."""
    from ..pipeline.run import load_labels, split_indices

    dv = ws.data.get(spec.data)
    frame, _, y = load_labels(ws, spec, dv)
    _, test_idx = split_indices(y, spec.test_size, spec.split_seed, spec.stratify)
    test = frame.iloc[np.sort(test_idx)]
    sets = {
        "data": ("frame", test, [str(x) for x in test[spec.label]]),
        "fleet": ("rows", [s.input for s in holdout], [s.label for s in holdout]),
    }
    variants = _deployed_variants(ws, champion, challenger)
    if not variants:
        raise InvalidInput(
            f"{champion.ref} and {challenger.ref} have no runnable variant in common to compare"
        )
    out: dict[str, Any] = {
        "data": dv.ref,
        "data_rows": len(test),
        "fleet_rows": len(holdout),
        "variants": {},
    }
    for name in variants:
        a = _accuracy(ws, champion, name, sets)
        b = _accuracy(ws, challenger, name, sets)
        out["variants"][name] = {"champion": a, "challenger": b}
    return out


def _verdict(comparison: dict[str, Any], min_improvement: float) -> tuple[bool, str]:
    wins, parts = True, []
    for name, c in comparison["variants"].items():
        a, b = c["champion"]["all"]["accuracy"], c["challenger"]["all"]["accuracy"]
        gain = b - a
        parts.append(f"{name}: {b:.4f} vs {a:.4f} ({gain:+.4f})")
        if not gain > min_improvement:
            wins = False
    rule = f"gain > {min_improvement:g} on every variant"
    return wins, ("challenger better: " if wins else "champion kept: ") + "; ".join(parts) + (
        f" ({rule}, on {comparison['data_rows']} held-out rows of {comparison['data']} and "
        f"{comparison['fleet_rows']} held-out fleet samples)"
    )


# --- the whole retraining ----------------------------------------------------------------------
def retrain(
    ws: Any,
    policy: RetrainPolicy,
    trigger: Trigger,
    *,
    key: Any = None,
    reporter: Callable[[str], None] | None = None,
    pipeline_reporter: Any = None,
) -> dict[str, Any]:
    """Retrain ``policy.model`` now; the decision record (see the module docstring)."""
    from ..pipeline.run import run_pipeline

    champion = _champion(ws, policy)
    spec = _pipeline(champion)
    dataset = champion.dataset_version.dataset.name
    base = {"model": policy.model, "trigger": trigger.kind, "cause": {**trigger.cause}}
    base["cause"]["reason"] = trigger.reason
    _say(reporter, f"retraining {policy.model} (champion {champion.ref}): {trigger.reason}")

    samples = _fleet_samples(ws, policy.model)
    held = holdout_ids([s.sample_id for s in samples], policy.holdout)
    holdout = [s for s in samples if s.sample_id in held]
    if policy.from_samples and samples:
        _fold_samples(ws, dataset, policy.model, held, reporter)
    data_ref = ws.data.versions(dataset)[-1].ref
    doc = yaml.safe_load(spec.source)
    doc["data"] = data_ref
    doc.pop("alias", None)
    text = yaml.safe_dump(doc, sort_keys=False)
    spec2 = dataclasses.replace(spec, data=data_ref, alias=None, source=text)
    _say(reporter, f"training a challenger on {data_ref}")
    result = run_pipeline(ws, spec2, pipeline_reporter)
    common = {**base, "champion_ref": champion.ref, "data_ref": data_ref, "run_id": result.run_id}
    if result.status == "gated":
        reason = "challenger failed the pipeline's gates: " + "; ".join(result.gate_failures)
        _say(reporter, reason)
        return _record(ws, **common, decision="gated", status="done", reason=reason)
    challenger = ws.registry.get_version(result.model_ref)
    if challenger.id == champion.id:
        reason = f"the pipeline on {data_ref} gives the champion {champion.ref} again"
        _say(reporter, reason)
        return _record(
            ws,
            **common,
            challenger_ref=challenger.ref,
            decision="unchanged",
            status="done",
            reason=reason,
        )
    comparison = compare(ws, champion, challenger, spec2, holdout)
    wins, reason = _verdict(comparison, policy.min_improvement)
    _say(reporter, f"{challenger.ref} against {champion.ref}: {reason}")
    common.update(challenger_ref=challenger.ref, comparison=comparison)
    if not wins:
        return _record(ws, **common, decision="kept_champion", status="done", reason=reason)
    if policy.action == "register":
        if policy.promote:
            ws.registry.set_alias(challenger.ref, policy.promote)
            reason += f"; {policy.promote} -> {challenger.ref}"
        return _record(ws, **common, decision="registered", status="done", reason=reason)
    rid = _start_canary(ws, policy, challenger.ref, key)
    _say(reporter, f"canary rollout {rid} of {challenger.ref} to {policy.rollout.target}")
    return _record(ws, **common, decision="canary", status="canary", reason=reason, rollout_id=rid)


def _start_canary(ws: Any, policy: RetrainPolicy, ref: str, key: Any) -> str:
    from ..fleet.controller import RolloutController, RolloutOptions
    from ..monitoring.gates import QualityGates

    if key is None:
        from ..fleet.keys import load_key

        key = load_key(ws.settings.keys_dir)
    ro = policy.rollout
    opts = RolloutOptions(
        stages=ro.stages,
        max_failures=ro.max_failures,
        stage_wait=ro.stage_wait,
        timeout=ro.timeout,
        gates=QualityGates.parse(list(ro.gates), ro.gate_min_count),
    )
    return RolloutController(ws, key).create(ref, ro.target, opts)


def settle(ws: Any, reporter: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Finish canary decisions whose rollout has ended: move the alias after a completed
    rollout (``promoted``), or record that it was aborted (``rolled_back``)."""
    from ..fleet.controller import RolloutController
    from .store import load_policy

    changed = []
    with ws.db.session() as s:
        rows = list(
            s.execute(
                select(RetrainDecision).where(
                    RetrainDecision.fleet == ws.settings.fleet, RetrainDecision.status == "canary"
                )
            ).scalars()
        )
    for row in rows:
        st = RolloutController(ws, key=None).status(row.rollout_id)
        if st["status"] == "completed":
            policy = load_policy(ws, row.model, missing_ok=True)
            alias = policy.promote if policy is not None else None
            if alias:
                aliases = ws.registry.aliases_of(row.model)
                if aliases.get(alias) != ws.registry.get_version(row.challenger_ref).version:
                    ws.registry.set_alias(row.challenger_ref, alias)
            status, note = (
                "promoted",
                f"rollout {row.rollout_id} completed"
                + (f"; {alias} -> {row.challenger_ref}" if alias else ""),
            )
        elif st["status"] in ("aborted", "rolled_back"):
            status, note = "rolled_back", f"rollout {row.rollout_id} {st['status']}: {st['reason']}"
        else:
            continue
        _say(reporter, f"retraining {row.id} ({row.challenger_ref}): {note}")

        def write(s: Session, did: int = row.id, status: str = status, note: str = note) -> None:
            r = s.get(RetrainDecision, did)
            r.status, r.reason = status, f"{r.reason}; {note}"
            r.updated_at = datetime.now(timezone.utc)

        ws.db.write(write)
        changed.append(decision(ws, row.id))
    return changed
