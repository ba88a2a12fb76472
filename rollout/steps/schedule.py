"""cron.schedule: the nightly quota reset (seed §3.2.4) and the legacy-columns sync, on pg_cron or
the local scheduler."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from rollout.adapters.pg_cron import validate_cron_expression
from rollout.adapters.targets import failed_call
from rollout.errors import StepFailed, UsageError
from rollout.steps.base import Detail, Params, Step, StepContext


class ScheduleParams(Params):
    job: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Job name (idempotency key).")
    schedule: str = Field(description="Five-field cron, UTC, e.g. '0 2 * * *', or "
                          "'N seconds' (1-59; pg_cron 1.5+).")
    function: str | None = Field(None, description="Edge function to POST to, with the key in "
                                 "`apikey`.")
    sql: str | None = Field(None, description="Or a SQL command, run in the database as the "
                            "owner (pg_cron's job owner).")
    body: dict[str, Any] = Field(default_factory=dict)
    key_secret: str = Field(
        "service_role_key", pattern=r"^[A-Za-z0-9_.-]+$",
        description="Vault secret holding the key the job sends: a secret API key "
        "(sb_secret_…), or the legacy service-role JWT while the project uses it.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            return validate_cron_expression(value)
        except UsageError as err:
            raise ValueError(str(err)) from err

    @model_validator(mode="after")
    def _one_action(self) -> ScheduleParams:
        if (self.function is None) == (self.sql is None or not self.sql.strip()):
            raise ValueError("give the job either `function:` (an edge function to call) or "
                             "`sql:` (a command to run), not both")
        return self


class CronSchedule(Step):
    """An edge function call or a SQL command scheduled by cron (UTC); rollback unschedules
    it."""

    kind: ClassVar[str] = "cron.schedule"
    Params = ScheduleParams
    params: ScheduleParams

    def describe(self) -> str:
        p = self.params
        what = p.function or f"`{' '.join((p.sql or '').split())}`"
        return f"schedule {what} as job {p.job!r} at '{p.schedule}' UTC"

    def apply(self, ctx: StepContext) -> Detail:
        p = self.params
        scheduler = ctx.target.scheduler
        if p.function is not None:
            action = scheduler.schedule(p.job, p.schedule, p.function, p.body,
                                        key_secret=p.key_secret)
        else:
            action = scheduler.schedule_sql(p.job, p.schedule, (p.sql or "").strip())
        detail: Detail = {"job": p.job, "schedule": p.schedule, "action": action}
        runs = scheduler.status(p.job).get("runs") or []
        if runs:  # pg_cron says "succeeded" even when the function answered 401: show both
            detail["last_run"] = {k: runs[0].get(k) for k in ("status", "http_status",
                                                               "http_error")}
            detail["last_call_failed"] = failed_call(runs[0])
        return detail

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        job = ctx.target.scheduler.status(self.params.job).get("job")
        if not job or job.get("schedule") != self.params.schedule:
            raise StepFailed(f"cron job {self.params.job} is not scheduled as planned")

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        return {"undone": ctx.target.scheduler.unschedule(self.params.job)}
