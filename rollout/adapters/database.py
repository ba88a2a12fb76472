"""PostgreSQL I/O for steps: migrations, the maintenance window, catalog checks, pg_dump.

Everything runs over the service connection (the database owner), never as an API role.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rollout.errors import TargetError, TargetUnreachable


@contextmanager
def connect(url: str, autocommit: bool = True, **kwargs: Any) -> Iterator[psycopg.Connection]:
    """A connection with a clear error when the database cannot be reached."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as err:
        raise TargetUnreachable(f"cannot connect to the database: {first_line(err)}") from err
    with conn:
        yield conn


def unreachable_reason(url: str) -> str | None:
    """Why the database cannot be reached (its real error), or None when it can."""
    try:
        with connect(url):
            return None
    except TargetError as err:
        return str(err)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# ---- migrations ----------------------------------------------------------------------------

@dataclass
class AppliedMigration:
    filename: str
    checksum: str
    applied_at: Any


def applied_migration(url: str, filename: str) -> AppliedMigration | None:
    with connect(url) as conn:
        exists = conn.execute("select to_regclass('rollout.migrations')").fetchone()
        if not exists or exists[0] is None:
            return None
        row = conn.execute(
            "select filename, checksum, applied_at from rollout.migrations where filename = %s",
            (filename,),
        ).fetchone()
    return AppliedMigration(*row) if row else None


def run_sql_file(url: str, text: str, *, record: tuple[str, str, str] | None = None,
                 forget: str | None = None, lock_timeout: str = "5s",
                 statement_timeout: str = "60s") -> None:
    """Run a whole SQL file in ONE transaction, with its bookkeeping inside that transaction.

    The record of the migration (`record` = filename, checksum, run id) is written, or removed
    (`forget`), before the file's own statements in the same transaction: a file that ends with
    its own `commit` commits it, a file that fails takes it along. So the journal of applied
    migrations can never disagree with the schema, even after a SIGKILL.
    """
    with connect(url, autocommit=False) as conn:
        try:
            # client_connection_check_interval: if rollout dies (even SIGKILL) mid-file, the
            # server notices within a second and aborts, instead of finishing and committing
            # a migration nobody is watching.
            conn.execute("select set_config('lock_timeout', %s, true), "
                         "set_config('statement_timeout', %s, true), "
                         "set_config('client_connection_check_interval', '1s', true)",
                         (lock_timeout, statement_timeout))
            if record:
                conn.execute("insert into rollout.migrations (filename, checksum, run_id) "
                             "values (%s, %s, %s) on conflict (filename) do update "
                             "set checksum = excluded.checksum, applied_at = now(), "
                             "run_id = excluded.run_id", record)
            if forget:
                conn.execute("delete from rollout.migrations where filename = %s", (forget,))
            conn.execute(text.encode())
            conn.commit()
        except psycopg.Error as err:
            conn.rollback()
            raise TargetError(describe_pg_error(err)) from err


def run_sql(url: str, text: str) -> None:
    """Run an idempotent SQL file (local seeds) in one transaction."""
    with connect(url, autocommit=False) as conn:
        try:
            conn.execute(text.encode())
            conn.commit()
        except psycopg.Error as err:
            conn.rollback()
            raise TargetError(describe_pg_error(err)) from err


def describe_pg_error(err: psycopg.Error) -> str:
    diag = err.diag
    parts = [f"{diag.sqlstate or ''} {diag.message_primary or first_line(err)}".strip()]
    if diag.context:
        parts.append(f"(at {diag.context.strip().splitlines()[-1]})")
    if diag.sqlstate == "55P03":
        parts.append("— another session holds a lock; retry when the app is quieter")
    return " ".join(parts)


# ---- the maintenance window ------------------------------------------------------------------
#
# The window is a lease, enforced in the database: a statement trigger on every table of the
# window's schemas refuses writes by the API roles (direct, or through a security-definer
# function: the `role` setting stays the caller's inside it) only while the run that opened it
# is alive — its session (pid + backend start) is still connected and it renewed the lease
# within `lease_seconds`. A run killed by any signal, or a lost machine, so gives writes back
# by itself: at once when its session ends, at the latest when the lease expires.

MAINTENANCE_TRIGGER = "rollout_maintenance_guard"
LEGACY_POLICY_PREFIX = "rollout_maintenance_"  # the window of earlier versions (lifted only)

# The lease's session is still connected (pid + backend start: a reused pid is another session).
SESSION_ALIVE = ("exists (select from pg_catalog.pg_stat_get_activity(l.pid) a "
                 "where a.backend_start = l.backend_start)")

