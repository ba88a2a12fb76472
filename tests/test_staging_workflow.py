"""The staging rehearsal workflow, read as a CI engineer would: what it trusts and what it ships.

(actionlint and the workflow schema are not reachable from here; these are the rules the
issue asks for, checked on the parsed YAML.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from rollout.engine.plan import load_plan

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "staging-rehearsal.yml"
SHA = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def steps() -> list[dict[str, Any]]:
    return list(workflow()["jobs"]["rehearse"]["steps"])


def test_actions_are_pinned_to_commits_and_checkout_keeps_no_credentials() -> None:
    used = [s for s in steps() if "uses" in s]
    assert used and all(SHA.match(s["uses"]) for s in used), [s["uses"] for s in used]
    (checkout,) = [s for s in used if s["uses"].startswith("actions/checkout@")]
    assert checkout["with"]["persist-credentials"] is False


def test_secrets_are_given_per_step_only_to_the_steps_that_need_them() -> None:
    job = workflow()["jobs"]["rehearse"]
    assert "env" not in job and "env" not in workflow()
    for step in steps():
        text = yaml.safe_dump(step)
        needs = step.get("name", "") in {
            "PostgreSQL client matching the staging server", "Rehearse",
            "Collect the reports and check them for secret values"}
        assert ("secrets." in text) == needs, step.get("name") or step.get("uses")
    install = next(s for s in steps() if s.get("name", "").startswith("Install"))
    assert "env" not in install


def test_triggers_rehearse_pull_requests_and_nightly_not_only_after_merge() -> None:
    on = workflow()[True]  # YAML 1.1 reads the key `on` as true
    assert {"pull_request", "push", "schedule", "workflow_dispatch"} <= set(on)
    assert on["schedule"][0]["cron"]
    job = workflow()["jobs"]["rehearse"]
    assert job["environment"] == "staging"
    assert "head.repo.full_name == github.repository" in job["if"]  # no fork reaches staging


def matches(path: str, pattern: str) -> bool:
    regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, path) is not None


def test_the_path_filter_covers_everything_the_release_fingerprint_hashes() -> None:
    env = {"SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst", "DATABASE_URL": "postgresql://d/p",
           "SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co",
           "SUPABASE_ACCESS_TOKEN": "t", "SUPABASE_ANON_KEY": "a", "SUPABASE_JWT_SECRET": "j"}
    plan = load_plan(ROOT / "plans" / "staging.yaml", env)
    shipped = {p.relative_to(ROOT).as_posix() for planned in plan.steps if planned.enabled
               for p in planned.step.shipped_files(ROOT)}
    assert "deno.lock" in shipped
    on = workflow()[True]
    for trigger in ("pull_request", "push"):
        paths = on[trigger]["paths"]
        missing = [p for p in sorted(shipped) if not any(matches(p, g) for g in paths)]
        assert missing == [], (trigger, missing)
        for runs_the_release in ("rollout/engine/runner.py", "uv.lock", "pyproject.toml",
                                 ".github/workflows/staging-rehearsal.yml"):
            assert any(matches(runs_the_release, g) for g in paths), runs_the_release


def test_the_backup_gets_a_pg_dump_of_the_servers_major_version() -> None:
    name = "PostgreSQL client matching the staging server"
    (step,) = [s for s in steps() if s.get("name") == name]
    assert "server_version // 10000" in step["run"]
    assert 'postgresql-client-$major' in step["run"]
    rehearse = next(s for s in steps() if s.get("name") == "Rehearse")
    assert steps().index(step) < steps().index(rehearse)


def test_only_scanned_reports_are_uploaded() -> None:
    upload = next(s for s in steps() if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "steps.scan.outcome == 'success'" in upload["if"]
    assert upload["with"]["path"] == "rehearsal/"  # not the state directory (dumps, logs)
    scan = next(s for s in steps() if s.get("id") == "scan")
    for name in ("SUPABASE_URL", "SUPABASE_PROJECT_REF", "DATABASE_URL", "SUPABASE_ACCESS_TOKEN"):
        assert name in scan["env"] and name in scan["run"]
