"""Lossy network: four real agent processes, each in a network namespace of its own, reach
Mosquitto over a link that loses 20% of the packets each way, delays them 50 ± 20 ms and
reorders a quarter of them. The real rollout controller rolls a model out to all four; the
agents then predict through their local HTTP endpoints, and the real collector must store
each telemetry window exactly once: none missing, none twice.

The namespaces, links, broker, agents, controller and collector are the harness's
(:mod:`hil`, the same code ``hil/run`` runs on namespace targets). The link is a veth pair
with ``tc netem`` where the kernel has netem, else the harness's userspace netem over TUN
(:mod:`hil.wire`): same figures, applied to each direction.

What each agent sent is read on the agent's side, not from the harness's verdict: its boot
id from its own log, its outbox (empty, nothing dropped) from its state directory, and the
number of windows from the predictions it answered. What was stored is read from the
collector's database.

Needs root (``ip netns``); skipped elsewhere, but it fails in CI (``CI`` set).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hil import broker  # noqa: E402
from hil.campaign import Campaign  # noqa: E402
from hil.hosts import NetnsHost  # noqa: E402
from hil.impair import Impairment  # noqa: E402
from hil.scenarios import rollout, telemetry  # noqa: E402
from hil.targets import BrokerSpec, CampaignSpec, NetnsTarget, Spec  # noqa: E402
from hil.testing import require_mosquitto, require_namespaces, run_namespaces  # noqa: E402

pytestmark = pytest.mark.slow

LOSSY = Impairment(loss=20, delay_ms=50, jitter_ms=20, reorder=25)
AGENTS = 4
PREDICTIONS, WINDOW = 400, 10  # 40 windows per agent
CHUNK = 512  # the model (about 2 KB) in several chunks, each a message the link may hit
OUTAGE_AT_S, OUTAGE_S = 2.0, 10.0  # into the telemetry scenario; longer than 1.5 x keepalive


@pytest.fixture
def lossy_fleet(tmp_path, monkeypatch):
    """Four namespace agents behind lossy links, online, with the server side running.
    The namespaces go whatever happens: the campaign's teardown, then a check."""
    require_namespaces()
    require_mosquitto()
    monkeypatch.delenv("EDGEOPS_FLEET", raising=False)
    spec = Spec(
        CampaignSpec(
            predictions=PREDICTIONS, window=WINDOW, batch=10, keepalive=5, chunk_size=CHUNK
        ),
        BrokerSpec(),
        tuple(NetnsTarget(f"lossy-{i}", netem=LOSSY) for i in range(AGENTS)),
    )
    campaign = Campaign(spec, tmp_path / "run", log=lambda line: print(f"[hil] {line}"))
    try:
        with campaign:
            yield campaign
    finally:
        left = run_namespaces(campaign.token)
        if left:  # never leave them behind, and say it was needed
            from hil.netns import delete_namespace

            for name in left:
                delete_namespace(name)
            pytest.fail(f"the harness left namespaces behind: {left}")


def _boot_from_log(host: NetnsHost) -> list[str]:
    return re.findall(r"started \(boot ([\w.-]+)\)", host.logs())


def _outbox(host: NetnsHost) -> tuple[int, int]:
    box = Path(host.state_dir) / "outbox"
    waiting = len(list(box.glob("*.msg")))
    dropped = box / "dropped.json"
    return waiting, json.loads(dropped.read_text())["dropped"] if dropped.exists() else 0


def _stored(campaign: Campaign, device: str) -> list[tuple[str, int, int]]:
    from sqlalchemy import select

    from edgeops.store.schema import TelemetryWindow as W

    with campaign.ws.db.session() as s:
        q = select(W.boot, W.seq, W.count).where(W.fleet == campaign.fleet, W.device_id == device)
        return [(b, int(seq), int(n)) for b, seq, n in s.execute(q)]


