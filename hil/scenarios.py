"""The scenarios: each takes a set-up :class:`~hil.campaign.Campaign` and returns a
:class:`~hil.report.ScenarioResult`, with one verdict per target.

* **rollout**: the campaign's model is rolled out to every target by the real
  controller (one stage, up to 3 attempts per device). A target passes when the
  controller saw it activate the model *and* the agent itself, asked over its
  local HTTP endpoint, serves that name, version and SHA-256.
* **telemetry**: every target makes ``predictions`` predictions through its agent's
  ``POST /predict``; its windows close every ``window`` predictions, so it sends
  ``predictions / window`` windows, numbered on from the last one the collector
  holds for its boot. A target passes when the collector's database holds each of
  those ``(device, boot, seq)`` exactly once and nothing else for that boot, the
  stored windows count every prediction, the agent's outbox is empty and it dropped
  nothing. Redeliveries the collector turned away as duplicates are counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hil.errors import HilError
from hil.report import ScenarioResult, TargetResult

if TYPE_CHECKING:
    from hil.campaign import Campaign
    from hil.hosts import Host

__all__ = ["SCENARIOS", "rollout", "stored_windows", "telemetry"]


def _expected_model(c: Campaign, variant: str) -> dict[str, Any]:
    mv = c.ws.registry.get_version(c.model_ref)
    v = next(v for v in mv.variants if v.name == variant)
    return {"name": mv.model.name, "version": mv.version, "sha256": v.sha256, "size": v.size}


def _device_model(h: Host) -> dict[str, Any] | None:
    st = h.state()
    return (st.get("state") or {}).get("model") if st.get("state_status") == 200 else None


def rollout(c: Campaign) -> ScenarioResult:
    from edgeops.fleet.controller import TERMINAL, RolloutOptions
    from edgeops.fleet.deploy import ManifestOptions

    spec = c.spec.campaign
    t0 = time.monotonic()
    names = [h.name for h in c.hosts]
    manifest = ManifestOptions(**({"chunk_size": spec.chunk_size} if spec.chunk_size else {}))
    opts = RolloutOptions(
        manifest=manifest,
        stages=(1.0,),
        timeout=max(spec.rollout_timeout_s / 3, 10.0),
        retries=2,
        max_failures=1.0,
    )
    rid = c.controller.create(c.model_ref, "device:" + ",".join(names), opts)
    c.controller.run(
        until=lambda: c.controller.status(rid)["status"] in TERMINAL,
        max_seconds=spec.rollout_timeout_s,
    )
    st = c.controller.status(rid)
    seconds = time.monotonic() - t0
    results = []
    for h in c.hosts:
        d = st["devices_detail"].get(h.name, {})
        want = _expected_model(c, d["variant"]) if d.get("variant") else None
        got = None
        deadline = time.monotonic() + 10  # the agent answers from its state at once; margin
        while want is not None and time.monotonic() < deadline:
            got = _device_model(h)
            if _serves(got, want):
                break
            time.sleep(0.2)
        serves = _serves(got, want)
        ok = d.get("status") == "activated" and serves
        if ok and want is not None:
            detail = (
                f"activated {want['name']}@{want['version']} {d['variant']} "
                f"(attempt {d.get('attempt')})"
            )
        else:
            detail = (
                f"controller says {d.get('status', 'nothing')}"
                f"{': ' + d['reason'] if d.get('reason') else ''}; device serves "
                f"{_ref(got)}"
            )
        results.append(
            TargetResult(
                h.name,
                ok,
                detail,
                {
                    "status": d.get("status"),
                    "attempt": d.get("attempt"),
                    "variant": d.get("variant"),
                    "device_model": got,
                    "size": want["size"] if want else None,
                },
            )
        )
    sizes = [r.figures["size"] for r in results if r.figures.get("size")]
    activated = sum(r.ok for r in results)
    c.rolled_out = activated == len(results)
    summary = f"rollout {st['status']} on {activated} of {len(results)} targets in {seconds:.1f} s"
    return ScenarioResult(
        "rollout",
        st["status"] == "completed" and c.rolled_out,
        round(seconds, 2),
        summary,
        results,
        {
            "rollout": rid,
            "status": st["status"],
            "activated": activated,
            "targets": len(results),
            "model": c.model_ref,
            "artifact_bytes": sizes[0] if sizes else None,
            "chunk_size": manifest.chunk_size,
        },
    )


def _serves(got: dict[str, Any] | None, want: dict[str, Any] | None) -> bool:
    return bool(got and want and all(got.get(k) == want[k] for k in ("name", "version", "sha256")))


def _ref(model: dict[str, Any] | None) -> str:
    if not model:
        return "no model"
    return f"{model.get('name')}@{model.get('version')} ({str(model.get('sha256'))[:12]})"


def stored_windows(ws: Any, fleet: str, device: str, boot: str) -> list[tuple[int, int]]:
    """``(seq, count)`` of every window the collector stored for one boot of a device."""
    from sqlalchemy import select

    from edgeops.store.schema import TelemetryWindow as W

    with ws.db.session() as s:
        q = select(W.seq, W.count).where(W.fleet == fleet, W.device_id == device, W.boot == boot)
        return [(int(seq), int(n)) for seq, n in s.execute(q)]


def _wait(cond: Callable[[], bool], timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def telemetry(c: Campaign) -> ScenarioResult:
    from hil.model import prediction_rows

    spec = c.spec.campaign
    t0 = time.monotonic()
    rows = prediction_rows()
    # 1. where each agent stands: its boot, an outbox sent empty, the windows already stored
    before: dict[str, dict[str, Any]] = {}
    for h in c.hosts:
        st: dict[str, Any] = {}

        def drained(h: Host = h, st: dict[str, Any] = st) -> bool:
            st.update(h.state())
            return st.get("state_status") == 200 and st["outbox"] == 0

        if not _wait(drained, 30):
            raise HilError(f"{h.name}: agent not answering or its outbox not empty: {st}")
        boot = st["state"]["boot"]
        stored = stored_windows(c.ws, c.fleet, h.name, boot)
        before[h.name] = {
            "boot": boot,
            "dropped": st["dropped"],
            "last": max((s for s, _ in stored), default=0),
        }
    dup_before = c.collector.rejected["duplicate"]
    # 2. predictions on every target at once
    with ThreadPoolExecutor(max(1, len(c.hosts))) as pool:
        made = dict(
            zip(
                [h.name for h in c.hosts],
                pool.map(lambda h: h.predict(rows, spec.predictions, spec.batch), c.hosts),
                strict=True,
            )
        )
    sent_at = time.monotonic()
    expected = {
        h.name: set(
            range(
                before[h.name]["last"] + 1,
                before[h.name]["last"] + 1 + made[h.name]["predictions"] // spec.window,
            )
        )
        for h in c.hosts
    }

    # 3. until every window is stored and every outbox is empty (or the time is up)
    def delivered() -> bool:
        for h in c.hosts:
            b = before[h.name]
            have = {s for s, _ in stored_windows(c.ws, c.fleet, h.name, b["boot"])}
            if not expected[h.name] <= have:
                return False
        return all(h.state()["outbox"] == 0 for h in c.hosts)

    _wait(delivered, spec.telemetry_timeout_s)
    delivery_s = time.monotonic() - sent_at
    time.sleep(1.0)  # late redeliveries, if any, reach the collector's counters
    results = []
    totals: Counter[str] = Counter()
    for h in c.hosts:
        b, m = before[h.name], made[h.name]
        rows_now = [
            (s, n) for s, n in stored_windows(c.ws, c.fleet, h.name, b["boot"]) if s > b["last"]
        ]
        seqs = Counter(s for s, _ in rows_now)
        exp = expected[h.name]
        st = h.state()
        fig = {
            "boot": b["boot"],
            "predictions": m["predictions"],
            "prediction_errors": len(m["errors"]),
            "sent": len(exp),
            "stored": len(set(seqs) & exp),
            "missing": len(exp - set(seqs)),
            "unexpected": len(set(seqs) - exp),
            "duplicates": sum(k - 1 for k in seqs.values()),
            "counted": sum(n for _, n in rows_now),
            "outbox_left": st.get("outbox"),
            "outbox_dropped": (st.get("dropped") or 0) - b["dropped"],
        }
        totals.update(
            {
                k: fig[k]
                for k in ("sent", "stored", "missing", "duplicates", "unexpected", "predictions")
            }
        )
        ok = (
            m["predictions"] == spec.predictions
            and not m["errors"]
            and fig["missing"] == 0
            and fig["unexpected"] == 0
            and fig["duplicates"] == 0
            and fig["counted"] == m["predictions"]
            and fig["outbox_left"] == 0
            and fig["outbox_dropped"] == 0
        )
        detail = (
            f"windows sent {fig['sent']}, stored {fig['stored']}, missing {fig['missing']}, "
            f"duplicates {fig['duplicates']}; {fig['counted']} of {m['predictions']} "
            "predictions counted"
        )
        if m["errors"]:
            detail += f"; prediction errors: {m['errors'][:2]}"
        results.append(TargetResult(h.name, ok, detail, fig))
    redelivered = c.collector.rejected["duplicate"] - dup_before
    summary = (
        f"telemetry windows sent {totals['sent']}, stored {totals['stored']}, "
        f"missing {totals['missing']}, duplicates {totals['duplicates']} "
        f"({redelivered} redeliveries turned away by the collector); "
        f"delivered {delivery_s:.1f} s after the last prediction"
    )
    figures = {**totals, "redelivered_duplicates": redelivered, "delivery_s": round(delivery_s, 2)}
    return ScenarioResult(
        "telemetry",
        all(r.ok for r in results),
        round(time.monotonic() - t0, 2),
        summary,
        results,
        figures,
    )


SCENARIOS: dict[str, Callable[[Campaign], ScenarioResult]] = {
    "rollout": rollout,
    "telemetry": telemetry,
}
