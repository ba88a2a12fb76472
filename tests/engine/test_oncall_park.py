"""A long gate parks the run instead of holding a process and the lock for days (issue 13,
finding 7): exit 7, journaled `waiting`, lock released, window lifted; `apply --resume`
checks the gate again and finishes the same run."""

from __future__ import annotations

from pathlib import Path

from tests.engine.conftest import Cli, write_plan
from tests.engine.test_failures import maintenance_on, window_around

GATE = window_around("""
  - id: adoption-gate
    kind: gate.analysis
    with:
      query: select count(*) from pg_tables where tablename = 'oncall_ready'
      success: ">= 1"
      interval: 1s
      poll: 2s
      timeout: 7d""")


def test_a_gate_not_yet_satisfied_parks_the_run_and_resume_continues(
        cli: Cli, tmp_path: Path) -> None:
    plan = str(write_plan(tmp_path, GATE))
    parked = cli.run("apply", plan)
    assert parked.returncode == 7, parked.stdout + parked.stderr
    run_id, status, message = cli.sql("select id::text, status, message from rollout.runs")[0]
    assert status == "waiting"
    assert "adoption-gate" in message and f"rollout apply {plan} --resume" in message
    assert cli.one("select count(*) from rollout.locks") == 0  # nobody holds the environment
    assert not maintenance_on(cli)  # a parked run holds no window either
    shown = cli.run("status", plan)
    assert "apply waiting" in shown.stdout and "--resume" in shown.stdout, shown.stdout

    again = cli.run("apply", plan, "--resume")  # still not satisfied: parks again
    assert again.returncode == 7, again.stdout + again.stderr
    cli.sql("create table public.oncall_ready (id int)")
    done = cli.run("apply", plan, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli.sql("select id::text, status from rollout.runs") == [(run_id, "succeeded")]
    assert not maintenance_on(cli)


def test_an_approval_gate_parks_too_and_resume_sees_the_approval(
        cli: Cli, tmp_path: Path) -> None:
    plan = str(write_plan(tmp_path, window_around("""
  - id: go-ahead
    kind: gate.approval
    with: {message: "Roll out?", timeout: 7d, poll: 1s}""")))
    parked = cli.run("apply", plan)
    assert parked.returncode == 7, parked.stdout + parked.stderr
    run_id = cli.one("select id::text from rollout.runs")
    assert cli.one("select count(*) from rollout.locks") == 0
    approved = cli.run("approve", plan, run_id[:8], "go-ahead", ROLLOUT_OPERATOR="pm")
    assert approved.returncode == 0, approved.stderr
    done = cli.run("apply", plan, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli.sql("select status from rollout.runs") == [("succeeded",)]