def _outage(hosts: list[NetnsHost]) -> None:
    time.sleep(OUTAGE_AT_S)
    for h in hosts:
        h.link.set_outage(True)
    time.sleep(OUTAGE_S)
    for h in hosts:
        h.link.set_outage(False)


def test_rollout_and_telemetry_survive_a_lossy_network(lossy_fleet):
    c = lossy_fleet
    hosts = [h for h in c.hosts if isinstance(h, NetnsHost)]
    assert len(hosts) == AGENTS
    for h in hosts:  # the links really are lossy
        assert h.link.impairment == LOSSY and h.link.namespace in run_namespaces(c.token)

    ro = rollout(c)
    assert ro.figures["status"] == "completed", ro.summary
    assert ro.ok and ro.figures["activated"] == AGENTS, [t.detail for t in ro.targets]

    # while the windows are being sent, every link goes dark for longer than the broker's
    # keepalive timeout: connections drop, agents reconnect and send their in-flight window
    # again, so the collector must turn redeliveries away
    outage = threading.Thread(target=_outage, args=(hosts,), daemon=True)
    outage.start()
    tm = telemetry(c)
    outage.join()
    assert all(broker.connections(c.broker.folder)[h.name] >= 2 for h in hosts), (
        "every agent lost its connection in the outage and made a new one"
    )

    # the agents' side: one boot each (never restarted), outbox sent and nothing dropped
    sent: dict[str, tuple[str, int]] = {}
    for h, t in zip(hosts, tm.targets, strict=True):
        boots = _boot_from_log(h)
        assert len(boots) == 1, f"{h.name} started {len(boots)} times: {boots}"
        assert _outbox(h) == (0, 0), f"{h.name}: outbox (waiting, dropped) = {_outbox(h)}"
        assert t.figures["predictions"] == PREDICTIONS, t.detail
        sent[h.name] = (boots[0], PREDICTIONS // WINDOW)
    # the collector's side: each (device, boot, seq) once, nothing else, every prediction
    missing = duplicates = stored = 0
    for name, (boot, windows) in sent.items():
        rows = _stored(c, name)
        keys = Counter((b, s) for b, s, _ in rows)
        expected = {(boot, s) for s in range(1, windows + 1)}
        missing += len(expected - set(keys))
        duplicates += sum(k - 1 for k in keys.values())
        stored += len(set(keys) & expected)
        assert set(keys) == expected, f"{name}: stored {sorted(keys)}"
        assert sum(n for _, _, n in rows) == PREDICTIONS
    total = sum(w for _, w in sent.values())
    assert (stored, missing, duplicates) == (total, 0, 0)
    assert tm.ok, [t.detail for t in tm.targets]

    connects = broker.connections(c.broker.folder)
    reconnects = sum(connects[h.name] - 1 for h in hosts)
    link = hosts[0].link.describe()
    wires = [d for h in hosts for d in (h.link.wire_stats() or {}).values()]
    packets = (  # wire links count what they do; a tc netem link reports nothing here
        f"packets lost {sum(d['lost'] for d in wires)} of {sum(d['in'] for d in wires)} "
        f"(+{sum(d['outage_lost'] for d in wires)} in the outage)"
        if wires
        else "tc netem"
    )
    print(
        f"\nlossy network ({LOSSY.describe()}): rollout completed on "
        f"{ro.figures['activated']} of {AGENTS} agents in {ro.seconds:.1f} s "
        f"({ro.figures['artifact_bytes']} bytes in {CHUNK}-byte chunks); telemetry "
        f"windows sent {total}, stored {stored}, duplicates {duplicates}; missing {missing}; "
        f"with a {OUTAGE_S:g} s outage of every link mid-telemetry, {reconnects} "
        f"reconnections and {tm.figures['redelivered_duplicates']} redelivered windows "
        "turned away by the "
        f"collector; all stored {tm.figures['delivery_s']:.1f} s after the last prediction "
        f"[{link}; {packets}]",
        flush=True,
    )
