"""The release report's content: what a run did, when, and the evidence around it.

`Recorder` sits in front of a renderer and stamps each engine (or rehearsal) event with the
seconds since the run began; `build` turns what it saw, plus the files the checks left (k6's
summary, series and dashboard, the smoke report) and the §8 checklist, into a `ReleaseReport`.
The writers (`write`) pass the whole text through the engine's masker: no secret reaches a file.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from rollout.adapters.targets import Target
from rollout.checks import k6
from rollout.engine.events import (
    Masker,
    Notice,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from rollout.engine.plan import Plan
from rollout.engine.runner import git_commit, operator_name
from rollout.errors import RolloutError
from rollout.workflows.rehearsal import PhaseFinished, PhaseStarted, RehearsalEvent


@dataclass
class Span:
    """One bar of the timeline: seconds since the run began."""

    lane: str  # phase | step | undo | check | gate | window
    label: str
    start: float
    end: float
    status: str
    summary: str = ""


@dataclass
class Recorder:
    """An event sink that remembers what happened and when, then passes the event on."""

    sink: Callable[[Any], None] | None = None
    began: float = field(default_factory=time.monotonic)
    started_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    spans: list[Span] = field(default_factory=list)
    steps: list[StepFinished] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    _open: dict[str, float] = field(default_factory=dict, init=False)  # started, not finished
    _window: float | None = field(default=None, init=False)  # the maintenance window's start

    def __call__(self, event: RehearsalEvent) -> None:
        now = round(time.monotonic() - self.began, 3)
        if isinstance(event, StepStarted | PhaseStarted):
            key = event.step_id if isinstance(event, StepStarted) else f"phase:{event.name}"
            self._open[key] = now
        elif isinstance(event, PhaseFinished):
            start = self._open.pop(f"phase:{event.name}", now - event.seconds)
            self.spans.append(Span("phase", event.name, start, now, event.status, event.summary))
        elif isinstance(event, StepFinished):
            self._step(event, now)
        elif isinstance(event, RunStarted):
            self.runs.append({"run_id": event.run_id, "command": event.command, "at": now})
        elif isinstance(event, RunFinished):
            self._close_window(now)
            self.runs.append({"run_id": event.run_id, "command": event.command, "at": now,
                              "status": event.status, "message": event.message})
        elif isinstance(event, Notice):
            self.notices.append(event.message)
        if self.sink is not None:
            self.sink(event)

    def _step(self, event: StepFinished, now: float) -> None:
        self.steps.append(event)
        start = self._open.pop(event.step_id, round(now - event.seconds, 3))
        if event.status not in ("succeeded", "failed"):
            return  # skipped and already-applied steps are rows of the table, not bars
        lane = ("undo" if event.action == "rollback" else "check" if event.action == "check"
                else "gate" if event.kind.startswith("gate.") else "step")
        self.spans.append(Span(lane, event.step_id, start, now, event.status,
                               event.error or event.summary))
        if event.kind == "db.maintenance" and event.action == "apply":
            if "since" in event.detail:
                self._window = self._window if self._window is not None else now
            else:
                self._close_window(now)

    def _close_window(self, now: float) -> None:
        if self._window is not None:
            self.spans.append(Span("window", "maintenance window", self._window, now, "window",
                                   "anon/authenticated read-only"))
            self._window = None


@dataclass
class LoadSection:
    step_id: str
    report: dict[str, Any]
    series: dict[str, Any]
    dashboard_html: str | None


@dataclass
class ReleaseReport:
    command: str
    plan: str
    plan_path: str
    plan_checksum: str
    release_fingerprint: str | None
    environment: str
    target: str
    production: bool
    git_commit: str | None
    operator: str
    host: str
    started_at: str
    finished_at: str
    status: str
    exit_code: int
    message: str
    runs: list[dict[str, Any]]
    spans: list[Span]
    steps: list[dict[str, Any]]
    notices: list[str]
    backups: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    smoke: list[dict[str, Any]]
    load: list[LoadSection]
    checklist: dict[str, Any] | None
    phases: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        for section in body["load"]:
            section.pop("dashboard_html")  # the HTML report embeds it; JSON names the file
        return body


def build(plan: Plan, target: Target, recorder: Recorder, masker: Masker, *, command: str,
          status: str, exit_code: int, message: str,
          phases: list[dict[str, Any]] | None = None) -> ReleaseReport:
    """The report of one `apply` or `rehearse`, from what `recorder` saw and the journal."""
    steps = recorder.steps
    report = ReleaseReport(
        command=command, plan=plan.name, plan_path=str(plan.path),
        plan_checksum=plan.checksum, release_fingerprint=plan.release_fingerprint,
        environment=plan.environment, target=plan.model.target.kind,
        production=bool(plan.model.production), git_commit=git_commit(plan.root),
        operator=operator_name(), host=socket.gethostname(), started_at=recorder.started_at,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"), status=status,
        exit_code=exit_code, message=message, runs=recorder.runs,
        spans=sorted(recorder.spans, key=lambda span: span.start),
        steps=[{"step": s.step_id, "kind": s.kind, "action": s.action, "status": s.status,
                "seconds": round(s.seconds, 3), "summary": s.error or _whole(s.detail)
                or s.summary}
               for s in steps],
        notices=recorder.notices,
        backups=[{"step": s.step_id, "file": s.detail.get("file"),
                  "sha256": s.detail.get("sha256"), "bytes": s.detail.get("bytes")}
                 for s in _applied(steps, "db.backup")],
        flags=[{"step": s.step_id, **s.detail} for s in _applied(steps, "flags.set", "flags.ramp")],
        smoke=[_smoke(s) for s in steps if s.kind == "check.smoke" and s.status != "skipped"],
        load=[section for s in steps if s.kind == "check.load"
              and (section := _load(s)) is not None],
        checklist=_checklist(plan, target, masker),
        phases=phases or [])
    return report


def _whole(detail: dict[str, Any]) -> str:
    """Every key=value of a step's detail, nothing cut (tables on screen abbreviate)."""
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in detail.items())


