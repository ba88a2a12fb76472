"""The main job end to end: apply the local plan, roll it back keeping every message, re-apply."""

from __future__ import annotations

import json

from tests.engine.conftest import Cli

PLAN = "plans/local.yaml"


def snapshot(cli: Cli) -> dict[str, object]:
    """Schema objects and row counts of every application table (not the journal)."""
    tables = [r[0] for r in cli.sql(
        "select format('%I.%I', schemaname, tablename) from pg_tables "
        "where schemaname not in ('pg_catalog', 'information_schema', 'rollout') order by 1")]
    counts = {t: cli.one(f"select count(*) from {t}") for t in tables}
    policies = cli.sql("select schemaname, tablename, policyname from pg_policies order by 1, 2, 3")
    functions = cli.sql("select p.proname from pg_proc p join pg_namespace n on n.oid = "
                        "p.pronamespace where n.nspname = 'public' order by 1")
    return {"counts": counts, "policies": policies, "functions": functions}


def test_apply_rollback_apply_keeps_every_message(cli: Cli) -> None:
    first = cli.run("apply", PLAN, "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["run"]["status"] == "succeeded"
    statuses = {s["step_id"]: s["status"] for s in doc["steps"]}
    assert statuses.pop("load") == "skipped"  # the fixture switches the k6 step off
    assert set(statuses.values()) == {"succeeded"}
    assert cli.one("select relrowsecurity from pg_class where relname = 'messages'") is True
    assert cli.one("select rollout_percentage from public.feature_flags "
                   "where name = 'messaging_v2_enabled'") == 100
    messages_before = cli.one("select count(*) from public.messages")
    assert messages_before >= 200  # the historical legacy chats

    back = cli.run("rollback", PLAN, "--json")
    assert back.returncode == 0, back.stderr
    assert cli.one("select to_regprocedure('public.send_broadcast(uuid,text,text[],boolean)')") \
        is None
    # Production's earlier-shape quota table is back; v2's per-day one is archived.
    assert cli.one("select to_regclass('public.broadcast_quotas')") == "broadcast_quotas"
    assert cli.one("select to_regclass('public.feature_flags')") is None
    assert cli.one("select count(*) from information_schema.columns where table_schema = "
                   "'public' and table_name = 'broadcast_quotas' and column_name = "
                   "'pre_show_remaining'") == 1
    assert cli.one("select count(*) from public.messages") == messages_before
    assert cli.stack.deployed() == {}
    assert cli.stack.schedules() == []

    again = cli.run("apply", PLAN)
    assert again.returncode == 0, again.stderr
    assert "apply succeeded" in again.stdout
    assert cli.one("select count(*) from public.messages") == messages_before


def test_second_apply_has_nothing_to_do(cli: Cli) -> None:
    assert cli.run("apply", PLAN).returncode == 0
    before = snapshot(cli)
    second = cli.run("apply", PLAN, "--json")
    assert second.returncode == 0
    statuses = {s["step_id"]: s["status"] for s in json.loads(second.stdout)["steps"]}
    assert statuses["migrate"] == "already-applied"
    assert statuses["deploy-functions"] == "already-applied"
    # Nothing pending changes nothing: no backup, no window, no announcement, no checks.
    for step in ("backup", "maintenance-on", "maintenance-off", "announce", "smoke"):
        assert statuses[step] == "skipped", (step, statuses[step])
    assert cli.one("select count(*) from rollout.maintenance_lease") == 1  # the first run's
    assert cli.one("select message from rollout.runs order by started_at desc limit 1") == \
        "nothing to do: every step is applied"
    after = snapshot(cli)
    assert before["policies"] == after["policies"]
    assert before["functions"] == after["functions"]


def test_dry_run_changes_nothing(cli: Cli) -> None:
    assert cli.run("apply", PLAN, "--to", "demo-data").returncode == 0
    before = snapshot(cli)
    journal_before = cli.one("select count(*) from rollout.step_events")
    dry = cli.run("apply", PLAN, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "pending" in dry.stdout and "applied" in dry.stdout
    assert snapshot(cli) == before
    assert cli.one("select count(*) from rollout.step_events") == journal_before


def test_dry_run_does_not_start_the_stack(cli: Cli) -> None:
    dry = cli.run("apply", PLAN, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not (cli.state / "local" / "stack.json").exists()


def test_plan_shows_applied_steps(cli: Cli) -> None:
    assert cli.run("apply", PLAN, "--to", "verify-migration").returncode == 0
    shown = cli.run("plan", PLAN, "--json")
    states = {s["id"]: s["state"] for s in json.loads(shown.stdout)["steps"]}
    assert states["migrate"] == "applied"
    assert states["deploy-functions"] == "pending"
    assert states["backup"] == "always"


def test_status_and_history_read_the_journal(cli: Cli) -> None:
    assert cli.run("apply", PLAN).returncode == 0
    status = json.loads(cli.run("status", PLAN, "--json").stdout)
    assert status["steps"]["migrate"]["status"] == "applied"
    assert status["last_run"]["operator"] == "pytest"
    history = json.loads(cli.run("history", PLAN, "--json").stdout)
    assert history[0]["command"] == "apply" and history[0]["status"] == "succeeded"
    assert history[0]["plan_checksum"]


def test_backup_is_a_verified_custom_dump_without_the_journal(cli: Cli) -> None:
    result = cli.run("apply", PLAN, "--to", "backup", "--json")
    assert result.returncode == 0, result.stderr
    backup = next(s for s in json.loads(result.stdout)["steps"] if s["step_id"] == "backup")
    assert backup["detail"]["entries"] > 10
    listing = cli.run("local", "env")  # a real pg_restore --list, independent of the step
    assert listing.returncode == 0
    import subprocess

    tool = cli.stack.postgres.bin_dir / "pg_restore"
    toc = subprocess.run([str(tool), "--list", backup["detail"]["file"]], capture_output=True,
                         text=True, check=True).stdout
    assert "TABLE public messages" in toc
    assert " rollout " not in toc
