"""Every command the tool prints runs as printed; at 80 columns every value stays whole.

Each test provokes a hint (approve, resume, rollback, unlock), takes the command out of the
output exactly as a person would copy it, runs it, and checks it was accepted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan
from tests.engine.test_failures import step_status, wait_for

SNAPSHOTS = Path(__file__).parent / "snapshots"



def gated(gate: str) -> str:
    """A local plan: the legacy app, a migration, then the gate `go-ahead`."""
    return LOCAL_HEADER + f"""
  - id: legacy-app
    kind: db.seed
    with: {{file: migrations/legacy_baseline.sql}}
  - id: migrate
    kind: db.migrate
    with:
      file: tests/fixtures/slow_migration.sql
      rollback_file: tests/fixtures/slow_migration_rollback.sql
      lint: "off"
  - id: go-ahead
{gate}
"""


APPROVAL = gated('    kind: gate.approval\n    with: {message: "Ship it?", timeout: 2m}')
PAUSE = gated("    kind: gate.pause\n    with: {duration: 3s}")


def run_printed(cli: Cli, command: str) -> subprocess.CompletedProcess[str]:
    """Run a command copied from the output: `rollout …` is this checkout's CLI."""
    argv = shlex.split(command)
    assert argv[0] == "rollout", command
    return cli.run(*argv[1:])


def printed(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return match[1]


def test_approve_hint_is_runnable(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, APPROVAL)
    proc = cli.spawn("apply", str(plan))
    assert proc.stdout is not None
    seen = ""
    while "approve with" not in seen:
        line = proc.stdout.readline()
        assert line, f"apply ended before its gate:\n{seen}"
        seen += line
    command = printed(r"approve with `([^`]+)`", seen)
    assert str(plan) in command
    approved = run_printed(cli, command)
    assert approved.returncode == 0, approved.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert step_status(cli, "go-ahead") == "succeeded"


def test_interrupted_run_names_its_step_and_prints_runnable_resume_and_rollback(
        cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, PAUSE)
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "go-ahead") == "running")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted during step: go-ahead" in out
    status = run_printed(cli, printed(r"where it stands: (rollout status .+)", out))
    assert status.returncode == 0 and "go-ahead" in status.stdout
    resumed = run_printed(cli, printed(r"resume: (rollout apply .+)", out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert step_status(cli, "go-ahead") == "succeeded"
    undone = run_printed(cli, printed(r"roll back: (rollout rollback .+)", out))
    assert undone.returncode == 0, undone.stderr
    assert cli.one("select to_regclass('public.slow_migration_marker')") is None


def test_killed_run_hints_resume_and_it_finishes_the_run(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, PAUSE)
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: step_status(cli, "go-ahead") == "running")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    again = cli.run("apply", str(plan))
    assert again.returncode == 2
    resume = printed(r"continue it with `([^`]+)`", again.stderr)
    printed(r"undo it with `(rollout rollback [^`]+)`", again.stderr)
    resumed = run_printed(cli, resume)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert step_status(cli, "go-ahead") == "succeeded"


def test_lock_hint_and_unlock_hint_are_runnable(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, APPROVAL)  # environment `local`: plans/local.yaml resolves it
    holder = cli.spawn("apply", str(plan))
    try:
        wait_for(lambda: step_status(cli, "go-ahead") == "running")
        refused = cli.run("apply", str(plan))
        assert refused.returncode == 5  # refused: another run holds the environment
        unlock = printed(r"(rollout unlock \S+)", refused.stderr)
        asked = run_printed(cli, unlock)
        assert asked.returncode == 2
        forced = run_printed(cli, printed(r"free the lock: (rollout unlock .+ --force)",
                                          asked.stderr))
        # The holder is alive: refused (5), with the command that stops it instead.
        assert forced.returncode == 5, forced.stdout + forced.stderr
        stopped = run_printed(cli, printed(r"to stop it: (rollout unlock .+ --stop-live-run)",
                                           forced.stderr))
        assert stopped.returncode == 0, stopped.stderr
        assert "told to stop" in stopped.stdout and "unlocked" in stopped.stdout
    finally:
        holder.kill()
        holder.wait(10)


# ---- 80 columns -----------------------------------------------------------------------------


def expected_snapshot(name: str, seen: str) -> str:
    """The recorded output; `UPDATE_SNAPSHOTS=1` records `seen` first (review the diff)."""
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        (SNAPSHOTS / name).write_text(seen)
    return (SNAPSHOTS / name).read_text()


def test_plan_at_80_columns_is_stacked_and_matches_the_snapshot(cli: Cli) -> None:
    result = cli.run("plan", "plans/local.yaml", COLUMNS="80")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines), lines
    assert result.stdout == expected_snapshot("plan-local-80.txt", result.stdout)


def normalized(text: str, state: Path) -> str:
    """Output with what differs from run to run as placeholders: ids, hashes, times, numbers,
    and the widths of table columns (a duration's digits change them)."""
    for pattern, placeholder in (
            (re.escape(str(state)), "STATE"),
            (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID"),
            (r"\b[0-9a-f]{64}\b", "SHA256"),
            (r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", "TIME"),
            (r"\d{8}T\d{6}Z-[0-9a-f]{8}", "STAMP"),
            (r"(?<![\w.])\d+(\.\d+)*(?=s\b|\b)", "N"),
            (r" +", " "), ("━+", "━"), ("─+", "─")):
        text = re.sub(pattern, placeholder, text)
    return text


def test_apply_at_80_columns_keeps_every_value_whole(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("apply", "plans/local.yaml", "--to", "smoke", COLUMNS="80")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    seen = normalized(out, cli.state)
    assert seen == expected_snapshot("apply-local-80.txt", seen)
    report = Path(printed(r"release report: (\S+)", out))
    facts = json.loads(report.with_suffix(".json").read_text())
    backup = facts["backups"][0]
    whole = [backup["file"], backup["sha256"], facts["runs"][0]["run_id"], str(report),
             f"run {facts['runs'][0]['run_id']}", cli.stack.api_url]
    whole += [s["report"] for s in facts["smoke"]]
    for value in whole:
        assert value in out, value
    assert "the local stack is still running" in out
    assert "rollout local down" in out and "/local/*.log" in out


def test_a_summary_leaves_whole_parts_off_visibly_never_cutting_one() -> None:
    from rollout.engine.runner import SUMMARY_LIMIT, summarize

    detail = {f"file{i}": f"/var/tmp/{'x' * 90}/{i}.dump" for i in range(8)}
    line = summarize(detail)
    kept, _, left_off = line.partition(" …(+")
    assert len(kept) <= SUMMARY_LIMIT and left_off.endswith(")")
    shown = list(detail.items())[:len(detail) - int(left_off.rstrip(")"))]
    assert shown and kept == " ".join(f"{k}={v}" for k, v in shown)


def test_wrapping_keeps_long_values_and_quoted_values_whole() -> None:
    from rollout.cli.render import wrap_whole

    path = "/var/tmp/" + "a" * 100 + "/backup.dump"
    text = f"schedule job 'reset quotas' at '0 2 * * *' UTC, backup {path} done"
    lines = wrap_whole(text, 30, "  ").splitlines()
    assert f"  {path}" in lines
    assert any("'0 2 * * *'" in line for line in lines)
    assert " ".join(line.strip() for line in lines) == text
