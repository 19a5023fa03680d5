"""The rollout engine: exact commands and states for each rule, and random event storms."""

from __future__ import annotations

import collections
import dataclasses
import doctest
import json

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeops.rollout
from edgeops.errors import InvalidInput
from edgeops.rollout import (
    Abort,
    Command,
    Deploy,
    Deployed,
    DeviceReport,
    DeviceStatus,
    Event,
    Notify,
    NotifyKind,
    Pause,
    Resume,
    Revert,
    Rollback,
    RolloutPlan,
    RolloutState,
    RolloutStatus,
    SoakVerdict,
    Start,
    Tick,
    failure_counts,
    step,
    summary,
)
from edgeops.rollout import engine as engine_module
from edgeops.rollout import plan as plan_module

K = NotifyKind
S = RolloutStatus
D = DeviceStatus


def make_plan(n: int = 20, **overrides) -> RolloutPlan:
    """20 devices d00..d19 in 5 % / 25 % / 100 % stages; every device had a model before."""
    devices = tuple(f"d{i:02}" for i in range(n))
    fields = {
        "id": "r1",
        "devices": devices,
        "stages": (0.05, 0.25, 1.0),
        "max_failures": 0.2,
        "stage_wait": 60.0,
        "timeout": 30.0,
        "retries": 1,
        "previous": dict.fromkeys(devices, True),
    }
    fields.update(overrides)
    return RolloutPlan(**fields)


class Run:
    """Drives the engine the way the adapter does, with a fleet-wide seq counter."""

    def __init__(self, plan: RolloutPlan) -> None:
        self.plan = plan
        self.state = RolloutState.initial(plan)
        self.now = 0.0
        self.last_seq = 100
        self.seqs: dict[str, int] = {}

    def send(self, event: Event, at: float | None = None) -> list[Command]:
        if at is not None:
            self.now = at
        self.state, commands = step(self.plan, self.state, event, self.now)
        return commands

    def publish(self, commands: list[Command], at: float | None = None) -> list[Command]:
        """Answer every Deploy and Revert with Deployed (a new seq each); what that returns."""
        out: list[Command] = []
        for c in commands:
            if isinstance(c, (Deploy, Revert)):
                self.last_seq += 1
                self.seqs[c.device] = self.last_seq
                out += self.send(Deployed(c.device, self.last_seq), at)
        return out

    def report(self, device: str, kind: str = "activated", at: float | None = None, reason=""):
        return self.send(DeviceReport(device, self.seqs[device], kind, reason), at)

    def activate(self, devices, at: float | None = None) -> list[Command]:
        out: list[Command] = []
        for d in devices:
            out += self.report(d, "activated", at)
        return out

    def status(self, device: str) -> DeviceStatus:
        return self.state.devices[device].status

    def with_status(self, status: DeviceStatus) -> list[str]:
        return [d for d in self.plan.devices if self.status(d) is status]


def actions(commands: list[Command]) -> list[Command]:
    return [c for c in commands if not isinstance(c, Notify)]


def kinds(commands: list[Command]) -> list[str]:
    return [c.kind.value for c in commands if isinstance(c, Notify)]


def devs(*numbers: int) -> list[str]:
    return [f"d{i:02}" for i in numbers]


def through_stage_1(run: Run) -> list[Command]:
    """Start, activate d00, soak, activate d01..d04, soak: stage 2's commands (at t=200)."""
    run.publish(run.send(Start(), at=0.0))
    run.report("d00", at=5.0)
    run.publish(run.send(Tick(), at=65.0))
    run.activate(devs(1, 2, 3, 4), at=70.0)
    commands = run.send(Tick(), at=200.0)
    run.publish(commands)
    return commands


# --- the plan ------------------------------------------------------------------


