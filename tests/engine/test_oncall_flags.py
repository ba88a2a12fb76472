"""A kill switch stays killed (issue 13, finding 2): the README's incident sequence.

apply (flag 25 → 100), `rollout flag kill` by alice, then `rollback --to flag-25` and a full
rollback: the flag stays at 0 % and the rollback says why; `plan` and `status` show the drift;
`flag history` is still readable once the rollback archived the audit.
"""

from __future__ import annotations

from pathlib import Path

from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan

FLAG = "messaging_v2_enabled"
PLAN = LOCAL_HEADER + """
  - id: legacy-app
    kind: db.seed
    with: {file: migrations/legacy_baseline.sql}
  - id: migrate
    kind: db.migrate
    with:
      file: migrations/production_messaging_system.sql
      rollback_file: migrations/rollback_production_messaging.sql
  - id: flag-25
    kind: flags.set
    with: {percentage: 25}
  - id: flag-100
    kind: flags.set
    with: {percentage: 100}
"""


def flag(cli: Cli) -> int:
    return int(cli.one("select rollout_percentage from public.feature_flags where name = %s",
                       (FLAG,)))


def test_rollback_never_undoes_a_kill(cli: Cli, tmp_path: Path) -> None:
    plan = str(write_plan(tmp_path, PLAN))
    assert cli.run("apply", plan).returncode == 0
    assert flag(cli) == 100
    killed = cli.run("flag", "kill", FLAG, "--plan", plan, "--reason", "incident",
                     ROLLOUT_OPERATOR="alice")
    assert killed.returncode == 0, killed.stderr
    shown = cli.run("plan", plan)
    assert "flag-100: applied 100 %, now 0 % — killed by alice at" in shown.stdout, shown.stdout
    status = cli.run("status", plan)
    assert "flag-100: applied 100 %, now 0 % — killed by alice at" in status.stdout
    assert "flag-25: applied 25 %, now 0 % — killed by alice" in status.stdout

    partial = cli.run("rollback", plan, "--to", "flag-25")
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert flag(cli) == 0
    assert "left at 0%: it was changed after this step set 100% (killed by alice" \
        in partial.stdout, partial.stdout

    back = cli.run("rollback", plan)
    assert back.returncode == 0, back.stdout + back.stderr
    history = cli.run("flag", "history", FLAG, "--plan", plan)
    assert history.returncode == 0, history.stderr
    assert "alice" in history.stdout and "incident" in history.stdout


def test_rollback_restores_the_value_the_step_replaced(cli: Cli, tmp_path: Path) -> None:
    """Nothing changed since: a rollback gives back the previous value, as before."""
    plan = str(write_plan(tmp_path, PLAN))
    assert cli.run("apply", plan).returncode == 0
    back = cli.run("rollback", plan, "--to", "flag-25")
    assert back.returncode == 0, back.stdout + back.stderr
    assert flag(cli) == 25


def test_rollback_never_raises_a_flag(cli: Cli, tmp_path: Path) -> None:
    """A step that lowered the flag (50 → 10): undoing it would raise it; it stays at 10 %."""
    plan = str(write_plan(tmp_path, PLAN.replace(
        "with: {percentage: 100}", "with: {percentage: 10, allow_decrease: true}").replace(
        "with: {percentage: 25}", "with: {percentage: 50}")))
    assert cli.run("apply", plan).returncode == 0
    assert flag(cli) == 10
    back = cli.run("rollback", plan, "--to", "flag-25")
    assert back.returncode == 0, back.stdout + back.stderr
    assert flag(cli) == 10
    assert "would raise it" in back.stdout, back.stdout
