"""Fixtures for the reliability suite: fault injection into the real CLI, state snapshots, a
shared running stack for HTTP tests, and JWTs of every flavour (good, forged, expired…).

The `cli` fixture is the engine suite's (a throw-away local stack per test, the real CLI as a
subprocess). `Hooked` runs the CLI through tests/reliability/hooked_cli.py, which can stop it at
an exact point (a step boundary, the middle of pg_dump, an open migration transaction) so a
SIGKILL or a database restart lands exactly there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest

from rollout.adapters.local_stack.postgres import shared_dir
from rollout.adapters.local_stack.stack import LocalStack
from rollout.adapters.targets import LocalTarget
from rollout.engine.plan import load_plan
from rollout.engine.runner import Engine
from tests.engine.conftest import ROOT, Cli
from tests.engine.conftest import cli as cli
from tests.messaging.catalog import schema_snapshot

SNAPSHOT_SCHEMAS = ("public", "auth", "messaging_v2_archive")


@pytest.fixture(scope="session", autouse=True)
def _remove_frozen_plan() -> Iterator[None]:
    yield
    shutil.rmtree(Path(PLAN).parent, ignore_errors=True)


def _frozen_plan() -> str:
    """A private copy of plans/local.yaml, taken once: the plan's checksum is part of the
    journal (`--resume` refuses a changed plan), and the working tree may change under a run."""
    folder = shared_dir("rollout-tests") / f"reliability-plan-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    copy = folder / "local.yaml"
    copy.write_bytes((ROOT / "plans" / "local.yaml").read_bytes())
    return str(copy)


PLAN = _frozen_plan()
# The local plan's steps, in order, and the ones whose effect persists (journaled in
# rollout.step_state): `rollout plan` must show each of these as applied after a finished run.
# Loaded with the environment the tests run it in (the k6 step is off: ROLLOUT_LOAD=false), so
# a step disabled by `when` is not counted as a boundary it never reaches.
_LOADED = load_plan(Path(PLAN), {"ROLLOUT_LOAD": "false"})
STEPS = tuple(p.spec.id for p in _LOADED.steps if p.enabled)
PERSISTENT = tuple(p.spec.id for p in _LOADED.steps if p.step.persistent)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 — the database may be restarting
            last = err
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s (last error: {last})")


# ---- the CLI, stopped at an exact point ------------------------------------------------------


@dataclass
class Hooked:
    proc: subprocess.Popen[str]
    marker: Path

    def reached(self, timeout: float = 60) -> dict[str, Any]:
        """Wait until the CLI sits at its pause point; returns what it wrote there."""
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"the CLI ended (exit {self.proc.returncode}) before the "
                                     f"pause point:\n{out}\n{err}")
            if self.marker.exists() and self.marker.read_text().endswith("\n"):
                return dict(json.loads(self.marker.read_text()))
            return None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = ready()
            if found:
                return found
            time.sleep(0.01)
        self.kill()
        raise AssertionError("the CLI never reached its pause point")

    def go(self) -> None:
        self.marker.with_name(self.marker.name + ".go").write_text("go")

    def kill(self) -> None:
        """SIGKILL the CLI (only the CLI: what `kill -9 PID` does)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def hooked(cli: Cli, point: str, *args: str) -> Hooked:
    marker = Path(tempfile.mkdtemp(prefix="hook-", dir=cli.state)) / "marker"
    env = {**cli.env, "RELIABILITY_PAUSE": point, "RELIABILITY_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.hooked_cli", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return Hooked(proc, marker)


# ---- what "the same end state" means -----------------------------------------------------------


def data_snapshot(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """Row count and digest per table, leaving out what differs by nature between two runs:
    timestamp columns, generated keys (serial/identity/random-uuid defaults), the run id in
    audit actors (`pytest (run 1a2b3c4d)`) and the legacy sync job's own position."""
    tables = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = any(%s) and c.relkind = 'r'"
        " and (n.nspname, c.relname) <> ('public', 'messaging_legacy_sync') order by 1, 2",
        (list(SNAPSHOT_SCHEMAS),)).fetchall()
    result: dict[str, tuple[int, str]] = {}
    for schema, table in tables:
        skip = [r[0] for r in conn.execute(
            "select a.attname from pg_attribute a "
            "left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum "
            "where a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass "
            "and a.attnum > 0 and not a.attisdropped and ("
            " format_type(a.atttypid, null) in ('timestamp with time zone', "
            "  'timestamp without time zone', 'date')"
            " or a.attidentity <> '' or pg_get_expr(d.adbin, d.adrelid) ~ "
            "  '(nextval|gen_random_uuid)')", (schema, table)).fetchall()]
        count, digest = conn.execute(
            f'select count(*), md5(coalesce(string_agg(r, e\'\\n\' order by r), \'\')) '
            f"from (select regexp_replace((to_jsonb(t) - %s::text[])::text, "
            f"'\\((run|rollback) [0-9a-f]{{8}}\\)', '(\\1 <id>)', 'g') r "
            f'from "{schema}"."{table}" t) s',
            (skip,)).fetchone()
        result[f"{schema}.{table}"] = (count, digest)
    return result


def state_snapshot(cli: Cli) -> dict[str, Any]:
    """Schema, data and the stack's live pieces (functions, schedules, secrets by name)."""
    stack = cli.stack
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        schema = schema_snapshot(conn, SNAPSHOT_SCHEMAS)
        data = data_snapshot(conn)
        applied = conn.execute("select filename from rollout.migrations order by 1").fetchall()
    return {"schema": schema, "data": data, "migrations": applied,
            "functions": sorted(stack.deployed()), "schedules": stack.schedules(),
            "function_secrets": sorted(stack.function_secrets())}


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two snapshots (empty = identical)."""
    problems = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            for sub in sorted(set(a[key]) | set(b[key])):
                if a[key].get(sub) != b[key].get(sub):
                    problems.append(f"{key}.{sub}: {a[key].get(sub)!r:.300} != "
                                    f"{b[key].get(sub)!r:.300}")
        elif a.get(key) != b.get(key):
            problems.append(f"{key}: {a.get(key)!r:.300} != {b.get(key)!r:.300}")
    return problems


def maintenance_on(cli: Cli) -> bool:
    return bool(cli.one("select count(*) from pg_trigger "
                        "where tgname = 'rollout_maintenance_guard'"))


def journal_problems(cli: Cli, plan: str = PLAN) -> list[str]:
    """Journal consistency: no run left running; no finished run with a step still `running`;
    `rollout plan` shows every persistent step applied; no lock held."""
    problems = []
    for run_id, status in cli.sql("select id::text, status from rollout.runs"):
        if status == "running":
            problems.append(f"run {run_id[:8]} still running")
            continue
        dangling = cli.sql(
            "select step_id, action from (select distinct on (step_id, action) step_id, action, "
            "status from rollout.step_events where run_id = %s order by step_id, action, id desc)"
            " s where status = 'running'", (run_id,))
        if dangling and status not in ("interrupted", "abandoned"):
            problems.append(f"run {run_id[:8]} ({status}) left {dangling} running")
    # What `rollout plan` shows, computed in-process (the CLI takes seconds to start).
    engine = Engine(load_plan(Path(plan), {}), LocalTarget(cli.stack), lambda event: None)
    for view in engine.view():
        if view.state not in ("applied", "always"):
            problems.append(f"step {view.id} is {view.state} after a finished run")
    holders = cli.sql("select run_id from rollout.locks")
    if holders:
        problems.append(f"lock rows left: {holders}")
    return problems


@pytest.fixture(scope="session")
def baseline() -> Iterator[dict[str, Any]]:
    """The end state of one uninterrupted `rollout apply plans/local.yaml` on a fresh stack."""
    state = Path(tempfile.mkdtemp(prefix="rollout-baseline-", dir=shared_dir("rollout-tests")))
    state.chmod(0o755)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "pytest",
           "ROLLOUT_LOAD": "false",
           "COLUMNS": "200", "NO_COLOR": "1"}
    for name in ("ROLLOUT_DEBUG", "ROLLOUT_LOCAL_PG_PORT", "ROLLOUT_LOCAL_API_PORT"):
        env.pop(name, None)
    runner = Cli(state, env)
    try:
        result = runner.run("apply", PLAN)
        assert result.returncode == 0, result.stderr
        yield state_snapshot(runner)
    finally:
        LocalStack(state).down()
        shutil.rmtree(state, ignore_errors=True)


# ---- a shared running stack with the plan applied (HTTP tests) ------------------------------


@dataclass
class Live:
    cli: Cli
    api: str
    jwt_secret: str
    anon_key: str
    service_key: str

    def token(self, sub: str | None, role: str = "authenticated", *, secret: str | None = None,
              exp: int | None = None, alg: str = "HS256", **claims: Any) -> str:
        payload: dict[str, Any] = {"role": role, "iss": "rollout-local", "aud": "authenticated",
                                   "iat": int(time.time()) - 10,
                                   "exp": exp if exp is not None else int(time.time()) + 3600,
                                   **claims}
        if sub is not None:
            payload["sub"] = sub
        if alg == "none":
            return jwt.encode(payload, None, algorithm="none")
        return jwt.encode(payload, secret or self.jwt_secret, algorithm=alg)

    def headers(self, token: str | None, apikey: str | None = None) -> dict[str, str]:
        headers = {"apikey": apikey or self.anon_key}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.cli.sql(query, params)

    def one(self, query: str, params: Any = None) -> Any:
        return self.cli.one(query, params)


def start_live(prefix: str) -> tuple[Live, Path]:
    state = Path(tempfile.mkdtemp(prefix=prefix, dir=shared_dir("rollout-tests")))
    state.chmod(0o755)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "pytest",
           "ROLLOUT_LOAD": "false",
           "COLUMNS": "200", "NO_COLOR": "1"}
    for name in ("ROLLOUT_DEBUG", "ROLLOUT_LOCAL_PG_PORT", "ROLLOUT_LOCAL_API_PORT"):
        env.pop(name, None)
    runner = Cli(state, env)
    result = runner.run("apply", PLAN)
    if result.returncode != 0:
        LocalStack(state).down()
        raise AssertionError(f"apply failed: {result.stdout}\n{result.stderr}")
    stack = runner.stack
    return Live(runner, stack.api_url, stack.secret("jwt_secret"), stack.secret("anon_key"),
                stack.secret("service_role_key")), state


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """One stack per test module with plans/local.yaml applied (functions deployed)."""
    running, state = start_live("rollout-live-")
    try:
        yield running
    finally:
        LocalStack(state).down()
        shutil.rmtree(state, ignore_errors=True)


def new_id() -> str:
    return str(uuid.uuid4())
