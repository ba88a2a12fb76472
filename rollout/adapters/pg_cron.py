"""Scheduling Supabase Edge Functions with pg_cron + pg_net, over a psycopg 3 connection.

This is the `cron.schedule` step's outside I/O on a hosted Supabase project. The job it creates
is the one Supabase documents in "Scheduling Edge Functions"
(https://supabase.com/docs/guides/functions/schedule-functions): a pg_cron job whose command
calls `net.http_post` with the project URL and the key looked up in Vault *when the job runs*.
The command stored in `cron.job` therefore holds only Vault lookups (secret *names*), never a
secret value, and nothing here ever reads a value out of Vault.

pg_cron facts relied on (pg_cron README and regression tests, citusdata/pg_cron):
- `cron.schedule(job_name, schedule, command)` (named jobs since 1.3, `text` job name since 1.4)
  upserts on `(jobname, username)`: re-scheduling a name updates schedule and command and keeps
  the job id. It does not touch `active`, so a paused job is re-activated with
  `cron.alter_job(job_id, active := true)` (1.4+).
- `cron.unschedule(job_name)` raises when the name is unknown, so we look first.
- Schedules are parsed by Paul Vixie's cron parser: five fields, `@`-keywords, and from 1.5
  on `'[1-59] seconds'`. The parser stops after the fifth field, so a six-field expression
  (seconds first, Quartz/Spring style) is *accepted and silently misread*: we refuse it here.
- Runs are logged in `cron.job_run_details` (1.3+), times in UTC.

pg_net is asynchronous: `net.http_post` only queues the request, so pg_cron records "succeeded"
even when the function answered 401. The answer lands in `net._http_response` (status code,
timed out, error message; kept six hours by default) keyed by the request id, which pg_cron does
not keep, so `job_status` pairs each run with the first response created after it started and
before the next run (a job is this project's only pg_net caller at 02:00; other pg_net traffic
in the same seconds could be mistaken for it, which the report says).

The job sends the key in `apikey` (not `Authorization`): the function is deployed with
verify_jwt off and checks the key itself. The Vault secret named by `key_secret` holds a secret
API key (`sb_secret_…`), or, while the project still uses them, the legacy service-role JWT.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from croniter import croniter
from psycopg import sql

from rollout.errors import TargetError, UsageError

# `cron.alter_job` (to re-activate a paused job) and `cron.schedule(text, text, text)`.
PG_CRON_MIN_VERSION = (1, 4)
# `'[1-59] seconds'` interval schedules.
PG_CRON_SECONDS_VERSION = (1, 5)
# The exact function the job calls (pg_net's published signature); checking the function
# rather than only the extension row proves the job's command will resolve.
HTTP_POST_SIGNATURE = "net.http_post(text,jsonb,jsonb,jsonb,integer)"
# How much earlier than its run's recorded start a job's pg_net request may be created.
RUN_START_SLACK = timedelta(seconds=5)
# cron.job.jobname is of type `name`: PostgreSQL truncates beyond 63 bytes.
MAX_JOB_NAME_BYTES = 63

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SECONDS = re.compile(r"^(\d+)\s*seconds?$", re.IGNORECASE)
_KEYWORDS = frozenset(
    {"@reboot", "@restart", "@yearly", "@annually", "@monthly", "@weekly", "@daily",
     "@midnight", "@hourly"}
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, low, high, symbolic names) per field, as in pg_cron's entry.c.
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_FIELD_HELP = "minute hour day-of-month month day-of-week"


class ScheduleAction(StrEnum):
    """What `schedule_function` did to the job."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Prerequisites:
    """What `check_prerequisites` found: the versions, for reports."""

    pg_cron_version: str
    pg_net_version: str | None  # None when net.http_post exists without a pg_net extension row


@dataclass(frozen=True)
class CronJob:
    """One row of `cron.job`. The command contains Vault lookups, never secret values."""

    job_id: int
    job_name: str
    schedule: str
    command: str
    active: bool
    database: str
    username: str


