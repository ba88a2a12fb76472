"""`rollout flag …` against a real local stack: raising, refused decreases, the kill switch,
the audit trail, and several people changing a flag at the same moment.

One stack (migration applied) serves the whole module; every test works on a flag of its own.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.adapters.flags import bucket, set_flag
from rollout.adapters.local_stack.postgres import shared_dir
from rollout.adapters.local_stack.stack import LocalStack
from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan

SETUP = LOCAL_HEADER + """
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


@pytest.fixture(scope="module")
def stack() -> Iterator[Cli]:
    state = Path(tempfile.mkdtemp(prefix="rollout-flags-", dir=shared_dir("rollout-tests")))
    state.chmod(0o755)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "pytest",
           "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("ROLLOUT_DEBUG", None)
    cli = Cli(state, env)
    try:
        setup = cli.run("apply", str(write_plan(state, SETUP)))
        assert setup.returncode == 0, setup.stderr
        yield cli
    finally:
        LocalStack(state).down()


@pytest.fixture
def flag(stack: Cli) -> str:
    """A flag of this test's own, at 0 %."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    stack.sql("insert into public.feature_flags (name) values (%s)", (name,))
    return name


def run_all(cli: Cli, *commands: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """Several CLI commands at once (each is a real process; the CLI takes seconds to start)."""
    procs = [cli.spawn(*command) for command in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    return results


def set_directly(cli: Cli, name: str, pct: int, who: str, reason: str | None = None) -> None:
    """A baseline change through the same adapter the CLI uses (no process start)."""
    set_flag(cli.stack.db_url, name, pct, actor=who, reason=reason, allow_decrease=True)


def audit(cli: Cli, name: str) -> list[tuple[object, ...]]:
    return cli.sql("select changed_by, from_percentage, to_percentage, reason "
                   "from public.feature_flag_audit where flag_name = %s order by id", (name,))


def percentage(cli: Cli, name: str) -> int:
    return int(cli.one("select rollout_percentage from public.feature_flags where name = %s",
                       (name,)))


def test_set_raises_and_counts_the_users_now_in(stack: Cli, flag: str) -> None:
    done = stack.run("flag", "set", flag, "25", "--reason", "D+2 flip", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    profiles = [str(r[0]) for r in stack.sql("select id from public.profiles")]
    expected_in = sum(bucket(flag, p) < 25 for p in profiles)
    assert doc | {"users_in": doc["users_in"]} == {
        "environment": "local", "flag": flag, "from": 0, "to": 25, "users_in": expected_in,
        "users_total": len(profiles), "changed_by": "pytest", "reason": "D+2 flip",
        "changed": True}
    assert doc["users_in"] == expected_in
    human = stack.run("flag", "set", flag, "60%")
    assert human.returncode == 0, human.stderr
    now_in = sum(bucket(flag, p) < 60 for p in profiles)
    assert "25% → 60%" in human.stdout
    assert f"{now_in} of {len(profiles)} known users are now in" in human.stdout
    assert percentage(stack, flag) == 60


def test_lowering_is_refused_without_allow_decrease(stack: Cli, flag: str) -> None:
    set_directly(stack, flag, 50, "setup")
    before = audit(stack, flag)
    refused = stack.run("flag", "set", flag, "10", "--reason", "oops")
    assert refused.returncode == 2
    assert "--allow-decrease" in refused.stderr and "Traceback" not in refused.stderr
    assert percentage(stack, flag) == 50
    assert audit(stack, flag) == before

    lowered = stack.run("flag", "set", flag, "10", "--allow-decrease", "--reason", "too many "
                        "reports")
    assert lowered.returncode == 0, lowered.stderr
    assert percentage(stack, flag) == 10
    assert audit(stack, flag)[-1] == ("pytest", 50, 10, "too many reports")


def test_kill_switch_sets_zero_at_once(stack: Cli, flag: str) -> None:
    set_directly(stack, flag, 100, "setup")
    killed = stack.run("flag", "kill", flag, ROLLOUT_OPERATOR="oncall-bob")
    assert killed.returncode == 0, killed.stderr
    assert "100% → 0%" in killed.stdout and "0 of" in killed.stdout
    assert percentage(stack, flag) == 0
    assert audit(stack, flag)[-1] == ("oncall-bob", 100, 0, "kill switch")
    again = stack.run("flag", "kill", flag, "--reason", "incident 42", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False


def test_history_shows_every_change_complete(stack: Cli, flag: str) -> None:
    set_directly(stack, flag, 10, "alice", "first")
    set_directly(stack, flag, 30, "bob")
    assert stack.run("flag", "set", flag, "5", "--allow-decrease", "--reason", "step back",
                     ROLLOUT_OPERATOR="carol").returncode == 0
    (code, out, err), (table_code, table, _) = run_all(
        stack, ("flag", "history", flag, "--json"), ("flag", "history", flag))
    assert code == 0 and table_code == 0, err
    rows = json.loads(out)  # newest first
    assert [(r["changed_by"], r["from_percentage"], r["to_percentage"], r["reason"])
            for r in rows] == [("carol", 30, 5, "step back"), ("bob", 10, 30, None),
                               ("alice", 0, 10, "first"), ("postgres", None, 0, None)]
    assert all(r["changed_at"] for r in rows)
    assert "carol" in table and "step back" in table and "30%" in table


def test_list_get_and_choosing_the_target(stack: Cli, flag: str) -> None:
    set_directly(stack, flag, 40, "setup", "why not")
    results = run_all(
        stack,
        ("flag", "list", "--env", "local", "--json"),
        ("flag", "get", flag, "--plan", "plans/local.yaml", "--json"),
        ("flag", "get", "no_such_flag"),
        ("flag", "list", "--env", "nowhere"),
        ("flag", "set", flag, "101"),
    )
    (listed, listed_out, err), (got, got_out, _) = results[:2]
    assert listed == 0 and got == 0, err
    names = {f["name"]: f["percentage"] for f in json.loads(listed_out)}
    assert names[flag] == 40 and "messaging_v2_enabled" in names
    doc = json.loads(got_out)
    assert doc["percentage"] == 40 and doc["last_change"]["reason"] == "why not"
    for code, _, err in results[2:]:
        assert code == 2 and "Traceback" not in err
    assert "no feature flag 'no_such_flag'" in results[2][2]
    assert "neither a plan file nor the environment" in results[3][2]
    assert percentage(stack, flag) == 40


def test_concurrent_sets_are_all_audited_and_one_wins(stack: Cli, flag: str) -> None:
    values = [15, 75, 35, 55]
    procs = [stack.spawn("flag", "set", flag, str(v), "--allow-decrease", "--reason", f"r{v}",
                         ROLLOUT_OPERATOR=f"pm{v}") for v in values]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    rows = audit(stack, flag)[1:]  # after the row of the flag's creation
    assert sorted(r[2] for r in rows) == sorted(values)  # type: ignore[type-var]
    assert {(r[0], r[2], r[3]) for r in rows} == {(f"pm{v}", v, f"r{v}") for v in values}
    # Serialized: each change starts where the one before it ended (no lost update).
    chain = [0] + [r[2] for r in rows]
    assert [r[1] for r in rows] == chain[:-1]
    assert percentage(stack, flag) == rows[-1][2]
    assert percentage(stack, flag) in values