def test_stage_sizes_round_up_and_never_start_empty():
    assert make_plan().stage_sizes() == (1, 5, 20)
    assert make_plan(n=100, stages=(0.07, 1.0)).stage_sizes() == (7, 100)  # 7.000000000000001
    assert make_plan(n=3, stages=(0.01, 0.3, 1.0)).stage_sizes() == (1, 1, 3)
    assert make_plan().stage_devices(1) == tuple(devs(1, 2, 3, 4))
    assert make_plan().stage_of("d05") == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"devices": ()}, "no target devices"),
        ({"devices": ("a", "a")}, "twice"),
        ({"stages": (0.5, 0.25, 1.0)}, "increase strictly"),
        ({"stages": (0.5, 0.9)}, "end at 1.0"),
        ({"stages": (0.0, 1.0)}, "fractions"),
        ({"max_failures": 1.5}, "max_failures"),
        ({"timeout": 0.0}, "timeout"),
        ({"stage_wait": float("inf")}, "stage_wait"),
        ({"retries": -1}, "retries"),
        ({"retries": 1000}, "retries"),
        ({"previous": {"nope": True}}, "not targets"),
        ({"previous": {"d00": "yes"}}, "true or false"),
    ],
)
def test_plan_refuses_bad_values(overrides, message):
    with pytest.raises(InvalidInput, match=message):
        make_plan(**overrides)


def test_plan_round_trips_and_refuses_newer_formats():
    plan = make_plan(require_soak_verdict=True, previous={"d03": False})
    data = json.loads(json.dumps(plan.to_dict()))
    assert RolloutPlan.from_dict(data) == plan
    assert not RolloutPlan.from_dict(data).can_revert("d04")  # missing means no previous model
    with pytest.raises(InvalidInput, match="upgrade edgeops"):
        RolloutPlan.from_dict({**data, "format": 2})


# --- stages --------------------------------------------------------------------


def test_three_stages_over_20_devices_complete():
    run = Run(make_plan())
    commands = run.send(Start(), at=0.0)
    assert commands == [
        Notify(K.STAGE_STARTED, "stage 0: 1 new devices, 1 of 20 in all"),
        Deploy("d00", 1),
    ]
    assert run.publish(commands, at=1.0) == []
    assert run.state.devices["d00"].deadline == 31.0  # restarted by Deployed
    assert run.report("d00", "downloading", at=2.0) == []
    assert run.report("d00", at=5.0) == [
        Notify(K.STAGE_COMPLETED, "stage 0: 1 activated"),
        Notify(K.SOAK_STARTED, "stage 0: until 65"),
    ]
    assert (run.state.status, run.state.soak_until) == (S.SOAKING, 65.0)
    assert run.send(Tick(), at=64.9) == []  # the soak is respected

    commands = run.send(Tick(), at=65.0)
    assert commands == [
        Notify(K.STAGE_STARTED, "stage 1: 4 new devices, 5 of 20 in all"),
        *[Deploy(d, 1) for d in devs(1, 2, 3, 4)],
    ]
    assert (run.state.status, run.state.stage, run.state.stage_started_at) == (S.RUNNING, 1, 65.0)
    run.publish(commands)
    assert run.activate(devs(1, 2, 3)) == []
    assert kinds(run.report("d04")) == ["stage_completed", "soak_started"]

    commands = run.send(Tick(), at=125.0)
    assert actions(commands) == [Deploy(d, 1) for d in devs(*range(5, 20))]
    assert run.with_status(D.DEPLOYING) == devs(*range(5, 20))
    assert run.with_status(D.PENDING) == []
    run.publish(commands)
    assert run.activate(devs(*range(5, 19))) == []
    assert run.report("d19") == [
        Notify(K.STAGE_COMPLETED, "stage 2: 20 activated"),
        Notify(K.COMPLETED, "20 activated"),
    ]
    assert run.state.status is S.COMPLETED
    assert run.with_status(D.ACTIVATED) == list(run.plan.devices)
    assert run.send(Tick(), at=1e6) == [] and run.send(Abort()) == []


def test_a_stage_that_rounding_empties_is_skipped():
    run = Run(make_plan(n=3, stages=(0.01, 0.3, 1.0), stage_wait=0.0))
    run.publish(run.send(Start(), at=0.0))
    commands = run.report("d00", at=1.0)
    assert commands == [
        Notify(K.STAGE_COMPLETED, "stage 0: 1 activated"),
        Notify(K.SOAK_STARTED, "stage 0: until 1"),
        Notify(K.STAGE_SKIPPED, "stage 1 adds no devices"),
        Notify(K.STAGE_STARTED, "stage 2: 2 new devices, 3 of 3 in all"),
        Deploy("d01", 1),
        Deploy("d02", 1),
    ]
    assert run.state.stage == 2


# --- failures --------------------------------------------------------------------


