"""Gates: a person's approval, a timed pause, and analysis (Argo-style evidence polling)."""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rollout.adapters import probes
from rollout.errors import Parked, StepFailed
from rollout.steps.base import Detail, Params, Step, StepContext

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}


def seconds(value: str | float) -> float:
    """'90s', '5m', '2h', '250ms' or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (e.g. 30s, 5m, 2h)")
    return float(match.group(1)) * UNITS[match.group(2)]


def check_duration(value: str | float) -> str | float:
    seconds(value)
    return value


def check_condition(value: str | None) -> str | None:
    if value is not None and not CONDITION.match(value):
        raise ValueError(f"{value!r} is not a condition like '>= 0.5' or '< 0.01'")
    return value


def holds(condition: str, measured: float) -> bool:
    match = CONDITION.match(condition)
    assert match is not None  # validated with the plan
    return OPERATORS[match.group(1)](measured, float(match.group(2)))


class PauseParams(Params):
    duration: str | float

    _check = field_validator("duration")(check_duration)


class GatePause(Step):
    """A timed pause (e.g. to watch the dashboards before the next step)."""

    kind: ClassVar[str] = "gate.pause"
    Params = PauseParams
    persistent = False
    params: PauseParams

    def describe(self) -> str:
        return f"pause {self.params.duration}"

    def apply(self, ctx: StepContext) -> Detail:
        total = seconds(self.params.duration)
        deadline = time.monotonic() + total
        while (left := deadline - time.monotonic()) > 0:
            ctx.progress(f"{left:.0f}s left", 1 - left / total if total else 1)
            time.sleep(min(1.0, left))
        return {"paused_seconds": total}


POLL_DESCRIPTION = (
    "How long one process waits: not satisfied by then, the run parks as `waiting` (exit 7, lock "
    "released) and `rollout apply PLAN --resume` checks again; `timeout` counts from the gate's "
    "first check. None: wait in this process until `timeout`.")


def elapsed(ctx: StepContext) -> float:
    """Seconds since this run first started the step (in an earlier process, if it parked)."""
    first = ctx.extra.get("first_attempt")
    return time.time() - datetime.fromisoformat(first).timestamp() if first else 0.0


class ApprovalParams(Params):
    message: str = "Continue the rollout?"
    timeout: str | float = "1h"
    poll: str | float | None = Field(None, description=POLL_DESCRIPTION)

    _check = field_validator("timeout", "poll")(check_duration)


class GateApproval(Step):
    """Waits for a person: the interactive prompt, or `rollout approve RUN STEP` elsewhere."""

    kind: ClassVar[str] = "gate.approval"
    Params = ApprovalParams
    persistent = False
    params: ApprovalParams

    def describe(self) -> str:
        return f"wait for approval: {self.params.message} (timeout {self.params.timeout})"

    def apply(self, ctx: StepContext) -> Detail:
        if ctx.wait_for_approval is None:
            raise StepFailed("no way to ask for approval in this run")
        p = self.params
        left = max(seconds(p.timeout) - elapsed(ctx), 0.0)
        if p.poll is None or seconds(p.poll) >= left:
            return {"approved_by": ctx.wait_for_approval(self.id, p.message, left)}
        try:
            return {"approved_by": ctx.wait_for_approval(self.id, p.message, seconds(p.poll))}
        except StepFailed as err:  # not approved yet: park rather than hold the lock
            raise Parked(f"gate {self.id} waits for approval (`rollout approve ENV RUN "
                         f"{self.id}`); it is checked again at the next `apply --resume` "
                         f"(timeout {p.timeout} from its first check)") from err


class Measured(Params):
    """Where one number comes from: SQL or HTTP (gate.analysis and a ramp's guards)."""

    SOURCES: ClassVar[tuple[str, ...]] = ("query", "url")

    query: str | None = Field(None, description="SQL returning one number (service connection).")
    url: str | None = Field(None, description="HTTP GET; the measurement is the status code, "
                                              "or `json_field` of the JSON body.")
    json_field: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Measured:
        given = [name for name in self.SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {' or '.join(f'`{s}`' for s in self.SOURCES)}")
        return self


def measure(params: Measured, db_url: str) -> float:
    """One measurement of a SQL or HTTP source (raises when there is no number)."""
    if params.query:
        return probes.sql_number(db_url, params.query)
    assert params.url is not None
    return probes.http_number(params.url, params.json_field)


class AnalysisParams(Measured):
    """Poll a measurement until it proves the condition, as Argo Rollouts' AnalysisRun does."""

    success: str = Field(description="Condition on the measurement, e.g. '>= 0.5'.")
    failure: str | None = Field(None, description="Condition that counts as a failed measurement.")
    interval: str | float = "30s"
    count: int = Field(1, ge=1, description="Successful measurements needed.")
    failure_limit: int = Field(0, ge=0, description="Failed measurements tolerated.")
    timeout: str | float = "1h"
    inconclusive: Literal["ask", "fail"] = Field(
        "ask", description="At timeout with neither verdict: ask a person, or fail.")
    poll: str | float | None = Field(None, description=POLL_DESCRIPTION)
    background: bool = Field(False, description="Watch while the next steps run (Argo's "
                                                "background analysis); a failure stops the run "
                                                "after the step running then.")
    until: str | None = Field(None, description="With `background`: the last step watched "
                                                "(default: to the end of the run).")

    _durations = field_validator("interval", "timeout", "poll")(check_duration)
    _conditions = field_validator("success", "failure")(check_condition)

    @model_validator(mode="after")
    def _until_in_background(self) -> AnalysisParams:
        if self.until is not None and not self.background:
            raise ValueError("`until` is for a `background: true` analysis")
        return self


class GateAnalysis(Step):
    """Polls a measurement (SQL or HTTP) until its success condition holds, Argo-style (or
    watches it in the background of later steps: `background: true`, `until: STEP`)."""

    kind: ClassVar[str] = "gate.analysis"
    Params = AnalysisParams
    persistent = False
    params: AnalysisParams

    def describe(self) -> str:
        p = self.params
        source = "SQL" if p.query else f"GET {p.url}"
        if p.background:
            return (f"watch {source} {p.success} in the background until "
                    f"{p.until or 'the end of the run'} (every {p.interval}, "
                    f"≤{p.failure_limit} failed)")
        return f"wait until {source} {p.success} ({p.count}x, every {p.interval}, ≤{p.timeout})"

    def later_steps(self) -> list[str]:
        return [self.params.until] if self.params.until else []

    def apply(self, ctx: StepContext) -> Detail:
        p = self.params
        if p.background:
            from rollout.steps.background import Watch  # it builds on this module

            if ctx.background is None:
                raise StepFailed("this run cannot watch in the background")
            watch = Watch(self.id, p, ctx.target.db_url)
            ctx.background(watch)
            watch.start()
            return {"background": True, "until": p.until}
        # The timeout counts from the gate's first check, in an earlier process if it parked.
        deadline = time.monotonic() + seconds(p.timeout) - elapsed(ctx)
        park_at = time.monotonic() + seconds(p.poll) if p.poll is not None else deadline
        successes = failures = 0
        measurements: list[float | str] = []
        while True:
            try:
                value: float | str = measure(p, ctx.target.db_url)
            except Exception as err:  # noqa: BLE001 — an error is a failed measurement
                value = f"error: {err}"
            measurements.append(value)
            if isinstance(value, str) or (p.failure and holds(p.failure, value)):
                failures += 1
            elif holds(p.success, value):
                successes += 1
            ctx.progress(f"measured {value} ({successes}/{p.count} ok, {failures} failed)",
                         successes / p.count)
            if failures > p.failure_limit:
                raise StepFailed(f"analysis failed: {failures} failed measurement(s), "
                                 f"last {value}")
            if successes >= p.count:
                return {"verdict": "successful", "measurements": measurements[-20:]}
            if time.monotonic() + seconds(p.interval) > deadline:
                break
            if time.monotonic() + seconds(p.interval) > park_at:
                raise Parked(f"gate {self.id} is not satisfied yet ({p.success}, last "
                             f"{value}); it is checked again at the next `apply --resume` "
                             f"(timeout {p.timeout} from its first check)")
            time.sleep(seconds(p.interval))
        if p.inconclusive == "ask" and ctx.wait_for_approval is not None:
            approver = ctx.wait_for_approval(
                self.id, f"analysis inconclusive (last {measurements[-1]}): continue?",
                seconds(p.timeout))
            return {"verdict": "inconclusive", "approved_by": approver,
                    "measurements": measurements[-20:]}
        raise StepFailed(f"analysis inconclusive after {p.timeout} (last {measurements[-1]})")