@dataclass(frozen=True)
class JobRun:
    """One row of `cron.job_run_details`: a run of the job, newest first in `JobStatus.runs`."""

    run_id: int
    status: str  # starting | running | sending | connecting | succeeded | failed
    start_time: datetime | None
    end_time: datetime | None
    return_message: str | None
    http_status: int | None = None  # what the function answered (pg_net's `_http_response`)
    http_error: str | None = None  # pg_net's error message, or "timed out"

    @property
    def called_ok(self) -> bool | None:
        """Whether the function answered 2xx (None while no answer is known)."""
        if self.http_status is None:
            return False if self.http_error else None
        return 200 <= self.http_status < 300


@dataclass(frozen=True)
class JobStatus:
    """A scheduled job and its most recent runs."""

    job: CronJob
    runs: tuple[JobRun, ...]
    next_run: datetime | None  # UTC; None for interval and @reboot schedules

    @property
    def last_run(self) -> JobRun | None:
        return self.runs[0] if self.runs else None


@dataclass(frozen=True)
class ScheduleResult:
    """The outcome of `schedule_function`: the job as it now stands and what changed."""

    action: ScheduleAction
    job: CronJob
    previous_schedule: str | None = None  # set when an existing job was updated


# ---------------------------------------------------------------------------------------------
# Cron expressions
# ---------------------------------------------------------------------------------------------