def test_failures_up_to_the_threshold_continue():
    run = Run(make_plan())
    through_stage_1(run)
    run.report("d05", "failed", reason="health check: atol")
    run.report("d06", "rejected", reason="seq replay")
    run.report("d07", "activated")
    run.report("d07", "rolled_back", reason="error rate 0.3")  # probation gave up
    run.report("d08", "failed")
    assert failure_counts(run.plan, run.state) == (4, 20)  # 0.2 is not over 0.2
    assert run.state.status is S.RUNNING
    run.activate(devs(*range(9, 20)))
    assert run.state.status is S.COMPLETED
    assert run.state.devices["d06"].reason == "rejected: seq replay"
    assert run.state.devices["d07"].reason == "rolled back on the device: error rate 0.3"
    assert summary(run.plan, run.state)["counts"] == {
        **dict.fromkeys((s.value for s in DeviceStatus), 0),
        "activated": 16,
        "failed": 3,
        "rolled_back": 1,
    }


def test_a_failure_over_the_threshold_aborts_mid_stage_and_reverts_what_may_run_the_new_model():
    previous = dict.fromkeys(devs(*range(20)), True) | {"d03": False}
    run = Run(make_plan(previous=previous))
    through_stage_1(run)
    run.activate(devs(5, 6, 7, 8, 9), at=210.0)
    for d in devs(10, 11, 12, 13):
        assert run.report(d, "failed", reason="latency") == []
    commands = run.report("d14", "failed", reason="latency", at=220.0)  # 5/20 > 0.2
    assert commands == [
        Notify(K.ABORTING, "5 of 20 devices failed (25%), over max_failures 20%"),
        Revert("d00", 1),
        Revert("d01", 1),
        Revert("d02", 1),
        Notify(K.NOT_REVERTED, "d03 had no model before this rollout; it keeps the new one"),
        Revert("d04", 1),
        *[Revert(d, 1) for d in devs(5, 6, 7, 8, 9)],  # activated
        *[Revert(d, 1) for d in devs(15, 16, 17, 18, 19)],  # still in flight
    ]
    assert run.state.status is S.ABORTING
    assert run.with_status(D.FAILED) == devs(10, 11, 12, 13, 14)  # never left their old model
    assert run.state.devices["d15"].outcome is None
    assert run.state.devices["d05"].outcome is D.ACTIVATED

    run.publish(commands, at=221.0)
    assert run.report("d15", "activated", at=222.0) == []  # the revert manifest took
    for d in devs(0, 1, 2, 4, 5, 6, 7, 8, 9, 16, 17):
        run.report(d, "activated")
    run.report("d19", "failed", reason="no space")
    assert run.send(Tick(), at=250.9) == []
    assert run.send(Tick(), at=251.0) == [  # d18 is silent
        Notify(K.RETRY, "d18: no answer in 30s; attempt 2"),
        Revert("d18", 2),
    ]
    assert run.send(Tick(), at=281.0) == [
        Notify(K.REVERT_FAILED, "d18: no answer in 30s, 2 attempts"),
        Notify(K.ABORTED, "5 of 20 devices failed (25%), over max_failures 20%"),
    ]
    assert run.state.status is S.ABORTED
    assert run.with_status(D.REVERTED) == devs(0, 1, 2, 4, 5, 6, 7, 8, 9, 15, 16, 17)
    assert run.with_status(D.REVERT_FAILED) == ["d18", "d19"]
    assert run.state.devices["d19"].reason == "revert failed: no space"
    assert run.with_status(D.NOT_REVERTED) == ["d03"]
    assert run.state.reason == "5 of 20 devices failed (25%), over max_failures 20%"


def test_a_failed_canary_aborts_with_nothing_to_revert():
    run = Run(make_plan())
    run.publish(run.send(Start(), at=0.0))
    commands = run.report("d00", "failed", reason="load error", at=3.0)
    assert kinds(commands) == ["aborting", "aborted"] and actions(commands) == []
    assert run.state.status is S.ABORTED
    assert run.state.devices["d00"].reason == "load error"


def test_a_revert_that_stays_silent_is_retried_then_revert_failed():
    run = Run(make_plan(n=2, stages=(1.0,), max_failures=1.0))
    run.publish(run.send(Start(), at=0.0))
    run.activate(["d00", "d01"])
    run.publish(run.send(Rollback("bad accuracy"), at=100.0))
    run.report("d00", at=101.0)
    assert run.send(Tick(), at=131.0) == [
        Notify(K.RETRY, "d01: no answer in 30s; attempt 2"),
        Revert("d01", 2),
    ]
    assert run.send(Tick(), at=161.0) == [
        Notify(K.REVERT_FAILED, "d01: no answer in 30s, 2 attempts"),
        Notify(K.ROLLED_BACK, "bad accuracy"),
    ]
    assert run.state.status is S.ROLLED_BACK


