"""The check commands: `rollout smoke`, `rollout load` and `rollout rehearse`."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from rollout.cli.app import app, flag_option, out
from rollout.cli.release import (
    JSON_OPT,
    PLAN_ARG,
    REPORT_OPT,
    YES_OPT,
    _confirm_production,
    _sigterm_as_interrupt,
    write_report,
)
from rollout.cli.render import HumanRenderer, table_or_blocks
from rollout.errors import UsageError
from rollout.paths import state_dir

if TYPE_CHECKING:
    from rollout.checks.k6 import LoadReport
    from rollout.checks.smoke import SmokeReport
    from rollout.engine.plan import Plan
    from rollout.workflows.rehearsal import (
        RehearsalEvent,
        RehearsalReport,
    )

MARK = {"passed": "[green]✓ passed[/green]", "failed": "[red]✗ failed[/red]",
        "skipped": "[dim]- skipped[/dim]"}


def _quiet(event: RehearsalEvent) -> None:
    """The sink of `--json` runs: stdout carries only the final document."""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _write(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


# ---- smoke ---------------------------------------------------------------------------------------


def _smoke_table(report: SmokeReport) -> Table:
    table = Table("flow", "result", "seconds", "detail", title=f"smoke → {report.target}")
    for flow in report.flows:
        table.add_row(flow.name, MARK["passed" if flow.passed else "failed"],
                      f"{flow.seconds:.2f}", flow.detail)
    return table


@app.command()
def smoke(
    plan: str = PLAN_ARG,
    keep: bool = flag_option("--keep", help="Keep the demo users and what flows wrote."),
    junit: str = typer.Option(None, "--junit", help="Also write a JUnit XML report here."),
    json_output: bool = JSON_OPT,
) -> None:
    """Seed the demo cast and run the seed's §4.2 flows against PLAN's target, over HTTP.

    Prints each flow with its verdict and time. Exit 1 when any flow fails.
    """
    from rollout.engine.events import Masker
    from rollout.engine.plan import load_plan
    from rollout.engine.targets import build_target
    from rollout.workflows.rehearsal import smoke_check

    loaded = load_plan(Path(plan))
    target = build_target(loaded)
    masker = Masker(loaded.secrets)
    sink = _quiet if json_output else HumanRenderer(out)
    report, _ = smoke_check(target, lambda e: sink(masker.event(e)), keep=keep)
    masker.add(target.secret_values())
    _write(junit, masker.text(report.to_junit_xml()))
    if json_output:
        print(masker.text(report.to_json()))
    else:
        out.print(_smoke_table(report))
        passed = sum(f.passed for f in report.flows)
        color = "green" if report.passed else "red"
        out.print(f"[{color}]{passed}/{len(report.flows)} flows passed[/{color}] in "
                  f"{report.seconds:.1f}s")
    raise typer.Exit(0 if report.passed else 1)


# ---- load ---------------------------------------------------------------------------------------


def _load_tables(report: LoadReport) -> list[Table]:
    endpoints = Table("endpoint", "requests", "rate/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                      title=f"k6: {report.requests} requests at {report.rate:.1f}/s, "
                            f"error rate {report.error_rate:.2%}, {report.seconds:.1f}s"
                            + (f", {report.dropped_iterations} iterations dropped"
                               if report.dropped_iterations else ""))
    for e in report.endpoints.values():
        endpoints.add_row(e.kind, str(e.requests), f"{e.rate:.1f}", _ms(e.p50_ms), _ms(e.p95_ms),
                          _ms(e.p99_ms), "-" if e.error_rate is None else f"{e.error_rate:.2%}")
    thresholds = Table("threshold", "observed", "verdict", title="thresholds")
    for t in report.thresholds:
        verdict = MARK["passed"] if t.verdict == "passed" else "[red]✗ crossed[/red]"
        thresholds.add_row(f"{t.metric} {t.expression}",
                           "-" if t.observed is None else f"{t.observed:.4g}", verdict)
    return [endpoints, thresholds]


@app.command()
def load(
    plan: str = PLAN_ARG,
    emit_k6_operator_file: str = typer.Option(
        None, "--emit-k6-operator", metavar="FILE",
        help="Write only the k6-operator TestRun here (no users, no Secrets) instead of "
             "running k6."),
    prepare_k6_operator_dir: str = typer.Option(
        None, "--prepare-k6-operator", metavar="DIR",
        help="Instead of running k6 here: seed the load users in PLAN's target, mint their "
             "tokens, and write DIR/testrun.yaml, DIR/configmap.yaml (script, user ids) and "
             "DIR/secret.yaml (anon key, tokens; 0600, git-ignored) for the k6-operator "
             "(v1.6.0 or later). Then: kubectl apply --server-side -f DIR/configmap.yaml -f "
             "DIR/secret.yaml && kubectl create -f DIR/testrun.yaml."),
    remove_k6_operator_users: bool = typer.Option(
        False, "--remove-k6-operator-users",
        help="Delete the load users (and what they wrote) that --prepare-k6-operator seeded "
             "in PLAN's target."),
    seed_scale: bool = typer.Option(
        False, "--seed-scale",
        help="Size the k6-operator load as the seed's (5,000 DM VUs, 500 broadcasts, "
             "p99 < 200 ms, errors < 0.5 %, 10 runners) instead of the plan's check.load."),
    parallelism: int = typer.Option(
        None, min=1, show_default="1, or 10 with --seed-scale",
        help="Runner pods of the k6-operator TestRun; at most the script's VUs (the operator "
             "refuses more)."),
    token_ttl: str = typer.Option(
        "2h", "--token-ttl", metavar="DURATION",
        help="How long the --prepare-k6-operator tokens stay valid, e.g. 90m, 2h, 1h30m: the "
             "TestRun must start and finish within it (at least the script's longest run "
             "plus 10 minutes)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask before seeding a production "
                                                  "target (--prepare/--remove)."),
    json_output: bool = JSON_OPT,
) -> None:
    """Run the seed's §4.3 load (k6) against PLAN's target, sized by its `check.load` step.

    Shows live progress, then per endpoint: requests, rate, p50/p95/p99, error rate, and each
    threshold's verdict. Exit 1 when a threshold is crossed.

    Beyond one machine (k6-operator): `--prepare-k6-operator DIR [--seed-scale]
    [--parallelism N] [--token-ttl 2h]` seeds the users and writes the manifests;
    `--remove-k6-operator-users` deletes the users afterwards.
    """
    from rollout.engine.events import Masker
    from rollout.engine.plan import load_plan
    from rollout.workflows.rehearsal import load_check

    loaded = load_plan(Path(plan))
    if emit_k6_operator_file or prepare_k6_operator_dir or remove_k6_operator_users:
        from rollout.cli import k6_operator_cmd as operator

        if remove_k6_operator_users:
            operator.remove(loaded, yes)
            return
        params = operator.sized(loaded, seed_scale, parallelism)
        if prepare_k6_operator_dir:
            operator.prepare(loaded, params, Path(prepare_k6_operator_dir), token_ttl, yes)
        else:
            operator.emit(loaded, params, Path(emit_k6_operator_file))
        return
    from rollout.engine.targets import build_target
    from rollout.workflows.rehearsal import load_params

    params = load_params(loaded)
    target = build_target(loaded)
    masker = Masker(loaded.secrets)
    sink = _quiet if json_output else HumanRenderer(out)
    _sigterm_as_interrupt()
    folder = state_dir() / "checks" / f"load-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    report = load_check(target, lambda e: sink(masker.event(e)), params, folder)
    if json_output:
        print(report.to_json())
    else:
        for table in _load_tables(report):
            out.print(table)
        color = "green" if report.passed else "red"
        verdict = "thresholds met" if report.passed else "thresholds crossed"
        out.print(f"[{color}]{verdict}[/{color}]; k6 summary: {report.summary_path}")
    raise typer.Exit(0 if report.passed else 1)


# ---- rehearse -----------------------------------------------------------------------------------


class RehearsalRenderer:
    """Phase lines around the engine's own step lines; one line per engine run, not a table."""

    def __init__(self) -> None:
        self.steps = HumanRenderer(out)

    def __call__(self, event: RehearsalEvent) -> None:
        from rollout.engine.events import Notice, RunFinished, RunStarted, StepFinished
        from rollout.workflows.rehearsal import PhaseFinished, PhaseStarted

        if isinstance(event, PhaseStarted):
            out.print(f"[bold]{event.index}/{event.total} {event.name}[/bold] "
                      f"[dim]{event.description}[/dim]")
        elif isinstance(event, PhaseFinished):
            self.steps._stop_spinner()
            out.print(f"  {MARK.get(event.status, event.status)} {event.name} "
                      f"[dim]{event.seconds:.1f}s {event.summary}[/dim]", soft_wrap=True)
            for problem in event.problems[1:]:
                out.print(f"    [red]• {problem}[/red]", soft_wrap=True)
        elif isinstance(event, RunStarted):
            self.steps.finished = []
        elif isinstance(event, RunFinished):
            self.steps._stop_spinner()
        elif (isinstance(event, Notice) and event.level == "info") or (
                isinstance(event, StepFinished) and event.action == "check"):
            return  # a check's result is the phase's own line
        else:
            self.steps(event)


