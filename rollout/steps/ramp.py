"""flags.ramp: raise a flag in steps, watching guards; a breach kills the flag at once.

The ramp raises the flag to each percentage in order (sticky buckets: nobody already in drops
out), dwells there while its guards are measured every `interval`, then raises again. Guards
are measured before the first raise (and first of all on `--resume`). A breach —
`failure_limit` consecutive failed measurements of one guard — kills the flag (0 %, through
the same adapter as `rollout flag kill`, audited with the guard and its values) and fails the
step, which ends the run (exit 1; the plan's notifications tell Slack and PagerDuty); the rest
of the release stays. With `on_breach: hold` the flag stays and a person decides. An
inconclusive measurement (a query error, an unreachable URL) holds the ramp for a person, as
Argo Rollouts does.

Every raise is a checkpoint in the journal (the step's partial state), so `--resume`
continues from the step reached, and `rollback` of a ramp restores the flag's value from
before the ramp only if the flag still holds what the ramp set (never raises, never undoes a
kill).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rollout.adapters import flags
from rollout.errors import Parked, StepFailed
from rollout.steps.base import Detail, Params, Step, StepContext
from rollout.steps.gates import check_duration, seconds
from rollout.steps.guards import Guard, GuardParams


class RampParams(Params):
    flag: str = "messaging_v2_enabled"
    steps: list[int] = Field(min_length=1, description="Percentages, raised in this order.")
    dwell: str | float = Field(description="Time at each step before the next (e.g. 30m).")
    guards: list[GuardParams] = Field(default_factory=list)
    on_breach: Literal["kill", "hold"] = "kill"
    hold_timeout: str | float = Field("4h", description="How long a held ramp waits for a "
                                                        "person before the step fails.")
    poll: str | float | None = Field(
        None, description="How long one process watches a dwell: a longer one parks the run "
                          "as `waiting` (exit 7, lock released) and `rollout apply PLAN "
                          "--resume` continues it from the step reached, guards first. None: "
                          "this process dwells to the end.")

    _durations = field_validator("dwell", "hold_timeout", "poll")(check_duration)

    @model_validator(mode="after")
    def _rising(self) -> RampParams:
        if any(not 0 < pct <= 100 for pct in self.steps):
            raise ValueError("ramp steps are percentages from 1 to 100")
        if any(a >= b for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"ramp steps must rise: {self.steps}")
        names = [g.name for g in self.guards]
        if len(set(names)) != len(names):
            raise ValueError(f"guard names must differ: {names}")
        return self


def _now() -> datetime:
    return datetime.now(UTC)


class FlagsRamp(Step):
    """A guarded, stepwise flag rollout (LaunchDarkly Guardian / Argo analysis, in the open)."""

    kind: ClassVar[str] = "flags.ramp"
    Params = RampParams
    params: RampParams

    def describe(self) -> str:
        p = self.params
        guards = ", ".join(g.name for g in p.guards) or "no guards"
        return (f"ramp {p.flag} {' → '.join(f'{s}%' for s in p.steps)}, {p.dwell} each, "
                f"watching {guards} (on breach: {p.on_breach})")

    def preflight(self, ctx: StepContext) -> None:
        for guard in self.params.guards:
            Guard(guard, ctx.target)  # an unavailable built-in source refuses the run here

    # ---- apply ---------------------------------------------------------------------------------

    def apply(self, ctx: StepContext) -> Detail:
        p = self.params
        url = ctx.target.db_url
        guards = [Guard(g, ctx.target) for g in p.guards]
        detail: Detail = dict(ctx.resume_detail or {})
        if detail:
            self._unchanged(url, detail, "before it was interrupted")
            detail.update(resumed=int(detail.get("resumed", 0)) + 1, held=None)
            ctx.progress(f"resuming at {detail['set']}%: guards first", None)
        else:
            detail = {"flag": p.flag, "from": flags.get_flag(url, p.flag).percentage,
                      "set": None, "index": -1, "next_raise_at": None, "holds": 0}
        index = int(detail["index"])
        park_at = time.monotonic() + seconds(p.poll) if p.poll is not None else None
        self._watch(ctx, guards, detail, once=True)  # guards first, before any (re)raise
        while index < len(p.steps) - 1:
            if index >= 0:
                self._watch(ctx, guards, detail, once=False, park_at=park_at)
            index += 1
            self._raise(ctx, detail, index)
        detail["next_raise_at"] = None
        return detail

    def _unchanged(self, url: str, detail: Detail, since: str) -> int:
        """The flag's percentage, if it still holds what this ramp set; a change from outside
        (a kill by on-call, a hand-set value) stops the ramp: it never raises over a person."""
        current = flags.get_flag(url, self.params.flag).percentage
        if detail.get("set") is not None and current != detail["set"]:
            raise StepFailed(f"{self.params.flag} is at {current}%, not the {detail['set']}% "
                             f"this ramp set {since}: changed from outside (a kill?), so the "
                             "ramp stops here", partial=detail)
        return current

    def _raise(self, ctx: StepContext, detail: Detail, index: int) -> None:
        p = self.params
        target = p.steps[index]
        current = self._unchanged(ctx.target.db_url, detail, "at its last step")
        if current < target:  # never lower: someone may have raised it before the ramp
            change = flags.set_flag(ctx.target.db_url, p.flag, target,
                                    actor=f"{ctx.operator} (run {ctx.run_id[:8]})",
                                    reason=f"ramp {self.id}: step {index + 1}/{len(p.steps)}",
                                    allow_decrease=False)
            detail.update(users_in=change.users_in, users_total=change.users_total)
        detail.update(index=index, reached=f"{index + 1}/{len(p.steps)}", set=max(current, target))
        last = index == len(p.steps) - 1
        detail["next_raise_at"] = None if last else (
            _now() + timedelta(seconds=seconds(p.dwell))).isoformat(timespec="milliseconds")
        ctx.checkpoint(detail, True)
        ctx.progress(f"{p.flag} at {detail['set']}% (step {detail['reached']})"
                     + ("" if last else f", next raise at {detail['next_raise_at']}"),
                     (index + 1) / len(p.steps))

    def _watch(self, ctx: StepContext, guards: list[Guard], detail: Detail, once: bool,
               park_at: float | None = None) -> None:
        """Measure each guard when due until the next raise (`once`: each guard once now).
        Past `park_at` with the dwell not over, the run parks (the journal keeps the step
        reached and the wall-clock time of the next raise, so a resume picks the dwell up)."""
        while True:
            for guard in guards:
                if once or guard.due <= time.monotonic():
                    self._judge(ctx, guard, guard.check(), detail)
            detail["guards"] = {g.name: g.state() for g in guards}
            ctx.checkpoint(detail, False)
            left = self._left(detail)
            if once or left <= 0:
                return
            due = min((g.due for g in guards), default=time.monotonic() + left)
            pause = max(0.05, min(left, due - time.monotonic()))
            if park_at is not None and time.monotonic() + pause > park_at:
                ctx.checkpoint(detail, True)
                raise Parked(f"ramp {self.id} holds {self.params.flag} at {detail['set']}% "
                             f"(step {detail['reached']}); the next raise is due at "
                             f"{detail['next_raise_at']}")
            time.sleep(pause)

    @staticmethod
    def _left(detail: Detail) -> float:
        at = detail.get("next_raise_at")
        return (datetime.fromisoformat(at) - _now()).total_seconds() if at else 0.0

    def _judge(self, ctx: StepContext, guard: Guard, verdict: str, detail: Detail) -> None:
        if verdict == "ok":
            return
        value = guard.values[-1]
        if verdict == "failing":
            ctx.progress(f"guard {guard.name}: {value} ({guard.params.failure}), "
                         f"{guard.failures}/{guard.params.failure_limit}", None)
        elif verdict == "inconclusive":
            self._hold(ctx, guard, detail, f"guard {guard.name} is inconclusive ({value})")
        elif self.params.on_breach == "hold":
            self._hold(ctx, guard, detail, self._breach_text(guard, detail))
        else:
            self._kill(ctx, guard, detail)

    def _breach_text(self, guard: Guard, detail: Detail) -> str:
        values = ", ".join(map(str, guard.failing_values()))
        at = f"{detail['set']}% (step {detail['reached']})" if detail.get("reached") else \
            f"{detail['from']}% (before the first raise)"
        return (f"guard {guard.name} breached at {at}: {guard.failures} consecutive failed "
                f"measurement(s) [{values}] (fails when {guard.params.failure})")

    def _kill(self, ctx: StepContext, guard: Guard, detail: Detail) -> None:
        p = self.params
        why = self._breach_text(guard, detail)
        change = flags.kill(ctx.target.db_url, p.flag,
                            actor=f"{ctx.operator} (run {ctx.run_id[:8]}, ramp {self.id})",
                            reason=why)
        detail.setdefault("guards", {})[guard.name] = guard.state()
        detail["breach"] = {"guard": guard.name, "values": guard.failing_values(),
                            "failure": guard.params.failure, "reached": detail.get("set"),
                            "reached_step": detail.get("reached"), "killed_from": change.before}
        detail["next_raise_at"] = None
        ctx.checkpoint(detail, True)
        raise StepFailed(f"{why}; {p.flag} killed: {change.before}% → 0%", partial=detail)

    def _hold(self, ctx: StepContext, guard: Guard, detail: Detail, why: str) -> None:
        """Stay at the current percentage until a person approves going on."""
        if ctx.wait_for_approval is None:
            raise StepFailed(f"{why}: the ramp holds, and nobody can be asked", partial=detail)
        detail["holds"] = int(detail.get("holds", 0)) + 1
        detail["held"] = why
        ctx.checkpoint(detail, True)
        gate = f"{self.id}.hold-{detail['holds']}"  # one approval per hold
        approver = ctx.wait_for_approval(
            gate, f"{why}; {self.params.flag} stays at {detail.get('set') or detail['from']}%. "
                  "Go on with the ramp?", seconds(self.params.hold_timeout))
        detail["held"] = None
        detail.setdefault("approvals", []).append({"hold": gate, "by": approver, "why": why})
        guard.failures = 0
        if detail.get("next_raise_at"):  # what was not watched is not counted: dwell again
            detail["next_raise_at"] = (_now() + timedelta(seconds=seconds(self.params.dwell))
                                       ).isoformat(timespec="milliseconds")
        ctx.checkpoint(detail, True)

    # ---- verify / rollback / status ------------------------------------------------------------

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        current = flags.get_flag(ctx.target.db_url, self.params.flag).percentage
        if current < self.params.steps[-1]:
            raise StepFailed(f"{self.params.flag} is at {current}%, not "
                             f"{self.params.steps[-1]}%", partial=detail)

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        p = self.params
        current = flags.get_flag(ctx.target.db_url, p.flag).percentage
        before, ramped = detail.get("from"), detail.get("set")
        if ramped is None or before is None or current != ramped or before >= current:
            return {"undone": False, "flag": p.flag, "at": current,
                    "reason": f"left at {current}%: not what the ramp set ({ramped}%) — "
                              "killed or changed since — or restoring would raise it"}
        change = flags.set_flag(ctx.target.db_url, p.flag, int(before),
                                actor=f"{ctx.operator} (rollback {ctx.run_id[:8]})",
                                reason=f"rollback of ramp {self.id}", allow_decrease=True)
        return {"undone": True, "flag": p.flag, "from": change.before, "to": change.after}

    def status_line(self, detail: Detail) -> str | None:
        if not detail.get("flag"):
            return None
        parts = [f"{detail['flag']} at {detail.get('set') or detail.get('from')}%"
                 + (f" (step {detail['reached']})" if detail.get("reached") else "")]
        if detail.get("next_raise_at"):
            parts.append(f"next raise {detail['next_raise_at']}")
        if detail.get("held"):
            parts.append(f"HELD: {detail['held']}")
        if detail.get("breach"):
            parts.append(f"BREACHED by {detail['breach']['guard']}")
        guards: dict[str, Any] = detail.get("guards") or {}
        parts += [f"{name}={g['last']} ({g['failures']}/{g['limit']} failed, "
                  f"fails {g['failure']})" for name, g in guards.items()]
        return "; ".join(parts)
