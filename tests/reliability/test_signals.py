"""Signal × boundary (issue 13): every way a run can be stopped, at every boundary of a
maintenance window. SIGINT, SIGTERM and SIGHUP (the terminal closed) stop it cleanly: exit 1,
journaled `interrupted (SIG…)`, window lifted and its ending journaled, lock free. SIGKILL
cannot clean up: the window ends by itself (its lease dies with the run's session), `status`
calls the run dead, and `--resume` finishes it. docs/reliability.md has the table.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.engine.conftest import Cli, write_plan
from tests.engine.test_failures import window_around
from tests.engine.test_oncall_window import api_write_refused
from tests.reliability.conftest import hooked, maintenance_on, wait_for

PLAN = window_around("""
  - id: migrate
    kind: db.migrate
    with: {file: tests/fixtures/slow_migration.sql, lint: "off"}""")
# before the window, inside it (twice), after it (every step done, final status not written)
BOUNDARIES = ["before:maintenance-on", "before:migrate", "before:maintenance-off", "finish"]
CLEAN = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def window_opened(point: str) -> bool:
    return point != "before:maintenance-on"


@pytest.mark.parametrize("point", BOUNDARIES)
@pytest.mark.parametrize("signum", CLEAN, ids=lambda s: signal.Signals(s).name)
def test_clean_signals_stop_the_run_and_lift_the_window(
        cli: Cli, tmp_path: Path, signum: int, point: str) -> None:
    plan = str(write_plan(tmp_path, PLAN))
    run = hooked(cli, point, "apply", plan)
    run.reached()
    assert api_write_refused(cli) == (point in ("before:migrate", "before:maintenance-off"))
    run.proc.send_signal(signum)
    if point == "finish":
        run.go()  # the hook pauses again when the record is retried
    code, out, err = run.finish()
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    status, message = cli.sql("select status, message from rollout.runs")[0]
    if point == "finish":
        # Every step was done: the signal lands while the run is being closed, which goes
        # on to the end and records the truth.
        assert (code, status) == (0, "succeeded"), (code, status, out, err)
    else:
        assert code == 1, (out, err)
        assert status == "interrupted" and message in (
            f"interrupted ({name})", "interrupted (SIGINT, Ctrl-C)"), (status, message)
    assert not maintenance_on(cli) and not api_write_refused(cli)
    assert cli.one("select count(*) from rollout.locks") == 0
    if window_opened(point):
        endings = [r[0] for r in cli.sql("select ended_how from rollout.maintenance_lease")]
        assert endings in (["lifted when the run interrupted"],
                           ["lifted by step maintenance-off"]), endings


@pytest.mark.parametrize("point", BOUNDARIES)
def test_sigkill_the_window_ends_by_itself_and_resume_finishes(
        cli: Cli, tmp_path: Path, point: str) -> None:
    plan = str(write_plan(tmp_path, PLAN))
    run = hooked(cli, point, "apply", plan)
    run.reached()
    run.kill()
    wait_for(lambda: not api_write_refused(cli), what="writes back by themselves")
    status = cli.run("status", plan)
    assert "apply dead" in status.stdout and "--resume" in status.stderr, status.stderr
    resumed = cli.run("apply", plan, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert cli.one("select status from rollout.runs") == "succeeded"
    assert not maintenance_on(cli)
    if window_opened(point) and point != "finish":
        endings = {r[0] for r in cli.sql("select ended_how from rollout.maintenance_lease")}
        assert "ended by itself: the run's session was gone (the process died)" in endings
