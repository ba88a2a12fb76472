"""gate.analysis with `background: true`: measured while later steps run, until a named step.

The real CLI on the local stack: a guard query's table filled while a later step runs stops
the run after that step (exit 1, the watch's failure journaled); a clean watch ends at its
`until` step with its verdict journaled, and the run goes on.
"""

from __future__ import annotations

from pathlib import Path

from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan
from tests.engine.test_flag_ramp import wait_for

PLAN = LOCAL_HEADER + """
  - id: faults-table
    kind: db.seed
    with: {file: tests/fixtures/ramp_faults.sql}
  - id: watch
    kind: gate.analysis
    with:
      background: true
      until: pause-2
      query: select count(*) from public.ramp_faults
      success: "== 0"
      interval: 0.5s
      failure_limit: 1
  - id: pause-1
    kind: gate.pause
    with: {duration: 4s}
  - id: pause-2
    kind: gate.pause
    with: {duration: 1s}
  - id: after
    kind: notify
    with: {message: after the watch}
"""


def events(cli: Cli) -> list[tuple[str, str, str, str | None]]:
    return [tuple(r) for r in cli.sql(  # type: ignore[misc]
        "select step_id, action, status, error from rollout.step_events order by id")]


def test_a_failure_in_the_background_stops_the_run_after_the_current_step(
        cli: Cli, tmp_path: Path) -> None:
    proc = cli.spawn("apply", str(write_plan(tmp_path, PLAN)))
    wait_for(lambda: ("pause-1", "apply", "running", None) in events(cli))
    cli.sql("insert into public.ramp_faults default values")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, out + err
    assert "background analysis failed" in out + err

    seen = events(cli)
    finished = [(s, a, st) for s, a, st, _ in seen if st != "running"]
    assert ("pause-1", "apply", "succeeded") in finished  # the running step finished
    watch = finished.index(("watch", "watch", "failed"))
    assert watch == finished.index(("pause-1", "apply", "succeeded")) + 1
    assert not [s for s, *_ in seen if s in ("pause-2", "after")]
    error = next(e for s, a, _, e in seen if a == "watch")
    assert error and "2 failed measurement(s), last 1.0" in error


def test_a_clean_watch_ends_at_its_until_step(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("apply", str(write_plan(tmp_path, PLAN)), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    finished = [(s, a, st) for s, a, st, _ in events(cli) if st != "running"]
    assert finished[-3:] == [("pause-2", "apply", "succeeded"), ("watch", "watch", "succeeded"),
                             ("after", "apply", "succeeded")]
    detail = cli.one("select detail from rollout.step_events where action = 'watch'")
    assert detail["verdict"] == "successful" and detail["measurements"]
    assert set(detail["measurements"]) == {0.0}


def test_until_must_name_a_later_step(cli: Cli, tmp_path: Path) -> None:
    for until, message in (("faults-table", "not a later step"),
                           ("nowhere", "not a later step")):
        plan = write_plan(tmp_path, PLAN.replace("until: pause-2", f"until: {until}"))
        result = cli.run("plan", str(plan))
        assert result.returncode == 2 and message in result.stderr, result.stderr
    plan = write_plan(tmp_path, PLAN.replace("background: true", "background: false"))
    result = cli.run("plan", str(plan))
    assert result.returncode == 2 and "`until` is for a `background: true`" in result.stderr
