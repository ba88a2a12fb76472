"""The staging rehearsal (seed §5: "rollback should be rehearsed on staging before production"),
and the standalone smoke and load checks it is built from.

`Rehearsal.run` goes: baseline → snapshot → apply → smoke → witness → rollback →
verify-rollback → reapply → smoke-again. The rollback is proven, not assumed: the catalog of
the app schemas must equal the snapshot taken before the apply, and every message and report
that existed before the rollback — including a DM and a report written through the API while
v2 was live — must still exist (reports stay in production's own `public.reported_messages`;
the lookup also covers `messaging_v2_archive`, for a release that archives them). The
rehearsal is journaled as a run with `command = 'rehearse'`
(one step event per phase) under the plan's checksum, so a sign-off can ask "was this exact
plan's rollback rehearsed?". Like the runner, it never prints: it emits events and returns a
report.
"""

from __future__ import annotations

import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollout.adapters.targets import Target
from rollout.checks import k6, smoke, snapshot
from rollout.checks.k6 import LoadParams, LoadReport
from rollout.checks.smoke import SmokeReport
from rollout.engine.events import (
    Event,
    Masker,
    Notice,
    StepFinished,
    StepProgress,
    StepStarted,
)
from rollout.engine.journal import Journal, RunInfo
from rollout.engine.plan import Plan
from rollout.engine.runner import Engine, Options, RunResult, git_commit, operator_name
from rollout.errors import RolloutError
from rollout.paths import project_root, state_dir
from rollout.steps.checks import (
    CheckLoad,
    require_k6,
    smoke_failure,
    write_smoke_reports,
)

APP_SCHEMAS = ["public"]
MESSAGES = ["public.messages"]
REPORTS = ["public.reported_messages", "messaging_v2_archive.reported_messages"]
PHASES = {
    "reset": "roll back what an earlier apply left, so the rehearsal starts where production is",
    "baseline": "apply the steps a rollback keeps (the local seed of the legacy app)",
    "snapshot": "record the app schemas' catalog before the apply",
    "apply": "apply the plan",
    "smoke": "run the §4.2 smoke flows (their data kept for the rollback to keep)",
    "witness": "write a DM and a report through the API while v2 is live",
    "rollback": "roll the plan back",
    "verify-rollback": "catalog equals the snapshot; every message and report still there",
    "reapply": "apply the plan again; every message and report still there",
    "smoke-again": "run the smoke flows again",
}


@dataclass(frozen=True)
class PhaseStarted:
    index: int
    total: int
    name: str
    description: str


@dataclass(frozen=True)
class PhaseFinished:
    index: int
    name: str
    status: str  # passed | failed | skipped
    seconds: float
    summary: str
    problems: list[str] = field(default_factory=list)


RehearsalEvent = Event | PhaseStarted | PhaseFinished
RehearsalSink = Callable[[RehearsalEvent], None]