# --- timeouts and seqs -----------------------------------------------------------


def test_timeouts_retry_then_time_out_and_a_late_activation_counts():
    run = Run(make_plan(retries=2, max_failures=1.0))
    run.publish(run.send(Start(), at=0.0), at=1.0)
    first_seq = run.seqs["d00"]
    assert run.send(Tick(), at=30.9) == []
    assert run.send(Tick(), at=31.0) == [
        Notify(K.RETRY, "d00: no answer in 30s; attempt 2"),
        Deploy("d00", 2),
    ]
    # The adapter never answers attempt 2: its deadline runs from the command.
    assert run.send(Tick(), at=61.0) == [
        Notify(K.RETRY, "d00: no answer in 30s; attempt 3"),
        Deploy("d00", 3),
    ]
    run.publish([Deploy("d00", 3)], at=62.0)
    assert run.send(Tick(), at=91.9) == []
    assert run.send(Tick(), at=92.0) == [
        Notify(K.DEVICE_TIMED_OUT, "d00: no answer in 30s, 3 attempts"),
        Notify(K.STAGE_COMPLETED, "stage 0: 1 timed_out"),
        Notify(K.SOAK_STARTED, "stage 0: until 152"),
    ]
    assert run.state.devices["d00"].attempt == 3
    assert failure_counts(run.plan, run.state) == (1, 1)

    assert run.send(DeviceReport("d00", first_seq, "activated"), at=100.0) == []  # stale
    assert run.report("d00", at=101.0) == [
        Notify(K.LATE_ACTIVATION, "d00 activated after timing out")
    ]
    assert run.status("d00") is D.ACTIVATED
    assert failure_counts(run.plan, run.state) == (0, 1)


def test_an_activation_for_the_previous_attempt_still_counts_until_the_new_seq_is_known():
    run = Run(make_plan(max_failures=1.0))
    run.publish(run.send(Start(), at=0.0))
    seq = run.seqs["d00"]
    run.send(Tick(), at=30.0)  # retry sent, no Deployed yet
    run.send(DeviceReport("d00", seq, "activated"), at=31.0)
    assert run.status("d00") is D.ACTIVATED
    assert run.send(Deployed("d00", seq + 5), at=32.0) == []  # no longer awaited
    assert run.state.devices["d00"].seq == seq


def test_a_timeout_over_the_threshold_aborts_and_reverts_the_silent_device():
    run = Run(make_plan(retries=0))
    run.publish(run.send(Start(), at=0.0))
    commands = run.send(Tick(), at=30.0)
    assert commands == [
        Notify(K.DEVICE_TIMED_OUT, "d00: no answer in 30s, 1 attempts"),
        Notify(K.ABORTING, "1 of 1 devices failed (100%), over max_failures 20%"),
        Revert("d00", 1),  # its retained manifest would still install the new model
    ]
    assert run.state.devices["d00"].outcome is D.TIMED_OUT


def test_stale_duplicate_and_unknown_events_are_ignored():
    run = Run(make_plan())
    run.send(Start(), at=0.0)
    assert run.send(DeviceReport("d00", 7, "activated")) == []  # before any Deployed
    run.publish([Deploy("d00", 1)], at=1.0)
    seq = run.seqs["d00"]
    before = run.state
    for event in [
        DeviceReport("d00", seq - 1, "failed"),
        DeviceReport("d00", seq + 1, "activated"),
        Deployed("d00", seq),  # a duplicate answer
        Deployed("d00", seq - 3),
        DeviceReport("d00", seq, "verified"),
        DeviceReport("ghost", seq, "failed"),
        Deployed("ghost", 999),
        Deployed("d07", 999),  # a target not deploying yet
        SoakVerdict(stage=4, ok=False),  # a stage not reached
        Resume(),  # not paused
        Start(),  # already started
    ]:
        assert run.send(event, at=2.0) == []
    assert run.state == dataclasses.replace(before, clock=2.0)


