"""The check steps (`check.smoke`, `check.load`) in plans, and `rollout smoke` / `rollout load`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan

PLAN = "plans/local.yaml"

# v2 in place but `send-broadcast` never deployed: the broadcast flows must fail. Then a load
# whose threshold no real run can meet.
BROKEN = LOCAL_HEADER + """
  - id: legacy-app
    kind: db.seed
    with: {file: migrations/legacy_baseline.sql, unless_exists: public.profiles}
  - id: migrate
    kind: db.migrate
    with:
      file: migrations/production_messaging_system.sql
      rollback_file: migrations/rollback_production_messaging.sql
  - id: smoke
    kind: check.smoke
    on_failure: continue
  - id: load
    kind: check.load
    with:
      attendees: 4
      mvp_dealers: 2
      organizers: 0
      dm_vus: 2
      dm_iterations: 5
      broadcasts: 0
      thresholds: {"http_req_duration{kind:dm}": ["p(99)<0.001"]}
"""


def secrets(cli: Cli) -> list[str]:
    return [cli.stack.secret(k) for k in ("anon_key", "jwt_secret", "service_role_key")]


def test_local_plan_runs_smoke_and_load_and_the_commands_work(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("apply", PLAN, "--to", "load", "--json", ROLLOUT_LOAD="true")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    steps = {s["step_id"]: s for s in json.loads(result.stdout)["steps"]}

    smoke = steps["smoke"]["detail"]
    assert steps["smoke"]["status"] == "succeeded"
    assert smoke["flows"] == smoke["passed"] == 6
    report = json.loads(Path(smoke["report"]).read_text())
    assert report["passed"] is True and len(report["flows"]) == 6
    assert Path(smoke["report"]).parent.parent.name == json.loads(result.stdout)["run"]["run_id"]
    cases = list(ET.parse(smoke["junit"]).getroot().iter("testcase"))
    assert len(cases) == 6 and not any(c.find("failure") is not None for c in cases)

    load = steps["load"]["detail"]
    assert steps["load"]["status"] == "succeeded"
    assert load["requests"] > 4 and load["error_rate"] == 0
    assert load["thresholds"] == "2/2 met" and "dm_p99_ms" in load
    assert "metrics" in json.loads(Path(load["summary"]).read_text())
    assert (Path(load["summary"]).parent / "load-report.json").exists()
    # Neither step leaves users behind (the demo cast, the load users).
    assert cli.one("select count(*) from public.profiles where id::text like '5a0c0000-%' "
                   "or id::text like '10ad0000-%'") == 0
    for secret in secrets(cli):
        assert secret not in result.stdout

    junit = tmp_path / "smoke.xml"
    smoke_cmd = cli.run("smoke", PLAN, "--json", "--junit", str(junit))
    assert smoke_cmd.returncode == 0, smoke_cmd.stderr
    assert json.loads(smoke_cmd.stdout)["passed"] is True
    assert len(list(ET.parse(junit).getroot().iter("testcase"))) == 6
    human = cli.run("smoke", PLAN)
    assert human.returncode == 0 and "6/6 flows passed" in human.stdout
    assert "legacy chat loads every historical message" in human.stdout

    load_cmd = cli.run("load", PLAN)
    assert load_cmd.returncode == 0, load_cmd.stdout[-2000:] + load_cmd.stderr
    for text in ("endpoint", "p99 ms", "http_req_failed rate<0.005", "thresholds met"):
        assert text in load_cmd.stdout
    for secret in secrets(cli):
        assert secret not in smoke_cmd.stdout + human.stdout + load_cmd.stdout


def test_failed_flows_and_crossed_thresholds_fail_their_steps(cli: Cli, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, BROKEN)
    result = cli.run("apply", str(plan), "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    steps = {s["step_id"]: s for s in doc["steps"]}

    smoke_error = steps["smoke"]["error"]
    assert steps["smoke"]["status"] == "failed"
    assert "smoke flow(s) failed" in smoke_error
    assert "organizer pre-show broadcast" in smoke_error and "MVP broadcast" in smoke_error
    assert "attendee → dealer DM is refused" not in smoke_error  # that flow passed
    report = Path(smoke_error.rsplit("(report: ", 1)[1].rstrip(")"))
    flows = json.loads(report.read_text())["flows"]
    assert [f["passed"] for f in flows].count(False) == 2

    load_error = steps["load"]["error"]
    assert steps["load"]["status"] == "failed"
    assert load_error.startswith("thresholds crossed:")
    assert "p(99)<0.001 crossed" in load_error and "10 requests" in load_error
    summary = Path(load_error.rsplit("(k6 summary: ", 1)[1].rstrip(")"))
    assert "metrics" in json.loads(summary.read_text())
    assert doc["run"]["message"].startswith("step load failed: thresholds crossed")
    for secret in secrets(cli):
        assert secret not in result.stdout

    # `rollout smoke` on the same target: the table names the failures, exit 1.
    smoke_cmd = cli.run("smoke", str(plan))
    assert smoke_cmd.returncode == 1
    assert "4/6 flows passed" in smoke_cmd.stdout


def test_missing_k6_refuses_the_run_before_any_change(cli: Cli, tmp_path: Path) -> None:
    body = BROKEN.replace("      broadcasts: 0\n",
                          "      broadcasts: 0\n      k6_bin: /nonexistent/k6\n")
    plan = write_plan(tmp_path, body)
    result = cli.run("apply", str(plan))
    assert result.returncode == 2
    assert "k6 binary /nonexistent/k6 does not exist" in result.stderr
    assert cli.one("select to_regclass('public.messages')") is None  # nothing was applied


def test_emit_k6_operator_manifest_uses_the_plan_sizing(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "testrun.yaml"
    result = cli.run("load", PLAN, "--emit-k6-operator", str(out), "--parallelism", "4")
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load(out.read_text())
    assert manifest["kind"] == "TestRun" and manifest["spec"]["parallelism"] == 4
    env = {e["name"]: e.get("value") for e in manifest["spec"]["runner"]["env"]}
    assert env["DM_VUS"] == "3" and env["DM_DURATION"] == "3s"  # plans/local.yaml's check.load
    assert not (cli.state / "local" / "stack.json").exists()  # no stack needed to write it