@dataclass
class Phase:
    name: str
    status: str
    seconds: float
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class RehearsalReport:
    run_id: str
    plan: str
    plan_path: str
    plan_checksum: str
    environment: str
    target: str
    git_commit: str | None
    started_at: str
    schemas: list[str]
    phases: list[Phase] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # phase → engine run id
    schema: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    smoke: list[dict[str, Any]] = field(default_factory=list)
    artifacts: str = ""
    seconds: float = 0.0
    exit_code: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.phases) and all(p.status in ("passed", "skipped") for p in self.phases)

    def problems(self) -> list[str]:
        return [f"{p.name}: {problem}" for p in self.phases for problem in p.problems]

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["passed"] = self.passed
        return body

    def to_junit_xml(self) -> str:
        """Each phase a test case (CI shows which part of the rehearsal broke)."""
        failed = sum(p.status == "failed" for p in self.phases)
        skipped = sum(p.status == "skipped" for p in self.phases)
        suites = ET.Element("testsuites", name="rollout rehearsal", tests=str(len(self.phases)),
                            failures=str(failed), errors="0", time=f"{self.seconds:.3f}")
        suite = ET.SubElement(suites, "testsuite", name="rollout.rehearsal",
                              tests=str(len(self.phases)), failures=str(failed), errors="0",
                              skipped=str(skipped), time=f"{self.seconds:.3f}",
                              timestamp=self.started_at)
        props = ET.SubElement(suite, "properties")
        for name, value in (("plan", self.plan_path), ("environment", self.environment),
                            ("plan_checksum", self.plan_checksum)):
            ET.SubElement(props, "property", name=name, value=value)
        for phase in self.phases:
            case = ET.SubElement(suite, "testcase", classname="rollout.rehearsal",
                                 name=phase.name, time=f"{phase.seconds:.3f}")
            if phase.status == "failed":
                text = "\n".join(phase.problems) or phase.summary
                failure = ET.SubElement(case, "failure", message=text.splitlines()[0],
                                        type="RehearsalPhaseFailed")
                failure.text = text
            elif phase.status == "skipped":
                ET.SubElement(case, "skipped", message=phase.summary)
            else:
                ET.SubElement(case, "system-out").text = phase.summary
        ET.indent(suites)
        return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


class PhaseError(Exception):
    """A phase failed: its problems are recorded; later phases that need it are skipped."""

    def __init__(self, problems: list[str], detail: dict[str, Any] | None = None,
                 exit_code: int = 1) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.detail = detail or {}
        self.exit_code = exit_code


