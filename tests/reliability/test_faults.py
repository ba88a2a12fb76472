"""Faults during `rollout apply plans/local.yaml`: SIGKILL at every step boundary and in the
middle of backup and migration, the database restarted under a running step, the edge runtime
killed mid-deploy, a full disk under the backup. Each must end like an uninterrupted run (after
`--resume`), or fail with one clear error, a consistent journal and a rollback that works.

(tests/engine/test_failures.py covers a failing migration, SIGTERM, the lock refusal and a
SIGKILL on a small test plan; this file drives the real local plan.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from rollout.adapters.local_stack.postgres import process_alive
from tests.engine.conftest import Cli
from tests.reliability.conftest import (
    PERSISTENT,
    PLAN,
    STEPS,
    diff,
    hooked,
    journal_problems,
    maintenance_on,
    state_snapshot,
    wait_for,
)

# Every boundary: before each step (the previous one fully journaled), and after the last.
BOUNDARIES = [f"before:{s}" for s in STEPS] + ["finish"]
# Each boundary also gets a run of its own for these (the CLI takes seconds to start, so the
# others are covered by the chain test below, one kill per boundary in the same run).
SINGLE = ["before:migrate", "before:maintenance-off", "before:deploy-functions", "finish"]
MIDDLES = ["during:backup", "during:migrate"]
# Right after a persistent step's success is journaled: its `succeeded` event and its
# `step_state` row are written in one transaction, so a kill here must resume cleanly.
GAPS = [f"succeeded:{s}" for s in ("migrate", "deploy-functions", "flag-25") if s in PERSISTENT]


def last_status(cli: Cli, step: str) -> str | None:
    rows = cli.sql("select status from rollout.step_events where step_id = %s and action = "
                   "'apply' order by id desc limit 1", (step,))
    return rows[0][0] if rows else None


def resume_and_compare(cli: Cli, baseline: dict[str, Any]) -> None:
    resumed = cli.run("apply", PLAN, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not maintenance_on(cli)
    assert journal_problems(cli) == []
    assert diff(state_snapshot(cli), baseline) == []
    assert cli.one("select count(*) from rollout.runs") == 1  # the same run, resumed
    assert cli.one("select status from rollout.runs") == "succeeded"


def sleeping_migrations(cli: Cli) -> int:
    return int(cli.one("select count(*) from pg_stat_activity where wait_event = 'PgSleep'"))


def test_sigkill_at_every_boundary_in_turn_then_resume(
        cli: Cli, baseline: dict[str, Any]) -> None:
    """One run killed at every step boundary in turn: start, SIGKILL before step 1; `--resume`,
    SIGKILL before step 2; … `--resume`, SIGKILL after the last step; a final `--resume`."""
    for i, point in enumerate(BOUNDARIES):
        args = ("apply", PLAN) if i == 0 else ("apply", PLAN, "--resume")
        run = hooked(cli, point, *args)
        run.reached()
        run.kill()
        assert cli.one("select status from rollout.runs") == "running", point
        assert cli.one("select count(*) from rollout.runs") == 1
        # The window is open exactly between maintenance-on and maintenance-off.
        step = point.partition(":")[2]
        inside = STEPS.index("maintenance-on") < (STEPS.index(step) if step else len(STEPS)) \
            <= STEPS.index("maintenance-off")
        assert maintenance_on(cli) == inside, point
    resume_and_compare(cli, baseline)
    events = cli.one("select count(*) from rollout.step_events where status = 'running'")
    assert events >= len(STEPS)


@pytest.mark.parametrize("point", SINGLE + MIDDLES + GAPS)
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(
        cli: Cli, baseline: dict[str, Any], point: str) -> None:
    run = hooked(cli, point, "apply", PLAN)
    if point == "during:migrate":
        # The migration's statements have run; its transaction is open, sleeping before commit.
        wait_for(lambda: sleeping_migrations(cli) == 1, what="open migration")
        info: dict[str, Any] = {}
    else:
        info = run.reached()
    step = point.partition(":")[2]
    if point.startswith("during:"):
        assert last_status(cli, step) == "running"
    run.kill()
    if info.get("pg_dump_pid"):
        # pg_dump was frozen mid-write; kill it too, as killing the whole unit would.
        assert Path(info["file"]).stat().st_size > 0
        os.kill(info["pg_dump_pid"], signal.SIGKILL)
        wait_for(lambda: not process_alive(info["pg_dump_pid"]), what="pg_dump gone")
    if point == "during:migrate":
        # The server notices the dead client and aborts: nothing of the migration remains.
        wait_for(lambda: sleeping_migrations(cli) == 0, what="migration aborted")
        assert cli.one("select to_regclass('public.feature_flags')") is None
        assert cli.one("select count(*) from rollout.migrations") == 0
        assert maintenance_on(cli)  # a SIGKILL cannot clean up; --resume must
    assert cli.one("select status from rollout.runs") == "running"
    if point in ("before:migrate", "finish"):  # (a plain apply refuses: tests/engine has more)
        refused = cli.run("apply", PLAN)
        assert refused.returncode == 2 and "--resume" in refused.stderr
    resume_and_compare(cli, baseline)
    if point.startswith("succeeded:"):
        back = cli.run("rollback", PLAN)
        assert back.returncode == 0, back.stderr
        assert cli.one("select to_regclass('public.feature_flags')") is None
        assert cli.stack.deployed() == {}


def test_truncated_dump_from_a_killed_backup_is_not_taken_for_a_backup(
        cli: Cli, baseline: dict[str, Any]) -> None:
    run = hooked(cli, "during:backup", "apply", PLAN)
    info = run.reached()
    run.kill()
    os.kill(info["pg_dump_pid"], signal.SIGKILL)
    wait_for(lambda: not process_alive(info["pg_dump_pid"]), what="pg_dump gone")
    resumed = cli.run("apply", PLAN, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    recorded = cli.sql("select detail->>'file' from rollout.step_events where step_id = 'backup'"
                       " and status = 'succeeded'")
    assert len(recorded) == 1 and recorded[0][0] != info["file"]
    pg_restore = str(cli.stack.postgres.bin_dir / "pg_restore")
    good = subprocess.run([pg_restore, "--list", recorded[0][0]], capture_output=True)
    assert good.returncode == 0
    # The killed run's partial file must not lie around looking like a finished backup.
    leftovers = [p for p in Path(info["file"]).parent.glob("*.dump") if str(p) != recorded[0][0]]
    assert leftovers == [], f"truncated dump left in the backup folder: {leftovers}"


# ---- the database restarted while a step runs ------------------------------------------------


@pytest.mark.parametrize("step", ["migrate", "deploy-functions"])
def test_database_restart_mid_step(cli: Cli, baseline: dict[str, Any], step: str) -> None:
    run = hooked(cli, f"started:{step}", "apply", PLAN)
    run.reached()
    server = cli.stack.postgres
    server.stop()
    assert server.pid() is None
    server.start()
    server.wait_ready()
    run.go()
    code, out, err = run.finish()
    # Either the run survives the restart, or it stops with one clear line (no traceback).
    assert code in (0, 1), out + err
    assert "Traceback" not in err and "internal error" not in err, err
    status = cli.one("select status from rollout.runs")
    assert status == ("succeeded" if code == 0 else "failed"), (status, out, err)
    assert not maintenance_on(cli)
    if code == 1:
        resumed = cli.run("apply", PLAN)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert journal_problems(cli) == []
    assert diff(state_snapshot(cli), baseline) == []
    back = cli.run("rollback", PLAN)
    assert back.returncode == 0, back.stdout + back.stderr
    assert not maintenance_on(cli)
    assert cli.one("select to_regclass('public.feature_flags')") is None


# ---- the edge runtime killed mid-deploy ------------------------------------------------------


@pytest.mark.parametrize("victim", ["worker", "gateway"])
def test_edge_runtime_killed_mid_deploy(cli: Cli, baseline: dict[str, Any], victim: str) -> None:
    run = hooked(cli, "deployed:send-broadcast", "apply", PLAN)
    info = run.reached()
    pid = info["worker_pid"] if victim == "worker" else info["gateway_pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), what=f"{victim} gone")
    run.go()
    began = time.monotonic()
    code, out, err = run.finish()
    assert time.monotonic() - began < 60
    assert code == 1, out + err
    assert "deploy-functions" in out + err and "Traceback" not in err
    assert cli.one("select status from rollout.runs") == "failed"
    assert last_status(cli, "deploy-functions") == "failed"
    assert not maintenance_on(cli)
    assert journal_problems_after_failure(cli) == []
    # What the failed step left half-done must be undone by `rollout rollback`.
    back = cli.run("rollback", PLAN)
    assert back.returncode == 0, back.stdout + back.stderr
    assert cli.stack.deployed() == {}, "rollback left functions of the failed deploy running"
    assert cli.one("select to_regclass('public.feature_flags')") is None
    # …and a fresh apply ends like an uninterrupted run.
    again = cli.run("apply", PLAN)
    assert again.returncode == 0, again.stdout + again.stderr
    assert journal_problems(cli) == []
    assert diff(state_snapshot(cli), baseline) == []


# ---- a full disk under the backup ------------------------------------------------------------


@pytest.fixture
def tiny_disk(cli: Cli) -> Any:
    """A 16 KiB tmpfs (the dump is ~40 KB) mounted where the plan's backups go (root only)."""
    folder = cli.state / "backups"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0755", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_under_backup(cli: Cli, baseline: dict[str, Any], tiny_disk: Path) -> None:
    result = cli.run("apply", PLAN)
    assert result.returncode == 1, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "backup" in text and ("No space left on device" in text or "space" in text), text
    assert "Traceback" not in text
    assert cli.one("select status from rollout.runs") == "failed"
    assert last_status(cli, "backup") == "failed"
    assert last_status(cli, "migrate") is None  # stopped before any change to the schema
    assert not maintenance_on(cli)
    assert list(tiny_disk.glob("*.dump")) == []  # no partial dump left behind
    back = cli.run("rollback", PLAN)
    assert back.returncode == 0, back.stdout + back.stderr
    assert journal_problems_after_failure(cli) == []
    subprocess.run(["umount", "-l", str(tiny_disk)], check=True)
    again = cli.run("apply", PLAN)
    assert again.returncode == 0, again.stdout + again.stderr
    assert diff(state_snapshot(cli), baseline) == []


def journal_problems_after_failure(cli: Cli) -> list[str]:
    problems = [f"run {r[0][:8]} still running"
                for r in cli.sql("select id::text from rollout.runs where status = 'running'")]
    problems += [f"lock row {r}" for r in cli.sql("select run_id from rollout.locks")]
    return problems