def parse_version(version: str) -> tuple[int, int]:
    """`'1.4-1'` → `(1, 4)`: pg_extension's extversion, major and minor only."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise TargetError(f"unrecognised extension version {version!r}")
    return int(match.group(1)), int(match.group(2))


def validate_cron_expression(
    expression: str, pg_cron_version: tuple[int, int] | None = None
) -> str:
    """Check a schedule against pg_cron's rules and return it normalised (single spaces).

    Accepted: five fields (minute hour day-of-month month day-of-week; numbers, `*`, ranges,
    lists, `/step` after `*` or a range, month and day names), the `@`-keywords pg_cron knows,
    and `'N seconds'` (1-59; needs pg_cron 1.5+ when `pg_cron_version` is given). croniter
    double-checks the five-field form. Raises UsageError saying why otherwise — in particular
    for six fields, which pg_cron itself would accept and misread.
    """
    text = " ".join(expression.split())
    if not text:
        raise UsageError("empty cron expression: pg_cron takes five fields, e.g. '0 2 * * *'")

    seconds = _SECONDS.match(text)
    if seconds:
        value = int(seconds.group(1))
        if not 1 <= value <= 59:
            raise UsageError(
                f"cron expression {expression!r}: pg_cron interval schedules take 1-59 seconds"
            )
        if pg_cron_version is not None and pg_cron_version < PG_CRON_SECONDS_VERSION:
            raise UsageError(
                f"cron expression {expression!r}: second intervals need pg_cron >= 1.5; "
                f"this database has pg_cron {pg_cron_version[0]}.{pg_cron_version[1]}"
            )
        return f"{value} seconds"

    if text.startswith("@"):
        if text.lower() not in _KEYWORDS:
            known = ", ".join(sorted(_KEYWORDS))
            raise UsageError(
                f"cron expression {expression!r}: unknown keyword (pg_cron knows {known})"
            )
        return text.lower()

    fields = text.split(" ")
    if len(fields) != 5:
        extra = (
            " pg_cron has no seconds or year field (its parser would silently ignore the "
            "extra field); for sub-minute schedules use '[1-59] seconds'"
            if len(fields) > 5
            else ""
        )
        raise UsageError(
            f"cron expression {expression!r} has {len(fields)} fields: pg_cron takes exactly 5 "
            f"({_FIELD_HELP}).{extra}"
        )
    for field, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        _check_field(expression, field, name, low, high, names)
    if not croniter.is_valid(text):
        raise UsageError(f"cron expression {expression!r} is not a valid cron schedule")
    return text


def _check_field(
    expression: str, field: str, name: str, low: int, high: int, names: tuple[str, ...]
) -> None:
    """One field by Vixie cron's grammar: list = range {"," range};
    range = "*" ["/" step] | number ["-" number ["/" step]]."""

    def number(token: str) -> int:
        if token.isdigit():
            value = int(token)
        elif token.lower() in names:
            value = names.index(token.lower()) + (low if name == "month" else 0)
        else:
            allowed = f" or a name ({'/'.join(names)})" if names else ""
            raise UsageError(
                f"cron expression {expression!r}: {name} field {field!r} has {token!r}; "
                f"pg_cron accepts numbers {low}-{high}{allowed}, '*', ',', '-' and '/'"
            )
        if not low <= value <= high:
            raise UsageError(
                f"cron expression {expression!r}: {name} {value} is outside {low}-{high}"
            )
        return value

    for part in field.split(","):
        base, slash, step = part.partition("/")
        if slash:
            if not step.isdigit() or int(step) == 0:
                raise UsageError(
                    f"cron expression {expression!r}: {name} field {field!r} needs a positive "
                    "step after '/'"
                )
            if base != "*" and "-" not in base:
                raise UsageError(
                    f"cron expression {expression!r}: {name} field {field!r}: pg_cron takes a "
                    f"step only after '*' or a range (e.g. '*/{step}' or '{base}-{high}/{step}')"
                )
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        first = number(start)
        if dash and number(end) < first:
            raise UsageError(
                f"cron expression {expression!r}: {name} range {base!r} runs backwards"
            )


def next_run_after(schedule: str, after: datetime) -> datetime | None:
    """The next time a five-field or @-keyword schedule fires after `after` (pg_cron uses UTC)."""
    if _SECONDS.match(schedule) or schedule.lower() in {"@reboot", "@restart"}:
        return None
    try:
        value = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    except (ValueError, KeyError):  # croniter's errors subclass ValueError
        return None
    return value if isinstance(value, datetime) else None


# ---------------------------------------------------------------------------------------------
# The job's command
# ---------------------------------------------------------------------------------------------


def edge_function_command(
    function_name: str,
    *,
    url_secret: str = "project_url",
    key_secret: str = "service_role_key",
    body: Mapping[str, Any] | None = None,
    timeout_ms: int = 5000,
) -> str:
    """The SQL the job runs: Supabase's documented `net.http_post` call to an Edge Function.

    Pure (no connection), so a dry run can show it. Values are rendered as SQL literals by
    psycopg.sql; the URL and key stay Vault lookups evaluated at run time.
    """
    if not _FUNCTION_NAME.match(function_name):
        raise UsageError(
            f"edge function name {function_name!r}: use letters, digits, '-' and '_' only"
        )
    for secret in (url_secret, key_secret):
        if not secret or secret != secret.strip():
            raise UsageError(f"Vault secret name {secret!r} is empty or padded with spaces")
    if not 0 < timeout_ms <= 2_147_483_647:
        raise UsageError(f"timeout_ms {timeout_ms}: must be a positive integer (milliseconds)")
    payload = json.dumps(dict(body or {}), sort_keys=True, separators=(", ", ": "))
    template = sql.SQL(
        "select\n"
        "  net.http_post(\n"
        "    url := (select decrypted_secret from vault.decrypted_secrets where name = {url})"
        " || {path},\n"
        "    headers := jsonb_build_object(\n"
        "      'Content-Type', 'application/json',\n"
        "      'apikey', (select decrypted_secret from vault.decrypted_secrets"
        " where name = {key})\n"
        "    ),\n"
        "    body := {body}::jsonb,\n"
        "    timeout_milliseconds := {timeout}\n"
        "  ) as request_id;"
    )
    return template.format(
        url=sql.Literal(url_secret),
        path=sql.Literal(f"/functions/v1/{function_name}"),
        key=sql.Literal(key_secret),
        body=sql.Literal(payload),
        timeout=sql.Literal(timeout_ms),
    ).as_string()


# ---------------------------------------------------------------------------------------------
# Database operations
# ---------------------------------------------------------------------------------------------


def check_prerequisites(
    conn: psycopg.Connection[Any], vault_secret_names: Iterable[str], *, calls_http: bool = True
) -> Prerequisites:
    """Fail with one TargetError naming everything missing: pg_cron, and for a job calling a
    function (`calls_http`) pg_net, Vault and the secrets.

    Secrets are checked by name only: the query selects `name`, never `decrypted_secret`.
    """
    names = sorted(set(vault_secret_names))
    problems: list[str] = []
    fixes: list[str] = []
    try:
        versions = dict(
            conn.execute(
                "select extname, extversion from pg_catalog.pg_extension"
                " where extname in ('pg_cron', 'pg_net')"
            ).fetchall()
        )
        pg_cron_version = versions.get("pg_cron")
        if pg_cron_version is None:
            problems.append("the pg_cron extension is not installed")
            fixes.append(
                "create extension if not exists pg_cron;"
                " (Supabase: Dashboard → Database → Extensions → pg_cron)"
            )
        elif parse_version(pg_cron_version) < PG_CRON_MIN_VERSION:
            problems.append(f"pg_cron {pg_cron_version} is too old (need >= 1.4)")
            fixes.append("alter extension pg_cron update;")

        missing: list[str] = []
        if calls_http:
            missing = _check_http_prerequisites(conn, names, problems, fixes)
    except psycopg.Error as exc:
        raise TargetError(
            f"could not check the pg_cron prerequisites: {_pg_message(exc)}"
        ) from None
    for name in missing:
        problems.append(f"Vault secret {name!r} does not exist")
        fixes.append(f"select vault.create_secret('<value>', '{name}');")
    if problems:
        raise TargetError(
            "cannot schedule with pg_cron: " + "; ".join(problems),
            hint="run in the SQL editor: " + " ".join(fixes),
        )
    assert pg_cron_version is not None
    return Prerequisites(pg_cron_version=pg_cron_version, pg_net_version=versions.get("pg_net"))


def _check_http_prerequisites(
    conn: psycopg.Connection[Any], names: list[str], problems: list[str], fixes: list[str]
) -> list[str]:
    """pg_net and Vault (appended to `problems`/`fixes`); returns the Vault secrets missing."""
    has_http_post = conn.execute(
        "select pg_catalog.to_regprocedure(%s) is not null", (HTTP_POST_SIGNATURE,)
    ).fetchone()
    if not (has_http_post and has_http_post[0]):
        problems.append(f"pg_net is not installed ({HTTP_POST_SIGNATURE} not found)")
        fixes.append(
            "create extension if not exists pg_net;"
            " (Supabase: Dashboard → Database → Extensions → pg_net)"
        )
    has_vault = conn.execute(
        "select pg_catalog.to_regclass('vault.decrypted_secrets') is not null"
    ).fetchone()
    if not (has_vault and has_vault[0]):
        problems.append("Supabase Vault is not available (vault.decrypted_secrets not found)")
        fixes.append("create extension if not exists supabase_vault;")
        return names
    found = {
        row[0]
        for row in conn.execute(
            "select name from vault.decrypted_secrets where name = any(%s::text[])", (names,)
        )
    }
    return [name for name in names if name not in found]


def find_job(conn: psycopg.Connection[Any], job_name: str) -> CronJob | None:
    """The current user's job with this name (pg_cron keys jobs by name and user), or None."""
    try:
        row = conn.execute(
            "select jobid, jobname, schedule, command, active, database, username"
            " from cron.job where jobname = %s and username = current_user",
            (job_name,),
        ).fetchone()
    except psycopg.Error as exc:
        raise TargetError(f"could not read cron.job: {_pg_message(exc)}") from None
    return None if row is None else CronJob(*row)


