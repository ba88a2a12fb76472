"""`rollout signoff`: the §8 checklist from the journal, a named person's confirmation, then the
CHANGELOG entry and the announcement (received by a real HTTP server standing in for Slack).

One stack, with plans/local.yaml applied, serves the module. The rehearsal is recorded through
the Journal API as a `command = 'rehearse'` run, as `rollout rehearse` records it.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rollout.adapters.local_stack.postgres import shared_dir
from rollout.adapters.local_stack.processes import stop_pid
from rollout.adapters.local_stack.stack import LocalStack
from rollout.engine.journal import Journal, RunInfo
from rollout.engine.plan import Plan, load_plan
from rollout.workflows import signoff
from tests.engine.conftest import ROOT, Cli
from tests.engine.test_flags_cli import run_all
from tests.engine.test_notifications import dead_url, serve_receiver
from tests.engine.test_release_fingerprint import SUPABASE_ENV

NOTIFICATIONS = "\nnotifications:\n  slack_webhook_url: ${TEST_SLACK_WEBHOOK:-}\n"


@pytest.fixture(scope="module")
def stack() -> Iterator[Cli]:
    state = Path(tempfile.mkdtemp(prefix="rollout-signoff-", dir=shared_dir("rollout-tests")))
    state.chmod(0o755)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "pytest",
           "COLUMNS": "200", "NO_COLOR": "1", "ROLLOUT_LOAD": "false"}
    env.pop("ROLLOUT_DEBUG", None)
    cli = Cli(state, env)
    try:
        applied = cli.run("apply", str(plan_file(cli, "release.yaml")))
        assert applied.returncode == 0, applied.stderr
        yield cli
    finally:
        LocalStack(state).down()


def plan_file(cli: Cli, name: str, variant: str = "") -> Path:
    """plans/local.yaml with a release channel (a variant is another version of the plan)."""
    path = cli.state / name
    path.write_text((ROOT / "plans" / "local.yaml").read_text() + NOTIFICATIONS + variant)
    return path


def record_rehearsal(cli: Cli, plan: Path) -> str:
    loaded = load_plan(plan)
    journal = Journal(cli.stack.db_url)
    run_id = str(uuid.uuid4())
    try:
        journal.start_run(RunInfo(
            id=run_id, environment="staging", command="rehearse", plan_name=loaded.name,
            plan_path=str(plan), plan_checksum=loaded.checksum, git_commit=None,
            operator="ci", host="ci-runner", status="running",
            started_at=None, finished_at=None, message=None))  # type: ignore[arg-type]
        journal.set_run_status(run_id, "succeeded")
    finally:
        journal.close()
    return run_id


def items(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    return {i["id"]: i for i in doc["items"]}  # type: ignore[attr-defined, index]


def test_missing_items_then_confirmed_signed_off_and_announced(stack: Cli,
                                                               tmp_path: Path) -> None:
    plan = str(stack.state / "release.yaml")
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## 2026-01-01 — an older release\n\n- kept\n")

    (code, out, err), (human_code, human, _), (wrong, _, wrong_err) = run_all(
        stack, ("signoff", plan, "--json"), ("signoff", plan),
        ("signoff", plan, "--confirm", "migration-applied", "--by", "mallory"))
    assert code == 1, err
    doc = json.loads(out)
    assert doc["complete"] is False and doc["final"] is None
    state = {k: v["state"] for k, v in items(doc).items()}
    assert state == {"migration-applied": "ok", "edge-functions-200": "ok", "flag-tested": "ok",
                     "smoke-green": "ok", "oncall-informed": "missing",
                     "rollback-validated": "missing"}
    assert "send-broadcast/health answers 200 now" in str(items(doc)["edge-functions-200"])
    assert "smoke succeeded in run" in str(items(doc)["smoke-green"]["evidence"])
    assert "--confirm oncall-informed --by NAME" in str(items(doc)["oncall-informed"]["how"])
    assert "rollout rehearse" in str(items(doc)["rollback-validated"]["how"])
    assert human_code == 1 and "2 item(s) missing" in human and "→ " in human
    assert wrong == 2 and "checked from the journal" in wrong_err

    # The on-call confirmation, while the function is down: its item goes missing again.
    worker = stack.stack.deployed()["send-broadcast"]
    stop_pid(worker.pid)
    try:
        confirmed = stack.run("signoff", plan, "--confirm", "oncall-informed", "--by", "alice",
                              "--json")
    finally:
        stack.stack.activate_version("send-broadcast", worker.version)
    assert confirmed.returncode == 1, confirmed.stderr
    after = items(json.loads(confirmed.stdout))
    assert after["oncall-informed"]["state"] == "ok"
    assert after["oncall-informed"]["confirmed_by"] == "alice"
    assert after["edge-functions-200"]["state"] == "missing"
    assert "HTTP 502" in str(after["edge-functions-200"]["evidence"])

    rehearsal = record_rehearsal(stack, Path(plan))
    run = stack.sql("select id::text, git_commit from rollout.runs where command = 'apply' "
                    "and status = 'succeeded' order by started_at desc limit 1")[0]
    with serve_receiver() as slack:
        done = stack.run("signoff", plan, "--json", ROLLOUT_CHANGELOG=str(changelog),
                         ROLLOUT_OPERATOR="carol", TEST_SLACK_WEBHOOK=f"{slack.url}/slack")
        assert done.returncode == 0, done.stdout + done.stderr
        doc = json.loads(done.stdout)
        assert doc["complete"] is True
        assert rehearsal[:8] in str(items(doc)["rollback-validated"]["evidence"])
        announcements = [t for t in slack.slack_texts() if "sign-off complete" in t]
        assert len(announcements) == 1 and "by carol" in announcements[0]
        assert run[0][:8] in announcements[0]
        assert doc["final"]["announcement"]["ok"] is True

        text = changelog.read_text()
        entry = text.split("## ")[1]
        assert doc["final"]["entry"].startswith("## ")
        for expected in (plan, "Environment: local", f"Run: {run[0]}",
                         f"Git commit: {run[1] or '-'}", "Signed off by: carol", "alice"):
            assert expected in entry, expected
        assert text.startswith("# Changelog\n\n## ") and "- kept" in text  # newest first

        again = stack.run("signoff", plan, ROLLOUT_CHANGELOG=str(changelog),
                          TEST_SLACK_WEBHOOK=f"{slack.url}/slack")
        assert again.returncode == 0, again.stdout
        assert "already" in again.stdout
        assert changelog.read_text() == text
        assert len([t for t in slack.slack_texts() if "sign-off complete" in t]) == 1


def test_a_failed_announcement_does_not_fail_sign_off(stack: Cli, tmp_path: Path) -> None:
    plan = plan_file(stack, "variant.yaml", variant="# another version of the plan\n")
    record_rehearsal(stack, plan)
    journal = Journal(stack.stack.db_url)
    try:
        journal.confirm("local", "oncall-informed", load_plan(plan).checksum, "bob")
    finally:
        journal.close()
    changelog = tmp_path / "CHANGELOG.md"
    dead = dead_url()
    done = stack.run("signoff", str(plan), ROLLOUT_CHANGELOG=str(changelog),
                     TEST_SLACK_WEBHOOK=f"{dead}/slack")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "announcement was not delivered" in done.stdout
    assert dead not in done.stdout + done.stderr
    assert "Signed off by: pytest (pagerduty on-call informed: bob)" in changelog.read_text()


# ---- rehearsed elsewhere: staging's journal, matched by release fingerprint -------------------


@pytest.fixture(scope="module")
def staging() -> Iterator[LocalStack]:
    """A second local stack (its own state directory, database and journal) playing staging."""
    state = Path(tempfile.mkdtemp(prefix="rollout-staging-", dir=shared_dir("rollout-tests")))
    state.chmod(0o755)
    other = LocalStack(state)
    try:
        other.up()
        journal = Journal(other.db_url)
        try:
            journal.ensure_schema()
        finally:
            journal.close()
        yield other
    finally:
        other.down()


def record_run(db_url: str, checksum: str, fingerprint: str | None,
               environment: str = "staging", status: str = "succeeded") -> str:
    """A `rehearse` run as `rollout rehearse` journals it (plan checksum + release fingerprint)."""
    journal = Journal(db_url)
    run_id = str(uuid.uuid4())
    try:
        journal.start_run(RunInfo(
            id=run_id, environment=environment, command="rehearse", plan_name="messaging-v2",
            plan_path="plans/staging.yaml", plan_checksum=checksum, git_commit=None,
            operator="ci", host="ci-runner", status="running", started_at=None,  # type: ignore[arg-type]
            finished_at=None, message=None, release_fingerprint=fingerprint))
        journal.set_run_status(run_id, status)
    finally:
        journal.close()
    return run_id


def rollback_item(plan: Plan, cli: Cli, *sources: signoff.RehearsalSource) -> signoff.Item:
    journal = Journal(cli.stack.db_url)
    try:
        result = signoff.evaluate(plan, journal, None, sources)
    finally:
        journal.close()
    return next(i for i in result.items if i.id == "rollback-validated")


def staging_rehearsals(other: LocalStack) -> signoff.RehearsalSource:
    journal = Journal(other.db_url)
    try:
        return signoff.read_rehearsals(journal, "plans/staging.yaml", "staging")
    finally:
        journal.close()


def test_a_rehearsal_in_another_stacks_journal_validates_by_release_fingerprint(
        stack: Cli, staging: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = load_plan(plan_file(stack, "production-like.yaml", variant="# production's copy\n"))
    release = plan.release_fingerprint
    assert release is not None
    # Every run journals what it shipped: the module's apply shipped this same release.
    assert stack.one("select release_fingerprint from rollout.runs where command = 'apply' "
                     "order by started_at limit 1") == release

    # Staging rehearsed another release (a different migration), and failed this one once.
    other = record_run(staging.db_url, "1" * 64, "f" * 64)
    record_run(staging.db_url, "2" * 64, release, status="failed")
    item = rollback_item(plan, stack, staging_rehearsals(staging))
    assert item.state == "missing"
    assert f"release {release[:12]}" in item.evidence
    assert (f"--rehearsed-on plans/staging.yaml: its newest successful rehearsal (run "
            f"{other[:8]}) was of release ffffffffffff, not this one") in item.evidence
    assert "--rehearsed-on plans/staging.yaml" in item.how and "rollout rehearse" in item.how

    # Staging rehearsed this release (under staging's own plan checksum): it counts.
    run = record_run(staging.db_url, "3" * 64, release)
    assert rollback_item(plan, stack).state == "missing"  # not in production's own journal
    item = rollback_item(plan, stack, staging_rehearsals(staging))
    assert item.state == "ok", item.evidence
    assert item.evidence.startswith(f"rehearsal run {run[:8]} on staging "
                                    "(plans/staging.yaml's journal) succeeded (ci, ")
    assert f"matched by release fingerprint {release[:12]}" in item.evidence

    # `--rehearsed-on PLAN` reaches that plan's own target: here a local plan whose stack is
    # staging's (the CLI takes a local stack from ROLLOUT_STATE_DIR, so one process sees one).
    staging_plan = plan_file(stack, "staging-local.yaml", variant="# staging's copy\n")
    monkeypatch.setenv("ROLLOUT_STATE_DIR", str(staging.dir.parent))
    source = signoff.rehearsal_source(staging_plan, signing_db_url=stack.stack.db_url)
    assert source.problem is None and source.runs[0].id == run
    same = signoff.rehearsal_source(staging_plan, signing_db_url=staging.db_url)
    assert same.runs == [] and "same database" in str(same.problem)
    monkeypatch.setenv("ROLLOUT_STATE_DIR", str(stack.state / "nothing-runs-here"))
    down = signoff.rehearsal_source(staging_plan, signing_db_url=stack.stack.db_url)
    assert down.problem is not None and "not reachable" in down.problem
    item = rollback_item(plan, stack, down)
    assert item.state == "missing"
    assert f"--rehearsed-on {staging_plan}: its local target is not reachable" in item.evidence

    # A journal from before fingerprints reads (null), read-only: it is not upgraded by reading.
    with psycopg.connect(staging.db_url, autocommit=True) as conn:
        conn.execute("alter table rollout.runs drop column release_fingerprint")
        old = staging_rehearsals(staging)
        assert old.problem is None and {r.release_fingerprint for r in old.runs} == {None}
        assert rollback_item(plan, stack, old).state == "missing"
        assert conn.execute("select count(*) from information_schema.columns where "
                            "table_schema = 'rollout' and column_name = 'release_fingerprint'"
                            ).fetchone() == (0,)
        journal = Journal(staging.db_url)
        try:
            journal.ensure_schema()  # the next run there upgrades it
        finally:
            journal.close()
        assert conn.execute("select count(*) from rollout.runs where release_fingerprint "
                            "is null").fetchone() == (3,)


def test_signoff_rehearsed_on_staging_plan_reads_stagings_journal(
        stack: Cli, staging: LocalStack, tmp_path: Path) -> None:
    """The real plans/staging.yaml, its DATABASE_URL from --rehearsed-on-env: staging's stack."""
    staging_yaml = ROOT / "plans" / "staging.yaml"
    env = {**SUPABASE_ENV, "DATABASE_URL": staging.db_url}
    staged = load_plan(staging_yaml, env)
    run = record_run(staging.db_url, staged.checksum, staged.release_fingerprint)
    env_file = tmp_path / "staging.env"
    env_file.write_text("# staging's variables\n" + "".join(
        f"export {k}='{v}'\n" if k == "DATABASE_URL" else f"{k}={v}\n" for k, v in env.items()))

    plan = str(plan_file(stack, "production-cli.yaml", variant="# yet another copy\n"))
    (code, out, err), (same_code, same_out, _) = run_all(
        stack, ("signoff", plan, "--json", "--rehearsed-on", str(staging_yaml),
                "--rehearsed-on-env", str(env_file)),
        ("signoff", plan, "--json", "--rehearsed-on", plan))
    assert code == 1, err  # on-call is not confirmed for this version
    doc = json.loads(out)
    rollback = items(doc)["rollback-validated"]
    assert rollback["state"] == "ok", rollback
    assert f"rehearsal run {run[:8]} on staging ({staging_yaml}'s journal)" in str(
        rollback["evidence"])
    assert "matched by release fingerprint" in str(rollback["evidence"])
    assert doc["release_fingerprint"] == staged.release_fingerprint
    assert staging.db_url not in out + err

    assert same_code == 1
    same = items(json.loads(same_out))["rollback-validated"]
    assert same["state"] == "missing" and "same database" in str(same["evidence"])
