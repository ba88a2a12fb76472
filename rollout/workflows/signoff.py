"""The runbook's sign-off checklist (§8), evaluated from the journal where it can be.

Each item is proven by what the journal recorded about this environment (or by a live probe),
or — when no machine can know it, like "PagerDuty on-call informed" — confirmed by a named
person (`rollout signoff PLAN --confirm oncall-informed --by alice`, kept in
`rollout.confirmations` for this plan's checksum). "Rollback validated" needs a successful
rehearsal of the same release — the same plan checksum, or the same release fingerprint (the
files the plan ships) — in this environment's journal or, with `--rehearsed-on
plans/staging.yaml`, in the journal of the plan it was rehearsed with (read read-only). When
every item holds, sign-off appends a CHANGELOG entry and announces the release in the release
channel (§8: "update the CHANGELOG and announce in #release-alerts"); a failed announcement is
reported, never a failed sign-off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from rollout.adapters.notify import Outcome, send_slack
from rollout.adapters.targets import Target
from rollout.checks.monitors import function_health
from rollout.engine.journal import Journal, RunInfo
from rollout.engine.plan import Plan, load_plan
from rollout.engine.targets import build_target
from rollout.errors import RolloutError, StepFailed, UsageError
from rollout.paths import project_root

SIGNED_OFF = "signed-off"
"""The confirmation key recording a completed sign-off (so a second one changes nothing)."""

TITLES = {
    "migration-applied": "Migration applied without errors",
    "edge-functions-200": "Edge Functions returning 200",
    "flag-tested": "UI feature flag tested",
    "smoke-green": "Smoke tests green",
    "oncall-informed": "PagerDuty on-call informed",
    "rollback-validated": "Rollback script validated",
}
MANUAL = {"oncall-informed": "tell the on-call engineer, then "
                             "`rollout signoff PLAN --confirm oncall-informed --by NAME`"}
FINAL_STATUSES = ("succeeded", "failed", "interrupted")


@dataclass
class Item:
    id: str
    title: str
    state: str  # ok | missing | n/a
    evidence: str
    how: str = ""
    confirmed_by: str | None = None

    @property
    def holds(self) -> bool:
        return self.state != "missing"


@dataclass
class SignOff:
    plan: str
    plan_path: str
    environment: str
    checksum: str
    items: list[Item]
    run: RunInfo | None
    signed_off_by: str | None = None
    release_fingerprint: str | None = None

    @property
    def complete(self) -> bool:
        return all(item.holds for item in self.items)

    @property
    def missing(self) -> list[Item]:
        return [item for item in self.items if not item.holds]

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "plan_path": self.plan_path, "environment": self.environment,
                "checksum": self.checksum, "release_fingerprint": self.release_fingerprint,
                "complete": self.complete,
                "run": asdict(self.run) if self.run else None,
                "signed_off_by": self.signed_off_by,
                "items": [{**asdict(item), "holds": item.holds} for item in self.items]}


@dataclass
class Finalized:
    already: bool
    signed_by: str
    changelog: Path
    entry: str
    announcement: Outcome | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"already_signed_off": self.already, "signed_by": self.signed_by,
                "changelog": str(self.changelog), "entry": self.entry,
                "announcement": asdict(self.announcement) if self.announcement else None,
                "notes": self.notes}


def changelog_path() -> Path:
    """`ROLLOUT_CHANGELOG`, or CHANGELOG.md at the project root."""
    override = os.environ.get("ROLLOUT_CHANGELOG")
    return Path(override) if override else project_root() / "CHANGELOG.md"


# ---- rehearsals recorded elsewhere (--rehearsed-on) ------------------------------------------


@dataclass
class RehearsalSource:
    """Another plan's environment whose journal may hold this release's rehearsal (staging's,
    for production): its successful `rehearse` runs, newest first, or why they are unknown."""

    plan_path: str
    environment: str
    runs: list[RunInfo] = field(default_factory=list)
    problem: str | None = None


def read_rehearsals(journal: Journal, plan_path: str, environment: str) -> RehearsalSource:
    """The successful rehearsals in `journal`, read in a read-only session (nothing is created
    or upgraded there); a journal that cannot be read becomes the source's `problem`."""
    source = RehearsalSource(plan_path, environment)
    try:
        journal.conn.execute("set session characteristics as transaction read only")
        if not journal.exists():
            source.problem = "its database has no rollout journal (nothing ran there)"
            return source
        source.runs = [r for r in journal.runs(None, limit=1000)
                       if r.command == "rehearse" and r.status == "succeeded"]
    except (RolloutError, psycopg.Error) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        source.problem = f"cannot read its journal: {journal.masker.text(first)}"
    return source


