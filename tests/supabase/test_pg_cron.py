"""The pg_cron adapter, for real: Debian's PostgreSQL 15 with the pg_cron extension loaded.

Needs (root; CI runs the same):

    apt-get update && apt-get install -y postgresql-15-cron

Without it these tests fail naming that command; set ROLLOUT_SKIP_PG_CRON=1 to skip them
instead. The cron-expression tests at the bottom need no server.

pg_cron is real: its background worker runs the scheduled job (via `@reboot` and a server
restart, since Debian bookworm's pg_cron 1.4 has no second intervals and the next minute is
too far away for a fast test). Two Supabase pieces that Debian does not package are stood in
for by TEST SCAFFOLDING, created below and named as such:
- Vault: schema `vault` with `vault.secrets`, the `vault.decrypted_secrets` view and
  `vault.create_secret(new_secret, new_name, ...)`, mirroring supabase_vault's published API
  (no encryption: this is a test database).
- pg_net: `net.http_post(url, body, params, headers, timeout_milliseconds) returns bigint` with
  pg_net's signature, recording each call in `test_scaffold.http_post_calls` instead of sending,
  and answering it in `net._http_response` (pg_net's table: id, status_code, content_type,
  headers, content, timed_out, error_msg, created) with the status in
  `test_scaffold.http_answer` (what the function would have answered).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout.adapters import pg_cron
from rollout.adapters.local_stack.postgres import EmbeddedPostgres
from rollout.errors import TargetError, UsageError
from tests.conftest import running_server

APT_COMMAND = "apt-get update && apt-get install -y postgresql-15-cron"
PG15 = Path("/usr/lib/postgresql/15")
PG15_BIN = PG15 / "bin"
PG_CRON_LIBRARY = PG15 / "lib" / "pg_cron.so"
PG_CRON_CONTROL = Path("/usr/share/postgresql/15/extension/pg_cron.control")
CRON_DATABASE = "postgres"

JOB = "reset-broadcast-quotas"
FUNCTION = "reset-broadcast-quotas"
NIGHTLY = "0 2 * * *"

# Supabase, "Scheduling Edge Functions" (supabase.com/docs/guides/functions/schedule-functions),
# with this project's function, Vault secret names, empty body and 5 s timeout.
DOCUMENTED_COMMAND = (
    "select net.http_post("
    "url := (select decrypted_secret from vault.decrypted_secrets where name = 'project_url')"
    " || '/functions/v1/reset-broadcast-quotas', "
    "headers := jsonb_build_object('Content-Type','application/json','apikey',"
    "(select decrypted_secret from vault.decrypted_secrets"
    " where name = 'service_role_key')), "
    "body := '{}'::jsonb, timeout_milliseconds := 5000) as request_id;"
)

SCAFFOLDING = """
-- TEST SCAFFOLDING: stands in for supabase_vault (its published tables, view and function).
create schema vault;
create table vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text,
  description text not null default '',
  secret text not null,
  created_at timestamptz not null default current_timestamp,
  updated_at timestamptz not null default current_timestamp
);
create unique index on vault.secrets (name) where name is not null;
create view vault.decrypted_secrets as
  select id, name, description, secret, secret as decrypted_secret, created_at, updated_at
  from vault.secrets;
create function vault.create_secret(
  new_secret text, new_name text = null, new_description text = '', new_key_id uuid = null
) returns uuid language sql set search_path = '' as $$
  insert into vault.secrets (secret, name, description)
  values (new_secret, new_name, new_description) returning id
$$;

-- TEST SCAFFOLDING: stands in for pg_net's net.http_post; records calls, sends nothing.
create schema test_scaffold;
create table test_scaffold.http_post_calls (
  id bigserial primary key,
  url text, body jsonb, params jsonb, headers jsonb, timeout_milliseconds int,
  called_at timestamptz not null default clock_timestamp()
);
create table test_scaffold.http_answer (status_code int);
insert into test_scaffold.http_answer values (200);
create schema net;
create table net._http_response (
  id bigint, status_code int, content_type text, headers jsonb, content text,
  timed_out bool, error_msg text, created timestamptz not null default now()
);
create function net.http_post(
  url text,
  body jsonb default '{}'::jsonb,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{}'::jsonb,
  timeout_milliseconds int default 5000
) returns bigint language sql as $$
  with call as (
    insert into test_scaffold.http_post_calls (url, body, params, headers, timeout_milliseconds)
    values (url, body, params, headers, timeout_milliseconds) returning id
  ), answer as (
    insert into net._http_response (id, status_code, content_type, content, created)
    select call.id, a.status_code, 'application/json', '{}', clock_timestamp()
    from call, test_scaffold.http_answer a
  )
  select id from call
