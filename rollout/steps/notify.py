"""notify: a message to the release channel (Slack webhook); never fails the release."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from rollout.adapters.notify import send_slack
from rollout.steps.base import Detail, Params, Step, StepContext


class NotifyParams(Params):
    message: str
    webhook_url: str | None = Field(
        None, description="Slack incoming webhook (use !secret); defaults to the plan's "
                          "notifications.slack_webhook_url.")


class Notify(Step):
    """A Slack message; never fails the release."""

    kind: ClassVar[str] = "notify"
    Params = NotifyParams
    persistent = False
    params: NotifyParams

    def describe(self) -> str:
        return f"notify: {self.params.message}"

    def apply(self, ctx: StepContext) -> Detail:
        url = self.params.webhook_url or ctx.extra.get("slack_webhook_url")
        if not url:
            return {"delivered": False, "detail": "no webhook configured"}
        outcome = send_slack(url, f"[{ctx.environment}] {self.params.message}")
        return {"delivered": outcome.ok, "detail": outcome.detail}
