"""A migration meant for one database refuses another, before anything changes.

`migrations/production_messaging_system.expect.yaml` says what the v2 migration expects of the
target. `rollout plan` shows the verdict; `rollout apply` checks it before the backup and the
maintenance window and refuses a mismatched target with a diff (exit 2, nothing changed).
"""

from __future__ import annotations

import pytest

from tests.engine.conftest import Cli

PLAN = "plans/local.yaml"
V2 = "migrations/production_messaging_system.sql"


def lay_baseline(cli: Cli) -> None:
    """The local plan up to its seed of production's schema and demo data."""
    result = cli.run("apply", PLAN, "--to", "app-adoption", "--yes")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("change", "expected"), [
    ("alter table public.messages drop column is_one_way",
     "public.messages.is_one_way: expected boolean, found no column"),
    ("alter table public.conversations drop constraint conversations_type_check, "
     "add constraint conversations_type_check check (type in ('direct', 'group'))",
     "public.conversations constraint conversations_type_check: expected CHECK"),
    ("alter table public.broadcast_quotas add column quota_date date",  # half of a v2 shape
     None),
    ("create table public.feature_flags (name text primary key)",
     "public.feature_flags: expected absent, found it"),
])
def test_a_mismatched_target_is_refused_with_a_diff_and_nothing_changes(
        cli: Cli, change: str, expected: str | None) -> None:
    lay_baseline(cli)
    cli.sql(change)
    runs = cli.one("select count(*) from rollout.runs")
    plan = cli.run("plan", PLAN)
    apply = cli.run("apply", PLAN, "--yes")
    if expected is None:  # extra columns are not the migration's business
        assert plan.returncode == 0, plan.stderr
        assert apply.returncode == 0, apply.stderr
        return
    assert plan.returncode == 2
    assert "apply will refuse" in plan.stdout + plan.stderr
    assert expected in plan.stdout + plan.stderr
    assert apply.returncode == 2, apply.stdout + apply.stderr
    assert expected in apply.stderr
    assert "nothing was changed" in apply.stderr
    # Nothing changed: no backup taken, no window opened, no run journaled, v2 not there.
    assert not list((cli.state / "backups").glob("*.dump")) if (cli.state / "backups").exists() \
        else True
    assert cli.one("select count(*) from rollout.runs") == runs
    assert cli.one("select to_regprocedure('public.send_broadcast(uuid,text,text[],boolean)')") \
        is None
    assert cli.one("select count(*) from pg_trigger where tgname like 'rollout_maintenance%%'") \
        == 0


def test_a_target_holding_v2_without_the_journal_knowing_is_refused(cli: Cli) -> None:
    lay_baseline(cli)
    with open(V2) as handle:
        cli.sql(handle.read())
    apply = cli.run("apply", PLAN, "--yes")
    assert apply.returncode == 2
    assert "public.broadcast_quotas.pre_show_remaining: expected smallint, found no column" \
        in apply.stderr
    assert "does the target already hold this migration?" in apply.stderr


def test_the_production_baseline_passes_and_a_fresh_stack_applies(cli: Cli) -> None:
    """On a fresh stack the check waits for the seed of production's schema, then passes."""
    apply = cli.run("apply", PLAN, "--to", "verify-migration", "--yes")
    assert apply.returncode == 0, apply.stderr
    plan = cli.run("plan", PLAN)
    assert plan.returncode == 0 and "apply will refuse" not in plan.stdout + plan.stderr
