"""Checks against the live target: the §4.2 smoke flows and the §4.3 k6 load.

Neither leaves anything behind (they run each time: `persistent = False`) and neither is undone
by a rollback. Both keep their full reports in the run's artifacts (`.rollout/runs/<run>/<step>/`)
and return only small figures (counts, verdicts, report paths) for the journal: never a token,
a key or a message text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from rollout.checks import k6, smoke
from rollout.checks.k6 import LoadParams, LoadReport
from rollout.checks.smoke import SmokeReport
from rollout.errors import StepFailed, TargetError, UsageError
from rollout.steps.base import Detail, Params, Step, StepContext, project_file

K6_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def inside_project(value: str | None, info: ValidationInfo) -> str | None:
    """A directory to write into: absolute, or relative to the project without escaping it."""
    if value is None or Path(value).is_absolute():
        return value
    root: Path = (info.context or {})["root"]
    if not (root / value).resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{value!r} points outside the project directory")
    return value


def k6_duration(value: str | None) -> str | None:
    if value is not None and not K6_DURATION.match(value):
        raise ValueError(f"{value!r} is not a k6 duration (e.g. 30s, 5m, 1m30s)")
    return value


def report_folder(ctx: StepContext, step_id: str, report_dir: str | None) -> Path:
    """Where a check writes its reports: `report_dir`, else `<run artifacts>/<step id>`."""
    if report_dir is None:
        return ctx.artifacts / step_id
    path = Path(report_dir)
    return path if path.is_absolute() else ctx.root / path


def write_smoke_reports(report: SmokeReport, folder: Path, stem: str = "smoke") -> dict[str, str]:
    """The report as JSON and JUnit XML in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, junit_path = folder / f"{stem}.json", folder / f"{stem}.junit.xml"
    json_path.write_text(report.to_json() + "\n")
    junit_path.write_text(report.to_junit_xml())
    return {"report": str(json_path), "junit": str(junit_path)}


def smoke_failure(report: SmokeReport) -> str:
    """One line naming each failed flow and why."""
    failed = [f for f in report.flows if not f.passed]
    return (f"{len(failed)} of {len(report.flows)} smoke flow(s) failed: "
            + "; ".join(f"{f.name} — {f.detail.splitlines()[0] if f.detail else 'failed'}"
                        for f in failed))


def load_figures(report: LoadReport) -> str:
    """The key figures of a load run, for one line: requests, rate, p99s, errors, verdicts."""
    parts = [f"{report.requests} requests at {report.rate:.1f}/s",
             f"error rate {report.error_rate:.2%}"]
    if report.dropped_iterations:
        parts.append(f"{report.dropped_iterations} iterations dropped (not sent: no free VU "
                     "at their arrival time)")
    parts += [f"{e.kind} p99 {e.p99_ms:.0f} ms" for e in report.endpoints.values()
              if e.p99_ms is not None]
    for t in report.thresholds:
        seen = f" (observed {t.observed:.4g})" if t.observed is not None else ""
        parts.append(f"{t.metric} {t.expression} {t.verdict}{seen}")
    return ", ".join(parts)


def require_k6(explicit: str | None = None) -> str:
    """The k6 binary, or a UsageError (exit 2, nothing changed) saying how to install it."""
    try:
        return k6.find_k6(explicit)
    except TargetError as err:
        raise UsageError(str(err), hint=err.hint) from err


def require_smoke_credentials(ctx: StepContext) -> None:
    """Smoke and load sign users in with tokens minted from the project's JWT secret."""
    missing = [name for name, value in (("anon_key", ctx.target.anon_key),
                                        ("jwt_secret", ctx.target.jwt_secret)) if not value]
    if missing:
        raise UsageError(f"the checks need the target's {' and '.join(missing)}",
                         hint="set SUPABASE_ANON_KEY and SUPABASE_JWT_SECRET for the plan's target")


# ---- check.smoke -------------------------------------------------------------------------------


class SmokeParams(Params):
    keep: bool = Field(False, description="Keep the demo cast and what the flows wrote.")
    report_dir: Annotated[str | None, AfterValidator(inside_project)] = Field(
        None, description="Where the JSON and JUnit reports go (default: the run's artifacts).")