def schedule_function(
    conn: psycopg.Connection[Any],
    job_name: str,
    cron_expr: str,
    function_name: str,
    url_secret: str = "project_url",
    key_secret: str = "service_role_key",
    body: Mapping[str, Any] | None = None,
    timeout_ms: int = 5000,
) -> ScheduleResult:
    """Schedule `function_name` under `job_name`, idempotently.

    Creates the job, or updates its schedule/command (and re-activates it) when they differ,
    or leaves it alone when they match. Runs in one transaction and checks that exactly one
    job carries the name before committing, so a re-run never duplicates. (On an autocommit
    connection that transaction commits on return; otherwise it is a savepoint inside the
    caller's transaction, which the caller commits.) The prerequisites are checked first, so a
    missing extension or Vault secret fails with nothing scheduled.
    """
    _check_job_name(job_name)
    command = edge_function_command(
        function_name, url_secret=url_secret, key_secret=key_secret, body=body,
        timeout_ms=timeout_ms,
    )
    return schedule_command(conn, job_name, cron_expr, command,
                            vault_secrets=[url_secret, key_secret])


def schedule_sql(
    conn: psycopg.Connection[Any], job_name: str, cron_expr: str, command: str
) -> ScheduleResult:
    """Schedule a SQL command (run by pg_cron as the scheduling role), idempotently."""
    _check_job_name(job_name)
    if not command.strip():
        raise UsageError(f"cron job {job_name!r}: the SQL command is empty")
    return schedule_command(conn, job_name, cron_expr, command.strip(), vault_secrets=None)