class Rehearsal:
    """apply → smoke → rollback → verify → apply → smoke, on one plan's target."""

    def __init__(self, plan: Plan, target: Target, sink: RehearsalSink, *, keep: bool = False,
                 schemas: list[str] | None = None) -> None:
        self.plan = plan
        self.target = target
        self.sink = sink
        self.keep = keep
        self.schemas = schemas or list(APP_SCHEMAS)
        self.masker = Masker(plan.secrets)
        self.run_id = str(uuid.uuid4())
        self.artifacts = state_dir() / "rehearsals" / self.run_id
        self.before: snapshot.Catalog = {}
        self.kept_rows: dict[str, snapshot.Rows] = {}
        self.witness: dict[str, str] = {}
        self.demo_rows: set[str] = set()  # the smoke cast's: a plan's smoke step removes them

    def emit(self, event: RehearsalEvent) -> None:
        self.sink(self.masker.event(event))  # type: ignore[arg-type]

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> RehearsalReport:
        began = time.monotonic()
        self.target.prepare()
        self.masker.add(self.target.secret_values())
        self.artifacts.mkdir(parents=True, exist_ok=True)
        report = RehearsalReport(
            run_id=self.run_id, plan=self.plan.name, plan_path=str(self.plan.path),
            plan_checksum=self.plan.checksum, environment=self.plan.environment,
            target=self.target.kind, git_commit=git_commit(project_root()),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"), schemas=self.schemas,
            artifacts=str(self.artifacts))
        journal = Journal(self.target.db_url, self.masker)
        journal.ensure_schema()
        journal.start_run(RunInfo(
            id=self.run_id, environment=self.plan.environment, command="rehearse",
            plan_name=self.plan.name, plan_path=str(self.plan.path),
            plan_checksum=self.plan.checksum, git_commit=report.git_commit,
            operator=operator_name(), host=socket.gethostname(), status="running",
            started_at=datetime.now(UTC), finished_at=None, message=None,
            release_fingerprint=self.plan.release_fingerprint))
        phases: list[tuple[str, Callable[[RehearsalReport], tuple[str, dict[str, Any]]]]] = [
            ("reset", self._reset), ("baseline", self._baseline), ("snapshot", self._snapshot),
            ("apply", self._apply),
            ("smoke", self._smoke), ("witness", self._witness), ("rollback", self._rollback),
            ("verify-rollback", self._verify_rollback), ("reapply", self._reapply),
            ("smoke-again", self._smoke_again),
        ]
        status = "failed"
        try:
            blocked: str | None = None
            for index, (name, action) in enumerate(phases, 1):
                phase = self._phase(report, index, len(phases), name, action, blocked)
                journal.step_event(self.run_id, name, "rehearsal", "rehearse", phase.status,
                                   phase.seconds, {"summary": phase.summary},
                                   "; ".join(phase.problems) or None)
                if phase.status == "failed" and name not in ("smoke", "witness",
                                                             "verify-rollback", "smoke-again"):
                    blocked = blocked or name  # the target is not where later phases need it
            status = "succeeded" if report.passed else "failed"
        except KeyboardInterrupt:
            status = "interrupted"
            report.exit_code = report.exit_code or 1
            raise
        finally:
            self._clean_up()
            report.seconds = round(time.monotonic() - began, 3)
            if status == "failed":
                report.exit_code = max(report.exit_code, 1)
            message = self._message(report) if status != "interrupted" else "interrupted"
            journal.set_run_status(self.run_id, status, message)
            journal.close()
        return report

    def _phase(self, report: RehearsalReport, index: int, total: int, name: str,
               action: Callable[[RehearsalReport], tuple[str, dict[str, Any]]],
               blocked: str | None) -> Phase:
        self.emit(PhaseStarted(index, total, name, PHASES[name]))
        began = time.monotonic()
        if blocked:
            phase = Phase(name, "skipped", 0.0, f"not run: {blocked} failed")
        else:
            try:
                summary, detail = action(report)
                phase = Phase(name, "passed", 0.0, summary, detail)
            except PhaseError as err:
                phase = Phase(name, "failed", 0.0, err.problems[0], err.detail, err.problems)
                report.exit_code = max(report.exit_code, err.exit_code)
            except RolloutError as err:
                phase = Phase(name, "failed", 0.0, str(err), {}, [str(err)])
                report.exit_code = max(report.exit_code, 1)
        phase.seconds = round(time.monotonic() - began, 3)
        phase = Phase(**self.masker.data(asdict(phase)))
        report.phases.append(phase)
        self.emit(PhaseFinished(index, name, phase.status, phase.seconds, phase.summary,
                                phase.problems))
        return phase

    # ---- phases ----------------------------------------------------------------------------------

    def _engine_run(self, report: RehearsalReport, name: str, options: Options | None = None,
                    rollback: bool = False) -> RunResult:
        engine = Engine(self.plan, self.target, self.sink)
        result = (engine.rollback(None, Options()) if rollback
                  else engine.apply(options or Options()))
        report.runs[name] = result.run_id
        if result.exit_code != 0:
            raise PhaseError([f"{'rollback' if rollback else 'apply'} {result.status}: "
                              f"{result.message}"], {"run": result.run_id},
                             exit_code=result.exit_code)
        return result

    def _reset(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        """A rehearsal starts from the plan not applied (as production is before its release):
        an earlier rehearsal leaves staging applied, so roll that back first."""
        reversible = {p.spec.id for p in self.plan.steps
                      if p.enabled and p.step.persistent and p.step.reversible}
        applied = [v.id for v in Engine(self.plan, self.target, self.sink).view()
                   if v.id in reversible and v.state in ("applied", "changed")]
        if not applied:
            return "nothing of the plan is applied", {}
        result = self._engine_run(report, "reset", rollback=True)
        return (f"rolled back {len(applied)} applied step(s) (run {result.run_id})",
                {"steps": applied})

    def _baseline(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        """The leading steps a rollback leaves in place (local seed data), so the snapshot is
        the state the rollback must return to. On a hosted target there are none."""
        kept = []
        for planned in self.plan.steps:
            if not (planned.step.persistent and not planned.step.reversible):
                break
            kept.append(planned.spec.id)
        if not kept:
            return "nothing to prepare: the target's current state is the baseline", {}
        result = self._engine_run(report, "baseline", Options(to_step=kept[-1]))
        return f"applied {', '.join(kept)} (run {result.run_id})", {"steps": kept}

    def _snapshot(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        self.before = snapshot.catalog(self.target.db_url, self.schemas)
        counts = snapshot.catalog_counts(self.before)
        report.schema = {"schemas": self.schemas, "objects_before": counts}
        return ", ".join(f"{n} {kind}" for kind, n in counts.items()), {"objects": counts}

    def _apply(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        result = self._engine_run(report, "apply")
        return f"run {result.run_id} {result.status}", {"run": result.run_id}

    def _smoke(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        return self._run_smoke(report, "smoke", keep=True)

    def _smoke_again(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        return self._run_smoke(report, "smoke-again", keep=self.keep)

    def _run_smoke(self, report: RehearsalReport, name: str,
                   keep: bool) -> tuple[str, dict[str, Any]]:
        result, paths = smoke_check(self.target, self.emit, keep=keep, folder=self.artifacts,
                                    stem=name)
        entry = {"phase": name, "passed": result.passed, "flows": len(result.flows),
                 "failed": [f.name for f in result.flows if not f.passed], **paths}
        report.smoke.append(entry)
        if not result.passed:
            raise PhaseError([smoke_failure(result)], entry)
        return f"{len(result.flows)}/{len(result.flows)} flows passed", entry

    def _witness(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        t = self.target
        self.witness = snapshot.write_witness(t.api_url, t.anon_key, t.jwt_secret, t.db_url)
        report.data["witness"] = dict(self.witness)
        return (f"message {self.witness['message_id']} and report "
                f"{self.witness['report_id']} written through the API"), dict(self.witness)

    def _rows(self) -> dict[str, snapshot.Rows]:
        url = self.target.db_url
        return {"messages": snapshot.rows(url, "messages", MESSAGES),
                "reported_messages": snapshot.rows(url, "reported_messages", REPORTS)}

    def _rollback(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        self.kept_rows = self._rows()
        self.demo_rows = snapshot.owned_rows(self.target.db_url, smoke.demo_cast().user_ids)
        report.data["before_rollback"] = {k: v.summary() for k, v in self.kept_rows.items()}
        result = self._engine_run(report, "rollback", rollback=True)
        return f"run {result.run_id} {result.status}", {"run": result.run_id}

    def _verify_rollback(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        after = snapshot.catalog(self.target.db_url, self.schemas)
        differences = snapshot.catalog_differences(self.before, after)
        report.schema.update({"objects_after_rollback": snapshot.catalog_counts(after),
                              "equal": not differences, "differences": differences})
        problems = [f"schema differs from the snapshot: {d}" for d in differences]
        problems += self._check_rows(report, "after_rollback", set())
        report_home = snapshot.has_row(self.target.db_url, REPORTS,
                                       self.witness.get("report_id", ""))
        if self.witness and report_home is None:
            problems.append(f"the witness report {self.witness['report_id']} is gone")
        detail = {"schema_equal": not differences, "differences": len(differences),
                  "witness_report_in": report_home}
        if problems:
            raise PhaseError(problems, detail)
        rows = self.kept_rows
        return (f"schema equal ({sum(snapshot.catalog_counts(after).values())} objects); "
                f"{rows['messages'].count} messages and {rows['reported_messages'].count} "
                f"report(s) kept (reports in {report_home or '-'})"), detail

    def _reapply(self, report: RehearsalReport) -> tuple[str, dict[str, Any]]:
        result = self._engine_run(report, "reapply")
        # The plan's own smoke step removes the smoke cast's rows at its end: that may go.
        problems = self._check_rows(report, "after_reapply", self.demo_rows)
        home = snapshot.has_row(self.target.db_url, ["public.reported_messages"],
                                self.witness.get("report_id", ""))
        if self.witness and home is None:
            problems.append("the witness report is not back in public.reported_messages")
        if problems:
            raise PhaseError(problems, {"run": result.run_id})
        return (f"run {result.run_id} {result.status}; every message and report there, "
                "reports back in public"), {"run": result.run_id}

    def _check_rows(self, report: RehearsalReport, moment: str,
                    allowed: set[str]) -> list[str]:
        now = self._rows()
        report.data[moment] = {k: v.summary() for k, v in now.items()}
        problems: list[str] = []
        for key, before in self.kept_rows.items():
            problems += snapshot.kept(before, now[key], allowed)
        report.data[f"kept_{moment}"] = not problems
        return problems

    # ---- the end ---------------------------------------------------------------------------------

    def _clean_up(self) -> None:
        """The first smoke kept its demo cast for the rollback to keep, and the witness users
        are the rehearsal's own: remove both unless asked to keep them."""
        if self.keep:
            return
        for remove in (smoke.remove_demo, snapshot.remove_witness):
            try:
                remove(self.target.db_url)
            except RolloutError as err:
                self.emit(Notice(f"could not remove the rehearsal's demo data: {err}", "warning"))

    def _message(self, report: RehearsalReport) -> str:
        if report.passed:
            rows = self.kept_rows
            return (f"rehearsal passed: rollback restored the schema exactly and kept "
                    f"{rows['messages'].count} messages and {rows['reported_messages'].count} "
                    f"report(s)")
        problems = report.problems()
        return f"rehearsal failed: {'; '.join(problems[:3])}"[:1000]


# ---- the standalone checks --------------------------------------------------------------------


def smoke_check(target: Target, sink: Callable[[Event], None], *, keep: bool = False,
                folder: Path | None = None, stem: str = "smoke"
                ) -> tuple[SmokeReport, dict[str, str]]:
    """Run the smoke flows, with step events for live progress; reports written to `folder`."""
    target.prepare()
    sink(StepStarted(stem, "check.smoke", "check", f"{len(smoke.FLOWS)} §4.2 flows over HTTP"))
    began = time.monotonic()
    try:
        result = smoke.run_flows(target.api_url, target.anon_key, target.jwt_secret,
                                 target.db_url, keep=keep,
                                 progress=lambda m, f: sink(StepProgress(stem, m, f)))
    except RolloutError as err:
        sink(StepFinished(stem, "check.smoke", "check", "failed", time.monotonic() - began,
                          error=str(err)))
        raise
    paths = write_smoke_reports(result, folder, stem) if folder is not None else {}
    passed = sum(f.passed for f in result.flows)
    sink(StepFinished(stem, "check.smoke", "check", "succeeded" if result.passed else "failed",
                      time.monotonic() - began, f"{passed}/{len(result.flows)} flows passed",
                      error=None if result.passed else smoke_failure(result)))
    return result, paths


def load_params(plan: Plan) -> LoadParams:
    """The plan's `check.load` parameters (its first such step), else the defaults."""
    for planned in plan.steps:
        if isinstance(planned.step, CheckLoad):
            return planned.step.params.load_params()
    return LoadParams()


def load_check(target: Target, sink: Callable[[Event], None], params: LoadParams,
               folder: Path) -> LoadReport:
    """Run k6 (live progress as step events); the k6 summary and report stay in `folder`."""
    require_k6(params.k6_bin)
    target.prepare()
    sink(StepStarted("load", "check.load", "check", "k6 against the target"))
    began = time.monotonic()
    try:
        result = k6.run_load(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                             params, folder, progress=lambda m, f: sink(StepProgress("load", m, f)))
    except RolloutError as err:
        sink(StepFinished("load", "check.load", "check", "failed", time.monotonic() - began,
                          error=str(err)))
        raise
    (folder / "load-report.json").write_text(result.to_json() + "\n")
    sink(StepFinished("load", "check.load", "check", "failed" if result.crossed else "succeeded",
                      time.monotonic() - began, f"{result.requests} requests"))
    return result