class CheckSmoke(Step):
    """The seed's §4.2 staging flows, over HTTP as the app makes them; any failure fails it."""

    kind: ClassVar[str] = "check.smoke"
    Params = SmokeParams
    persistent = False
    params: SmokeParams

    def describe(self) -> str:
        keep = ", demo data kept" if self.params.keep else ""
        return f"smoke: {len(smoke.FLOWS)} §4.2 flows over HTTP (JSON + JUnit report{keep})"

    def preflight(self, ctx: StepContext) -> None:
        require_smoke_credentials(ctx)

    def apply(self, ctx: StepContext) -> Detail:
        report = smoke.run_flows(ctx.target.api_url, ctx.target.anon_key, ctx.target.jwt_secret,
                                 ctx.target.db_url, keep=self.params.keep,
                                 progress=ctx.progress)
        paths = write_smoke_reports(report, report_folder(ctx, self.id, self.params.report_dir))
        if not report.passed:
            raise StepFailed(f"{smoke_failure(report)} (report: {paths['report']})")
        return {"flows": len(report.flows), "passed": len(report.flows),
                "seconds": round(report.seconds, 3), **paths}


# ---- check.load --------------------------------------------------------------------------------


class LoadStepParams(Params):
    """The load's size and thresholds: the fields of `LoadParams` (rollout/checks/k6.py)."""

    attendees: int = Field(50, ge=1)
    mvp_dealers: int = Field(10, ge=1)
    organizers: int = Field(10, ge=0)
    dm_vus: int = Field(10, ge=0)
    dm_iterations: int = Field(20, ge=1, description="Per VU; ignored when dm_duration is set.")
    dm_duration: str | None = Field(None, description="Constant VUs for this long, e.g. 30s.")
    broadcasts: int = Field(20, ge=0, description="One show each, spread over the organizers.")
    broadcast_vus: int = Field(5, ge=1)
    attendees_per_show: int = Field(20, ge=1, description="A broadcast's fan-out.")
    thresholds: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in k6.DEFAULT_THRESHOLDS.items()},
        description="k6 thresholds, e.g. {'http_req_duration{kind:dm}': ['p(99)<200']}.")
    max_duration: str = "10m"
    token_ttl: int = Field(3600, ge=60)
    keep_users: bool = False
    k6_bin: str | None = Field(None, description="The k6 binary (default: PATH, the venv).")
    script: Annotated[str | None, AfterValidator(project_file)] = Field(
        None, description="The k6 script (default checks/load/messaging.js).")

    _durations = field_validator("dm_duration", "max_duration")(k6_duration)

    def load_params(self) -> LoadParams:
        return LoadParams(
            attendees=self.attendees, mvp_dealers=self.mvp_dealers, organizers=self.organizers,
            dm_vus=self.dm_vus, dm_iterations=self.dm_iterations, dm_duration=self.dm_duration,
            broadcasts=self.broadcasts, broadcast_vus=self.broadcast_vus,
            attendees_per_show=self.attendees_per_show,
            thresholds={k: list(v) for k, v in self.thresholds.items()},
            max_duration=self.max_duration, token_ttl=self.token_ttl,
            keep_users=self.keep_users, k6_bin=self.k6_bin)


class CheckLoad(Step):
    """k6 against the target (seed §4.3); crossed thresholds fail the step."""

    kind: ClassVar[str] = "check.load"
    Params = LoadStepParams
    persistent = False
    params: LoadStepParams

    def describe(self) -> str:
        p = self.params
        dm = f"{p.dm_vus} DM VUs for {p.dm_duration}" if p.dm_duration else \
            f"{p.dm_vus} DM VUs × {p.dm_iterations}"
        limits = "; ".join(f"{m} {', '.join(e)}" for m, e in p.thresholds.items())
        return f"k6 load: {dm}, {p.broadcasts} broadcasts; thresholds {limits}"

    def preflight(self, ctx: StepContext) -> None:
        require_k6(self.params.k6_bin)
        require_smoke_credentials(ctx)

    def apply(self, ctx: StepContext) -> Detail:
        folder = ctx.artifacts / self.id
        script = ctx.path(self.params.script) if self.params.script else None
        report = k6.run_load(ctx.target.api_url, ctx.target.anon_key, ctx.target.jwt_secret,
                             ctx.target.db_url, self.params.load_params(), folder,
                             progress=ctx.progress, script=script)
        (folder / "load-report.json").write_text(report.to_json() + "\n")
        if report.crossed:
            raise StepFailed(f"thresholds crossed: {load_figures(report)} "
                             f"(k6 summary: {report.summary_path})")
        return {
            "requests": report.requests, "rate": round(report.rate, 1),
            "error_rate": round(report.error_rate, 5),
            "dropped_iterations": report.dropped_iterations,
            **{f"{k}_p99_ms": round(e.p99_ms, 1) for k, e in report.endpoints.items()
               if e.p99_ms is not None},
            "thresholds": f"{sum(t.verdict == 'passed' for t in report.thresholds)}/"
                          f"{len(report.thresholds)} met",
            "summary": report.summary_path,
        }
