"""Run notifications: engine events → Slack messages and PagerDuty Events API v2.

A `Notifier` is an event sink, composed after the renderer (`compose(renderer, notifier)`).
Slack hears about a run starting, a step failing, a rollback and the end of the run.
PagerDuty is paged when a run fails (or its rollback fails) and resolved by the next
successful run of the same environment: the dedup key is per environment
(`rollout:<environment>`), so the later run resolves the incident the earlier one opened; the
run id travels in the summary.

Webhook URLs and routing keys are secrets: they never reach an event, the journal or an
exception. A failed notification never fails the release — it is reported as a `Notice`
through `emit` (the engine's own emit, so the notice is masked and rendered like any other).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from rollout.adapters.notify import Outcome, send_pagerduty, send_slack
from rollout.engine.events import Event, Notice, RunFinished, RunStarted, Sink, StepFinished
from rollout.engine.plan import Notifications

SlackSender = Callable[[str, str], Outcome]
PagerSender = Callable[..., Outcome]

PAGE_SEVERITY = {"failed": "error", "rolled-back": "warning", "rollback-failed": "critical"}
TIMEOUT_SECONDS = 5.0


def compose(*sinks: Sink) -> Sink:
    """One sink feeding several, in order (the renderer first: people see progress at once)."""

    def fan_out(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return fan_out


def dedup_key(environment: str) -> str:
    """One open incident per environment: a later good run resolves it."""
    return f"rollout:{environment}"


@dataclass
class _Run:
    run_id: str
    command: str
    plan: str
    environment: str


class Notifier:
    """An event sink sending run notifications. Configured from the plan's `notifications`."""

    def __init__(self, config: Notifications, *, emit: Sink | None = None,
                 source: str | None = None, slack: SlackSender | None = None,
                 pagerduty: PagerSender | None = None) -> None:
        self._slack_url = config.slack_webhook_url or None
        self._routing_key = config.pagerduty_routing_key or None
        self._events_url = config.pagerduty_events_url
        self.emit: Sink = emit or (lambda event: None)
        self.source = source or socket.gethostname()
        self._send_slack = slack or (lambda url, text: send_slack(url, text,
                                                                 timeout=TIMEOUT_SECONDS))
        self._send_pagerduty = pagerduty or send_pagerduty
        self._run: _Run | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._slack_url or self._routing_key)

    def secrets(self) -> set[str]:
        """What must be masked wherever it could appear."""
        return {v for v in (self._slack_url, self._routing_key) if v}

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        try:
            self._handle(event)
        except Exception as err:  # noqa: BLE001 — a notification never fails the release
            self._notice("notifications", f"failed ({type(err).__name__})")

    # ---- events → messages ---------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._run = _Run(event.run_id, event.command, event.plan, event.environment)
            verb = "resuming" if event.resumed else f"{event.command} started"
            self._slack(f"{self._prefix()} {verb}: {event.plan}, run {event.run_id[:8]}, "
                        f"{len(event.steps)} step(s), by {self.source}")
        elif isinstance(event, StepFinished) and event.status == "failed":
            action = "rollback of step" if event.action == "rollback" else "step"
            self._slack(f"{self._prefix()} :x: {action} {event.step_id} ({event.kind}) failed: "
                        f"{event.error or 'no detail'}")
        elif isinstance(event, RunFinished):
            self._finished(event)

    def _finished(self, event: RunFinished) -> None:
        run = self._run or _Run(event.run_id, event.command, "?", "?")
        detail = f": {event.message}" if event.message else ""
        head = f"{self._prefix()} {run.plan} run {event.run_id[:8]}"
        if event.status == "succeeded":
            self._slack(f"{head} :white_check_mark: {event.command} completed in "
                        f"{event.seconds:.0f}s{detail}")
            self._page("resolve", f"{event.command} of {run.plan} on {run.environment} "
                                  f"succeeded (run {event.run_id[:8]})", "info")
        elif event.status == "rolled-back":
            self._slack(f"{head} :rewind: rolled back{detail}")
        elif event.status == "rollback-failed":
            self._slack(f"{head} :rotating_light: ROLLBACK FAILED — a person is needed{detail}")
        elif event.status == "waiting":
            self._slack(f"{head} :hourglass: parked at a gate, lock released{detail}")
        else:
            self._slack(f"{head} :x: {event.command} {event.status}{detail}")
        severity = PAGE_SEVERITY.get(event.status)
        if severity:
            self._page("trigger", f"rollout {event.command} of {run.plan} on "
                                  f"{run.environment} {event.status} (run {event.run_id[:8]})"
                                  f"{detail}", severity)

    def _prefix(self) -> str:
        return f"[{self._run.environment}]" if self._run else "[rollout]"

    # ---- delivery --------------------------------------------------------------------------

    def _slack(self, text: str) -> None:
        if not self._slack_url:
            return
        outcome = self._send_slack(self._slack_url, text)
        if not outcome.ok:
            self._notice("Slack", outcome.detail)

    def _page(self, action: str, summary: str, severity: str) -> None:
        if not self._routing_key or self._run is None:
            return
        outcome = self._send_pagerduty(
            self._events_url, self._routing_key, action, dedup_key(self._run.environment),
            summary, f"rollout@{self.source}", severity=severity, timeout=TIMEOUT_SECONDS)
        if not outcome.ok:
            self._notice(f"PagerDuty {action}", outcome.detail)

    def _notice(self, channel: str, detail: str) -> None:
        # Outcomes never carry the URL or key; the detail is a status or an exception's name.
        self.emit(Notice(f"{channel} notification not delivered ({detail}); the release goes "
                         "on", "warning"))
