"""A maintenance window cannot outlive its run (issue 13, finding 1): real CLI, real signals.

The run sits in a gate inside the window; then it is killed (SIGKILL), hung up (SIGHUP, the
terminal closed) or suspended (SIGSTOP, a frozen machine). API writes must come back by
themselves (no one lifts anything), the journal must say how the window ended, and `status`
must show the run as dead with the commands to finish or undo it — never as "running".
"""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg

from tests.engine.conftest import Cli, write_plan
from tests.engine.test_failures import maintenance_on, step_status, wait_for, window_around


def in_window(lease: int = 60, pause: str = "600s") -> str:
    return window_around(f"""
  - id: pause
    kind: gate.pause
    with: {{duration: {pause}}}""").replace('with: {mode: "on"}',
                                          f'with: {{mode: "on", lease: {lease}}}')


def api_write_refused(cli: Cli) -> bool:
    """An `authenticated` write (a statement guard fires even when no row matches)."""
    with psycopg.connect(cli.stack.db_url, autocommit=True) as conn:
        conn.execute("set role authenticated")
        try:
            conn.execute("delete from public.profiles where false")
        except psycopg.errors.ReadOnlySqlTransaction:
            return True
    return False


def window_ending(cli: Cli) -> str:
    return str(cli.one("select ended_how from rollout.maintenance_lease "
                       "order by id desc limit 1"))


def start_in_window(cli: Cli, plan: Path) -> object:
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "pause") == "running")
    assert api_write_refused(cli)
    return proc


def test_sigkill_in_the_window_gives_writes_back_and_status_says_dead(
        cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, in_window())
    proc = start_in_window(cli, plan)
    proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    proc.wait(30)  # type: ignore[attr-defined]
    # Nobody lifts the window: its lease dies with the run's session.
    wait_for(lambda: not api_write_refused(cli))
    assert maintenance_on(cli)  # guards left behind, inert
    status = cli.run("status", str(plan))
    assert status.returncode == 0, status.stderr
    assert "apply running" not in status.stdout
    assert "apply dead" in status.stdout
    assert "is dead: its process is gone" in status.stderr
    assert "ended by itself, writes are allowed" in status.stderr
    assert "not finished: pause, maintenance-off" in status.stderr
    assert f"rollout apply {plan} --resume" in status.stderr
    assert f"rollout rollback {plan}" in status.stderr
    history = cli.run("history", str(plan))
    assert " dead " in history.stdout and " running " not in history.stdout, history.stdout
    shown = cli.run("plan", str(plan))
    assert "is dead" in shown.stderr and "--resume" in shown.stderr, shown.stderr
    health = cli.run("check", "health", "--plan", str(plan))
    assert health.returncode == 1 and "is dead" in health.stdout, health.stdout + health.stderr
    # A plain apply is refused (use --resume) and writes nothing: the dead run's record stays.
    before = cli.sql("select id, status, message, finished_at from rollout.runs")
    refused = cli.run("apply", str(plan))
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr
    assert cli.sql("select id, status, message, finished_at from rollout.runs") == before
    # Following the advice: the resume settles the dead window and records how it ended.
    resumed = cli.run("apply", str(plan), "--resume", "--from", "maintenance-off")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    endings = [r[0] for r in cli.sql("select ended_how from rollout.maintenance_lease")]
    assert endings == ["ended by itself: the run's session was gone (the process died)"]
    assert not maintenance_on(cli)


def test_sighup_stops_the_run_like_sigterm_and_lifts_the_window(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, in_window())
    proc = start_in_window(cli, plan)
    proc.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]
    out, err = proc.communicate(timeout=60)  # type: ignore[attr-defined]
    assert proc.returncode == 1, (out, err)  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert not maintenance_on(cli) and not api_write_refused(cli)
    run = cli.sql("select status, message from rollout.runs")[0]
    assert run == ("interrupted", "interrupted (SIGHUP)")
    assert window_ending(cli) == "lifted when the run interrupted"
    shown = cli.run("status", str(plan))
    assert "last maintenance window:" in shown.stdout
    assert "lifted when the run interrupted" in shown.stdout, shown.stdout


def test_a_suspended_run_loses_its_lease_and_stops_when_it_wakes(
        cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, in_window(lease=3, pause="2s"))
    proc = start_in_window(cli, plan)
    proc.send_signal(signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        # Its session is alive, but it renews nothing: the lease runs out.
        wait_for(lambda: not api_write_refused(cli))
    finally:
        proc.send_signal(signal.SIGCONT)  # type: ignore[attr-defined]
    out, err = proc.communicate(timeout=60)  # type: ignore[attr-defined]
    assert proc.returncode == 1, (out, err)  # type: ignore[attr-defined]
    assert "lease lapsed" in out + err, out + err
    assert step_status(cli, "maintenance-off") is None  # it stopped before going on
    assert cli.one("select status from rollout.runs") == "failed"
    assert not maintenance_on(cli)
    assert window_ending(cli).startswith("ended by itself: the lease expired")
