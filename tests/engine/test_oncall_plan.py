"""`plan` predicts `apply` (issue 13, finding 4), and a refused apply writes nothing (5).

An unreachable Supabase target: `plan` and `status` give the real error and exit 6 (not "every
step pending", not "`rollout local up`"). A migration changed since it was applied: `plan`
shows "changed — apply will refuse" and exits 2, as apply does. A bad timeout fails at plan
load with file:line:col, before any step.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.conftest import LOCAL_HEADER, ROOT, Cli, write_plan

SUPABASE_VARS = {
    "SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst",
    "DATABASE_URL": "postgresql://postgres:hunter2-not-shown@127.0.0.1:1/postgres",
    "SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co",
    "SUPABASE_ACCESS_TOKEN": "sbp_test", "SUPABASE_ANON_KEY": "anon",
    "SUPABASE_SERVICE_ROLE_KEY": "service", "SUPABASE_JWT_SECRET": "secret",
}


def test_unreachable_target_plan_and_status_say_why(cli: Cli) -> None:
    for command in ("plan", "status"):
        result = cli.run(command, "plans/staging.yaml", **SUPABASE_VARS)
        assert result.returncode == 6, (command, result.stdout, result.stderr)
        assert "cannot read the supabase target" in result.stderr, result.stderr
        assert "Connection refused" in result.stderr or "connection" in result.stderr.lower()
        assert "local up" not in result.stderr
        assert "pending" not in result.stdout  # `plan`: every state "unknown"
        assert "hunter2" not in result.stdout + result.stderr
    applied = cli.run("apply", "plans/staging.yaml", "--yes", **SUPABASE_VARS)
    assert applied.returncode == 6, applied.stdout + applied.stderr  # not "a step failed" (1)
    assert "hunter2" not in applied.stdout + applied.stderr


@pytest.fixture
def migration() -> Iterator[Path]:
    """A migration file inside the project (plans may only name project files)."""
    folder = ROOT / ".rollout" / "test-migrations"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"m_{uuid.uuid4().hex[:8]}.sql"
    path.write_text("create table public.oncall_t (id int);\n")
    yield path
    path.unlink(missing_ok=True)


def test_changed_migration_plan_says_apply_will_refuse(
        cli: Cli, tmp_path: Path, migration: Path) -> None:
    plan = str(write_plan(tmp_path, LOCAL_HEADER + f"""
  - id: migrate
    kind: db.migrate
    with: {{file: {migration.relative_to(ROOT)}, lint: "off"}}
"""))
    assert cli.run("apply", plan).returncode == 0
    migration.write_text("create table public.oncall_t (id int, other text);\n")
    shown = cli.run("plan", plan)
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert "changed — apply will refuse" in shown.stdout
    assert "changed since it was applied" in shown.stderr
    before = cli.sql("select id, status, message, finished_at from rollout.runs")
    refused = cli.run("apply", plan)
    assert refused.returncode == 2 and "changed since it was applied" in refused.stderr
    # A refusal writes nothing: the previous run's record is as it was, no new run.
    assert cli.sql("select id, status, message, finished_at from rollout.runs") == before


def test_a_bad_timeout_fails_at_plan_load(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, LOCAL_HEADER + """
  - id: migrate
    kind: db.migrate
    with: {file: migrations/production_messaging_system.sql, lock_timeout: 5 parsecs}
""")
    for command in ("plan", "apply"):
        result = cli.run(command, str(plan))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{plan}:" in result.stderr and "not a PostgreSQL duration" in result.stderr
    assert not cli.stack.postgres.pid()  # nothing started, nothing changed


def test_database_only_commands_need_only_the_database_variable(
        cli: Cli, tmp_path: Path) -> None:
    """`flag kill` and `status` on a Supabase plan: DATABASE_URL is all they need."""
    setup = write_plan(tmp_path, LOCAL_HEADER + """
  - id: legacy-app
    kind: db.seed
    with: {file: migrations/legacy_baseline.sql}
  - id: migrate
    kind: db.migrate
    with: {file: migrations/production_messaging_system.sql}
""")
    assert cli.run("apply", str(setup)).returncode == 0
    cli.env = {k: v for k, v in cli.env.items() if not k.startswith("SUPABASE_")}
    only_db = {"DATABASE_URL": cli.stack.db_url}
    killed = cli.run("flag", "kill", "messaging_v2_enabled", "--env", "staging", **only_db)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    status = cli.run("status", "staging", **only_db)
    assert status.returncode == 0, status.stdout + status.stderr
    # A command that deploys needs them all, and names them all at once.
    applied = cli.run("plan", "plans/staging.yaml", **only_db)
    assert applied.returncode == 2
    # (the legacy JWT secret and service-role key are optional: projects on signing keys)
    assert "4 environment variable(s) not set" in applied.stderr, applied.stderr
    for name in ("SUPABASE_ACCESS_TOKEN", "SUPABASE_ANON_KEY", "SUPABASE_PROJECT_REF",
                 "SUPABASE_URL"):
        assert name in applied.stderr