$$;
"""


def require_pg_cron() -> None:
    """Fail loudly (not skip) when PostgreSQL 15 or pg_cron is missing, unless told to skip."""
    missing = [
        str(path)
        for path in (PG15_BIN / "postgres", PG15_BIN / "initdb", PG_CRON_LIBRARY, PG_CRON_CONTROL)
        if not path.exists()
    ]
    if not missing:
        return
    message = (
        f"PostgreSQL 15 with pg_cron is required ({', '.join(missing)} missing); "
        f"install it with: {APT_COMMAND}"
    )
    if os.environ.get("ROLLOUT_SKIP_PG_CRON") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@dataclasses.dataclass
class CronServer:
    pg: EmbeddedPostgres

    @property
    def url(self) -> str:
        return self.pg.url(CRON_DATABASE)

    def restart(self) -> None:
        self.pg.stop()
        self.pg.start()
        self.pg.wait_ready()


def preload_pg_cron(pg: EmbeddedPostgres) -> None:
    with (pg.data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            "shared_preload_libraries = 'pg_cron'\n"
            f"cron.database_name = '{CRON_DATABASE}'\n"
            # pg_cron runs jobs over libpq; the server listens on 127.0.0.1 only.
            "cron.host = '127.0.0.1'\n"
        )


@pytest.fixture(scope="module")
def cron_server() -> Iterator[CronServer]:
    """A PostgreSQL 15 server with pg_cron preloaded, the extension and the scaffolding."""
    require_pg_cron()
    with running_server("rollout-test-pgcron-", PG15_BIN, preload_pg_cron) as pg:
        with psycopg.connect(pg.url(CRON_DATABASE), autocommit=True) as conn:
            conn.execute("create extension pg_cron")
            conn.execute(SCAFFOLDING)
        yield CronServer(pg)


@dataclasses.dataclass(frozen=True)
class Secrets:
    project_url: str
    service_role_key: str


@pytest.fixture
def secrets() -> Secrets:
    """Unique values, so "never appears in the output" assertions mean something."""
    token = uuid.uuid4().hex
    return Secrets(
        project_url=f"https://{token[:20]}.supabase.test",
        service_role_key=f"test-service-role-key-{token}",
    )


@pytest.fixture
def conn(cron_server: CronServer) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a clean cron database: no jobs, runs, secrets or calls."""
    with psycopg.connect(cron_server.url, autocommit=True) as setup:
        setup.execute("select cron.unschedule(jobid) from cron.job")
        setup.execute("delete from cron.job_run_details")
        setup.execute("truncate vault.secrets, test_scaffold.http_post_calls, net._http_response")
    with psycopg.connect(cron_server.url, autocommit=True) as connection:
        yield connection


def store_secrets(conn: psycopg.Connection[Any], secrets: Secrets, *names: str) -> None:
    for name in names:
        conn.execute("select vault.create_secret(%s, %s)", (getattr(secrets, name), name))


def jobs_named(conn: psycopg.Connection[Any], name: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select jobid, schedule, command, active from cron.job where jobname = %s", (name,)
    ).fetchall()


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------


