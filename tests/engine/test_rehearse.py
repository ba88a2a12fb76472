"""`rollout rehearse`: apply → smoke → rollback → verify → apply → smoke, on a real local stack."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from rollout.engine.plan import load_plan
from tests.engine.conftest import LOCAL_HEADER, ROOT, Cli, write_plan

PLAN = "plans/local.yaml"
PHASES = ["reset", "baseline", "snapshot", "apply", "smoke", "witness", "rollback",
          "verify-rollback", "reapply", "smoke-again"]

# The real runbook's migration, plus a second pair whose rollback is wrong on purpose.
LEAKY = LOCAL_HEADER + """
  - id: legacy-app
    kind: db.seed
    with: {file: migrations/legacy_baseline.sql, unless_exists: public.profiles}
  - id: demo-data
    kind: db.seed
    with: {file: migrations/local/demo_seed.sql}
  - id: migrate
    kind: db.migrate
    with:
      file: migrations/production_messaging_system.sql
      rollback_file: migrations/rollback_production_messaging.sql
  - id: leaky
    kind: db.migrate
    with:
      file: tests/fixtures/leaky_migration.sql
      rollback_file: tests/fixtures/leaky_rollback.sql
      lint: "off"
  - id: deploy-functions
    kind: edge.deploy
    with: {functions: [send-broadcast]}
"""


def test_rehearsal_of_the_local_plan_passes_and_is_journaled(cli: Cli, tmp_path: Path) -> None:
    # Left applied by an earlier run: the rehearsal must first roll that back (phase `reset`).
    assert cli.run("apply", PLAN, ROLLOUT_LOAD="false").returncode == 0
    report_file, junit_file = tmp_path / "rehearsal.json", tmp_path / "rehearsal.xml"
    result = cli.run("rehearse", PLAN, "--json", "--report", str(report_file),
                     "--junit", str(junit_file), timeout=240, ROLLOUT_LOAD="false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = json.loads(result.stdout)
    assert json.loads(report_file.read_text()) == report

    assert report["passed"] is True and report["exit_code"] == 0
    assert [p["name"] for p in report["phases"]] == PHASES
    assert {p["name"]: p["status"] for p in report["phases"]} == dict.fromkeys(PHASES, "passed")
    assert "rolled back" in report["phases"][0]["summary"]
    assert set(report["runs"]) == {"reset", "baseline", "apply", "rollback", "reapply"}

    schema = report["schema"]
    assert schema["equal"] is True and schema["differences"] == []
    assert schema["objects_before"] == schema["objects_after_rollback"]
    assert schema["objects_before"]["tables"] >= 6 and schema["objects_before"]["policies"] > 0

    data = report["data"]
    before = data["before_rollback"]
    assert before["messages"]["count"] >= 200  # the legacy chats, the smoke's and the witness
    assert before["reported_messages"]["count"] >= 1
    assert data["after_rollback"]["messages"] == before["messages"]
    assert data["after_rollback"]["reported_messages"]["count"] == \
        before["reported_messages"]["count"]
    assert data["after_rollback"]["reported_messages"]["where"] == {
        "public.reported_messages": before["reported_messages"]["count"]}
    assert data["kept_after_rollback"] is True and data["kept_after_reapply"] is True
    witness = data["witness"]
    assert cli.one("select count(*) from public.reported_messages where id = %s",
                   (witness["report_id"],)) == 0  # the rehearsal removed its own data again
    assert [s["passed"] for s in report["smoke"]] == [True, True]
    for entry in report["smoke"]:
        assert Path(entry["report"]).exists() and Path(entry["junit"]).exists()

    cases = ET.parse(junit_file).getroot().iter("testcase")
    assert [c.get("name") for c in cases] == PHASES

    # Journaled: a `rehearse` run of this plan's checksum, with one event per phase.
    runs = cli.sql("select id::text, command, status, plan_checksum from rollout.runs "
                   "where command = 'rehearse'")
    assert [(r[1], r[2]) for r in runs] == [("rehearse", "succeeded")]
    assert runs[0][0] == report["run_id"] and runs[0][3] == report["plan_checksum"]
    # …and the release it shipped, so production's sign-off can match it from staging's journal.
    assert cli.one("select release_fingerprint from rollout.runs where command = 'rehearse'") \
        == load_plan(ROOT / PLAN).release_fingerprint
    history = json.loads(cli.run("history", PLAN, "--json").stdout)
    assert any(h["command"] == "rehearse" and h["status"] == "succeeded" for h in history)
    phases = cli.sql("select step_id, status from rollout.step_events where run_id = %s "
                     "order by id", (report["run_id"],))
    assert phases == [(name, "passed") for name in PHASES]
    # It ends applied, as after a release.
    assert cli.one("select to_regclass('public.reported_messages') is not null") is True

    secrets = [cli.stack.secret(k) for k in ("anon_key", "jwt_secret", "service_role_key")]
    for secret in secrets:
        assert secret not in result.stdout and secret not in report_file.read_text()


def test_a_rollback_that_loses_something_is_caught(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, LEAKY)
    report_file = tmp_path / "rehearsal.json"
    result = cli.run("rehearse", str(plan), "--report", str(report_file), timeout=240)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    # The person reading the output is told what the rollback left behind and lost.
    assert "rehearsal FAILED" in result.stdout
    assert "table public.rehearsal_leftover is left over" in result.stdout
    assert "messages: 1 row(s) lost" in result.stdout

    report = json.loads(report_file.read_text())
    assert report["passed"] is False and report["exit_code"] == 1
    statuses = {p["name"]: p["status"] for p in report["phases"]}
    assert statuses["rollback"] == "passed" and statuses["verify-rollback"] == "failed"
    assert statuses["apply"] == statuses["smoke"] == statuses["reapply"] == "passed"

    assert report["schema"]["equal"] is False
    # One line for the table: its columns, constraints and indexes go with it.
    assert report["schema"]["differences"] == [
        "table public.rehearsal_leftover is left over (it was not there before)"]
    problems = next(p for p in report["phases"] if p["name"] == "verify-rollback")["problems"]
    lost = [p for p in problems if p.startswith("messages:")]
    assert len(lost) == 1 and "1 row(s) lost" in lost[0]  # the smoke's DM to the MVP dealer
    assert not any(p.startswith("reported_messages:") for p in problems)

    runs = cli.sql("select status, message from rollout.runs where command = 'rehearse'")
    assert len(runs) == 1 and runs[0][0] == "failed"
    assert "rehearsal_leftover" in runs[0][1]
