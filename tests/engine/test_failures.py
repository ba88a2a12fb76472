"""Failure, interruption and concurrency: the journal stays true and maintenance never sticks."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan


def window_around(steps: str) -> str:
    """A local plan: the legacy app, then `steps` inside a maintenance window."""
    return LOCAL_HEADER + """
  - id: legacy-app
    kind: db.seed
    with: {file: migrations/legacy_baseline.sql, unless_exists: public.profiles}
  - id: maintenance-on
    kind: db.maintenance
    with: {mode: "on"}
""" + steps + """
  - id: maintenance-off
    kind: db.maintenance
    with: {mode: "off"}
"""


SLOW = window_around("""
  - id: slow-migrate
    kind: db.migrate
    with:
      file: tests/fixtures/slow_migration.sql
      rollback_file: tests/fixtures/slow_migration_rollback.sql
      lint: "off"
  - id: pause
    kind: gate.pause
    with: {duration: 2s}""")

BAD = window_around("""
  - id: bad-migrate
    kind: db.migrate
    with: {file: tests/fixtures/bad_migration.sql, lint: "off"}""")


def maintenance_on(cli: Cli) -> bool:
    return bool(cli.one("select count(*) from pg_trigger "
                        "where tgname = 'rollout_maintenance_guard'"))


def wait_for(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 — the database may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def step_status(cli: Cli, step: str) -> str | None:
    rows = cli.sql("select status from rollout.step_events where step_id = %s order by id desc "
                   "limit 1", (step,))
    return rows[0][0] if rows else None


def test_failing_migration_lifts_maintenance_and_leaves_nothing(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, BAD)
    result = cli.run("apply", str(plan))
    assert result.returncode == 1
    assert "bad-migrate" in result.stdout + result.stderr
    assert "division by zero" in result.stdout
    assert not maintenance_on(cli)
    assert cli.one("select to_regclass('public.half_done')") is None
    assert cli.one("select count(*) from rollout.migrations") == 0
    failed = cli.sql("select error from rollout.step_events where step_id = 'bad-migrate' "
                     "and status = 'failed'")
    assert failed and "division by zero" in failed[0][0]
    assert cli.one("select status from rollout.runs order by started_at desc limit 1") == "failed"


def test_sigkill_mid_migration_then_resume_ends_like_an_uninterrupted_run(
        cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SLOW)
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "slow-migrate") == "running")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert maintenance_on(cli)  # a SIGKILL cannot clean up: resume must
    wait_for(lambda: cli.one("select to_regclass('public.slow_migration_marker')") is None
             and cli.one("select count(*) from pg_stat_activity "
                         "where query like '%%pg_sleep(3)%%' and pid <> pg_backend_pid()") == 0)

    refused = cli.run("apply", str(plan))
    assert refused.returncode == 2
    assert "--resume" in refused.stderr

    resumed = cli.run("apply", str(plan), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    statuses = {s["step_id"]: s["status"] for s in doc["steps"]}
    assert statuses["slow-migrate"] == "succeeded"
    assert not maintenance_on(cli)
    assert cli.one("select count(*) from public.slow_migration_marker") == 1
    assert cli.one("select count(*) from rollout.runs") == 1  # the same run, resumed
    assert cli.one("select status from rollout.runs") == "succeeded"


def test_sigkill_between_steps_then_resume(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SLOW)
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "pause") == "running")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    resumed = cli.run("apply", str(plan), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    statuses = {s["step_id"]: s["status"] for s in json.loads(resumed.stdout)["steps"]}
    assert statuses["slow-migrate"] == "already-applied"
    assert statuses["maintenance-on"] == "succeeded"  # re-entered: a crash may have lost it
    assert statuses["pause"] == "succeeded"
    assert not maintenance_on(cli)
    assert cli.one("select count(*) from public.slow_migration_marker") == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_interrupt_stops_cleanly_and_lifts_maintenance(cli: Cli, tmp_path: Path,
                                                       sig: signal.Signals) -> None:
    plan = write_plan(tmp_path, SLOW)
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "pause") == "running")
    assert maintenance_on(cli)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert not maintenance_on(cli)
    assert cli.one("select status from rollout.runs") == "interrupted"


def test_second_apply_is_refused_naming_the_holder(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SLOW)
    first = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "slow-migrate") == "running")
    second = cli.run("apply", str(plan))
    assert second.returncode == 5, (second.stdout, second.stderr)  # refused: locked
    assert "locked by run" in second.stderr and "pytest@" in second.stderr, second.stderr
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, (out, err)


def test_rollback_after_failure_lifts_maintenance_and_undoes(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SLOW)
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "pause") == "running")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert maintenance_on(cli)
    back = cli.run("rollback", str(plan))
    assert back.returncode == 0, back.stderr
    assert not maintenance_on(cli)
    assert cli.one("select to_regclass('public.slow_migration_marker')") is None


def test_changed_migration_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SLOW)
    assert cli.run("apply", str(plan)).returncode == 0
    cli.sql("update rollout.migrations set checksum = 'feedface' "
            "where filename = 'tests/fixtures/slow_migration.sql'")
    again = cli.run("apply", str(plan))
    assert again.returncode == 2
    assert "changed since it was applied" in again.stderr