MAINTENANCE_DDL = """
create schema if not exists rollout;
create table if not exists rollout.maintenance_lease (
  id bigserial primary key,
  run_id uuid not null,
  pid int not null,
  backend_start timestamptz not null,
  lease_seconds int not null,
  opened_at timestamptz not null default now(),
  expires_at timestamptz not null,
  ended_at timestamptz,
  ended_how text
);
comment on table rollout.maintenance_lease is
  'Maintenance windows: open while the run''s session lives and renews; how each one ended.';
create or replace function rollout.maintenance_enforced() returns boolean
language sql stable security definer set search_path = '' as $$
  select exists (
    select from rollout.maintenance_lease l
    where l.ended_at is null and l.expires_at > now() and SESSION_ALIVE)
$$;
-- definer: the API roles have no access to schema rollout, yet their writes fire the guard.
create or replace function rollout.maintenance_guard() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  if (pg_catalog.current_setting('role') in ('anon', 'authenticated')
      or session_user::text in ('anon', 'authenticated'))
     and rollout.maintenance_enforced() then
    raise exception 'writes are paused: a release is in progress (maintenance window)'
      using errcode = '25006', hint = 'retry in a minute';
  end if;
  return null;
end $$;
revoke all on function rollout.maintenance_enforced() from public;
revoke all on function rollout.maintenance_guard() from public;
""".replace("SESSION_ALIVE", SESSION_ALIVE)

SETTLE_SQL = f"""
update rollout.maintenance_lease l set ended_at = now(), ended_how = case
    when not {SESSION_ALIVE} then 'ended by itself: the run''s session was gone (the process died)'
    else 'ended by itself: the lease expired (the run stopped renewing it)' end
where l.ended_at is null and not (l.expires_at > now() and {SESSION_ALIVE})
returning run_id::text, ended_how
"""


@dataclass
class Lease:
    """Who holds the window: the run, its database session (the lock's), the bound."""

    run_id: str
    pid: int
    seconds: int


