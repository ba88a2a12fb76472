"""Backups and restores, for real: pg_dump / pg_restore subprocesses against the local stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollout.adapters.targets import LocalTarget
from rollout.errors import StepFailed, UsageError
from rollout.steps.base import StepContext
from rollout.steps.db import BackupParams, DbBackup
from tests.engine.conftest import Cli

PG15_DUMP = Path("/usr/lib/postgresql/15/bin/pg_dump")


def test_restore_brings_back_deleted_rows_and_leaves_the_journal(cli: Cli) -> None:
    result = cli.run("apply", "plans/local.yaml", "--to", "backup", "--json")
    assert result.returncode == 0, result.stderr
    dump = next(s for s in json.loads(result.stdout)["steps"]
                if s["step_id"] == "backup")["detail"]["file"]
    messages = cli.one("select count(*) from public.messages")
    runs = cli.one("select count(*) from rollout.runs")
    cli.sql("delete from public.messages where true")

    refused = cli.run("db", "restore", "plans/local.yaml", dump)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert cli.one("select count(*) from public.messages") == 0

    restored = cli.run("db", "restore", "plans/local.yaml", dump, "--yes")
    assert restored.returncode == 0, restored.stderr
    assert cli.one("select count(*) from public.messages") == messages
    assert cli.one("select count(*) from rollout.runs") == runs


def test_restore_refuses_a_file_that_is_not_a_dump(cli: Cli, tmp_path: Path) -> None:
    assert cli.run("local", "up").returncode == 0
    bogus = tmp_path / "bogus.dump"
    bogus.write_text("not a dump")
    result = cli.run("db", "restore", "plans/local.yaml", str(bogus), "--yes")
    assert result.returncode == 1
    assert "cannot read" in result.stderr


@pytest.mark.skipif(not PG15_DUMP.exists(), reason="Debian's PostgreSQL 15 client is not installed")
def test_backup_refuses_a_pg_dump_older_than_the_server(cli: Cli, tmp_path: Path) -> None:
    assert cli.run("local", "up").returncode == 0

    class OldClientTarget(LocalTarget):
        def pg_tool(self, name: str) -> str:
            return str(PG15_DUMP.parent / name)

    target = OldClientTarget(cli.stack)
    ctx = StepContext(target=target, run_id="00000000-0000-0000-0000-000000000000",
                      environment="local", operator="pytest", artifacts=tmp_path / "runs" / "x",
                      root=Path.cwd())
    step = DbBackup("backup", BackupParams())
    with pytest.raises(UsageError, match="pg_dump 15 cannot dump a PostgreSQL 18 server") as early:
        step.preflight(ctx)  # before anything changes (exit 2), naming the fix
    assert "postgresql-client-18" in str(early.value.hint)
    with pytest.raises(StepFailed, match="pg_dump 15 cannot dump a PostgreSQL 18 server"):
        step.apply(ctx)
    assert not list((tmp_path / "backups").glob("*")) if (tmp_path / "backups").exists() else True
