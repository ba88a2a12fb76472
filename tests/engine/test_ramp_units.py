"""flags.ramp and its guards without a stack: parsing, verdicts, holds, resume, rollback.

The flag store is an in-memory stand-in for `rollout.adapters.flags` (the real one is driven
end to end in test_flag_ramp.py); measurements come from scripted sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rollout.adapters import flags as real_flags
from rollout.checks import guard_sources
from rollout.errors import StepFailed, TargetError
from rollout.steps import KINDS, StepContext, ramp
from rollout.steps.guards import Guard, GuardParams
from rollout.steps.ramp import FlagsRamp, RampParams


@dataclass
class FakeTarget:
    kind: str = "local"
    db_url: str = "postgresql://nobody@127.0.0.1:9/none?sslmode=disable&connect_timeout=1"
    api_url: str = "http://127.0.0.1:9"


@dataclass
class FakeFlags:
    """The few calls the ramp makes, on one flag; every change is kept like the audit."""

    percentage: int = 0
    audit: list[tuple[int, int, str]] = field(default_factory=list)

    def get_flag(self, url: str, name: str) -> real_flags.Flag:
        return real_flags.Flag(name, self.percentage, "salt", None)

    def set_flag(self, url: str, name: str, percentage: int, *, actor: str, reason: str | None,
                 allow_decrease: bool) -> real_flags.FlagChange:
        assert allow_decrease or percentage >= self.percentage
        before, self.percentage = self.percentage, percentage
        self.audit.append((before, percentage, reason or ""))
        return real_flags.FlagChange(name, before, percentage, percentage, 100)

    def kill(self, url: str, name: str, *, actor: str, reason: str) -> real_flags.FlagChange:
        return self.set_flag(url, name, 0, actor=actor, reason=reason, allow_decrease=True)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeFlags:
    fake = FakeFlags()
    monkeypatch.setattr(ramp, "flags", fake)
    return fake


def scripted(monkeypatch: pytest.MonkeyPatch, values: list[float | Exception],
             calls: list[str] | None = None) -> None:
    """The `pending-reports` source answers `values` in order (the last one forever)."""

    def build(target: Any, options: Any) -> guard_sources.Measure:
        def measure() -> float:
            value = values.pop(0) if len(values) > 1 else values[0]
            if calls is not None:
                calls.append("measure")
            if isinstance(value, Exception):
                raise value
            return value
        return measure

    monkeypatch.setitem(guard_sources.SOURCES, "pending-reports",
                        guard_sources.Source(guard_sources.ReportOptions, build))


@dataclass
class Recorder:
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)


def context(recorder: Recorder, resume: dict[str, Any] | None = None,
            can_ask: bool = True) -> StepContext:
    def ask(gate: str, message: str, timeout: float) -> str:
        recorder.asked.append((gate, message))
        return "oncall"

    return StepContext(
        target=FakeTarget(), run_id="0123456789", environment="test", operator="pytest",  # type: ignore[arg-type]
        artifacts=Path("/tmp"), root=Path("/tmp"),
        wait_for_approval=ask if can_ask else None,
        checkpoint=lambda detail, milestone: recorder.checkpoints.append(dict(detail))
        if milestone else None,
        resume_detail=resume)


def make(steps: list[int], guards: list[dict[str, Any]], **extra: Any) -> FlagsRamp:
    params = RampParams.model_validate({"flag": "f", "steps": steps, "dwell": "0.2s",
                                        "guards": guards, **extra})
    return FlagsRamp("ramp", params)


REPORTS = {"source": "pending-reports", "failure": "> 20", "interval": "0.05s"}


# ---- parsing -------------------------------------------------------------------------------


def test_guard_names_default_to_the_source_and_are_validated() -> None:
    assert GuardParams.model_validate({"source": "pending-reports",
                                       "failure": "> 20"}).name == "pending-reports"
    options = GuardParams.model_validate({"source": "health-p99", "with": {"samples": 3},
                                          "failure": "> 800", "interval": "30s"})
    assert options.options == {"samples": 3}
    for bad in ({"query": "select 1", "failure": "> 1"},                     # no name
                {"name": "x", "failure": "> 1"},                             # no source
                {"name": "x", "query": "select 1", "url": "http://x", "failure": "> 1"},
                {"name": "x", "query": "select 1", "failure": "above 1"},    # condition
                {"name": "x", "query": "select 1", "failure": "> 1", "interval": "1 minute"},
                {"name": "x", "query": "select 1", "failure": "> 1", "failure_limit": 0},
                {"name": "x", "query": "select 1", "failure": "> 1", "with": {"a": 1}},
                {"source": "health-p99", "with": {"sample": 3}, "failure": "> 1"},
                {"source": "gateway-error", "failure": "> 1"}):
        with pytest.raises(ValidationError):
            GuardParams.model_validate(bad)


def test_ramp_steps_rise_and_durations_are_checked() -> None:
    assert "flags.ramp" in KINDS
    base = {"steps": [5, 25, 100], "dwell": "30m"}
    RampParams.model_validate(base)
    for bad in ({**base, "steps": [5, 5]}, {**base, "steps": [50, 25]}, {**base, "steps": [0]},
                {**base, "steps": [101]}, {**base, "dwell": "30 mins"},
                {**base, "on_breach": "rollback"},
                {**base, "guards": [REPORTS, REPORTS]}):
        with pytest.raises(ValidationError):
            RampParams.model_validate(bad)


# ---- guards ----------------------------------------------------------------------------------


def test_a_breach_takes_consecutive_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [30, 1, 30, 30, 40])
    guard = Guard(GuardParams.model_validate({**REPORTS, "failure_limit": 2}), FakeTarget())  # type: ignore[arg-type]
    assert [guard.check() for _ in range(4)] == ["failing", "ok", "failing", "breach"]
    assert guard.failing_values() == [30, 30]


def test_an_unreachable_source_is_inconclusive_not_a_pass() -> None:
    for params in ({"name": "sql", "query": "select 1", "failure": "> 0"},
                   {"name": "http", "url": "http://127.0.0.1:9/x", "json_field": "a",
                    "failure": "> 0"}):
        guard = Guard(GuardParams.model_validate(params), FakeTarget())  # type: ignore[arg-type]
        assert guard.check() == "inconclusive"
        assert str(guard.values[-1]).startswith("error: ")
        assert guard.failures == 0


def test_source_not_on_this_target_refuses_the_run() -> None:
    params = GuardParams.model_validate({"source": "rpc-errors", "failure": "> 0.01"})
    with pytest.raises(Exception, match="not available on a supabase target"):
        Guard(params, FakeTarget(kind="supabase"))  # type: ignore[arg-type]


def test_p99_and_rpc_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert guard_sources.p99([5.0]) == 5.0
    assert guard_sources.p99([float(i) for i in range(1, 101)]) == 99.0
    samples = iter([{"rpc_requests": 10, "rpc_errors_by_class": {"42": 3}},
                    {"rpc_requests": 30, "rpc_errors_by_class": {"42": 9, "XX": 2}},
                    {"rpc_requests": 5, "rpc_errors_by_class": {"XX": 1}}])  # restarted
    monkeypatch.setattr(guard_sources, "rpc_counts", lambda target: next(samples))
    measure = guard_sources.rpc_errors(FakeTarget(), guard_sources.RpcOptions())  # type: ignore[arg-type]
    assert [measure(), measure(), measure()] == [0.0, 2 / 20, 1 / 5]


# ---- the ramp ----------------------------------------------------------------------------------


def test_clean_ramp_raises_in_order_and_checks_guards(monkeypatch: pytest.MonkeyPatch,
                                                      store: FakeFlags) -> None:
    calls: list[str] = []
    scripted(monkeypatch, [0], calls)
    recorder = Recorder()
    detail = make([5, 50, 100], [REPORTS]).apply(context(recorder))
    assert [to for _, to, _ in store.audit] == [5, 50, 100]
    assert detail["set"] == 100 and detail["from"] == 0 and detail["next_raise_at"] is None
    assert len(calls) >= 3  # before the first raise, and during each dwell
    assert [c["set"] for c in recorder.checkpoints] == [5, 50, 100]


def test_breach_kills_and_names_the_guard(monkeypatch: pytest.MonkeyPatch,
                                          store: FakeFlags) -> None:
    scripted(monkeypatch, [0, 0, 25, 26, 27])
    step = make([5, 25, 100], [{**REPORTS, "failure_limit": 2}])
    with pytest.raises(StepFailed) as failed:
        step.apply(context(Recorder()))
    message = str(failed.value)
    assert "guard pending-reports breached" in message and "[25, 26]" in message
    assert "killed" in message
    assert store.percentage == 0 and "pending-reports" in store.audit[-1][2]
    partial = failed.value.partial or {}
    assert partial["breach"]["values"] == [25, 26]
    assert partial["breach"]["reached"] in (5, 25)


def test_inconclusive_holds_for_a_person_then_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                      store: FakeFlags) -> None:
    scripted(monkeypatch, [0, TargetError("connection refused"), 0])
    recorder = Recorder()
    detail = make([5, 100], [REPORTS]).apply(context(recorder))
    assert recorder.asked and recorder.asked[0][0] == "ramp.hold-1"
    assert "inconclusive" in recorder.asked[0][1]
    assert detail["approvals"][0]["by"] == "oncall"
    assert store.percentage == 100
    assert all(to > 0 for _, to, _ in store.audit)  # a hold never lowers the flag


def test_inconclusive_without_anyone_to_ask_fails_and_keeps_the_flag(
        monkeypatch: pytest.MonkeyPatch, store: FakeFlags) -> None:
    scripted(monkeypatch, [0, TargetError("no route")])
    with pytest.raises(StepFailed, match="holds"):
        make([5, 100], [REPORTS]).apply(context(Recorder(), can_ask=False))
    assert store.percentage == 5


def test_on_breach_hold_asks_instead_of_killing(monkeypatch: pytest.MonkeyPatch,
                                               store: FakeFlags) -> None:
    scripted(monkeypatch, [0, 0, 99, 0])
    recorder = Recorder()
    make([5, 100], [REPORTS], on_breach="hold").apply(context(recorder))
    assert "breached" in recorder.asked[0][1]
    assert 0 not in [to for _, to, _ in store.audit]


def test_resume_continues_from_the_step_reached_guards_first(monkeypatch: pytest.MonkeyPatch,
                                                             store: FakeFlags) -> None:
    order: list[str] = []
    scripted(monkeypatch, [0], order)
    store.percentage = 25
    original = store.set_flag

    def traced(*args: Any, **kwargs: Any) -> real_flags.FlagChange:
        order.append(f"raise {args[2]}")
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "set_flag", traced)
    resume = {"flag": "f", "from": 0, "set": 25, "index": 1, "reached": "2/4",
              "next_raise_at": "2000-01-01T00:00:00+00:00", "holds": 0}
    detail = make([5, 25, 50, 100], [REPORTS]).apply(context(Recorder(), resume))
    assert [to for _, to, _ in store.audit] == [50, 100]
    assert order[0] == "measure"
    assert detail["resumed"] == 1 and detail["from"] == 0


def test_resume_refuses_a_flag_changed_meanwhile(monkeypatch: pytest.MonkeyPatch,
                                                 store: FakeFlags) -> None:
    scripted(monkeypatch, [0])
    resume = {"flag": "f", "from": 0, "set": 25, "index": 1, "next_raise_at": None}
    with pytest.raises(StepFailed, match="changed from outside"):
        make([5, 25, 100], [REPORTS]).apply(context(Recorder(), resume))
    assert store.audit == []


def test_a_kill_during_the_ramp_is_never_raised_over(monkeypatch: pytest.MonkeyPatch,
                                                     store: FakeFlags) -> None:
    calls: list[str] = []

    def build(target: Any, options: Any) -> guard_sources.Measure:
        def measure() -> float:
            calls.append("measure")
            if len(calls) == 3:  # on-call kills the flag by hand during the first dwell
                store.kill("url", "f", actor="oncall", reason="by hand")
            return 0.0
        return measure

    monkeypatch.setitem(guard_sources.SOURCES, "pending-reports",
                        guard_sources.Source(guard_sources.ReportOptions, build))
    with pytest.raises(StepFailed, match="is at 0%, not the 5%"):
        make([5, 25, 100], [REPORTS]).apply(context(Recorder()))
    assert [to for _, to, _ in store.audit] == [5, 0]


def test_rollback_restores_only_what_the_ramp_set(store: FakeFlags) -> None:
    step = make([5, 25], [])
    ctx = context(Recorder())
    store.percentage = 0  # killed since
    assert step.rollback(ctx, {"from": 0, "set": 25})["undone"] is False
    store.percentage = 25
    assert step.rollback(ctx, {"from": 0, "set": 25})["undone"] is True
    assert store.percentage == 0
    store.percentage = 5
    assert step.rollback(ctx, {"from": 10, "set": 5})["undone"] is False  # would raise it
    assert store.percentage == 5


def test_status_line_names_step_next_raise_and_guards() -> None:
    line = make([5, 25], []).status_line({
        "flag": "f", "set": 5, "reached": "1/2", "next_raise_at": "2026-12-01T10:00:00+00:00",
        "guards": {"rpc": {"last": 0.001, "failures": 0, "limit": 2, "failure": "> 0.005"}}})
    assert line is not None
    assert "f at 5% (step 1/2)" in line and "next raise 2026-12-01T10:00:00" in line
    assert "rpc=0.001" in line


def test_a_long_dwell_parks_the_run_and_resume_dwells_the_rest(monkeypatch: pytest.MonkeyPatch,
                                                               store: FakeFlags) -> None:
    from rollout.errors import Parked

    scripted(monkeypatch, [0])
    ramp = make([5, 100], [REPORTS], dwell="60s", poll="0.2s")
    recorder = Recorder()
    with pytest.raises(Parked, match="holds f at 5%"):
        ramp.apply(context(recorder))
    parked = recorder.checkpoints[-1]
    assert store.percentage == 5 and parked["set"] == 5 and parked["next_raise_at"]
    # The resumed process dwells only what is left (here: nothing) and goes on.
    parked["next_raise_at"] = "2000-01-01T00:00:00+00:00"
    detail = ramp.apply(context(Recorder(), parked))
    assert store.percentage == 100 and detail["resumed"] == 1