def test_time_never_runs_backwards():
    run = Run(make_plan())
    run.publish(run.send(Start(), at=0.0))
    run.send(Tick(), at=20.0)
    assert run.send(Tick(), at=5.0) == [] and run.state.clock == 20.0
    assert actions(run.send(Tick(), at=30.0)) == [Deploy("d00", 2)]


# --- pause -----------------------------------------------------------------------


def test_pause_holds_the_next_stage_until_resume():
    run = Run(make_plan())
    run.publish(run.send(Start(), at=0.0))
    run.report("d00", at=5.0)
    assert run.send(Pause(), at=10.0) == [Notify(K.PAUSED, "stage 0")]
    assert run.send(Tick(), at=500.0) == []
    assert run.state.status is S.PAUSED
    commands = run.send(Resume(), at=600.0)
    assert commands[0] == Notify(K.RESUMED, "stage 0")
    assert actions(commands) == [Deploy(d, 1) for d in devs(1, 2, 3, 4)]
    assert (run.state.status, run.state.stage_started_at) == (S.RUNNING, 600.0)


def test_pause_holds_retries_but_not_timeouts_or_reports():
    run = Run(make_plan(max_failures=1.0))
    through_stage_1(run)  # d05..d19 deploying since t=200, retries=1
    run.send(Pause(), at=201.0)
    run.activate(["d05"], at=202.0)
    assert run.send(Tick(), at=240.0) == []  # deadlines passed; retries held
    assert run.state.devices["d06"].attempt == 1
    commands = run.send(Resume(), at=300.0)
    assert actions(commands) == [Deploy(d, 2) for d in devs(*range(6, 20))]
    assert run.state.devices["d06"].deadline == 330.0

    run.send(Pause(), at=301.0)
    commands = run.send(Tick(), at=340.0)  # no attempts left: timed out even while paused
    assert kinds(commands) == ["device_timed_out"] * 14 + ["stage_completed", "completed"]
    assert run.state.status is S.COMPLETED


def test_abort_and_rollback_work_while_paused():
    run = Run(make_plan())
    run.publish(run.send(Start(), at=0.0))
    run.send(Pause(), at=1.0)
    assert actions(run.send(Abort("operator"), at=2.0)) == [Revert("d00", 1)]
    assert run.state.status is S.ABORTING
    assert run.send(Rollback(), at=3.0) == []  # already reverting


# --- soak verdicts ---------------------------------------------------------------


def test_a_required_verdict_ends_the_soak_and_a_premature_one_does_not():
    run = Run(make_plan(require_soak_verdict=True))
    run.publish(run.send(Start(), at=0.0))
    assert run.send(SoakVerdict(0, ok=True), at=1.0) == []  # before the soak: ignored
    assert run.report("d00", at=5.0)[-1] == Notify(
        K.SOAK_STARTED, "stage 0: until 65 and a passing verdict"
    )
    assert run.send(Tick(), at=100.0) == []
    assert run.state.status is S.SOAKING
    commands = run.send(SoakVerdict(0, ok=True, reason="psi 0.02"), at=101.0)
    assert actions(commands) == [Deploy(d, 1) for d in devs(1, 2, 3, 4)]


def test_an_early_verdict_waits_for_the_soak_time():
    run = Run(make_plan(require_soak_verdict=True))
    run.publish(run.send(Start(), at=0.0))
    run.report("d00", at=5.0)
    assert run.send(SoakVerdict(0, ok=True), at=10.0) == []
    assert actions(run.send(Tick(), at=65.0)) == [Deploy(d, 1) for d in devs(1, 2, 3, 4)]


def test_a_failing_verdict_aborts():
    run = Run(make_plan(require_soak_verdict=True))
    run.publish(run.send(Start(), at=0.0))
    run.report("d00", at=5.0)
    commands = run.send(SoakVerdict(0, ok=False, reason="psi 0.4 on ax"), at=30.0)
    assert commands == [
        Notify(K.ABORTING, "soak verdict for stage 0 failed: psi 0.4 on ax"),
        Revert("d00", 1),
    ]


# --- rollback, terminal states ---------------------------------------------------


