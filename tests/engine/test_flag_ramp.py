"""flags.ramp end to end: the real CLI, the local stack, the real flag and its audit.

A fault injected midway (a guard query's table filled) trips the guard: the flag is killed at
the breaching measurement, the journal and the audit name the guard, Slack and PagerDuty are
told, the exit code is 1. A clean ramp reaches 100 % with every user who was in at 5 % still in
(the flag's own SQL bucketing decides who is in).
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from rollout.adapters.flags import bucket
from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan
from tests.engine.test_notifications import ROUTING_KEY, serve_receiver

FLAG = "messaging_v2_enabled"

SETUP = """
  - id: legacy-app
    kind: db.seed
    with: {file: migrations/legacy_baseline.sql, unless_exists: public.profiles}
  - id: demo-data
    kind: db.seed
    with: {file: migrations/local/demo_seed.sql}
  - id: migrate
    kind: db.migrate
    with: {file: migrations/production_messaging_system.sql}
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 — the database or the table may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def percentage(cli: Cli) -> int:
    return int(cli.one("select rollout_percentage from public.feature_flags where name = %s",
                       (FLAG,)))


def audit(cli: Cli) -> list[tuple[int, int, str, str]]:
    """The flag's changes (its creation by the migration left out)."""
    return [tuple(r) for r in cli.sql(  # type: ignore[misc]
        "select from_percentage, to_percentage, changed_by, coalesce(reason, '') "
        "from public.feature_flag_audit where flag_name = %s and from_percentage is not null "
        "order by id", (FLAG,))]


def ramp_events(cli: Cli) -> list[dict[str, object]]:
    rows = cli.sql("select status, detail, error from rollout.step_events "
                   "where step_id = 'ramp' order by id")
    return [{"status": s, "detail": d, "error": e} for s, d, e in rows]


def test_a_fault_midway_trips_the_guard_and_kills_the_flag(cli: Cli, tmp_path: Path) -> None:
    with serve_receiver() as receiver:
        plan = write_plan(tmp_path, LOCAL_HEADER.replace("steps:", f"""notifications:
  slack_webhook_url: {receiver.url}/slack
  pagerduty_routing_key: {ROUTING_KEY}
  pagerduty_events_url: {receiver.url}/pd
steps:""") + SETUP + """
  - id: faults-table
    kind: db.seed
    with: {file: tests/fixtures/ramp_faults.sql}
  - id: ramp
    kind: flags.ramp
    with:
      flag: messaging_v2_enabled
      steps: [5, 25, 50, 100]
      dwell: 4s
      guards:
        - name: faults
          query: select count(*) from public.ramp_faults
          failure: "> 0"
          interval: 1s
          failure_limit: 2
        - source: pending-reports
          failure: "> 20"
          interval: 1s
      on_breach: kill
  - id: after-ramp
    kind: notify
    with: {message: never sent}
""")
        proc = cli.spawn("apply", str(plan))
        wait_for(lambda: percentage(cli) >= 25)
        reached = percentage(cli)
        cli.sql("insert into public.ramp_faults default values")
        out, err = proc.communicate(timeout=180)

        assert proc.returncode == 1, out + err
        assert percentage(cli) == 0
        changes = audit(cli)
        killed = changes[-1]
        assert killed[1] == 0 and "guard faults breached" in killed[3]
        assert "ramp ramp" in killed[2]
        # Raised in order, never lowered until the kill; the kill came from where it was.
        raised = [to for _, to, _, _ in changes[:-1]]
        assert raised == sorted(raised) and raised[:2] == [5, 25]
        assert killed[0] == raised[-1] >= reached

        events = ramp_events(cli)
        failed = events[-1]
        assert failed["status"] == "failed"
        assert "guard faults breached" in str(failed["error"])
        breach = failed["detail"]["breach"]  # type: ignore[index]
        # The kill came at the failure_limit-th consecutive failing measurement: within one
        # interval (the first measurement after the fault) plus the failure limit.
        assert breach["guard"] == "faults" and breach["values"] == [1.0, 1.0]
        assert breach["reached"] == raised[-1]
        assert [e["detail"]["set"] for e in events if e["status"] == "checkpoint"  # type: ignore[index]
                and not e["detail"].get("breach")] == raised  # type: ignore[union-attr]
        # The rest of the release stays; the step after the ramp never ran.
        assert cli.one("select count(*) from rollout.step_events "
                       "where step_id = 'after-ramp'") == 0
        assert cli.one("select status from rollout.step_state where step_id = 'migrate'") \
            == "applied"
        assert "guard faults breached" in out + err

        assert any("guard faults breached" in t for t in receiver.slack_texts())
        [page] = receiver.bodies("/pd")
        assert page["event_action"] == "trigger"
        assert "guard faults breached" in page["payload"]["summary"]

    status = cli.run("status", str(plan))
    assert status.returncode == 0, status.stderr
    assert "BREACHED by faults" in status.stdout and "faults=1.0" in status.stdout

    # Rolling the ramp back never undoes the kill.
    back = cli.run("rollback", str(plan), "--to", "faults-table")
    assert back.returncode == 0, back.stderr
    assert percentage(cli) == 0 and len(audit(cli)) == len(changes)


