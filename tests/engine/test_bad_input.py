"""Bad input: exit 2, a message naming file:line and the fix, and nothing changed.

Validation happens before the target is touched, so "nothing changed" is checked the
strictest way: the local stack was never even started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan

CASES = {
    "malformed-yaml": (LOCAL_HEADER + "  - id: x\n    kind: [unclosed\n",
                       ["plan.yaml:8:1", "invalid YAML", "line 7, column 11"]),
    "unknown-kind": (LOCAL_HEADER + "  - id: x\n    kind: db.migrat\n",
                     ["plan.yaml:7:11", "unknown step kind 'db.migrat'", "db.migrate"]),
    "wrong-type": (LOCAL_HEADER + "  - id: f\n    kind: flags.set\n    with: {percentage: lots}\n",
                   ["plan.yaml:8:", "steps.0.with.percentage"]),
    "out-of-range": (LOCAL_HEADER + "  - id: f\n    kind: flags.set\n    with: {percentage: 150}\n",
                     ["plan.yaml:8:", "less than or equal to 100"]),
    "missing-variable": (LOCAL_HEADER + "  - id: n\n    kind: notify\n"
                         "    with: {message: '${ROLLOUT_TEST_SURELY_UNSET}'}\n",
                         ["plan.yaml:8:", "not set: ROLLOUT_TEST_SURELY_UNSET"]),
    "path-traversal": (LOCAL_HEADER + "  - id: m\n    kind: db.migrate\n"
                       "    with: {file: ../../../../etc/passwd}\n",
                       ["plan.yaml:8:", "outside the project directory"]),
    "not-a-duration": (LOCAL_HEADER + "  - id: m\n    kind: db.migrate\n"
                       "    with: {file: migrations/production_messaging_system.sql, "
                       "lock_timeout: 5 parsecs}\n",
                       ["plan.yaml:8:", "not a PostgreSQL duration"]),
    "missing-file": (LOCAL_HEADER + "  - id: m\n    kind: db.migrate\n"
                     "    with: {file: migrations/nope.sql}\n",
                     ["plan.yaml:8:", "does not exist"]),
    "six-field-cron": (LOCAL_HEADER + "  - id: c\n    kind: cron.schedule\n    with:\n"
                       "      job: j\n      schedule: '0 0 2 * * *'\n      function: f\n",
                       ["plan.yaml:10:", "6 fields", "exactly 5"]),
    "unknown-field": (LOCAL_HEADER + "  - id: p\n    kind: gate.pause\n"
                      "    with: {duraton: 1s}\n",
                      ["plan.yaml:8:", "duraton", "unknown field"]),
    "duplicate-id": (LOCAL_HEADER + "  - id: p\n    kind: gate.pause\n    with: {duration: 1}\n"
                     "  - id: p\n    kind: gate.pause\n    with: {duration: 1}\n",
                     ["plan.yaml:9:", "duplicate step id 'p'"]),
    "bad-step-id": (LOCAL_HEADER + "  - id: 'Bad Id'\n    kind: gate.pause\n"
                    "    with: {duration: 1}\n", ["plan.yaml:6:", "step ids"]),
    "wrong-target": ("name: t\nenvironment: local\ntarget: {kind: heroku}\nsteps: []\n",
                     ["plan.yaml:3:", "target"]),
    "not-a-mapping": ("- just\n- a list\n", ["plan.yaml:1:1", "mapping"]),
    "empty": ("", ["empty"]),
    "local-only-step-on-supabase": (
        "name: t\nenvironment: staging\ntarget:\n  kind: supabase\n  project_ref: "
        "abcdefghijklmnopqrst\n  database_url: postgresql://x@127.0.0.1:1/db\n"
        "  supabase_url: https://abcdefghijklmnopqrst.supabase.co\n  access_token: t\n"
        "steps:\n  - id: s\n    kind: db.seed\n    with: {file: migrations/legacy_baseline.sql}\n",
        ["plan.yaml:11:", "does not run on a supabase target"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_plan_exits_2_with_a_located_message_and_changes_nothing(
        case: str, cli: Cli, tmp_path: Path) -> None:
    body, expected = CASES[case]
    plan = write_plan(tmp_path, body)
    result = cli.run("apply", str(plan))
    assert result.returncode == 2, (result.stdout, result.stderr)
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 4  # one line (+ hint), no wall of text
    assert not (cli.state / "local").exists()  # the target was never touched


def test_huge_plan_is_refused(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "huge.yaml"
    plan.write_text(LOCAL_HEADER + "# " + "x" * (10 * 1024 * 1024) + "\n")
    result = cli.run("apply", str(plan))
    assert result.returncode == 2
    assert "limited to" in result.stderr
    assert not (cli.state / "local").exists()


def test_missing_plan_file(cli: Cli) -> None:
    result = cli.run("apply", "plans/does-not-exist.yaml")
    assert result.returncode == 2
    assert "cannot read the plan" in result.stderr


def test_unknown_option_is_usage_error(cli: Cli) -> None:
    result = cli.run("apply", "plans/local.yaml", "--frobnicate")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_unknown_step_for_from(cli: Cli) -> None:
    result = cli.run("apply", "plans/local.yaml", "--from", "nope")
    assert result.returncode == 2
    assert "no step with id 'nope'" in result.stderr


def test_plan_schema_is_json_schema_with_every_kind(cli: Cli) -> None:
    import json

    result = cli.run("plan", "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    kinds = schema["$defs"]["StepSpec"]["properties"]["kind"]["enum"]
    assert {"db.migrate", "edge.deploy", "cron.schedule", "flags.set"} <= set(kinds)


def test_every_plan_in_the_repo_is_valid(cli: Cli) -> None:
    env = {"SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst",
           "DATABASE_URL": "postgresql://postgres:pw@127.0.0.1:1/postgres",
           "SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co",
           "SUPABASE_ACCESS_TOKEN": "sbp_" + "0" * 40, "SUPABASE_ANON_KEY": "anon.jwt.key",
           "SUPABASE_SERVICE_ROLE_KEY": "service.role.key", "SUPABASE_JWT_SECRET": "s" * 40}
    for plan in sorted(Path("plans").glob("*.yaml")):
        result = cli.run("plan", str(plan), "--json", **env)
        # Valid; a Supabase plan then reads its target, which is not there: exit 6, the cause.
        if "supabase" in plan.read_text():
            assert result.returncode == 6 and "cannot read the supabase target" in \
                result.stderr, (plan, result.stderr)
        else:
            assert result.returncode == 0, (plan, result.stderr)


WRITE_ONLY_SYSCTL = "/proc/sys/vm/drop_caches"  # mode 0200: reading it is refused, even to root


@pytest.mark.parametrize("kind", ["binary", "directory", "unreadable"])
def test_unreadable_plan_path_is_one_line_exit_2(kind: str, cli: Cli, tmp_path: Path) -> None:
    import os

    path = tmp_path / "plan.yaml"
    if kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text(LOCAL_HEADER)
        path.chmod(0)
        if os.geteuid() == 0:  # root reads any file, but not a write-only sysctl
            path.unlink()
            path.symlink_to(WRITE_ONLY_SYSCTL)
            try:
                path.read_bytes()
            except PermissionError:
                pass
            else:
                pytest.skip(f"root can read {WRITE_ONLY_SYSCTL} here")
    for command in ("plan", "apply", "status"):
        result = cli.run(command, str(path))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert str(path) in result.stderr
