"""The release commands: plan, apply, rollback, status, history, approve, unlock."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from rollout.cli.app import app, err, flag_option, out
from rollout.cli.render import table_or_blocks
from rollout.errors import UsageError
from rollout.paths import project_root

if TYPE_CHECKING:
    from rollout.adapters.targets import Target
    from rollout.cli.render import JsonRenderer
    from rollout.engine.events import Masker
    from rollout.engine.journal import Journal
    from rollout.engine.plan import Plan
    from rollout.engine.runner import Engine
    from rollout.reports.release import Recorder, ReleaseReport

# The engine, its steps and adapters (psycopg, httpx, pydantic, jwt) are imported inside the
# commands: `rollout --help` and shell completion must not pay for them.

PLAN_ARG = typer.Argument(..., metavar="PLAN", show_default=False,
                          help="A plan file, e.g. plans/local.yaml.")
PLAN_OR_ENV = typer.Argument(..., metavar="PLAN", show_default=False,
                             help="A plan file, or an environment name from plans/*.yaml.")
JSON_OPT = flag_option("--json", help="Print one JSON document on stdout instead.")
YES_OPT = flag_option("--yes", "-y", help="Do not ask for confirmation.")
REPORT_OPT = typer.Option(
    None, "--report", metavar="FILE",
    help="Write the HTML release report here (FILE.html; its JSON beside it). "
         "Default: the run's artifacts, .rollout/runs/RUN/report.html.")

STATE_STYLE = {"pending": "[yellow]pending[/yellow]", "applied": "[cyan]applied[/cyan]",
               "unknown": "[red]unknown[/red]",
               "changed": "[magenta]changed[/magenta]", "disabled": "[dim]disabled[/dim]",
               "apply will refuse": "[red]changed — apply will refuse[/red]",
               "always": "[blue]runs each time[/blue]"}


def _load(path: str, database_only: bool = False) -> Plan:
    from rollout.engine.plan import load_plan

    return load_plan(Path(path), database_only=database_only)


def _resolve(plan_or_env: str, database_only: bool = False) -> Plan:
    """A plan file, or an environment name found in plans/*.yaml (`rollout unlock production`)."""
    if Path(plan_or_env).exists() or plan_or_env.endswith((".yaml", ".yml")):
        return _load(plan_or_env, database_only)
    matches = []
    for candidate in sorted((project_root() / "plans").glob("*.yaml")):
        try:
            plan = _load(str(candidate), database_only)
        except UsageError:
            continue
        if plan.environment == plan_or_env:
            matches.append(plan)
    if len(matches) != 1:
        raise UsageError(f"{plan_or_env!r} is neither a plan file nor the environment of exactly "
                         f"one plan in plans/ ({len(matches)} found)")
    return matches[0]


def _engine(plan: Plan, json_output: bool,
            recorder: Recorder | None = None) -> tuple[Engine, JsonRenderer | None]:
    from rollout.cli.render import HumanRenderer, JsonRenderer
    from rollout.engine.events import Sink
    from rollout.engine.notifications import Notifier, compose
    from rollout.engine.runner import Engine
    from rollout.engine.targets import build_target

    renderer = JsonRenderer() if json_output else None
    sink: Sink = renderer if renderer is not None else HumanRenderer(out, str(plan.path))
    if recorder is not None:
        recorder.sink = sink
        sink = recorder
    # Run notifications (Slack, PagerDuty) after the renderer; their failures come back as
    # notices through the engine's emit, masked like every other event.
    notifier = Notifier(plan.model.notifications)
    engine = Engine(plan, build_target(plan), compose(sink, notifier))
    engine.masker.add(notifier.secrets())
    notifier.emit = engine.emit
    return engine, renderer


def _confirm_production(plan: Plan, yes: bool, verb: str, listing: Sequence[str] = ()) -> None:
    """Production asks for its environment name; `listing` (what would change) comes first."""
    if not plan.model.production or yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{plan.path} targets production: pass --yes to {verb} without a prompt")
    for line in listing:
        out.print(line, soft_wrap=True, markup=False)
    typed = typer.prompt(f"This will {verb} {plan.name} on PRODUCTION. "
                         f"Type the environment name ({plan.environment}) to continue")
    if typed.strip() != plan.environment:
        raise UsageError("the environment name did not match: nothing was changed")


def _sigterm_as_interrupt() -> None:
    """SIGTERM and SIGHUP (the terminal closed) stop a run the way Ctrl-C does: cleanly, the
    maintenance window lifted, the journal saying which signal."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            _detach_from_terminal()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def _detach_from_terminal() -> None:
    """A closed terminal fails every write (EIO): send what the clean-up prints nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        if os.isatty(fd):
            os.dup2(devnull, fd)
    os.close(devnull)


def _interactive_approver(engine: Engine) -> object:
    from rollout.engine.runner import operator_name

    def ask(run_id: str, step_id: str, message: str, timeout: float) -> None:
        def prompt() -> None:
            try:
                answer = input(f"{message} approve step {step_id}? [y/N] ")
            except EOFError:
                return
            if answer.strip().lower() in ("y", "yes"):
                engine.approve(run_id, step_id, operator_name())

        threading.Thread(target=prompt, daemon=True).start()

    return ask


@app.command("plan")
def plan_command(
    plan: str = PLAN_ARG,
    json_output: bool = JSON_OPT,
) -> None:
    """Validate PLAN and show what `apply` would do, step by step, against the target's state.

    Steps already applied show as such. A migration whose target is not the database it was
    written for shows `mismatch` and the differences (apply would refuse it). Exit 2 when the
    plan is invalid or a step's target does not match.
    `rollout plan schema` prints the JSON Schema of plan files (for editors);
    `rollout plan kinds` lists the step kinds.
    """
    if plan == "schema" and not Path(plan).exists():
        from rollout.engine.plan import plan_json_schema

        print(json.dumps(plan_json_schema(), indent=2))
        return
    if plan == "kinds" and not Path(plan).exists():
        from rollout.engine.plan import step_kinds

        kinds = step_kinds()
        if json_output:
            print(json.dumps(kinds, indent=2))
        for name, what in ({} if json_output else kinds).items():
            out.print(f"[bold]{name}[/bold]  {what}", soft_wrap=True)
        return
    loaded = _load(plan)
    engine, _ = _engine(loaded, json_output)
    views = engine.view()
    if json_output:
        print(json.dumps({"plan": loaded.name, "environment": loaded.environment,
                          "checksum": loaded.checksum, "warnings": engine.warnings,
                          "apply_would_refuse": engine.refused,
                          "unreachable": str(engine.unreachable or "") or None,
                          "steps": [view.__dict__ for view in views]}, indent=2))
        _plan_verdict(engine)
        return
    table_or_blocks(
        out, f"{loaded.name} → {loaded.environment} ({loaded.model.target.kind})",
        ["#", "step", "kind", "state", "on failure", "what it does"],
        [(str(i), view.id, view.kind,
          STATE_STYLE.get(view.state, view.state), f"on failure: {view.on_failure}",
          engine.masker.text(view.description)) for i, view in enumerate(views, 1)])
    _print_drifts({view.id: view.drift for view in views if view.drift})
    if engine.warnings:
        _print_dead_run(engine.warnings)
    _plan_verdict(engine)


def _plan_verdict(engine: Engine) -> None:
    """`plan` ends as apply would start: the target unreadable (6), or a refusal (2)."""
    if engine.unreachable is not None:
        raise engine.unreachable
    if engine.refused:
        raise typer.Exit(2)  # what apply would answer: refused, nothing changed


@app.command()
def apply(
    plan: str = PLAN_ARG,
    dry_run: bool = flag_option("--dry-run", help="Show what would run; change nothing."),
    yes: bool = YES_OPT,
    from_step: str = typer.Option(None, "--from", help="Start at this step id."),
    to_step: str = typer.Option(None, "--to", help="Stop after this step id."),
    resume: bool = flag_option("--resume", help="Continue the interrupted run."),
    report_file: str = REPORT_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """Run PLAN: backup, maintenance window, migration, functions, cron, flags, checks.

    Steps already applied are skipped, so running it again is safe. On a failure the plan's
    `on_failure` decides: stop (default), rollback, or continue. Exit codes: 0 done, 1 a step
    failed (stopped or rolled back cleanly), 2 invalid plan or usage, 3 rollback failed.
    Every run writes an HTML release report (timeline, load test, smoke, §8 checklist).
    """
    from rollout.engine.runner import Options
    from rollout.paths import state_dir
    from rollout.reports.release import Recorder, build

    loaded = _load(plan)
    if dry_run:
        plan_command(plan, json_output)
        return
    _confirm_production(loaded, yes, "apply")
    recorder = Recorder()
    engine, renderer = _engine(loaded, json_output, recorder)
    _sigterm_as_interrupt()
    approver = None if json_output or not sys.stdin.isatty() else _interactive_approver(engine)
    result = engine.apply(Options(from_step=from_step, to_step=to_step, resume=resume,
                                  approver=approver))  # type: ignore[arg-type]
    report = build(loaded, engine.target, recorder, engine.masker, command="apply",
                   status=result.status, exit_code=result.exit_code, message=result.message)
    path = write_report(report, report_file, state_dir() / "runs" / result.run_id,
                        engine.masker)
    if renderer is not None:
        renderer.run["report"] = str(path) if path else None
        print(renderer.document())
    else:
        if path:
            out.print(f"release report: {path}", soft_wrap=True)
        if loaded.model.target.kind == "local":
            from rollout.cli.local import print_still_running

            print_still_running()
    raise typer.Exit(result.exit_code)


def write_report(report: ReleaseReport, requested: str | None, default_dir: Path,
                 masker: Masker, json_document: str | None = None) -> Path | None:
    """The HTML release report and its JSON beside it (`json_document`, else the report's).
    A report that cannot be written is a warning: the run's result and exit code stand."""
    from rollout.reports.html import report_paths, write

    html_path, json_path = report_paths(requested, default_dir)
    try:
        write(report, html_path, masker, json_path if json_document is None else None)
        if json_document is not None:
            json_path.write_text(json_document)
    except OSError as error:
        err.print(f"[yellow]could not write the release report: {error}[/yellow]",
                  soft_wrap=True)
        return None
    return html_path


@app.command()
def rollback(
    plan: str = PLAN_ARG,
    to_step: str = typer.Option(None, "--to", help="Undo only the steps after this one."),
    dry_run: bool = flag_option("--dry-run", help="List what would be undone, newest first; "
                                                  "change nothing."),
    yes: bool = YES_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """Undo PLAN's applied steps, newest first (functions, cron, flags, migration…).

    The maintenance window is always lifted at the end. Exit 3 when a step cannot be undone:
    the journal (`rollout status`) then says where it stopped. On production the confirmation
    lists what will be undone first.
    """
    loaded = _load(plan)
    engine, renderer = _engine(loaded, json_output)
    undo = (engine.rollback_preview(to_step)
            if dry_run or (loaded.model.production and not yes) else [])
    listing = [f"{i}. undo {p.spec.id} ({p.spec.kind}): "
               f"{engine.masker.text(p.step.describe())}" for i, p in enumerate(undo, 1)]
    if dry_run:
        if json_output:
            print(json.dumps({"environment": loaded.environment,
                              "would_undo": [{"step": p.spec.id, "kind": p.spec.kind}
                                             for p in undo]}, indent=2))
            return
        out.print(f"rollback of {loaded.name} on {loaded.environment} would undo "
                  f"{len(undo)} step(s), newest first" + (":" if undo else "."))
        for line in listing:
            out.print(f"  {line}", soft_wrap=True, markup=False)
        return
    _confirm_production(loaded, yes, "roll back",
                        [f"rollback would undo, newest first: {len(undo)} step(s)", *listing])
    _sigterm_as_interrupt()
    from rollout.engine.runner import Options

    result = engine.rollback(to_step, Options())
    if renderer is not None:
        print(renderer.document())
    raise typer.Exit(result.exit_code)


def _journal_for(plan: str) -> tuple[Plan, Journal]:
    loaded, journal, _ = _target_journal(plan)
    return loaded, journal


def _target_journal(plan: str) -> tuple[Plan, Journal, Target]:
    from rollout.engine.journal import Journal
    from rollout.engine.targets import build_target

    loaded = _resolve(plan, database_only=True)  # the journal is all these commands read
    target = build_target(loaded)
    if not target.reachable():
        if loaded.model.target.kind == "local":
            raise UsageError(f"the local target of {plan} is not running",
                             hint="`rollout local up` starts the local stack")
        from rollout.adapters.database import unreachable_reason
        from rollout.errors import TargetUnreachable

        raise TargetUnreachable(f"cannot read the {loaded.model.target.kind} target of {plan}: "
                                f"{unreachable_reason(target.db_url) or 'it did not answer'}")
    journal = Journal(target.db_url)
    if not journal.exists():
        raise UsageError(f"{loaded.environment}: nothing has been run there yet")
    return loaded, journal, target


def _print_drifts(drifts: dict[str, str]) -> None:
    for step_id, note in drifts.items():
        out.print(f"[yellow]{step_id}: {note}[/yellow]", soft_wrap=True)


def _print_dead_run(lines: list[str]) -> None:
    head, *rest = lines
    err.print(f"[red]{head}[/red]", soft_wrap=True)
    for line in rest:
        err.print(f"  {line}", soft_wrap=True)


@app.command()
def status(plan: str = PLAN_OR_ENV, json_output: bool = JSON_OPT) -> None:
    """The environment's state from the journal: each step, last run, lock holder.

    A run whose process is gone shows as dead, with what it left and how to finish or undo it.
    """
    from rollout.engine.liveness import dead_run
    from rollout.engine.runner import drift_notes

    loaded, journal, target = _target_journal(plan)
    states = journal.states(loaded.environment)
    drifts = drift_notes(loaded, target, states)
    runs = journal.runs(loaded.environment, limit=1)
    holder = journal.lock_holder(loaded.environment)
    dead = dead_run(journal, loaded)
    if dead:
        runs[0].status = "dead"
    if json_output:
        print(json.dumps({"environment": loaded.environment,
                          "steps": {k: v.__dict__ for k, v in states.items()},
                          "last_run": runs[0].__dict__ if runs else None,
                          "lock": holder,
                          "drift": drifts,
                          "dead_run": dead.lines() if dead else None}, default=str, indent=2))
        return
    rows = []
    for planned in loaded.steps:
        state = states.get(planned.spec.id)
        rows.append((planned.spec.id, planned.spec.kind, state.status if state else "-",
                     f"{state.updated_at:%Y-%m-%d %H:%M:%S}" if state else "-",
                     f"run {state.run_id}" if state else ""))
    table_or_blocks(out, loaded.environment, ["step", "kind", "state", "updated", "run"], rows)
    _print_drifts(drifts)
    for planned in loaded.steps:  # long steps (a flag ramp) say where they stand
        state = states.get(planned.spec.id)
        line = planned.step.status_line(state.detail) if state else None
        if line:
            out.print(f"{planned.spec.id}: {line}", soft_wrap=True)
    if runs:
        run = runs[0]
        out.print(f"last run {run.id}: {run.command} {run.status} by {run.operator}@"
                  f"{run.host} at {run.started_at:%Y-%m-%d %H:%M:%S} UTC"
                  + (f" — {run.message}" if run.message else ""), soft_wrap=True)
    if holder:
        out.print(f"[yellow]locked by run {holder['run_id']} ({holder['operator']}@"
                  f"{holder['host']}) since {holder['since']:%H:%M:%S}[/yellow]", soft_wrap=True)
    _print_window(target.db_url)
    if dead:
        _print_dead_run(dead.lines())


def _print_window(url: str) -> None:
    """The newest maintenance window: open (and until when at the latest), or how it ended."""
    from rollout.adapters.database import maintenance_state

    window = maintenance_state(url)
    lease = window.lease
    if lease is None:
        return
    opened = f"{lease['opened_at']:%Y-%m-%d %H:%M:%S} UTC"
    if window.enforced:
        out.print(f"[yellow]maintenance window OPEN since {opened} (run {lease['run_id'][:8]}); "
                  f"ends by itself by {lease['expires_at']:%H:%M:%S} UTC if the run dies"
                  "[/yellow]")
    elif lease["ended_at"] is not None:
        out.print(f"last maintenance window: {opened} → {lease['ended_at']:%H:%M:%S} UTC, "
                  f"{lease['ended_how']}")


@app.command()
def history(plan: str = PLAN_OR_ENV, limit: int = typer.Option(20, help="How many runs."),
            json_output: bool = JSON_OPT) -> None:
    """Past runs on the plan's environment: who, when, from which commit, with what result."""
    from rollout.engine.liveness import dead_run

    loaded, journal = _journal_for(plan)
    runs = journal.runs(loaded.environment, limit)
    if runs and dead_run(journal, loaded):
        runs[0].status = "dead"  # journaled `running`, its process gone: never shown running
    if json_output:
        print(json.dumps([r.__dict__ for r in runs], default=str, indent=2))
        return
    table_or_blocks(out, f"runs on {loaded.environment}",
                    ["run", "command", "status", "operator", "started", "commit", "message"],
                    [(run.id, run.command, run.status, f"{run.operator}@{run.host}",
                      f"{run.started_at:%Y-%m-%d %H:%M:%S}", run.git_commit or "-",
                      run.message or "") for run in runs])


@app.command()
def approve(
    plan: str = PLAN_OR_ENV,
    run: str = typer.Argument(..., metavar="RUN", help="Run id (or its first characters)."),
    step: str = typer.Argument(..., metavar="STEP", help="The gate's step id."),
) -> None:
    """Approve a waiting gate of a running apply (from another shell)."""
    from rollout.engine.runner import operator_name

    _, journal = _journal_for(plan)
    found = journal.find_run(run)
    journal.approve(found.id, step, operator_name())
    out.print(f"approved {step} of run {found.id} as {operator_name()}")


@app.command()
def unlock(
    plan: str = PLAN_OR_ENV,
    force: bool = flag_option("--force", help="Required: ends the holder's session."),
    stop_live_run: bool = flag_option(
        "--stop-live-run",
        help="With --force, also when the holder is alive: it is told to stop before its next "
             "step (never run alongside it)."),
) -> None:
    """Free the environment's lock held by a dead or stuck run (shows the holder first).

    A holder whose process is alive is refused (exit 5) unless `--stop-live-run`.
    """
    from rollout.engine.runner import operator_name

    loaded, journal = _journal_for(plan)
    holder = journal.lock_holder(loaded.environment)
    if holder is None:
        out.print(f"{loaded.environment} is not locked")
        return
    run_id = str(holder["run_id"])
    age = journal.beat_age(run_id)
    alive = journal.alive(run_id)
    life = (f"ALIVE: its process beat {age:.0f}s ago" if alive else
            "its process is not beating (dead or frozen)")
    out.print(f"held by run {run_id} ({holder['operator']}@{holder['host']}, "
              f"backend pid {holder['pid']}) since {holder['since']} — {life}", soft_wrap=True)
    if not force:
        err.print(f"[red]to end that session and free the lock: "
                  f"{shlex.join(['rollout', 'unlock', plan, '--force'])}[/red]", soft_wrap=True)
        raise typer.Exit(2)
    if alive and not stop_live_run:
        from rollout.errors import LockHeld

        raise LockHeld(f"run {run_id[:8]} is alive: not unlocking under it",
                       hint="wait for it; to stop it: rollout unlock "
                            f"{plan} --force --stop-live-run")
    journal.force_unlock(loaded.environment, operator_name() if alive else None)
    if alive:
        out.print(f"[yellow]run {run_id[:8]} was told to stop: it stops before its next step "
                  "(the maintenance window, if open, ends with its session)[/yellow]")
    out.print(f"[green]{loaded.environment} unlocked[/green]")