def test_operator_rollback_after_completion():
    previous = {"d00": True, "d01": True, "d02": True, "d03": False}
    run = Run(
        make_plan(n=4, stages=(0.5, 1.0), stage_wait=0.0, max_failures=0.25, previous=previous)
    )
    run.publish(run.send(Start(), at=0.0))
    run.publish(run.activate(["d00", "d01"], at=1.0))
    run.report("d02", "failed", at=2.0)
    run.report("d03", at=2.0)
    assert run.state.status is S.COMPLETED

    commands = run.send(Rollback("accuracy dropped"), at=1000.0)
    assert commands == [
        Notify(K.ROLLING_BACK, "accuracy dropped"),
        Revert("d00", 1),
        Revert("d01", 1),
        Notify(K.NOT_REVERTED, "d03 had no model before this rollout; it keeps the new one"),
    ]
    run.publish(commands, at=1001.0)
    run.report("d00", at=1002.0)
    assert run.report("d01", at=1003.0) == [Notify(K.ROLLED_BACK, "accuracy dropped")]
    assert run.state.status is S.ROLLED_BACK
    assert [run.status(d) for d in run.plan.devices] == [
        D.REVERTED,
        D.REVERTED,
        D.FAILED,
        D.NOT_REVERTED,
    ]
    final = run.state
    for event in [Tick(), Start(), Rollback(), Abort(), Resume(), DeviceReport("d00", 1, "failed")]:
        assert run.send(event, at=5000.0) == []
        assert run.state is final


def test_abort_before_start_ends_at_once():
    run = Run(make_plan())
    assert kinds(run.send(Abort("changed my mind"), at=0.0)) == ["aborting", "aborted"]
    assert run.send(Start(), at=1.0) == []
    assert summary(run.plan, run.state)["started"] == 0


# --- storage ---------------------------------------------------------------------


def test_a_stored_state_resumes_identically():
    run = Run(make_plan(max_failures=0.5))
    through_stage_1(run)
    run.activate(devs(5, 6), at=201.0)
    run.report("d07", "failed", at=202.0)
    run.send(Tick(), at=230.0)  # retries for d08..d19
    run.publish([Deploy(d, 2) for d in devs(8, 9, 10)], at=231.0)
    stored = json.dumps(run.state.to_dict(), allow_nan=False)
    resumed = RolloutState.from_dict(json.loads(stored))
    assert resumed == run.state

    later: list[tuple[Event, float]] = [
        (DeviceReport("d08", run.seqs["d08"], "activated"), 232.0),
        (DeviceReport("d09", run.seqs["d09"] - 1, "failed"), 233.0),
        (Pause(), 234.0),
        (Tick(), 261.0),
        (Resume(), 262.0),
        (DeviceReport("d10", run.seqs["d10"], "rolled_back", "nan outputs"), 263.0),
        (Abort("enough"), 264.0),
        (Tick(), 400.0),  # reverts retried
        (Tick(), 500.0),  # and given up
    ]
    a, b = run.state, resumed
    for event, now in later:
        a, commands_a = step(run.plan, a, event, now)
        b, commands_b = step(run.plan, b, event, now)
        assert commands_a == commands_b
        assert a.to_dict() == b.to_dict()
    assert (a.status, a.reason) == (
        S.ABORTED,
        "12 of 20 devices failed (60%), over max_failures 50%",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "upgrade edgeops"),
        ({"format": None}, "format"),
        ({"status": "exploded"}, "unknown status"),
        ({"clock": "noon"}, "clock"),
        ({"devices": {"d00": {"status": "pending"}}}, "attempt"),
        ({"devices": []}, "devices"),
    ],
)
def test_a_damaged_state_is_refused(change, message):
    data = RolloutState.initial(make_plan()).to_dict() | change
    with pytest.raises(InvalidInput, match=message):
        RolloutState.from_dict(data)


def test_a_state_from_another_plan_or_a_bad_time_is_refused():
    state = RolloutState.initial(make_plan())
    with pytest.raises(InvalidInput, match="does not match"):
        step(make_plan(n=3), state, Tick(), 0.0)
    with pytest.raises(InvalidInput, match="finite"):
        step(make_plan(), state, Tick(), float("nan"))
    with pytest.raises(TypeError):
        step(make_plan(), state, "tick", 0.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="seq"):
        Deployed("d00", 0)
    with pytest.raises(InvalidInput, match="unknown device event"):
        DeviceReport("d00", 1, "exploded")


