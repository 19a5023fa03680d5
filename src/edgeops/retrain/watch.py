"""Running the retraining policies continuously (``edgeops retrain watch``).

Each tick, for every model with a policy: canary decisions whose rollout ended
are settled (alias moved or rollback recorded); while a canary of the model is
still rolling out nothing else happens to it; otherwise the triggers are
checked, in this order, and the first that fires starts a retraining:

* ``alerts``: the champion's alerts are evaluated on its telemetry
  (:meth:`MonitoringService.evaluate_alerts`), and an open alert of a listed
  metric that no earlier retraining answered fires -- once ``min_new_samples``
  fleet samples have been labelled since it opened, so that the challenger can
  learn what changed;
* ``new_data``: a version of the champion's data set newer than the one it was
  trained on, and than any retraining used;
* ``labelled_samples``: at least N labelled fleet samples of the model labelled
  since the last retraining;
* ``every``: the last retraining (or the champion, if none) is that old.

No trigger fires within ``cooldown`` of the end of the model's last retraining
(its decision, or the end of its canary rollout), so a new champion's telemetry
can build up before it is judged. The
watcher also drives rollouts (a :class:`RolloutController` pump per tick), so
one process runs the loop; a separate ``edgeops controller`` may drive them
instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select

from ..monitoring.store import _model_filter
from ..store.schema import RetrainDecision, Sample
from .policy import RetrainPolicy
from .run import Trigger, decisions, retrain, settle
from .store import list_policies

__all__ = ["RetrainWatcher", "check_triggers"]

log = logging.getLogger("edgeops.retrain")


def _ts(value: Any) -> float:
    if value is None:
        return 0.0
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _labelled_since(ws: Any, model: str, since: datetime) -> int:
    """Samples of ``model`` labelled after ``since``."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    with ws.db.session() as s:
        q = select(Sample.id).where(
            Sample.fleet == ws.settings.fleet,
            Sample.label.is_not(None),
            Sample.labelled_at > since,
        )
        q = _model_filter(q, Sample.model_ref, model)
        return int(s.execute(select(func.count()).select_from(q.subquery())).scalar_one())


def check_triggers(ws: Any, policy: RetrainPolicy, now: float | None = None) -> Trigger | None:
    """The trigger that fires for ``policy`` now, or None."""
    from ..monitoring.service import MonitoringService
    from .run import _champion

    now = time.time() if now is None else now
    history = decisions(ws, policy.model, limit=1000)
    last_at = _ts(history[0]["created_at"]) if history else None
    # the cooldown runs from when the last retraining ended (its canary settled)
    last_end = _ts(history[0]["updated_at"]) if history else None
    if last_end is not None and now - last_end < policy.cooldown:
        return None
    champion = _champion(ws, policy)

    if policy.alert_metrics:
        svc = MonitoringService(ws)
        svc.evaluate_alerts(champion.ref)
        answered = {a for d in history for a in d["cause"].get("alert_ids", [])}
        fresh = [
            a
            for a in svc.alerts(model=champion.ref, status="open")
            if a["metric"] in policy.alert_metrics and a["id"] not in answered
        ]
        if fresh:
            first = fresh[-1]  # oldest: alerts() is newest first
            if policy.min_new_samples:
                since = first["opened_at"]
                n = _labelled_since(ws, policy.model, since)
                if n < policy.min_new_samples:
                    log.info(
                        "%s: alert %s waits for labelled samples (%d of %d)",
                        policy.model,
                        first["id"],
                        n,
                        policy.min_new_samples,
                    )
                    return None
            return Trigger(
                "alert",
                f"alert {first['id']}: {first['reason']}",
                {
                    "alert_ids": sorted(a["id"] for a in fresh),
                    "metric": first["metric"],
                    "subject": first["subject"],
                    "scope": first["scope"],
                },
            )

    if policy.new_data and champion.dataset_version is not None:
        name = champion.dataset_version.dataset.name
        latest = ws.data.versions(name)[-1]
        used = {d["data"] for d in history}
        if latest.version > champion.dataset_version.version and latest.ref not in used:
            return Trigger(
                "new_data",
                f"new data {latest.ref} (the champion was trained on "
                f"{champion.dataset_version.ref})",
                {"data": latest.ref},
            )

    if policy.labelled_samples:
        since = datetime.fromtimestamp(last_at or 0.0, timezone.utc)
        n = _labelled_since(ws, policy.model, since)
        if n >= policy.labelled_samples:
            return Trigger(
                "labelled_samples",
                f"{n} labelled samples since the last retraining "
                f"(policy: {policy.labelled_samples})",
                {"samples": int(n)},
            )

    if policy.every:
        ref_time = last_at if last_at is not None else _ts(champion.created_at)
        if now - ref_time >= policy.every:
            return Trigger("schedule", f"scheduled every {policy.every:g} s", {})
    return None


def _in_flight(ws: Any, model: str) -> bool:
    with ws.db.session() as s:
        return (
            s.execute(
                select(func.count())
                .select_from(RetrainDecision)
                .where(
                    RetrainDecision.fleet == ws.settings.fleet,
                    RetrainDecision.model == model,
                    RetrainDecision.status == "canary",
                )
            ).scalar_one()
            > 0
        )


class RetrainWatcher:
    """Check every policy's triggers, retrain, drive and settle the canaries."""

    def __init__(
        self,
        ws: Any,
        key: Any = None,
        client: Any = None,
        reporter: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        controller: Any = None,
    ) -> None:
        from ..fleet.controller import RolloutController

        self.ws, self.key, self.reporter, self.clock = ws, key, reporter, clock
        if controller is None and key is not None:
            controller = RolloutController(ws, key, client)
        self.controller = controller
        self.decided: list[dict[str, Any]] = []

    def tick(self) -> list[dict[str, Any]]:
        """One pass over the policies; the decisions made or settled in it."""
        out = settle(self.ws, self.reporter)
        for policy, _ in list_policies(self.ws):
            if _in_flight(self.ws, policy.model):
                continue
            try:
                trigger = check_triggers(self.ws, policy, self.clock())
            except Exception as exc:  # one model's problem must not stop the others
                log.warning("retrain %s: cannot check triggers: %s", policy.model, exc)
                continue
            if trigger is None:
                continue
            out.append(retrain(self.ws, policy, trigger, key=self.key, reporter=self.reporter))
        self.decided.extend(out)
        return out

    def run(
        self,
        until: Callable[[], bool] | None = None,
        interval: float = 5.0,
        max_seconds: float | None = None,
    ) -> None:
        started = time.monotonic()
        next_tick = 0.0
        while True:
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + interval
            if self.controller is not None:
                self.controller.run(until=lambda: True, tick=0.25)
            else:
                time.sleep(0.25)
            if until is not None and until():
                return
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                return
