"""Renderers of engine events: live progress for people, one JSON document for machines."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.measure import Measurement
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


NBSP = "\u00a0"


def wrap_whole(text: str, width: int, indent: str = "") -> str:
    """`text` wrapped at spaces to `width`, never inside a word: a path, URL or hash longer
    than the line stays whole on a line of its own (copyable), instead of being folded."""
    # A quoted value ('0 2 * * *') is one word: its spaces become no-break spaces meanwhile.
    glued = re.sub(r"'[^']*'", lambda m: m[0].replace(" ", NBSP), text)
    lines = textwrap.wrap(glued, width, initial_indent=indent, subsequent_indent=indent,
                          break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines).replace(NBSP, " ") or indent


def table_or_blocks(console: Console, title: str, headers: Sequence[str],
                    rows: Sequence[Sequence[str]]) -> None:
    """A table when it fits the terminal whole. Otherwise (CI logs, ssh at 80 columns) each
    row is a block: its short cells on one line, its last cell (the long text) wrapped beneath,
    never a value folded or cut with an ellipsis."""
    table = Table(*headers, title=title)
    for row in rows:
        table.add_row(*row)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    console.print(f"[bold]{title}[/bold]", soft_wrap=True)
    for row in rows:
        console.print(" · ".join(cell for cell in row[:-1] if cell), soft_wrap=True)
        if row[-1]:
            console.print(wrap_whole(row[-1], console.width, "    "), soft_wrap=True,
                          markup=False)


class HumanRenderer:
    """A line per finished step, a spinner with live progress for the running one, a table."""

    def __init__(self, console: Console, plan_path: str | None = None) -> None:
        self.console = console
        self.plan_path = plan_path
        self.status: Status | None = None
        self.finished: list[StepFinished] = []
        self.running: str | None = None  # the step started and not finished yet

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            verb = "resuming" if event.resumed else event.command
            self.console.print(f"[bold]{verb}[/bold] {event.plan} → {event.environment} "
                               f"({event.target}), run {event.run_id}, "
                               f"{len(event.steps)} step(s)", soft_wrap=True)
        elif isinstance(event, StepStarted):
            self._stop_spinner()
            self.running = event.step_id
            label = f"{event.step_id} [dim]{event.description}[/dim]"
            self.status = self.console.status(label)
            self.status.start()
        elif isinstance(event, StepProgress) and self.status is not None:
            pct = f" {event.fraction:.0%}" if event.fraction is not None else ""
            self.status.update(f"{event.step_id}{pct} [dim]{event.message}[/dim]")
        elif isinstance(event, StepFinished):
            self._stop_spinner()
            self.running = None
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
        if self.finished:
            table_or_blocks(self.console, f"run {event.run_id}",
                            ["step", "action", "result", "seconds"],
                            [(row.step_id, row.action, STATUS_STYLE.get(row.status, row.status),
                              f"{row.seconds:.1f}") for row in self.finished])
        color = "green" if event.exit_code == 0 else "red"
        message = f": {event.message}" if event.message else ""
        self.console.print(f"[{color}]{event.command} {event.status}[/{color}] in "
                           f"{event.seconds:.1f}s{message}", soft_wrap=True)
        for label, command in self._next_commands(event):
            self.console.print(f"  {label}: [bold]{command}[/bold]", soft_wrap=True)

    def _next_commands(self, event: RunFinished) -> list[tuple[str, str]]:
        """What to run next, as printed: an interrupted or failed run says how to go on."""
        if self.plan_path is None or event.exit_code == 0:
            return []
        plan = self.plan_path

        def command(*args: str) -> str:
            return shlex.join(["rollout", *args])

        lines = []
        if event.status == "interrupted" and event.command == "apply":
            if self.running:
                lines.append(("interrupted during step", self.running))
            lines.append(("resume", command("apply", plan, "--resume")))
        if event.command == "apply" or event.status in ("rollback-failed", "interrupted"):
            lines.append(("roll back", command("rollback", plan)))
        lines.append(("where it stands", command("status", plan)))
        return lines


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