def test_summary_for_the_status_view():
    run = Run(make_plan())
    through_stage_1(run)
    run.report("d05", "failed", at=201.0)
    assert summary(run.plan, run.state) | {"counts": None} == {
        "rollout": "r1",
        "status": "running",
        "stage": 2,
        "stages": 3,
        "stage_sizes": [1, 5, 20],
        "stage_started_at": 200.0,
        "soak_until": None,
        "devices": 20,
        "started": 20,
        "failures": 1,
        "failure_ratio": 0.05,
        "max_failures": 0.2,
        "counts": None,
        "reason": "",
    }
    counts = summary(run.plan, run.state)["counts"]
    assert (counts["activated"], counts["failed"], counts["deploying"]) == (5, 1, 14)


def test_public_names_and_docstring_examples():
    assert sorted(edgeops.rollout.__all__) == sorted(
        [
            "PLAN_FORMAT",
            "REPORT_KINDS",
            "STATE_FORMAT",
            "Abort",
            "Command",
            "Deploy",
            "Deployed",
            "DeviceReport",
            "DeviceState",
            "DeviceStatus",
            "Event",
            "Notify",
            "NotifyKind",
            "Pause",
            "Resume",
            "Revert",
            "Rollback",
            "RolloutPlan",
            "RolloutState",
            "RolloutStatus",
            "SoakVerdict",
            "Start",
            "Tick",
            "failure_counts",
            "step",
            "summary",
        ]
    )
    for module in (engine_module, plan_module):
        assert doctest.testmod(module).failed == 0


