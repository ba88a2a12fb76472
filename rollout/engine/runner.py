"""Runs a plan: apply, rollback, and the read-only view of what would run.

The invariants live here, once: one run per environment (the lock), every step journaled before
and after, preflight before any change (bad input changes nothing), the maintenance window
lifted whenever a run ends in anything but success (failure, Ctrl-C, SIGTERM), and `--resume`
continuing an interrupted run under its own id.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shlex
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from rollout.adapters import database as db
from rollout.adapters.targets import Target
from rollout.engine.events import (
    Event,
    Masker,
    Notice,
    RunFinished,
    RunStarted,
    Sink,
    StepFinished,
    StepProgress,
    StepStarted,
)
from rollout.engine.journal import (
    ALIVE_SECONDS,
    EnvironmentLock,
    Journal,
    RunInfo,
    StepState,
)
from rollout.engine.plan import Plan, PlannedStep
from rollout.errors import (
    LockHeld,
    Parked,
    RollbackFailed,
    RolloutError,
    StepFailed,
    TargetUnreachable,
    UsageError,
)
from rollout.paths import project_root, state_dir
from rollout.steps import Background, StepContext

APPROVAL_POLL_SECONDS = 1.0
UNDOABLE = ("applied", "partial")  # step states `rollback` undoes
SUMMARY_LIMIT = 400  # a step's one-line summary: room for a backup's path and its sha256


@dataclass
class StepView:
    """One row of `rollout plan`: what the step would do and where the target stands."""

    id: str
    kind: str
    description: str
    state: str  # pending | applied | changed | disabled | always
    on_failure: str
    drift: str | None = None  # how the target moved since the step was applied


@dataclass
class RunResult:
    run_id: str
    status: str
    exit_code: int
    steps: list[StepFinished] = field(default_factory=list)
    message: str = ""


@dataclass
class Options:
    dry_run: bool = False
    from_step: str | None = None
    to_step: str | None = None
    resume: bool = False
    operator: str = ""
    approver: Callable[[str, str, str, float], None] | None = None
    """Called when a gate waits for a person (run id, step id, message, timeout): the CLI may
    prompt and record the answer with `Engine.approve`; the engine polls the journal anyway,
    so `rollout approve RUN STEP` from another shell works the same."""


def operator_name() -> str:
    return os.environ.get("ROLLOUT_OPERATOR") or getpass.getuser()


def git_commit(root: Path) -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class Engine:
    def __init__(self, plan: Plan, target: Target, sink: Sink) -> None:
        self.plan = plan
        self.target = target
        self.masker = Masker(plan.secrets)
        self._sink = sink
        self.root = project_root()
        self.journal: Journal | None = None
        self.lock: EnvironmentLock | None = None
        self.results: list[StepFinished] = []
        # What the last view() found besides the steps (see there).
        self.warnings: list[str] = []
        self.refused = False
        self.unreachable: TargetUnreachable | None = None
        self._watches: list[Background] = []  # background analyses of the running apply

    # ---- events ----------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        masked = self.masker.event(event)
        if isinstance(masked, StepFinished):
            self.results.append(masked)
        self._sink(masked)

    # ---- read-only view --------------------------------------------------------------------

    def view(self) -> list[StepView]:
        """What `apply` would do now, without changing anything (not even the journal).

        Each enabled step's preflight runs against the target, so a step apply would refuse
        (a migration changed since it was applied…) shows as such. What the operator must know
        besides the steps (a dead run and what it left, a refusal's reason) goes to
        `self.warnings`; `self.refused` is True when apply would refuse to start. A remote
        target that cannot be read leaves every state "unknown" and its error (with the real
        cause) in `self.unreachable`.
        """
        from rollout.engine.liveness import dead_run

        self.warnings, self.refused = [], False
        states: dict[str, StepState] = {}
        drifts: dict[str, str] = {}
        refusals: dict[str, str] = {}
        self.unreachable = None
        reachable = self.target.reachable()
        if not reachable and self.target.kind != "local":  # a local stack is started by apply
            why = db.unreachable_reason(self.target.db_url) or "it did not answer"
            self.unreachable = TargetUnreachable(
                f"cannot read the {self.target.kind} target of {self.plan.environment!r}, so "
                f"the plan cannot say what apply would do: {why}")
        if reachable:
            journal = Journal(self.target.db_url, self.masker)
            try:
                if journal.exists():
                    states = journal.states(self.plan.environment)
                    drifts = drift_notes(self.plan, self.target, states)
                    dead = dead_run(journal, self.plan)
                    self.warnings += dead.lines() if dead else []
            finally:
                journal.close()
            refusals = self._refusals(states)
        views = []
        for planned in self.plan.steps:
            step = planned.step
            state = "pending" if self.unreachable is None else "unknown"
            if not planned.enabled:
                state = "disabled"
            elif step.id in refusals:
                state = "apply will refuse"
                self.warnings.append(f"{step.id}: apply will refuse: {refusals[step.id]}")
            elif not step.persistent:
                state = "always"
            elif (found := states.get(step.id)) and found.status == "applied":
                state = "applied" if found.fingerprint == fingerprint(planned) else "changed"
            views.append(StepView(step.id, step.kind, step.describe(), state, planned.on_failure,
                                  drifts.get(step.id)))
        self.refused = bool(refusals)
        return views

    def _refusals(self, states: dict[str, StepState]) -> dict[str, str]:
        """Each enabled step's preflight (read-only), as apply runs them: the refusals. As in
        apply, a step after a pending baseline step does not check the target yet."""
        ctx = self._context("preflight", operator_name(), None, "")
        refusals = {}
        baseline_pending = False
        for planned in self.plan.steps:
            if planned.enabled:
                ctx.extra["baseline_pending"] = baseline_pending
                try:
                    planned.step.preflight(ctx)
                except UsageError as err:
                    refusals[planned.step.id] = str(err)
                baseline_pending |= (planned.step.builds_baseline
                                     and not self._applied(planned, states))
        return refusals

    # ---- apply -------------------------------------------------------------------------------

    def apply(self, options: Options) -> RunResult:
        selected = self._select(options.from_step, options.to_step)
        self.target.prepare()
        self.masker.add(self.target.secret_values())
        journal = self.journal = Journal(self.target.db_url, self.masker)
        journal.ensure_schema()
        interrupted = journal.interrupted_run(self.plan.environment)
        run_id = str(uuid.uuid4())
        if options.resume:
            if interrupted is None:
                raise UsageError(f"nothing to resume: no interrupted run on "
                                 f"{self.plan.environment!r}")
            if interrupted.plan_checksum != self.plan.checksum:
                raise UsageError(f"run {interrupted.id[:8]} used a different version of this "
                                 "plan; roll back first or restore the plan it ran")
            run_id = interrupted.id
        operator = options.operator or operator_name()
        host = socket.gethostname()
        with journal.lock(self.plan.environment, run_id, operator, host) as lock:
            self.lock = lock
            if interrupted:
                self._refuse_if_alive(interrupted)
            if interrupted and not options.resume:
                # A refusal writes nothing: the journal keeps the run as it was left.
                raise UsageError(
                    f"run {interrupted.id[:8]} on {self.plan.environment!r} did not finish "
                    f"({interrupted.status}; {interrupted.operator}, "
                    f"{interrupted.started_at:%Y-%m-%d %H:%M} UTC)",
                    hint=f"continue it with `{self._command('apply', '--resume')}`, or undo it "
                         f"with `{self._command('rollback')}`")
            deferred = self._preflight(selected)
            if options.resume:
                journal.set_run_status(run_id, "running", finished=False)
            else:
                journal.start_run(self._run_info(run_id, "apply", operator, host))
            return self._apply_steps(run_id, selected, operator, options, options.resume, lock,
                                     deferred)

    def _preflight(self, selected: list[PlannedStep]) -> list[PlannedStep]:
        """Every step's checks, before anything changes. A step after a pending baseline step
        (the local seed of the app's schema) cannot check the target yet: it is returned, and
        its `check_target` runs once the baseline is laid, before the first other step."""
        ctx = self._context("preflight", operator_name(), None, "")
        states = self._journal().states(self.plan.environment)
        waiting: list[PlannedStep] = []
        for planned in selected:
            if not planned.enabled:
                continue
            ctx.extra["baseline_pending"] = bool(waiting)
            planned.step.preflight(ctx)
            if waiting or (planned.step.builds_baseline and not self._applied(planned, states)):
                waiting.append(planned)
        return [p for p in waiting if not p.step.builds_baseline]

    @staticmethod
    def _applied(planned: PlannedStep, states: dict[str, StepState]) -> bool:
        state = states.get(planned.step.id)
        return bool(state and state.status == "applied"
                    and state.fingerprint == fingerprint(planned))

    def _apply_steps(self, run_id: str, selected: list[PlannedStep], operator: str,
                     options: Options, resumed: bool, lock: EnvironmentLock,
                     deferred: list[PlannedStep] | None = None) -> RunResult:
        journal = self._journal()
        began = time.monotonic()
        self.emit(RunStarted(run_id, "apply", self.plan.name, self.plan.environment,
                             self.target.kind, [p.spec.id for p in selected], resumed))
        done_in_run = journal.completed_in_run(run_id) if resumed else set()
        states = journal.states(self.plan.environment)
        # Nothing pending (every persistent step applied, as is): change nothing — no backup,
        # no window, no announcement, no checks. `--from`/`--to` run what they name.
        idle = not resumed and options.from_step is None and options.to_step is None and \
            self._nothing_pending(selected, states)
        applied_here: list[tuple[PlannedStep, dict[str, Any]]] = []
        # Pessimistic until the loop ends normally: an unexpected exception escaping below is
        # journaled as a failure, never as success.
        status, exit_code, message = "failed", 4, "internal error (see --debug)"
        failures: list[str] = []
        try:
            for planned in selected:
                step = planned.step
                lock.ensure()
                if not planned.enabled:
                    self._finish(run_id, planned, "apply", "skipped", 0, "disabled by `when`")
                    continue
                state = states.get(step.id)
                if idle and not step.persistent:
                    self._finish(run_id, planned, "apply", "skipped", 0, "nothing pending")
                    continue
                if (step.id in done_in_run and not step.repeat_on_resume) or (
                        step.persistent and state and state.status == "applied"
                        and state.fingerprint == fingerprint(planned)):
                    self._finish(run_id, planned, "apply", "already-applied", 0,
                                 "already applied" if step.persistent else "done before resume")
                    continue
                if deferred and not step.builds_baseline:
                    for waiting in deferred:
                        waiting.step.check_target(self.target.db_url, project_root())
                    deferred = None
                detail, error = self._run_step(run_id, planned, operator, options)
                if error is None:
                    applied_here.append((planned, detail))
                    watched = self._watch_verdicts(run_id, step.id)
                    if watched is None:
                        continue
                    # A background analysis failed: the run stops after this step.
                    planned, error = watched
                    step = planned.step
                failures.append(f"{step.id}: {error}")
                if planned.on_failure == "continue":
                    continue
                if planned.on_failure == "rollback":
                    # The failed step too, when it left something behind (a partial state).
                    undo = [planned] if self._partial(planned) else []
                    undo += [p for p, _ in reversed(applied_here)
                             if p.step.persistent and p.step.reversible]
                    self._rollback_steps(run_id, undo, operator)
                    status, exit_code = "rolled-back", 1
                    message = f"step {step.id} failed and the run was rolled back: {error}"
                else:
                    status, exit_code = "failed", 1
                    message = f"step {step.id} failed: {error}"
                break
            else:
                status, exit_code = "succeeded", 0
                message = "nothing to do: every step is applied" if idle else ""
                if watched_to_the_end := self._watch_verdicts(run_id, None):
                    failures.append(f"{watched_to_the_end[0].step.id}: {watched_to_the_end[1]}")
                if failures:
                    status, exit_code = "failed", 1
                    message = "completed with failures: " + "; ".join(failures)
        except RollbackFailed as err:
            status, exit_code, message = "rollback-failed", 3, str(err)
        except UsageError as err:  # a check that waited for the baseline refused the run
            status, exit_code, message = "failed", 2, f"refused: {err}"
        except (StepFailed, LockHeld) as err:  # between steps: lease lapsed, lock lost
            status, exit_code, message = "failed", 1, str(err)
        except Parked as err:
            status, exit_code = "waiting", Parked.exit_code
            message = (f"{err} — continue with `rollout apply {self.plan.path} --resume`")
        except KeyboardInterrupt as err:
            status, exit_code = "interrupted", 1
            message = f"interrupted ({lock.stopped_by or interruption(err)})"
        finally:
            self._watch_verdicts(run_id, None)  # nothing watches past the run
            self._close(run_id, status, message, status == "succeeded", f"run {status}")
        self.emit(RunFinished(run_id, "apply", status, exit_code, time.monotonic() - began,
                              message))
        return RunResult(run_id, status, exit_code, list(self.results), message)

    def _run_step(self, run_id: str, planned: PlannedStep, operator: str,
                  options: Options) -> tuple[dict[str, Any], str | None]:
        """apply + verify one step, journaled; returns (detail, error message or None)."""
        journal = self._journal()
        step = planned.step
        self.emit(StepStarted(step.id, step.kind, "apply", step.describe()))
        journal.step_event(run_id, step.id, step.kind, "apply", "running")
        ctx = self._context(run_id, operator, options, step.id, planned)
        began = time.monotonic()
        detail: dict[str, Any] | None = None
        try:
            detail = step.apply(ctx)
            step.verify(ctx, detail)
        except KeyboardInterrupt:
            journal.step_event(run_id, step.id, step.kind, "apply", "interrupted",
                               time.monotonic() - began)
            raise
        except Parked as err:
            seconds = time.monotonic() - began
            journal.step_event(run_id, step.id, step.kind, "apply", "waiting", seconds,
                               error=str(err))
            self.emit(StepFinished(step.id, step.kind, "apply", "waiting", seconds,
                                   error=str(err)))
            raise
        except Exception as err:  # noqa: BLE001 — any failure of a step is that step's failure
            seconds = time.monotonic() - began
            error = describe_failure(err)
            # What the step had done: its apply's detail when only verify failed.
            partial = (err.partial if isinstance(err, RolloutError) else None) or detail
            if partial and step.persistent:
                # What the step did before failing, so `rollback` can undo it.
                journal.set_state(self.plan.environment, step.id, step.kind, "partial",
                                  fingerprint(planned), run_id, partial)
            journal.step_event(run_id, step.id, step.kind, "apply", "failed", seconds,
                               partial, error=error)
            self.emit(StepFinished(step.id, step.kind, "apply", "failed", seconds, error=error))
            return {}, error
        assert detail is not None
        seconds = time.monotonic() - began
        state = ("applied", fingerprint(planned)) if step.persistent else None
        journal.step_succeeded(run_id, self.plan.environment, step.id, step.kind, "apply",
                               seconds, detail, state)
        self.emit(StepFinished(step.id, step.kind, "apply", "succeeded", seconds,
                               summarize(detail), detail))
        return detail, None

    def _finish(self, run_id: str, planned: PlannedStep, action: str, status: str,
                seconds: float, summary: str) -> None:
        step = planned.step
        self._journal().step_event(run_id, step.id, step.kind, action, status, seconds,
                                   {"summary": summary})
        self.emit(StepFinished(step.id, step.kind, action, status, seconds, summary))

    # ---- rollback ------------------------------------------------------------------------------

    def rollback(self, to_step: str | None, options: Options) -> RunResult:
        """Undo the applied steps of this plan, newest first, down to (not including) `to_step`."""
        if to_step:
            self.plan.index(to_step)  # an unknown step is a usage error before anything starts
        self.target.prepare()
        self.masker.add(self.target.secret_values())
        journal = self.journal = Journal(self.target.db_url, self.masker)
        journal.ensure_schema()
        operator = options.operator or operator_name()
        host = socket.gethostname()
        run_id = str(uuid.uuid4())
        began = time.monotonic()
        with journal.lock(self.plan.environment, run_id, operator, host) as lock:
            self.lock = lock
            interrupted = journal.interrupted_run(self.plan.environment)
            if interrupted:
                self._refuse_if_alive(interrupted)
                journal.set_run_status(interrupted.id, "abandoned",
                                       f"rolled back by run {run_id[:8]}")
            states = journal.states(self.plan.environment)
            todo = self._undo_order(to_step, states)
            journal.start_run(self._run_info(run_id, "rollback", operator, host))
            self.emit(RunStarted(run_id, "rollback", self.plan.name, self.plan.environment,
                                 self.target.kind, [p.spec.id for p in todo]))
            status, exit_code, message = "succeeded", 0, ""
            if not todo:
                message = "nothing to roll back"
            try:
                self._rollback_steps(run_id, todo, operator, states, lock)
            except RollbackFailed as err:
                status, exit_code, message = "rollback-failed", 3, str(err)
            except KeyboardInterrupt:
                status, exit_code, message = "interrupted", 3, "rollback interrupted"
            finally:
                self._close(run_id, status, message, False, f"rollback {status}")
        self.emit(RunFinished(run_id, "rollback", status, exit_code, time.monotonic() - began,
                              message))
        return RunResult(run_id, status, exit_code, list(self.results), message)

    def rollback_preview(self, to_step: str | None) -> list[PlannedStep]:
        """What `rollback` would undo now, newest first, read from the journal (no lock, no
        change: `rollout rollback --dry-run` and the production confirmation show it)."""
        states: dict[str, StepState] = {}
        if self.target.reachable():
            journal = Journal(self.target.db_url, self.masker)
            try:
                states = journal.states(self.plan.environment) if journal.exists() else {}
            finally:
                journal.close()
        return self._undo_order(to_step, states)

    def _undo_order(self, to_step: str | None,
                    states: dict[str, StepState]) -> list[PlannedStep]:
        """The applied (or partly applied) reversible steps after `to_step`, newest first."""
        start = self.plan.index(to_step) + 1 if to_step else 0
        return [p for p in reversed(self.plan.steps[start:])
                if p.step.persistent and p.step.reversible
                and (s := states.get(p.step.id)) and s.status in UNDOABLE]

    def _rollback_steps(self, run_id: str, todo: list[PlannedStep], operator: str,
                        states: dict[str, StepState] | None = None,
                        lock: EnvironmentLock | None = None) -> None:
        journal = self._journal()
        states = states if states is not None else journal.states(self.plan.environment)
        for planned in todo:
            step = planned.step
            if lock is not None:
                lock.ensure()
            state = states.get(step.id)
            applied_detail = state.detail if state else {}
            self.emit(StepStarted(step.id, step.kind, "rollback", f"undo: {step.describe()}"))
            journal.step_event(run_id, step.id, step.kind, "rollback", "running")
            began = time.monotonic()
            try:
                detail = step.rollback(self._context(run_id, operator, None, step.id),
                                       applied_detail)
            except Exception as err:
                seconds = time.monotonic() - began
                error = describe_failure(err)
                journal.step_event(run_id, step.id, step.kind, "rollback", "failed", seconds,
                                   error=error)
                self.emit(StepFinished(step.id, step.kind, "rollback", "failed", seconds,
                                       error=error))
                raise RollbackFailed(f"rollback of step {step.id} failed: {error}",
                                     hint=f"`{self._command('status')}` shows what was undone; "
                                          f"fix the cause and run `{self._command('rollback')}` "
                                          "again") from err
            seconds = time.monotonic() - began
            journal.step_succeeded(run_id, self.plan.environment, step.id, step.kind, "rollback",
                                   seconds, detail, ("rolled-back", fingerprint(planned)))
            self.emit(StepFinished(step.id, step.kind, "rollback", "succeeded", seconds,
                                   summarize(detail), detail))

    # ---- shared pieces ------------------------------------------------------------------------

    def _nothing_pending(self, selected: list[PlannedStep],
                         states: dict[str, StepState]) -> bool:
        persistent = [p for p in selected if p.enabled and p.step.persistent]
        return bool(persistent) and all(
            (s := states.get(p.step.id)) and s.status == "applied"
            and s.fingerprint == fingerprint(p) for p in persistent)

    def _refuse_if_alive(self, run: RunInfo) -> None:
        """We hold the lock, yet `run` may still be alive: told to stop (`unlock --force
        --stop-live-run`) and finishing its step. Never run two processes on one run."""
        age = self._journal().beat_age(run.id)
        if age is not None and age < ALIVE_SECONDS:
            raise LockHeld(f"run {run.id[:8]} ({run.operator}@{run.host}) is still alive: its "
                           f"process beat {age:.0f}s ago, without the lock "
                           f"({run.message or 'it lost its database session'})",
                           hint="wait until `rollout status` no longer shows it alive")

    def _partial(self, planned: PlannedStep) -> bool:
        state = self._journal().states(self.plan.environment).get(planned.step.id)
        return bool(state and state.status == "partial")

    def approve(self, run_id: str, step_id: str, approver: str) -> None:
        self._journal().approve(run_id, step_id, approver)

    def _command(self, verb: str, *args: str) -> str:
        """A command for the operator to run, as printed: this plan's file, quoted for a shell."""
        return shlex.join(["rollout", verb, str(self.plan.path), *args])

    def _journal(self) -> Journal:
        assert self.journal is not None, "the journal is opened by apply/rollback"
        return self.journal

    def _select(self, from_step: str | None, to_step: str | None) -> list[PlannedStep]:
        start = self.plan.index(from_step) if from_step else 0
        end = self.plan.index(to_step) + 1 if to_step else len(self.plan.steps)
        if start >= end:
            raise UsageError(f"--from {from_step} comes after --to {to_step}")
        return self.plan.steps[start:end]

    def _context(self, run_id: str, operator: str, options: Options | None,
                 step_id: str, planned: PlannedStep | None = None) -> StepContext:
        artifacts = state_dir() / "runs" / run_id
        approver = options.approver if options else None
        ctx = StepContext(
            target=self.target, run_id=run_id, environment=self.plan.environment,
            operator=operator, artifacts=artifacts, root=self.root,
            progress=lambda message, fraction: self.emit(StepProgress(step_id, message, fraction)),
            wait_for_approval=lambda gate, message, timeout: self._wait_for_approval(
                run_id, gate, message, timeout, approver),
            extra={"slack_webhook_url": self.plan.model.notifications.slack_webhook_url,
                   "maintenance_since": self._maintenance_since(run_id),
                   "first_attempt": self._first_attempt(run_id, step_id),
                   "session_pid": self.lock.pid if self.lock else None},
        )
        if planned is not None:  # applying: long steps may checkpoint and resume
            ctx.checkpoint = lambda detail, milestone: self._checkpoint(run_id, planned, detail,
                                                                        milestone)
            ctx.background = self._watches.append
            state = self._journal().states(self.plan.environment).get(step_id) \
                if options and options.resume else None
            if state and state.run_id == run_id and state.status == "partial":
                ctx.resume_detail = state.detail
        artifacts.mkdir(parents=True, exist_ok=True)
        return ctx

    def _first_attempt(self, run_id: str, step_id: str) -> str | None:
        """When this run first started the step (a parked gate's timeout counts from there)."""
        if self.journal is None or run_id == "preflight":
            return None
        for event in self.journal.events(run_id):
            if event["step_id"] == step_id and event["action"] == "apply":
                return str(event["at"].isoformat())
        return None

    def _watch_verdicts(self, run_id: str,
                        finished: str | None) -> tuple[PlannedStep, str] | None:
        """After step `finished` (None: the run ends): end the background analyses that failed
        or whose `until` step is done, journaling each verdict as a `watch` event of its step.
        Returns the first failed one's step and error."""
        done = None if finished is None else self.plan.index(finished)
        failed: tuple[PlannedStep, str] | None = None
        for watch in list(self._watches):
            failure = watch.failure()
            ends = done is None or (watch.until is not None
                                    and done >= self.plan.index(watch.until))
            if failure is None and not ends:
                continue
            self._watches.remove(watch)
            detail = watch.stop()
            failure = failure or watch.failure()
            status = "failed" if failure else "succeeded"
            error = f"background analysis failed: {failure}" if failure else None
            self._journal().step_event(run_id, watch.step_id, watch.kind, "watch", status,
                                       None, detail, error=error)
            self.emit(StepFinished(watch.step_id, watch.kind, "watch", status, 0.0,
                                   summarize(detail), detail, error))
            if error and failed is None:
                failed = (self.plan.steps[self.plan.index(watch.step_id)], error)
        return failed

    def _checkpoint(self, run_id: str, planned: PlannedStep, detail: dict[str, Any],
                    milestone: bool) -> None:
        """A running step's progress as its partial state (rollback undoes it, --resume
        continues it); a milestone is also a `checkpoint` event in the run's history."""
        journal, step = self._journal(), planned.step
        journal.set_state(self.plan.environment, step.id, step.kind, "partial",
                          fingerprint(planned), run_id, detail)
        if milestone:
            journal.step_event(run_id, step.id, step.kind, "apply", "checkpoint", None, detail)

    def _maintenance_since(self, run_id: str) -> str | None:
        """When this run opened the maintenance window (from the journal: survives a crash)."""
        if self.journal is None or run_id == "preflight":
            return None
        for event in reversed(self.journal.events(run_id)):
            if event["kind"] == "db.maintenance" and event["status"] == "succeeded" \
                    and event["detail"].get("since"):
                return str(event["detail"]["since"])
        return None

    def _wait_for_approval(self, run_id: str, step_id: str, message: str, timeout: float,
                           approver: Callable[[str, str, str, float], None] | None) -> str:
        journal = self._journal()
        self.emit(Notice(f"step {step_id} waits for approval: {message} — approve with "
                         f"`{self._command('approve', run_id, step_id)}`", "warning"))
        if approver is not None:
            approver(run_id, step_id, message, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            who = journal.approval(run_id, step_id)
            if who:
                return who
            time.sleep(APPROVAL_POLL_SECONDS)
        raise StepFailed(f"no approval for step {step_id} within {timeout:.0f}s")

    def _close(self, run_id: str, status: str, message: str, succeeded: bool,
               how: str) -> None:
        """Lift the window unless the run succeeded, and journal its end — to the end, even if
        a signal arrives meanwhile (a second Ctrl-C, SIGHUP after SIGTERM): the record then
        says what really happened; the signal asked for nothing more than a stop."""
        while True:
            try:
                self._lift_maintenance_unless(succeeded, how)
                self._journal().set_run_status(run_id, status, message or None)
                return
            except KeyboardInterrupt:
                continue

    def _lift_maintenance_unless(self, succeeded: bool, how: str) -> None:
        """Never leave the API read-only: lift the window unless the run succeeded with it
        closed (a successful plan closes it itself; lifting again is harmless). `how` is
        journaled as the way the window ended."""
        try:
            active = db.maintenance_active(self.target.db_url)
        except RolloutError:
            self.emit(Notice("could not check the maintenance window (database unreachable): "
                             "check it with `rollout status`", "error"))
            return
        if active:
            lifted = db.maintenance_off(self.target.db_url, f"lifted when the {how}")
            level = "info" if succeeded else "warning"
            self.emit(Notice(f"maintenance window lifted on {len(lifted)} table(s)", level))

    def _run_info(self, run_id: str, command: str, operator: str, host: str) -> RunInfo:
        return RunInfo(
            id=run_id, environment=self.plan.environment, command=command,
            plan_name=self.plan.name, plan_path=str(self.plan.path),
            plan_checksum=self.plan.checksum, git_commit=git_commit(self.root),
            operator=operator, host=host, status="running", started_at=None,  # type: ignore[arg-type]
            finished_at=None, message=None, release_fingerprint=self.plan.release_fingerprint)


def drift_notes(plan: Plan, target: Target, states: dict[str, StepState]) -> dict[str, str]:
    """Applied steps whose effect the target no longer shows (a flag killed since), by id."""
    notes = {}
    for planned in plan.steps:
        state = states.get(planned.step.id)
        if state and state.status == "applied":
            note = planned.step.drift(target, state.detail)
            if note:
                notes[planned.step.id] = note
    return notes


def interruption(err: KeyboardInterrupt) -> str:
    """Which signal stopped the run (the CLI raises KeyboardInterrupt('SIGTERM'), …)."""
    return str(err.args[0]) if err.args else "SIGINT, Ctrl-C"


def describe_failure(err: BaseException) -> str:
    """One line for the journal and the operator; unexpected errors name their type."""
    if isinstance(err, RolloutError):
        return str(err)
    if isinstance(err, psycopg.OperationalError):
        return f"database connection lost: {str(err).strip().splitlines()[0]}"
    return f"unexpected {type(err).__name__}: {err}"


def fingerprint(planned: PlannedStep) -> str:
    return hashlib.sha256(planned.step.fingerprint().encode()).hexdigest()


def summarize(detail: dict[str, Any]) -> str:
    """One line of a step's detail (long lists are counted, not listed); values are never cut:
    parts beyond SUMMARY_LIMIT are left off with a visible `…(+N)` (the detail has them)."""
    parts = []
    for key, value in detail.items():
        if isinstance(value, list | dict):
            if len(value) <= 3 and all(isinstance(v, str | int | float) for v in value):
                parts.append(f"{key}={','.join(map(str, value)) or '-'}")
            else:
                parts.append(f"{key}={len(value)}")
        else:
            parts.append(f"{key}={value}")
    # Whole values only: what does not fit is left off visibly (the detail has it all).
    line = ""
    for i, part in enumerate(parts):
        if line and len(line) + len(part) + 1 > SUMMARY_LIMIT:
            return f"{line} …(+{len(parts) - i})"
        line = f"{line} {part}" if line else part
    return line