def rehearsal_source(path: Path, signing_db_url: str | None = None,
                     environ: Mapping[str, str] | None = None) -> RehearsalSource:
    """`--rehearsed-on PLAN`: load that plan (with `environ`, e.g. its own variables), reach its
    target and read its journal's rehearsals. An invalid plan raises (exit 2); an unreachable
    target is the source's `problem`, so the checklist item stays missing and says why."""
    other = load_plan(path, environ)
    source = RehearsalSource(str(path), other.environment)
    kind = other.model.target.kind
    try:
        target = build_target(other)
        reachable = target.reachable()
        db_url = target.db_url if reachable else None
    except (RolloutError, OSError, psycopg.Error) as err:
        source.problem = f"its {kind} target is unreachable: {err}"
        return source
    if not reachable or db_url is None:
        source.problem = (f"its {kind} target is not reachable"
                          + (" (`rollout local up` starts the local stack)"
                             if kind == "local" else ""))
        return source
    if signing_db_url is not None and db_url == signing_db_url:
        source.problem = ("it resolves to the same database as the plan being signed off "
                          "(both read the same variables): give its own with "
                          "--rehearsed-on-env FILE")
        return source
    journal = Journal(db_url)
    try:
        return read_rehearsals(journal, str(path), other.environment)
    finally:
        journal.close()


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines (blank lines, `#` comments and `export ` allowed; quotes stripped):
    the variables of the plan given to `--rehearsed-on`, over the process environment."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from err
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.replace("_", "").isalnum():
            raise UsageError(f"{path}:{number}: expected NAME=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


# ---- evaluation ---------------------------------------------------------------------------


class _Facts:
    """What the journal says about one environment, read once."""

    def __init__(self, plan: Plan, journal: Journal) -> None:
        self.present = journal.exists()
        self.states = journal.states(plan.environment) if self.present else {}
        self.runs = journal.runs(None, limit=1000) if self.present else []
        self.confirmations = (journal.confirmations(plan.environment, plan.checksum)
                              if self.present else {})
        self.last_attempts: dict[str, dict[str, Any]] = {}
        self.last_apply: RunInfo | None = next(
            (r for r in self.runs if r.environment == plan.environment
             and r.command == "apply"), None)
        self.last_apply_events = journal.events(self.last_apply.id) if self.last_apply else []
        if self.present:
            # The newest real attempt (not a skip) of each step, across this environment's runs.
            rows = journal.conn.execute(
                "select distinct on (e.step_id) e.step_id, e.status, e.error, e.run_id::text, "
                "e.detail from rollout.step_events e join rollout.runs r on r.id = e.run_id "
                "where r.environment = %s and e.action = 'apply' and e.status = any(%s) "
                "order by e.step_id, e.id desc",
                (plan.environment, list(FINAL_STATUSES))).fetchall()
            self.last_attempts = {row[0]: {"status": row[1], "error": row[2], "run_id": row[3],
                                           "detail": row[4]} for row in rows}

    def rehearsal(self, checksum: str) -> RunInfo | None:
        return next((r for r in self.runs if r.command == "rehearse"
                     and r.status == "succeeded" and r.plan_checksum == checksum), None)

    def last_apply_step(self, kind: str) -> dict[str, Any] | None:
        good = [e for e in self.last_apply_events if e["kind"] == kind and e["action"] == "apply"
                and e["status"] in ("succeeded", "already-applied")]
        return good[-1] if good else None


def evaluate(plan: Plan, journal: Journal, target: Target | None,
             rehearsed_on: Sequence[RehearsalSource] = ()) -> SignOff:
    """Every §8 item, from the journal (and a live probe of the functions when `target`);
    `rehearsed_on`: other environments whose rehearsals of this release count (staging's)."""
    facts = _Facts(plan, journal)
    items = [
        _migration(plan, facts),
        _functions(plan, facts, target),
        _flag(plan, facts),
        _smoke(plan, facts),
        _oncall(facts),
        _rollback(plan, facts, rehearsed_on),
    ]
    signed = facts.confirmations.get(SIGNED_OFF)
    return SignOff(plan.name, str(plan.path), plan.environment, plan.checksum, items,
                   _release_run(plan, facts), signed, plan.release_fingerprint)


def _steps(plan: Plan, kind: str) -> list[str]:
    return [p.spec.id for p in plan.steps if p.spec.kind == kind and p.enabled]


def _applied_cleanly(step_id: str, facts: _Facts) -> str | None:
    """None when the step is applied and its last attempt succeeded, else why not."""
    state = facts.states.get(step_id)
    if state is None or state.status != "applied":
        return f"{step_id} is {state.status if state else 'not applied'}"
    attempt = facts.last_attempts.get(step_id)
    if attempt and attempt["status"] != "succeeded":
        return f"{step_id}'s last attempt {attempt['status']}: {attempt['error'] or '-'}"
    return None


def _migration(plan: Plan, facts: _Facts) -> Item:
    item = Item("migration-applied", TITLES["migration-applied"], "missing", "",
                f"rollout apply {plan.path}")
    steps = _steps(plan, "db.migrate")
    if not steps:
        item.state, item.evidence = "n/a", "the plan has no db.migrate step"
        return item
    problems = [p for s in steps if (p := _applied_cleanly(s, facts))]
    if problems:
        item.evidence = "; ".join(problems)
        return item
    runs = {facts.states[s].run_id[:8] for s in steps}
    item.state = "ok"
    item.evidence = f"{', '.join(steps)} applied without errors (run {', '.join(sorted(runs))})"
    return item


def _functions(plan: Plan, facts: _Facts, target: Target | None) -> Item:
    item = Item("edge-functions-200", TITLES["edge-functions-200"], "missing", "",
                f"rollout apply {plan.path}, then `rollout check health`")
    deploys = [p for p in plan.steps if p.spec.kind == "edge.deploy" and p.enabled]
    if not deploys:
        item.state, item.evidence = "n/a", "the plan deploys no edge functions"
        return item
    problems = [p for d in deploys if (p := _applied_cleanly(d.spec.id, facts))]
    if problems:
        item.evidence = "; ".join(problems)
        return item
    proofs: list[str] = []
    for planned in deploys:
        paths: dict[str, str] = {
            f.name: f.health_path for f in getattr(planned.step.params, "functions", [])
            if getattr(f, "health_path", None)}
        recorded = facts.states[planned.spec.id].detail.get("functions", {})
        for name, path in paths.items():
            if target is not None:
                result = function_health(target, name, path=path, timeout=10)
                if not result.ok:
                    item.evidence = f"live probe: {result.summary}"
                    item.how = "fix the function (`rollout check health`), or re-deploy it"
                    return item
                proofs.append(f"{name}{path} answers 200 now")
            elif "health_ms" in recorded.get(name, {}):
                proofs.append(f"{name}{path} answered 200 at deploy "
                              f"({recorded[name]['health_ms']} ms)")
            else:
                item.evidence = f"no health result recorded for {name}"
                return item
        if not paths:
            proofs.append(f"{planned.spec.id} deployed {', '.join(sorted(recorded))} "
                          "(no health path in the plan)")
    item.state, item.evidence = "ok", "; ".join(proofs)
    return item


def _flag(plan: Plan, facts: _Facts) -> Item:
    item = Item("flag-tested", TITLES["flag-tested"], "missing", "",
                f"a flags.set step in the plan, applied: rollout apply {plan.path}")
    if not _steps(plan, "flags.set"):
        item.evidence = "the plan sets no feature flag"
        return item
    if facts.last_apply is None:
        item.evidence = "nothing applied yet"
        return item
    event = facts.last_apply_step("flags.set")
    if event is None:
        item.evidence = f"no flags.set step succeeded in the last apply ({facts.last_apply.id[:8]})"
        return item
    detail = event["detail"]
    item.state = "ok"
    item.evidence = (f"{event['step_id']} {event['status']} in run {facts.last_apply.id[:8]}"
                     + (f" ({detail['flag']} → {detail['to']}%)" if "to" in detail else ""))
    return item


def _smoke(plan: Plan, facts: _Facts) -> Item:
    item = Item("smoke-green", TITLES["smoke-green"], "missing", "",
                f"add a check.smoke step to the plan and apply it, or `rollout rehearse "
                f"{plan.path}`")
    event = facts.last_apply_step("check.smoke")
    if event is not None and facts.last_apply is not None:
        item.state = "ok"
        item.evidence = f"{event['step_id']} {event['status']} in run {facts.last_apply.id[:8]}"
        return item
    rehearsal = facts.rehearsal(plan.checksum)
    if rehearsal is not None:
        item.state = "ok"
        item.evidence = (f"rehearsal run {rehearsal.id[:8]} on {rehearsal.environment} "
                         "succeeded")
        return item
    item.evidence = "no check.smoke step succeeded in the last apply, and no rehearsal"
    return item


def _oncall(facts: _Facts) -> Item:
    who = facts.confirmations.get("oncall-informed")
    if who:
        return Item("oncall-informed", TITLES["oncall-informed"], "ok", f"confirmed by {who}",
                    confirmed_by=who)
    return Item("oncall-informed", TITLES["oncall-informed"], "missing",
                "not confirmed by anyone yet", MANUAL["oncall-informed"])


def _rehearsal_match(run: RunInfo, plan: Plan, release: str | None) -> str | None:
    """How a successful rehearsal vouches for this release, or None when it does not."""
    if run.command != "rehearse" or run.status != "succeeded":
        return None
    if run.plan_checksum == plan.checksum:
        return "the same plan checksum"
    if release is not None and run.release_fingerprint == release:
        return f"release fingerprint {release[:12]} (the same migrations and functions)"
    return None


def _rollback(plan: Plan, facts: _Facts, rehearsed_on: Sequence[RehearsalSource]) -> Item:
    item = Item("rollback-validated", TITLES["rollback-validated"], "missing", "",
                "rehearse this release on staging, `rollout rehearse plans/staging.yaml`, then "
                f"`rollout signoff {plan.path} --rehearsed-on plans/staging.yaml` (or "
                f"`rollout rehearse {plan.path}` itself)")
    release = plan.release_fingerprint
    where = [("", facts.runs)] + [(f" ({s.plan_path}'s journal)", s.runs)
                                  for s in rehearsed_on if s.problem is None]
    for journal_label, runs in where:
        for run in runs:
            how = _rehearsal_match(run, plan, release)
            if how is not None:
                item.state = "ok"
                item.evidence = (f"rehearsal run {run.id[:8]} on {run.environment}{journal_label}"
                                 f" succeeded ({run.operator}, {run.started_at:%Y-%m-%d %H:%M} "
                                 f"UTC), matched by {how}")
                return item
    wanted = f"release {release[:12]}" if release else "a release (the plan ships no files)"
    reasons = [f"no successful rehearsal of this plan's checksum or {wanted} in "
               f"{plan.environment}'s journal"]
    for source in rehearsed_on:
        if source.problem is not None:
            reasons.append(f"--rehearsed-on {source.plan_path}: {source.problem}")
        elif not source.runs:
            reasons.append(f"--rehearsed-on {source.plan_path}: no successful rehearsal in "
                           f"{source.environment}'s journal")
        else:
            newest = source.runs[0]
            reasons.append(f"--rehearsed-on {source.plan_path}: its newest successful rehearsal "
                           f"(run {newest.id[:8]}) was of release "
                           f"{(newest.release_fingerprint or 'unknown')[:12]}, not this one")
    item.evidence = "; ".join(reasons)
    return item


def _release_run(plan: Plan, facts: _Facts) -> RunInfo | None:
    """The run being signed off: the newest successful apply of this plan on the environment."""
    applies = [r for r in facts.runs if r.environment == plan.environment
               and r.command == "apply"]
    return next((r for r in applies if r.status == "succeeded"
                 and r.plan_checksum == plan.checksum),
                next((r for r in applies if r.status == "succeeded"), facts.last_apply))


# ---- confirmations and the final step -------------------------------------------------------


def confirm(plan: Plan, journal: Journal, item: str, who: str) -> None:
    """Record that a named person vouches for an item no machine can check."""
    if item not in MANUAL:
        if item in TITLES:
            raise UsageError(f"{item} is checked from the journal, not confirmed by hand",
                             hint=f"manual items: {', '.join(sorted(MANUAL))}")
        raise UsageError(f"no sign-off item {item!r}",
                         hint=f"manual items: {', '.join(sorted(MANUAL))}")
    if not who.strip():
        raise UsageError("--by needs the name of the person confirming")
    journal.ensure_schema()
    journal.confirm(plan.environment, item, plan.checksum, who.strip())


def finalize(signoff: SignOff, plan: Plan, journal: Journal, who: str,
             announce: Callable[[str, str], Outcome] = send_slack,
             changelog: Path | None = None) -> Finalized:
    """CHANGELOG entry + release announcement, once per plan version and environment."""
    if not signoff.complete:
        raise UsageError("sign-off is incomplete: " + ", ".join(i.id for i in signoff.missing))
    path = changelog or changelog_path()
    if signoff.signed_off_by:
        return Finalized(True, signoff.signed_off_by, path, "",
                         notes=[f"already signed off by {signoff.signed_off_by}: the CHANGELOG "
                                "and the channel were told then"])
    entry = changelog_entry(signoff, who)
    try:
        _prepend(path, entry)
    except OSError as err:
        raise StepFailed(f"cannot write {path}: {err.strerror or err}") from err
    journal.confirm(plan.environment, SIGNED_OFF, plan.checksum, who)
    result = Finalized(False, who, path, entry)
    url = plan.model.notifications.slack_webhook_url
    if not url:
        result.notes.append("no notifications.slack_webhook_url in the plan: announce the "
                            "release in the release channel by hand")
        return result
    result.announcement = announce(url, announcement(signoff, who))
    if not result.announcement.ok:
        result.notes.append(f"the announcement was not delivered ({result.announcement.detail});"
                            " sign-off stands — announce it by hand")
    return result


def changelog_entry(signoff: SignOff, who: str) -> str:
    run = signoff.run
    today = datetime.now(UTC)
    confirmed = [f"{i.title.lower()}: {i.confirmed_by}" for i in signoff.items if i.confirmed_by]
    lines = [
        f"## {today:%Y-%m-%d} — {signoff.plan} released to {signoff.environment}",
        "",
        f"- Date: {today:%Y-%m-%d %H:%M} UTC",
        f"- Plan: {signoff.plan_path} (sha256 {signoff.checksum[:12]})",
        f"- Environment: {signoff.environment}",
        f"- Run: {run.id if run else '-'}" + (f" ({run.operator}@{run.host})" if run else ""),
        f"- Git commit: {(run.git_commit if run else None) or '-'}",
        f"- Signed off by: {who}" + (f" ({'; '.join(confirmed)})" if confirmed else ""),
        "- Checklist: " + "; ".join(f"{i.title} ✓" for i in signoff.items if i.state == "ok"),
        "",
    ]
    return "\n".join(lines)


def announcement(signoff: SignOff, who: str) -> str:
    run = signoff.run
    commit = ((run.git_commit if run else None) or "-")[:12]
    return (f":rocket: {signoff.plan} is released to {signoff.environment} — sign-off complete "
            f"by {who} (run {run.id[:8] if run else '-'}, commit {commit}). "
            f"Checklist: {len([i for i in signoff.items if i.state == 'ok'])}/"
            f"{len(signoff.items)} items verified.")


def _prepend(path: Path, entry: str) -> None:
    """Newest first: before the first `## ` entry, under the file's title (a new file gets one)."""
    text = path.read_text() if path.exists() else "# Changelog\n"
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    head, rest = "".join(lines[:first]).rstrip("\n"), "".join(lines[first:])
    updated = (head + "\n\n" if head else "") + entry + ("\n" + rest if rest else "")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(updated)
    tmp.replace(path)
