"""`unlock --force` and `--resume` never put two processes on one run (issue 13, finding 3).

Real CLI processes, real signals: a live holder is refused; insisting tells the live run to
stop (it stops cleanly, window lifted), not run beside it; a run that lost its lock but is
still alive (frozen, then woken) makes `--resume` refuse.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.engine.conftest import Cli, write_plan
from tests.engine.test_failures import maintenance_on, step_status, wait_for
from tests.engine.test_oncall_window import api_write_refused, in_window


def sitting_in_window(cli: Cli, tmp_path: Path) -> tuple[str, subprocess.Popen[str]]:
    plan = str(write_plan(tmp_path, in_window()))
    proc = cli.spawn("apply", plan)
    wait_for(lambda: step_status(cli, "pause") == "running")
    return plan, proc


def test_unlock_refuses_a_live_holder_and_insisting_stops_it(cli: Cli, tmp_path: Path) -> None:
    plan, proc = sitting_in_window(cli, tmp_path)
    refused = cli.run("unlock", plan, "--force")
    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert "ALIVE" in refused.stdout and "--stop-live-run" in refused.stderr
    assert proc.poll() is None and cli.one("select count(*) from rollout.locks") == 1
    assert api_write_refused(cli)

    stopped = cli.run("unlock", plan, "--force", "--stop-live-run", ROLLOUT_OPERATOR="bob")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "told to stop" in stopped.stdout
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err
    status, message = cli.sql("select status, message from rollout.runs")[0]
    assert status == "interrupted" and "told to stop by bob" in message, message
    assert not maintenance_on(cli) and not api_write_refused(cli)
    assert cli.one("select count(*) from rollout.runs") == 1  # nothing ran beside it


def test_resume_refuses_while_the_original_run_is_alive(cli: Cli, tmp_path: Path) -> None:
    plan, proc = sitting_in_window(cli, tmp_path)
    proc.send_signal(signal.SIGSTOP)
    try:
        # Frozen: it stops beating, so unlock takes it for dead and ends its lock session.
        wait_for(lambda: cli.run("unlock", plan, "--force").returncode == 0)
    finally:
        proc.send_signal(signal.SIGCONT)
    # Woken, it beats again on its own connection: alive, without the lock.
    wait_for(lambda: cli.one("select heartbeat_at > now() - interval '2 seconds' "
                             "from rollout.runs"))
    resumed = cli.run("apply", plan, "--resume")
    assert resumed.returncode == 5, resumed.stdout + resumed.stderr
    assert "is still alive" in resumed.stderr
    assert cli.one("select count(*) from rollout.step_events where step_id = 'pause'") == 1
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert cli.one("select status from rollout.runs") == "interrupted"
    assert not maintenance_on(cli)