def maintenance_tables(conn: psycopg.Connection, schemas: list[str]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "select n.nspname, c.relname from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p') and n.nspname = any(%s) order by 1, 2",
        (schemas,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def maintenance_on(url: str, schemas: list[str], lease: Lease) -> dict[str, Any]:
    """Refuse writes by the API roles on every table of `schemas` while `lease` lives.

    One statement trigger per table, in one transaction with the lease row. The owner's
    session (the migration's) and service_role are not refused. Idempotent; a window a dead
    run left behind is settled (its ending recorded) first.
    """
    protected: list[str] = []
    with connect(url, autocommit=False) as conn:
        conn.execute("set local lock_timeout = '5s'")
        conn.execute(MAINTENANCE_DDL)
        settled = conn.execute(SETTLE_SQL).fetchall()
        started = conn.execute("select backend_start from pg_stat_activity where pid = %s",
                               (lease.pid,)).fetchone()
        if not started:
            raise TargetError(f"the run's session (pid {lease.pid}) is not connected")
        # One row per window: a resumed run's new window keeps the record of how the last ended.
        values = (lease.pid, started[0], lease.seconds, lease.seconds, lease.run_id)
        if conn.execute(
                "update rollout.maintenance_lease set pid = %s, backend_start = %s, "
                "lease_seconds = %s, expires_at = now() + make_interval(secs => %s) "
                "where run_id = %s and ended_at is null", values).rowcount == 0:
            conn.execute(
                "insert into rollout.maintenance_lease (pid, backend_start, lease_seconds, "
                "expires_at, run_id) values (%s, %s, %s, now() + make_interval(secs => %s), %s)",
                values)
        for schema, table in maintenance_tables(conn, schemas):
            conn.execute(sql.SQL("drop trigger if exists {} on {}.{}").format(
                sql.Identifier(MAINTENANCE_TRIGGER), sql.Identifier(schema),
                sql.Identifier(table)))
            conn.execute(sql.SQL(
                "create trigger {} before insert or update or delete on {}.{} "
                "for each statement execute function rollout.maintenance_guard()").format(
                sql.Identifier(MAINTENANCE_TRIGGER), sql.Identifier(schema),
                sql.Identifier(table)))
            protected.append(f"{schema}.{table}")
        conn.commit()
    return {"protected": protected, "lease_seconds": lease.seconds,
            "settled": [f"{run[:8]}: {how}" for run, how in settled]}


def renew_lease(conn: psycopg.Connection[Any], run_id: str) -> bool | None:
    """Extend the run's open lease; None when it has none, False when it already lapsed."""
    if not _lease_table(conn):
        return None
    row = conn.execute(
        "select ended_at is null, expires_at > now() from rollout.maintenance_lease "
        "where run_id = %s", (run_id,)).fetchone()
    if not row or not row[0]:
        return None
    if not row[1]:
        return False
    conn.execute("update rollout.maintenance_lease set expires_at = now() + "
                 "make_interval(secs => lease_seconds) where run_id = %s", (run_id,))
    return True


def move_lease(conn: psycopg.Connection[Any], run_id: str) -> None:
    """The run's session changed (it reconnected): the lease follows it."""
    if _lease_table(conn):
        conn.execute("update rollout.maintenance_lease set pid = pg_backend_pid(), "
                     "backend_start = (select backend_start from pg_stat_activity "
                     "where pid = pg_backend_pid()) where run_id = %s and ended_at is null",
                     (run_id,))


def _lease_table(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select to_regclass('rollout.maintenance_lease')").fetchone()
    return bool(row and row[0])


def maintenance_off(url: str, how: str = "lifted") -> list[str]:
    """Drop every guard trigger, record how the window ended; also clears the policies and
    revoked EXECUTE grants of earlier versions' windows. Idempotent."""
    lifted: list[str] = []
    with connect(url, autocommit=False) as conn:
        rows = conn.execute(
            "select n.nspname, c.relname from pg_trigger t join pg_class c on c.oid = t.tgrelid "
            "join pg_namespace n on n.oid = c.relnamespace where t.tgname = %s",
            (MAINTENANCE_TRIGGER,)).fetchall()
        for schema, table in rows:
            conn.execute(sql.SQL("drop trigger if exists {} on {}.{}").format(
                sql.Identifier(MAINTENANCE_TRIGGER), sql.Identifier(schema),
                sql.Identifier(table)))
            lifted.append(f"{schema}.{table}")
        if _lease_table(conn):
            conn.execute(SETTLE_SQL)
            conn.execute("update rollout.maintenance_lease set ended_at = now(), ended_how = %s "
                         "where ended_at is null", (how,))
        lifted += _lift_legacy_window(conn)
        conn.commit()
    return sorted(set(lifted))


def _lift_legacy_window(conn: psycopg.Connection[Any]) -> list[str]:
    """The window of versions before the lease: restrictive policies and revoked EXECUTE."""
    lifted: list[str] = []
    for schema, table, policy in conn.execute(
            "select schemaname, tablename, policyname from pg_policies where policyname like %s",
            (LEGACY_POLICY_PREFIX + "%",)).fetchall():
        conn.execute(sql.SQL("drop policy if exists {} on {}.{}").format(
            sql.Identifier(policy), sql.Identifier(schema), sql.Identifier(table)))
        lifted.append(f"{schema}.{table}")
    exists = conn.execute("select to_regclass('rollout.maintenance_functions')").fetchone()
    if not exists or exists[0] is None:
        return lifted
    rows = conn.execute("select signature, revoked_from, granted_to, "
                        "to_regprocedure(signature) is not null "
                        "from rollout.maintenance_functions").fetchall()
    for signature, revoked_from, granted_to, still_there in rows:
        if still_there:
            for role in revoked_from:
                grantee = sql.SQL("public") if role == "public" else sql.Identifier(role)
                conn.execute(sql.SQL("grant execute on function {} to {}").format(
                    sql.SQL(signature), grantee))
            for role in granted_to:
                conn.execute(sql.SQL("revoke execute on function {} from {}").format(
                    sql.SQL(signature), sql.Identifier(role)))
            lifted.append(signature)
        conn.execute("delete from rollout.maintenance_functions where signature = %s",
                     (signature,))
    return lifted


@dataclass
class WindowState:
    """The window as the database sees it: guard triggers left, and the newest lease."""

    tables: int
    enforced: bool
    lease: dict[str, Any] | None

    @property
    def present(self) -> bool:
        return self.tables > 0


def maintenance_state(url: str) -> WindowState:
    with connect(url) as conn:
        row = conn.execute("select count(*) from pg_trigger where tgname = %s",
                           (MAINTENANCE_TRIGGER,)).fetchone()
        tables = int(row[0]) if row else 0
        legacy = conn.execute("select count(distinct (schemaname, tablename)) from pg_policies "
                              "where policyname like %s", (LEGACY_POLICY_PREFIX + "%",)).fetchone()
        tables += int(legacy[0]) if legacy else 0
        if not _lease_table(conn):
            return WindowState(tables, bool(legacy and legacy[0]), None)
        enforced = conn.execute("select rollout.maintenance_enforced()").fetchone()
        cur = conn.execute(
            "select run_id::text, pid, lease_seconds, opened_at, expires_at, ended_at, ended_how "
            "from rollout.maintenance_lease order by id desc limit 1")
        lease = cur.fetchone()
        columns = [c.name for c in cur.description or []]
    return WindowState(tables, bool(enforced and enforced[0]) and tables > 0,
                       dict(zip(columns, lease, strict=True)) if lease else None)


def maintenance_active(url: str) -> bool:
    """Guard triggers (or an earlier version's policies) are in place, enforced or not."""
    return maintenance_state(url).present


# ---- catalog checks ----------------------------------------------------------------------------


def relation_exists(url: str, name: str) -> bool:
    """Does a table, view or other relation by this (optionally schema-qualified) name exist."""
    try:
        with connect(url) as conn:
            row = conn.execute("select to_regclass(%s) is not null", (name,)).fetchone()
    except psycopg.Error as err:
        raise TargetError(describe_pg_error(err)) from err
    return bool(row and row[0])


def missing_objects(url: str, tables: list[str], rls_tables: list[str],
                    functions: list[str]) -> list[str]:
    """What of the expected schema is absent: tables, RLS flags, functions (schema-qualified)."""
    problems: list[str] = []
    with connect(url) as conn:
        for table in tables:
            row = conn.execute("select to_regclass(%s)", (qualify(table),)).fetchone()
            if not row or row[0] is None:
                problems.append(f"table {qualify(table)} is missing")
        for table in rls_tables:
            row = conn.execute("select relrowsecurity from pg_class where oid = to_regclass(%s)",
                               (qualify(table),)).fetchone()
            if not row or not row[0]:
                problems.append(f"row-level security is not enabled on {qualify(table)}")
        for function in functions:
            schema, name = qualify(function).split(".", 1)
            row = conn.execute(
                "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                "where n.nspname = %s and p.proname = %s", (schema, name)).fetchone()
            if not row or row[0] == 0:
                problems.append(f"function {schema}.{name} is missing")
    return problems


def qualify(name: str) -> str:
    return name if "." in name else f"public.{name}"


def server_version(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("show server_version_num").fetchone()
    return int(row[0]) if row else 0


def database_size(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("select pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


# ---- pg_dump ---------------------------------------------------------------------------------


def pg_dump(tool: str, url: str, out: Path, exclude_schemas: list[str],
            progress: Callable[[int], None]) -> None:
    """pg_dump in custom format, reporting the file's growth while it runs.

    The dump is written to `<out>.partial` and renamed to `out` only once pg_dump succeeded,
    so a run killed mid-dump (SIGKILL, power loss) never leaves a truncated file that looks
    like a finished backup.
    """
    partial = out.with_name(out.name + ".partial")
    argv = [tool, "--format=custom", "--no-password", f"--file={partial}", "--dbname", url]
    for schema in exclude_schemas:
        argv.append(f"--exclude-schema={schema}")
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.25):
            if partial.exists():
                progress(partial.stat().st_size)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        done.set()
        watcher.join()
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise TargetError(f"pg_dump failed: {redact_url(result.stderr.strip())}")
    partial.replace(out)


def pg_restore_list(tool: str, dump: Path) -> int:
    """Entries in a custom-format dump (`pg_restore --list`): proves the file is readable."""
    result = subprocess.run([tool, "--list", str(dump)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise TargetError(f"pg_restore --list cannot read {dump}: {result.stderr.strip()}")
    return sum(1 for line in result.stdout.splitlines() if line and not line.startswith(";"))


def pg_restore(tool: str, url: str, dump: Path) -> None:
    result = subprocess.run(
        [tool, "--clean", "--if-exists", "--single-transaction", "--no-owner",
         "--exit-on-error", "--dbname", url, str(dump)],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TargetError(f"pg_restore failed: {redact_url(result.stderr.strip())}")


def tool_major(tool: str) -> int:
    result = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)(?:\.\d+)?", result.stdout)
    return int(match.group(1)) if match else 0


def redact_url(text: str) -> str:
    return re.sub(r"(://[^:/\s]+:)[^@\s]+@", r"\1***@", text)

