"""flags.set: a feature flag's rollout percentage (sticky bucketing lives in SQL)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from rollout.adapters import flags
from rollout.adapters.targets import Target
from rollout.errors import RolloutError, StepFailed
from rollout.steps.base import Detail, Params, Step, StepContext


class FlagParams(Params):
    flag: str = "messaging_v2_enabled"
    percentage: int = Field(ge=0, le=100)
    reason: str | None = None
    allow_decrease: bool = False


class FlagsSet(Step):
    """A feature flag's rollout percentage, audited; rollback restores the previous one."""

    kind: ClassVar[str] = "flags.set"
    Params = FlagParams
    params: FlagParams

    def describe(self) -> str:
        return f"set {self.params.flag} to {self.params.percentage}%"

    def apply(self, ctx: StepContext) -> Detail:
        p = self.params
        change = flags.set_flag(ctx.target.db_url, p.flag, p.percentage,
                                actor=f"{ctx.operator} (run {ctx.run_id[:8]})",
                                reason=p.reason or f"rollout step {self.id}",
                                allow_decrease=p.allow_decrease)
        return {"flag": p.flag, "from": change.before, "to": change.after,
                "users_in": change.users_in, "users_total": change.users_total}

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        if flags.get_flag(ctx.target.db_url, self.params.flag).percentage != self.params.percentage:
            raise StepFailed(f"{self.params.flag} is not at {self.params.percentage}%")

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        restore = flags.restore_flag(
            ctx.target.db_url, self.params.flag, set_to=int(detail["to"]),
            previous=int(detail["from"]), actor=f"{ctx.operator} (rollback {ctx.run_id[:8]})",
            reason=f"rollback of step {self.id}")
        return {"undone": restore.restored, "now": restore.now, "why": restore.reason}

    def drift(self, target: Target, detail: Detail) -> str | None:
        url = target.db_url
        try:
            flags.require_flags_table(url)
            now = flags.get_flag(url, self.params.flag).percentage
        except RolloutError:
            return f"applied {detail.get('to')} %, the flag is gone"
        if now == detail.get("to"):
            return None
        return (f"applied {detail.get('to')} %, now {now} % — "
                f"{flags.last_change(url, self.params.flag)}")