def schedule_command(
    conn: psycopg.Connection[Any],
    job_name: str,
    cron_expr: str,
    command: str,
    *,
    vault_secrets: list[str] | None,
) -> ScheduleResult:
    """Create, update or leave alone the job `job_name` running `command` (see schedule_function);
    `vault_secrets` None: the command calls no function (no pg_net or Vault needed)."""
    validate_cron_expression(cron_expr)  # usage errors before touching the database
    prerequisites = check_prerequisites(conn, vault_secrets or [],
                                        calls_http=vault_secrets is not None)
    schedule = validate_cron_expression(cron_expr, parse_version(prerequisites.pg_cron_version))

    try:
        with conn.transaction():
            existing = find_job(conn, job_name)
            if (
                existing is not None
                and existing.schedule == schedule
                and existing.command == command
                and existing.active
            ):
                return ScheduleResult(action=ScheduleAction.UNCHANGED, job=existing)
            row = conn.execute(
                "select cron.schedule(%s::text, %s::text, %s::text)",
                (job_name, schedule, command),
            ).fetchone()
            assert row is not None
            job_id = int(row[0])
            if existing is not None and not existing.active:
                conn.execute("select cron.alter_job(%s, active := true)", (job_id,))
            same_name = conn.execute(
                "select jobid, username from cron.job where jobname = %s order by jobid",
                (job_name,),
            ).fetchall()
            if len(same_name) != 1:
                held = ", ".join(f"job {jid} of {user}" for jid, user in same_name)
                raise TargetError(
                    f"pg_cron job name {job_name!r} is not unique ({held}); nothing was changed",
                    hint="remove the extra job with: select cron.unschedule(<jobid>);",
                )
            job = find_job(conn, job_name)
    except psycopg.Error as exc:
        raise TargetError(
            f"could not schedule pg_cron job {job_name!r}: {_pg_message(exc)}"
        ) from None
    assert job is not None
    if existing is None:
        return ScheduleResult(action=ScheduleAction.CREATED, job=job)
    return ScheduleResult(
        action=ScheduleAction.UPDATED, job=job, previous_schedule=existing.schedule
    )