def test_a_clean_ramp_reaches_100_and_keeps_everyone_who_was_in(cli: Cli,
                                                                tmp_path: Path) -> None:
    plan = write_plan(tmp_path, LOCAL_HEADER + SETUP + """
  - id: deploy-functions
    kind: edge.deploy
    with:
      functions: [{name: send-broadcast, verify_jwt: false, health_path: /health}]
  - id: ramp
    kind: flags.ramp
    with:
      steps: [5, 25, 50, 100]
      dwell: 3s
      guards:
        - {source: gateway-errors, failure: "> 0.5", interval: 1s}
        - {source: rpc-errors, failure: "> 0.5", interval: 1s}
        - {source: health-p99, with: {samples: 2}, failure: "> 10000", interval: 1s}
        - {source: pending-reports, failure: "> 20", interval: 1s}
""")
    users = [str(uuid.uuid4()) for _ in range(400)]
    seen: dict[int, set[str]] = {}

    def users_in() -> tuple[int, set[str]]:
        rows = cli.sql("select f.rollout_percentage, u::text from public.feature_flags f, "
                       "unnest(%s::uuid[]) u where f.name = %s "
                       "and public.feature_bucket(f.salt, u) < f.rollout_percentage",
                       (users, FLAG))
        pct = rows[0][0] if rows else percentage(cli)
        return pct, {r[1] for r in rows}

    proc = cli.spawn("apply", str(plan))
    while proc.poll() is None:
        try:
            pct, now_in = users_in()
        except Exception:  # noqa: BLE001 — not migrated yet
            time.sleep(0.2)
            continue
        seen.setdefault(pct, now_in)
        time.sleep(0.1)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err

    pct, everyone = users_in()
    assert pct == 100 and everyone == set(users)
    assert seen.get(5), seen.keys()
    for earlier, later in zip(sorted(seen), sorted(seen)[1:], strict=False):
        assert seen[earlier] <= seen[later], (earlier, later)
    # SQL's bucketing is the flag's: the Python twin agrees on who was in at 5 %.
    salt = cli.one("select salt from public.feature_flags where name = %s", (FLAG,))
    assert seen[5] == {u for u in users if bucket(salt, u) < 5}
    assert [to for _, to, _, _ in audit(cli)] == [5, 25, 50, 100]

    state = cli.one("select detail from rollout.step_state where step_id = 'ramp'")
    assert state["set"] == 100 and set(state["guards"]) == {
        "gateway-errors", "rpc-errors", "health-p99", "pending-reports"}
    assert all(isinstance(g["last"], float) for g in state["guards"].values()), state
    status = cli.run("status", str(plan), "--json")
    assert json.loads(status.stdout)["steps"]["ramp"]["status"] == "applied"
    report = re.search(r"release report: (\S+)", out)
    assert report, out
    flags = json.loads(Path(report.group(1)).with_suffix(".json").read_text())["flags"]
    assert [(f["step"], f["from"], f["set"]) for f in flags] == [("ramp", 0, 100)]


def test_an_interrupted_ramp_resumes_from_the_step_reached(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, LOCAL_HEADER + SETUP + """
  - id: ramp
    kind: flags.ramp
    with:
      steps: [5, 25, 100]
      dwell: 3s
      guards:
        - {source: pending-reports, failure: "> 20", interval: 1s}
""")
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: percentage(cli) >= 25)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert percentage(cli) == 25

    status = cli.run("status", str(plan))
    assert "ramp: messaging_v2_enabled at 25% (step 2/3)" in status.stdout, status.stdout
    assert "next raise" in status.stdout and "pending-reports=0.0" in status.stdout

    resumed = cli.run("apply", str(plan), "--resume", timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [to for _, to, _, _ in audit(cli)] == [5, 25, 100]  # 5 and 25 not raised again
    final = cli.one("select detail from rollout.step_state where step_id = 'ramp'")
    assert final["resumed"] == 1 and final["set"] == 100 and final["from"] == 0


def test_an_inconclusive_guard_holds_the_ramp_until_a_person_approves(cli: Cli,
                                                                     tmp_path: Path) -> None:
    plan = write_plan(tmp_path, LOCAL_HEADER + SETUP + """
  - id: faults-table
    kind: db.seed
    with: {file: tests/fixtures/ramp_faults.sql}
  - id: ramp
    kind: flags.ramp
    with:
      steps: [5, 25, 100]
      dwell: 3s
      guards:
        - {name: faults, query: select count(*) from public.ramp_faults, failure: "> 0",
           interval: 0.5s}
""")
    proc = cli.spawn("apply", str(plan))
    wait_for(lambda: percentage(cli) >= 25)
    cli.sql("alter table public.ramp_faults rename to ramp_faults_away")  # the query fails
    wait_for(lambda: "HELD" in cli.run("status", str(plan)).stdout)
    status = cli.run("status", str(plan)).stdout
    assert "HELD: guard faults is inconclusive" in status and "does not exist" in status
    assert proc.poll() is None and percentage(cli) == 25  # held where it was

    cli.sql("alter table public.ramp_faults_away rename to ramp_faults")
    run_id = cli.one("select id::text from rollout.runs order by started_at desc limit 1")
    approved = cli.run("approve", str(plan), run_id[:8], "ramp.hold-1")
    assert approved.returncode == 0, approved.stderr
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    assert "rollout approve" in out + err and "ramp.hold-1" in out + err
    assert [to for _, to, _, _ in audit(cli)] == [5, 25, 100]
    final = cli.one("select detail from rollout.step_state where step_id = 'ramp'")
    assert final["approvals"][0]["by"] == "pytest" and final["held"] is None