def test_the_engine_imports_only_the_standard_library():
    import ast
    import sys
    from pathlib import Path

    package = Path(engine_module.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue  # relative imports: the rollout package and edgeops.errors
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, (path.name, name)


# --- random event storms ---------------------------------------------------------

FORWARD = {S.RUNNING, S.SOAKING, S.PAUSED}
REVERTING = {S.ABORTING, S.ROLLING_BACK}
STOPPED = {S.ABORTED, S.ROLLED_BACK}
FINAL = {D.ACTIVATED, D.FAILED, D.TIMED_OUT, D.ROLLED_BACK}


@st.composite
def plans(draw) -> RolloutPlan:
    n = draw(st.integers(1, 8))
    devices = tuple(f"d{i}" for i in range(n))
    cuts = draw(st.sets(st.sampled_from([0.05, 0.2, 0.25, 0.5, 0.75]), max_size=3))
    return RolloutPlan(
        id="p",
        devices=devices,
        stages=(*sorted(cuts), 1.0),
        max_failures=draw(st.sampled_from([0.0, 0.2, 0.5, 1.0])),
        stage_wait=draw(st.sampled_from([0.0, 10.0])),
        timeout=draw(st.sampled_from([5.0, 20.0])),
        retries=draw(st.integers(0, 2)),
        previous={d: draw(st.booleans()) for d in devices},
        require_soak_verdict=draw(st.booleans()),
    )


# Weights: mostly the traffic a healthy rollout sees, some noise, rare operator stops.
ACTIONS = {
    "tick": 10,
    "deployed": 12,
    "report": 16,
    "stale": 2,
    "ghost": 2,
    "backwards": 1,
    "start": 1,
    "pause": 2,
    "resume": 3,
    "verdict": 3,
}
STOPS = {"abort": 1, "rollback": 1}
KINDS = ["activated"] * 5 + ["failed", "rejected", "rolled_back", "downloading", "verified"]


def _event(data, plan: RolloutPlan, sim: dict) -> tuple[Event, float]:
    """One random event, mostly plausible (answers to commands, reports on the right seq)."""
    action = data.draw(st.sampled_from(sim["actions"]))
    if action == "tick":
        sim["now"] += data.draw(st.sampled_from([0.0, 1.0, 5.0, 20.0, 100.0]))
        return Tick(), sim["now"]
    if action == "backwards":
        return Tick(), sim["now"] - 7.0
    if action == "deployed" and sim["unanswered"]:
        device = data.draw(st.sampled_from(sorted(sim["unanswered"])))
        sim["unanswered"].discard(device)
        sim["seq"] += 1
        sim["seqs"][device] = sim["seq"]
        return Deployed(device, sim["seq"]), sim["now"]
    if action in ("report", "stale") and sim["seqs"]:
        device = data.draw(st.sampled_from(sorted(sim["seqs"])))
        seq = sim["seqs"][device] - (1 if action == "stale" else 0)
        kind = data.draw(st.sampled_from(KINDS))
        return DeviceReport(device, max(seq, 1), kind, "r"), sim["now"]
    if action == "ghost":
        return data.draw(
            st.sampled_from([Deployed("ghost", 5), DeviceReport("ghost", 5, "failed")])
        ), sim["now"]
    if action == "verdict":
        stage = data.draw(st.integers(0, len(plan.stages)))
        return SoakVerdict(stage, data.draw(st.sampled_from([True] * 4 + [False])), "v"), sim["now"]
    simple = {"start": Start(), "pause": Pause(), "resume": Resume()}
    simple |= {"abort": Abort("a"), "rollback": Rollback("b")}
    return simple.get(action, Tick()), sim["now"]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(plan=plans(), data=st.data())
def test_random_event_storms_keep_the_invariants(plan, data):
    state = RolloutState.initial(plan)
    deploys: collections.Counter[str] = collections.Counter()
    reverts: collections.Counter[str] = collections.Counter()
    weights = ACTIONS | (STOPS if data.draw(st.booleans()) else {})
    actions = [name for name, weight in weights.items() for _ in range(weight)]
    sim: dict = {"now": 0.0, "seq": 0, "seqs": {}, "unanswered": set(), "actions": actions}
    if data.draw(st.sampled_from([True] * 9 + [False])):
        state, commands = step(plan, state, Start(), 0.0)
        deploys.update(c.device for c in commands if isinstance(c, Deploy))
        sim["unanswered"] |= set(deploys)
    for _ in range(data.draw(st.integers(10, 150))):
        incoming, now = _event(data, plan, sim)
        before, before_dict = state, state.to_dict()
        state, commands = step(plan, before, incoming, now)

        assert before.to_dict() == before_dict  # the input is untouched
        stored = json.loads(json.dumps(state.to_dict(), allow_nan=False))
        assert RolloutState.from_dict(stored) == state
        if before.status in STOPPED:
            assert commands == [] and state is before
        for c in commands:
            if isinstance(c, Deploy):
                deploys[c.device] += 1
                assert c.attempt == deploys[c.device] <= 1 + plan.retries
                assert plan.stage_of(c.device) <= state.stage
                assert state.status in FORWARD
                assert not (before.status is S.PAUSED and state.status is S.PAUSED)
                if c.attempt == 1:
                    assert before.devices[c.device].status is D.PENDING
            if isinstance(c, Revert):
                reverts[c.device] += 1
                assert c.attempt == reverts[c.device] <= 1 + plan.retries
                assert state.status in REVERTING | STOPPED
            if isinstance(c, (Deploy, Revert)):
                sim["unanswered"].add(c.device)

        if before.stage_started_at is not None and state.stage > before.stage:
            # A next stage starts only after the soak time (and a passing verdict), not paused.
            assert before.status is not S.PAUSED or isinstance(incoming, Resume)
            if before.soak_until is None:  # the stage ended in this very step
                assert plan.stage_wait == 0 and not plan.require_soak_verdict
            else:
                assert max(now, before.clock) >= before.soak_until
                verdict = SoakVerdict(before.stage, True, "v")
                assert not plan.require_soak_verdict or before.verdict_ok or incoming == verdict
        if before.status not in REVERTING | STOPPED and state.status in REVERTING | STOPPED:
            # Revert exactly the devices that may run the new model and had one before.
            may_run_new = {
                d
                for d in plan.devices
                if deploys[d] and state.devices[d].outcome not in (D.FAILED, D.ROLLED_BACK)
            }
            reverted = {c.device for c in commands if isinstance(c, Revert)}
            assert reverted == {d for d in may_run_new if plan.can_revert(d)}
            for d in may_run_new - reverted:
                assert state.devices[d].status is D.NOT_REVERTED
        if state.status not in REVERTING | STOPPED:
            assert not reverts
        for d, ds in state.devices.items():
            assert (ds.status is D.PENDING) == (deploys[d] == 0)
        failures, started = failure_counts(plan, state)
        if state.status in FORWARD | {S.COMPLETED}:
            assert failures <= plan.max_failures * started + 1e-9
        if state.status is S.COMPLETED:
            assert all(ds.status in FINAL for ds in state.devices.values())
        if state.status in STOPPED:
            for d, ds in state.devices.items():
                assert ds.status not in (D.DEPLOYING, D.REVERTING)
                if reverts[d]:
                    assert ds.status in (D.REVERTED, D.REVERT_FAILED)
    hypothesis.event(f"ended {state.status.value}")