def unschedule(conn: psycopg.Connection[Any], job_name: str) -> bool:
    """Remove the job; True if there was one (`cron.unschedule` itself raises on unknown names)."""
    _check_job_name(job_name)
    try:
        with conn.transaction():
            if find_job(conn, job_name) is None:
                return False
            row = conn.execute("select cron.unschedule(%s::text)", (job_name,)).fetchone()
    except psycopg.Error as exc:
        raise TargetError(
            f"could not unschedule pg_cron job {job_name!r}: {_pg_message(exc)}"
        ) from None
    return bool(row and row[0])


def job_status(conn: psycopg.Connection[Any], job_name: str, last_runs: int = 10) -> JobStatus:
    """The job (schedule, command, active) and its last `last_runs` runs, newest first.

    Raises TargetError when no such job exists. Nothing returned holds a secret value: the
    command contains only Vault lookups.
    """
    if last_runs < 0:
        raise UsageError(f"last_runs {last_runs}: must be zero or more")
    job = find_job(conn, job_name)
    if job is None:
        raise TargetError(
            f"no pg_cron job named {job_name!r} for the current user",
            hint="schedule it first (the plan's cron.schedule step)",
        )
    runs: tuple[JobRun, ...] = ()
    try:
        has_details = conn.execute(
            "select pg_catalog.to_regclass('cron.job_run_details') is not null"
        ).fetchone()
        if has_details and has_details[0] and last_runs:
            runs = tuple(
                JobRun(*row)
                for row in conn.execute(
                    "select runid, status, start_time, end_time, return_message"
                    " from cron.job_run_details where jobid = %s"
                    " order by runid desc limit %s",
                    (job.job_id, last_runs),
                )
            )
        runs = _with_http_responses(conn, runs)
    except psycopg.Error as exc:
        raise TargetError(f"could not read cron.job_run_details: {_pg_message(exc)}") from None
    return JobStatus(job=job, runs=runs, next_run=next_run_after(job.schedule, datetime.now(UTC)))


def _with_http_responses(
    conn: psycopg.Connection[Any], runs: tuple[JobRun, ...]
) -> tuple[JobRun, ...]:
    """Each run with the pg_net answer that followed it (runs are newest first)."""
    starts = [r.start_time for r in runs if r.start_time is not None]
    if not starts:
        return runs
    found = conn.execute("select pg_catalog.to_regclass('net._http_response') is not null")
    row = found.fetchone()
    if not (row and row[0]):
        return runs
    responses = conn.execute(
        "select created, status_code, timed_out, error_msg from net._http_response"
        " where created >= %s order by created",
        (min(starts) - RUN_START_SLACK,),
    ).fetchall()
    paired: list[JobRun] = []
    until: datetime | None = None  # the start of the next (newer) run
    for run in runs:
        # pg_cron stamps start_time once the command is sent, so under load the job's own
        # request can be a moment older than its run's start.
        since = run.start_time - RUN_START_SLACK if run.start_time else None
        match = next(
            (r for r in responses if since is not None and r[0] >= since
             and (until is None or r[0] < until)),
            None,
        )
        if match is not None:
            error = "timed out" if match[2] else match[3]
            run = dataclasses.replace(run, http_status=match[1], http_error=error)
        paired.append(run)
        until = since or until
    return tuple(paired)


def _check_job_name(job_name: str) -> None:
    if not job_name or job_name != job_name.strip():
        raise UsageError(f"pg_cron job name {job_name!r} is empty or padded with spaces")
    if len(job_name.encode()) > MAX_JOB_NAME_BYTES:
        raise UsageError(
            f"pg_cron job name {job_name!r} is longer than {MAX_JOB_NAME_BYTES} bytes"
            " (cron.job.jobname is a PostgreSQL `name`)"
        )


def _pg_message(exc: psycopg.Error) -> str:
    """The server's primary message (one line), else the first line of the exception text."""
    primary = exc.diag.message_primary
    if primary:
        return primary
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
