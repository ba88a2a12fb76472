"""Renderers of engine events: live progress for people, one JSON document for machines."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.status import Status
from rich.table import Table

from rollout.engine.events import (
    Event,
    Notice,
    RunFinished,
    RunStarted,
    StepFinished,
    StepProgress,
    StepStarted,
)

STATUS_STYLE = {
    "succeeded": "[green]✓ done[/green]",
    "already-applied": "[cyan]= applied[/cyan]",
    "skipped": "[dim]- skipped[/dim]",
    "failed": "[red]✗ failed[/red]",
}


class HumanRenderer:
    """A line per finished step, a spinner with live progress for the running one, a table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Status | None = None
        self.finished: list[StepFinished] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            verb = "resuming" if event.resumed else event.command
            self.console.print(f"[bold]{verb}[/bold] {event.plan} → {event.environment} "
                               f"({event.target}), run {event.run_id[:8]}, "
                               f"{len(event.steps)} step(s)")
        elif isinstance(event, StepStarted):
            self._stop_spinner()
            label = f"{event.step_id} [dim]{event.description}[/dim]"
            self.status = self.console.status(label)
            self.status.start()
        elif isinstance(event, StepProgress) and self.status is not None:
            pct = f" {event.fraction:.0%}" if event.fraction is not None else ""
            self.status.update(f"{event.step_id}{pct} [dim]{event.message}[/dim]")
        elif isinstance(event, StepFinished):
            self._stop_spinner()
            self.finished.append(event)
            mark = STATUS_STYLE.get(event.status, event.status)
            verb = "undo " if event.action == "rollback" else ""
            text = event.error if event.error else event.summary
            self.console.print(f"  {mark} {verb}{event.step_id} [dim]{event.seconds:.1f}s "
                               f"{text}[/dim]", soft_wrap=True)
        elif isinstance(event, Notice):
            self._stop_spinner()
            color = {"warning": "yellow", "error": "red"}.get(event.level, "blue")
            self.console.print(f"[{color}]• {event.message}[/{color}]", soft_wrap=True)
        elif isinstance(event, RunFinished):
            self._stop_spinner()
            self._summary(event)

    def _stop_spinner(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def _summary(self, event: RunFinished) -> None:
        table = Table("step", "action", "result", "seconds", title=f"run {event.run_id[:8]}")
        for row in self.finished:
            table.add_row(row.step_id, row.action, STATUS_STYLE.get(row.status, row.status),
                          f"{row.seconds:.1f}")
        if self.finished:
            self.console.print(table)
        color = "green" if event.exit_code == 0 else "red"
        message = f": {event.message}" if event.message else ""
        self.console.print(f"[{color}]{event.command} {event.status}[/{color}] in "
                           f"{event.seconds:.1f}s{message}", soft_wrap=True)


class JsonRenderer:
    """Collects events; `document()` is the single JSON output of a `--json` run."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.run: dict[str, Any] = {}
        self.steps: list[dict[str, Any]] = []
        self.notices: list[str] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted | RunFinished):
            self.run.update(asdict(event))
        elif isinstance(event, StepFinished):
            self.steps.append(asdict(event))
        elif isinstance(event, Notice):
            self.notices.append(event.message)

    def document(self) -> str:
        return json.dumps({"run": self.run, "steps": self.steps, "notices": self.notices},
                          default=str, indent=2)