def test_missing_vault_secret_is_a_clear_error_and_nothing_is_scheduled(
    conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url")

    with pytest.raises(TargetError) as caught:
        pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    error = caught.value
    assert "Vault secret 'service_role_key' does not exist" in str(error)
    assert "project_url" not in str(error)  # that one exists
    assert error.hint is not None
    assert "select vault.create_secret('<value>', 'service_role_key');" in error.hint
    assert secrets.project_url not in f"{error} {error.hint}"
    assert jobs_named(conn, JOB) == []


def test_prerequisites_name_every_missing_piece(cron_server: CronServer) -> None:
    """pg_net and Vault absent (dropped inside a transaction that is rolled back)."""
    with psycopg.connect(cron_server.url) as conn:
        conn.execute("drop function net.http_post(text, jsonb, jsonb, jsonb, integer)")
        conn.execute("drop schema vault cascade")
        with pytest.raises(TargetError) as caught:
            pg_cron.check_prerequisites(conn, ["project_url", "service_role_key"])
        conn.rollback()

    message, hint = str(caught.value), caught.value.hint or ""
    assert "pg_net is not installed" in message
    assert "Supabase Vault is not available" in message
    assert "Vault secret 'project_url' does not exist" in message
    assert "Vault secret 'service_role_key' does not exist" in message
    assert "create extension if not exists pg_net;" in hint
    assert "select vault.create_secret('<value>', 'project_url');" in hint


def test_prerequisites_report_versions(conn: psycopg.Connection[Any], secrets: Secrets) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")
    found = pg_cron.check_prerequisites(conn, ["project_url", "service_role_key"])
    assert pg_cron.parse_version(found.pg_cron_version) >= pg_cron.PG_CRON_MIN_VERSION
    assert found.pg_net_version is None  # the scaffolding's net.http_post is no extension


# ---------------------------------------------------------------------------------------------
# Scheduling: created, updated, unchanged, unscheduled
# ---------------------------------------------------------------------------------------------


def test_schedule_creates_one_job_with_the_documented_command(
    conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")

    result = pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    assert result.action is pg_cron.ScheduleAction.CREATED
    assert result.previous_schedule is None
    [(job_id, schedule, command, active)] = jobs_named(conn, JOB)
    assert (job_id, schedule, active) == (result.job.job_id, NIGHTLY, True)
    assert command == result.job.command
    assert squash(command) == squash(DOCUMENTED_COMMAND)
    assert "'apikey', (select decrypted_secret from vault.decrypted_secrets" in command
    assert secrets.service_role_key not in command
    assert secrets.project_url not in command


def test_rescheduling_the_same_name_updates_the_one_job(
    conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")
    first = pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    second = pg_cron.schedule_function(conn, JOB, "30   3 * * *", FUNCTION, timeout_ms=8000)

    assert second.action is pg_cron.ScheduleAction.UPDATED
    assert second.previous_schedule == NIGHTLY
    assert second.job.job_id == first.job.job_id
    [(job_id, schedule, command, _)] = jobs_named(conn, JOB)
    assert (job_id, schedule) == (first.job.job_id, "30 3 * * *")
    assert "timeout_milliseconds := 8000" in command


def test_an_unchanged_rerun_reports_unchanged(
    conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")
    first = pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    again = pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    assert again.action is pg_cron.ScheduleAction.UNCHANGED
    assert again.job == first.job
    assert len(jobs_named(conn, JOB)) == 1


def test_a_paused_job_is_reactivated(conn: psycopg.Connection[Any], secrets: Secrets) -> None:
    """cron.schedule's upsert leaves `active` alone; the adapter turns the job back on."""
    store_secrets(conn, secrets, "project_url", "service_role_key")
    first = pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)
    conn.execute("select cron.alter_job(%s, active := false)", (first.job.job_id,))

    again = pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    assert again.action is pg_cron.ScheduleAction.UPDATED
    assert again.job.active
    assert [row[3] for row in jobs_named(conn, JOB)] == [True]


def test_unschedule_removes_the_job(conn: psycopg.Connection[Any], secrets: Secrets) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")
    pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    assert pg_cron.unschedule(conn, JOB) is True
    assert jobs_named(conn, JOB) == []
    assert pg_cron.unschedule(conn, JOB) is False  # idempotent: nothing left to remove
    with pytest.raises(TargetError, match="no pg_cron job named"):
        pg_cron.job_status(conn, JOB)


def test_six_field_cron_is_a_usage_error_and_nothing_is_scheduled(
    conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")

    with pytest.raises(UsageError, match="has 6 fields: pg_cron takes exactly 5"):
        pg_cron.schedule_function(conn, JOB, "0 0 2 * * *", FUNCTION)

    assert jobs_named(conn, JOB) == []


def test_pg_cron_itself_would_misread_a_six_field_expression(
    conn: psycopg.Connection[Any],
) -> None:
    """Why the adapter validates: pg_cron's parser ignores the sixth field instead of failing."""
    with conn.transaction(force_rollback=True):
        conn.execute("select cron.schedule('probe', '0 0 2 * * *', 'select 1')")


def test_second_intervals_follow_the_installed_pg_cron(
    conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")
    version = pg_cron.parse_version(
        pg_cron.check_prerequisites(conn, ["project_url"]).pg_cron_version
    )
    if version >= pg_cron.PG_CRON_SECONDS_VERSION:
        result = pg_cron.schedule_function(conn, JOB, "30 seconds", FUNCTION)
        assert result.job.schedule == "30 seconds"
    else:
        with pytest.raises(UsageError, match=re.escape("second intervals need pg_cron >= 1.5")):
            pg_cron.schedule_function(conn, JOB, "30 seconds", FUNCTION)
        assert jobs_named(conn, JOB) == []


# ---------------------------------------------------------------------------------------------
# Status: pg_cron really runs the job
# ---------------------------------------------------------------------------------------------


def test_job_status_of_a_job_that_has_not_run(
    conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")
    pg_cron.schedule_function(conn, JOB, NIGHTLY, FUNCTION)

    status = pg_cron.job_status(conn, JOB)

    assert (status.job.schedule, status.job.active, status.runs) == (NIGHTLY, True, ())
    assert status.last_run is None
    assert status.next_run is not None
    assert (status.next_run.hour, status.next_run.minute) == (2, 0)
    assert status.next_run > datetime.now(UTC)


def test_pg_cron_runs_the_job_and_job_status_shows_the_run(
    cron_server: CronServer, conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    store_secrets(conn, secrets, "project_url", "service_role_key")
    scheduled = pg_cron.schedule_function(conn, JOB, "@reboot", FUNCTION)
    conn.close()

    cron_server.restart()  # pg_cron's scheduler starts and runs @reboot jobs at once

    with psycopg.connect(cron_server.url, autocommit=True) as fresh:
        deadline = time.monotonic() + 10
        status = pg_cron.job_status(fresh, JOB)
        while not (status.runs and status.runs[0].status in {"succeeded", "failed"}):
            assert time.monotonic() < deadline, f"pg_cron did not run the job: {status}"
            time.sleep(0.1)
            status = pg_cron.job_status(fresh, JOB)
        calls = fresh.execute(
            "select url, body, params, headers, timeout_milliseconds"
            " from test_scaffold.http_post_calls"
        ).fetchall()

    run = status.runs[0]
    assert run.status == "succeeded", run.return_message
    assert (run.http_status, run.called_ok) == (200, True)
    assert run.return_message == "1 row"  # pg_cron's summary of a select
    assert run.start_time is not None and run.end_time is not None
    assert run.start_time <= run.end_time
    assert status.job.job_id == scheduled.job.job_id
    assert status.next_run is None  # @reboot has no next time

    [(url, body, params, headers, timeout)] = calls
    assert url == f"{secrets.project_url}/functions/v1/{FUNCTION}"
    assert headers == {"Content-Type": "application/json", "apikey": secrets.service_role_key}
    assert (body, params, timeout) == ({}, {}, 5000)

    shown = repr(status)
    assert secrets.service_role_key not in shown
    assert secrets.project_url not in shown


def test_job_status_reports_the_functions_answer_not_only_pg_crons(
    cron_server: CronServer, conn: psycopg.Connection[Any], secrets: Secrets
) -> None:
    # The function refuses the key: pg_cron still says "succeeded" (pg_net only queued it).
    store_secrets(conn, secrets, "project_url", "service_role_key")
    conn.execute("update test_scaffold.http_answer set status_code = 401")
    pg_cron.schedule_function(conn, JOB, "@reboot", FUNCTION)
    conn.close()
    cron_server.restart()
    try:
        with psycopg.connect(cron_server.url, autocommit=True) as fresh:
            deadline = time.monotonic() + 10
            status = pg_cron.job_status(fresh, JOB)
            while not (status.runs and status.runs[0].status in {"succeeded", "failed"}):
                assert time.monotonic() < deadline, f"pg_cron did not run the job: {status}"
                time.sleep(0.1)
                status = pg_cron.job_status(fresh, JOB)
    finally:
        with psycopg.connect(cron_server.url, autocommit=True) as reset:
            reset.execute("update test_scaffold.http_answer set status_code = 200")
    run = status.runs[0]
    assert run.status == "succeeded"
    assert (run.http_status, run.called_ok) == (401, False)


def test_runs_are_paired_with_the_answer_that_followed_them(
    conn: psycopg.Connection[Any],
) -> None:
    t0 = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    conn.execute(
        "insert into net._http_response (id, status_code, timed_out, error_msg, created) values"
        " (1, 200, null, null, %s), (2, null, true, 'Timeout was reached', %s)",
        (t0.replace(second=1), t0.replace(hour=3, second=2)),
    )
    runs = (
        pg_cron.JobRun(3, "succeeded", t0.replace(hour=4), t0.replace(hour=4), "1 row"),
        pg_cron.JobRun(2, "succeeded", t0.replace(hour=3), t0.replace(hour=3), "1 row"),
        pg_cron.JobRun(1, "succeeded", t0, t0, "1 row"),
    )
    paired = pg_cron._with_http_responses(conn, runs)
    assert [(r.http_status, r.http_error, r.called_ok) for r in paired] == [
        (None, None, None), (None, "timed out", False), (200, None, True)]


# ---------------------------------------------------------------------------------------------
# Cron expressions (no server needed, except the cross-check against pg_cron)
# ---------------------------------------------------------------------------------------------

VALID = [
    ("0 2 * * *", "0 2 * * *"),
    ("  0   2 * *   * ", "0 2 * * *"),
    ("*/15 * * * *", "*/15 * * * *"),
    ("0 9-17/2 * * mon-fri", "0 9-17/2 * * mon-fri"),
    ("0 2 1,15 JAN,jul 7", "0 2 1,15 JAN,jul 7"),
    ("@daily", "@daily"),
    ("@Reboot", "@reboot"),
]

INVALID = [
    ("0 0 2 * * *", "has 6 fields"),
    ("0 2 * *", "has 4 fields"),
    ("", "empty cron expression"),
    ("60 * * * *", "minute 60 is outside 0-59"),
    ("0 24 * * *", "hour 24 is outside 0-23"),
    ("0 2 0 * *", "day-of-month 0 is outside 1-31"),
    ("1/5 * * * *", "step only after '*' or a range"),
    ("*/0 * * * *", "positive step"),
    ("0 2 L * *", "has 'L'"),
    ("0 2 * * 1#2", "has '1#2'"),
    ("0 2 * * fri-mon", "runs backwards"),
    ("@every", "unknown keyword"),
    ("60 seconds", "1-59 seconds"),
    ("0 seconds", "1-59 seconds"),
]


@pytest.mark.parametrize(("expression", "normalised"), VALID)
def test_valid_cron_expressions(expression: str, normalised: str) -> None:
    assert pg_cron.validate_cron_expression(expression) == normalised


@pytest.mark.parametrize(("expression", "reason"), INVALID)
def test_invalid_cron_expressions_say_why(expression: str, reason: str) -> None:
    with pytest.raises(UsageError) as caught:
        pg_cron.validate_cron_expression(expression)
    assert reason in str(caught.value)


def test_second_intervals_are_pg_cron_syntax() -> None:
    assert pg_cron.validate_cron_expression("5 Seconds") == "5 seconds"
    assert pg_cron.validate_cron_expression("1 second") == "1 seconds"
    with pytest.raises(UsageError, match=re.escape("need pg_cron >= 1.5")):
        pg_cron.validate_cron_expression("5 seconds", (1, 4))


def test_everything_we_accept_pg_cron_accepts(conn: psycopg.Connection[Any]) -> None:
    for _, normalised in VALID:
        with conn.transaction(force_rollback=True):
            conn.execute("select cron.schedule('probe', %s, 'select 1')", (normalised,))


def test_bad_function_and_job_names_are_usage_errors(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(UsageError, match="edge function name"):
        pg_cron.schedule_function(conn, JOB, NIGHTLY, "../admin")
    with pytest.raises(UsageError, match="longer than 63 bytes"):
        pg_cron.schedule_function(conn, "x" * 64, NIGHTLY, FUNCTION)
    assert jobs_named(conn, JOB) == []
