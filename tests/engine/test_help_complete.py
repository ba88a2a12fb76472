"""Help that is complete: version, global flags, `plan kinds`, rollback's preview, the
production guards of `rehearse` and `rollback`, and `cron status` on a job that never ran."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import version
from pathlib import Path

from rollout.steps import KINDS
from tests.engine.conftest import LOCAL_HEADER, ROLLOUT, ROOT, Cli, write_plan
from tests.engine.test_help import rollout

MIGRATE = """
  - id: legacy-app
    kind: db.seed
    with: {file: migrations/legacy_baseline.sql}
  - id: migrate
    kind: db.migrate
    with:
      file: tests/fixtures/slow_migration.sql
      rollback_file: tests/fixtures/slow_migration_rollback.sql
      lint: "off"
  - id: secrets
    kind: edge.secrets
    with: {set: {RELEASE_CHANNEL: test}}
"""
PRODUCTION = LOCAL_HEADER.replace("target:", "production: true\ntarget:")


def test_version_and_global_flags_are_in_help() -> None:
    result = rollout("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"rollout {version('rollout')}"
    top = rollout("--help").stdout
    assert "--debug" in top and "--version" in top


def test_boolean_options_are_shown_as_flags() -> None:
    text = rollout("apply", "--help").stdout
    for option in ("--dry-run", "--resume", "--json", "--yes"):
        line = next(line for line in text.splitlines() if option in line)
        assert "<bool>" not in line, line
    assert "<str>" in next(line for line in text.splitlines() if "--from" in line)


def test_plan_kinds_lists_every_kind_with_what_it_does() -> None:
    result = rollout("plan", "kinds")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split(None, 1)[1:] for line in result.stdout.splitlines()}
    assert set(lines) == set(KINDS)
    assert all(what for what in lines.values()), lines


def test_rehearse_refuses_a_production_plan_unless_allowed(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, PRODUCTION + MIGRATE)
    result = rollout("rehearse", str(plan), "--yes")
    assert result.returncode == 2
    assert "rolling back what is live" in result.stderr and "--allow-production" in result.stderr


def test_rollback_dry_run_lists_newest_first_and_changes_nothing(cli: Cli,
                                                                 tmp_path: Path) -> None:
    plan = write_plan(tmp_path, LOCAL_HEADER + MIGRATE)
    assert cli.run("apply", str(plan)).returncode == 0
    runs = cli.one("select count(*) from rollout.runs")
    preview = cli.run("rollback", str(plan), "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "would undo 2 step(s), newest first" in preview.stdout
    assert preview.stdout.index("undo secrets") < preview.stdout.index("undo migrate")
    assert cli.one("select count(*) from rollout.runs") == runs
    assert cli.one("select to_regclass('public.slow_migration_marker')") is not None


def test_production_rollback_shows_the_list_before_asking(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, PRODUCTION + MIGRATE)
    assert cli.run("apply", str(plan), "--yes").returncode == 0
    primary, secondary = os.openpty()  # a terminal on stdin: the prompt is asked
    os.write(primary, b"not-the-name\n")
    result = subprocess.run([*ROLLOUT, "rollback", str(plan)], cwd=ROOT, env=cli.env,
                            stdin=secondary, capture_output=True, text=True, timeout=120,
                            check=False)
    os.close(primary)
    os.close(secondary)
    assert result.returncode == 2
    out = result.stdout
    assert out.index("undo secrets") < out.index("undo migrate") < out.index("Type the environment")
    assert "did not match" in result.stderr
    assert cli.one("select to_regclass('public.slow_migration_marker')") is not None


def test_cron_status_says_no_runs_yet(cli: Cli) -> None:
    applied = cli.run("apply", "plans/local.yaml", "--to", "schedule-quota-reset")
    assert applied.returncode == 0, applied.stderr
    result = cli.run("cron", "status", "plans/local.yaml")
    assert result.returncode == 0, result.stderr
    assert "'0 2 * * *' UTC" in result.stdout and "no runs yet" in result.stdout