def _summary(report: RehearsalReport) -> None:
    table_or_blocks(out, f"rehearsal {report.run_id} of {report.plan} → {report.environment}",
                    ["#", "phase", "result", "seconds", "what"],
                    [(str(i), phase.name, MARK.get(phase.status, phase.status),
                      f"{phase.seconds:.1f}", phase.summary)
                     for i, phase in enumerate(report.phases, 1)])
    out.print(f"plan checksum {report.plan_checksum}", soft_wrap=True)
    for difference in report.schema.get("differences", []):
        out.print(f"[red]• schema: {difference}[/red]", soft_wrap=True)
    color = "green" if report.passed else "red"
    verdict = "rehearsal passed" if report.passed else "rehearsal FAILED"
    out.print(f"[{color}]{verdict}[/{color}] in {report.seconds:.1f}s; artifacts: "
              f"{report.artifacts}", soft_wrap=True)


@app.command()
def rehearse(
    plan: str = PLAN_ARG,
    report_file: str = REPORT_OPT,
    junit: str = typer.Option(None, "--junit", help="Write the phases as JUnit XML here."),
    keep: bool = flag_option("--keep", help="Keep the smoke demo data at the end."),
    yes: bool = YES_OPT,
    allow_production: bool = flag_option(
        "--allow-production", help="Rehearse on a `production: true` plan (it starts by rolling "
                                   "back what is live there)."),
    json_output: bool = JSON_OPT,
) -> None:
    """Rehearse PLAN's rollback: reset → apply → smoke → rollback → verify → apply → smoke.

    It starts by rolling back whatever of the plan is applied (phase `reset`), so on a
    production plan it refuses unless `--allow-production` is given.

    The rollback must return the app schema exactly to its pre-apply snapshot and keep every
    message and report. The result is journaled (`rollout history`) under the plan's checksum.
    Exit 1 when a phase fails, 3 when the rollback itself failed.
    """
    from rollout.engine.plan import load_plan
    from rollout.engine.targets import build_target
    from rollout.reports.release import Recorder, build
    from rollout.workflows.rehearsal import Rehearsal

    loaded: Plan = load_plan(Path(plan))
    if loaded.model.production and not allow_production:
        raise UsageError(
            f"{plan} is a production plan: a rehearsal starts by rolling back what is live "
            f"on {loaded.environment}, then applies, rolls back and applies again",
            hint="rehearse on staging (`rollout rehearse plans/staging.yaml`), or pass "
                 "--allow-production if that is what you mean")
    _confirm_production(loaded, yes, "rehearse: roll back what is live, then apply, roll back "
                                     "and apply again")
    _sigterm_as_interrupt()
    recorder = Recorder(_quiet if json_output else RehearsalRenderer())
    target = build_target(loaded)
    rehearsal = Rehearsal(loaded, target, recorder, keep=keep)
    report = rehearsal.run()
    document = json.dumps(rehearsal.masker.data(report.to_dict()), indent=2, default=str)
    release = build(loaded, target, recorder, rehearsal.masker, command="rehearse",
                    status="succeeded" if report.passed else "failed",
                    exit_code=report.exit_code, message="; ".join(report.problems()[:3]),
                    phases=[asdict(p) for p in report.phases])
    html_path = write_report(release, report_file, Path(report.artifacts), rehearsal.masker,
                             document + "\n")
    _write(junit, rehearsal.masker.text(report.to_junit_xml()))
    if json_output:
        print(document)
    else:
        _summary(report)
        if html_path:
            out.print(f"release report: {html_path}", soft_wrap=True)
    raise typer.Exit(report.exit_code)