def _applied(steps: list[StepFinished], *kinds: str) -> list[StepFinished]:
    return [s for s in steps if s.kind in kinds and s.action == "apply"
            and s.status == "succeeded"]


def _read_json(path: str | None) -> dict[str, Any] | None:
    try:
        return dict(json.loads(Path(path).read_text())) if path else None
    except (OSError, ValueError):
        return None


def _smoke(step: StepFinished) -> dict[str, Any]:
    found = _read_json(step.detail.get("report"))
    flows = found["flows"] if found else []
    return {"step": step.step_id, "status": step.status, "summary": step.error or step.summary,
            "report": step.detail.get("report"), "flows": flows}


def _load(step: StepFinished) -> LoadSection | None:
    summary = step.detail.get("summary")
    if not summary:
        return None
    folder = Path(summary).parent
    report = _read_json(str(folder / "load-report.json")) or {}
    series = k6.Series()
    if (folder / k6.METRICS).exists():
        series = k6.read_series(folder / k6.METRICS)
    dashboard = folder / k6.DASHBOARD
    return LoadSection(step.step_id, report, asdict(series),
                       dashboard.read_text() if dashboard.exists() else None)


def _checklist(plan: Plan, target: Target, masker: Masker) -> dict[str, Any] | None:
    """The §8 sign-off checklist as the journal has it now (no live probe: read-only)."""
    from rollout.engine.journal import Journal
    from rollout.workflows.signoff import evaluate

    try:
        journal = Journal(target.db_url, masker)
        try:
            return dict(masker.data(evaluate(plan, journal, None).to_dict()))
        finally:
            journal.close()
    except (RolloutError, psycopg.Error) as err:
        return {"error": f"could not read the journal: {str(err).strip()}", "items": []}
