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

from rollout.errors import TargetError

MAINTENANCE_PREFIX = "rollout_maintenance_"
API_ROLES = ("anon", "authenticated")


@contextmanager
def connect(url: str, autocommit: bool = True, **kwargs: Any) -> Iterator[psycopg.Connection]:
    """A connection with a clear error when the database cannot be reached."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as err:
        raise TargetError(f"cannot connect to the database: {first_line(err)}") from err
    with conn:
        yield conn


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


def maintenance_tables(conn: psycopg.Connection, schemas: list[str]) -> list[tuple[str, str, bool]]:
    rows = conn.execute(
        "select n.nspname, c.relname, c.relrowsecurity from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p') and n.nspname = any(%s) order by 1, 2",
        (schemas,),
    ).fetchall()
    return [(r[0], r[1], bool(r[2])) for r in rows]


MAINTENANCE_FUNCTIONS_DDL = """
create schema if not exists rollout;
create table if not exists rollout.maintenance_functions (
  signature text primary key,
  revoked_from text[] not null,
  granted_to text[] not null
);
"""

# Volatile SECURITY DEFINER functions run as their owner, so RLS (and with it the window's
# restrictive policies) does not see their writes: the window takes EXECUTE away from the API
# roles for exactly those, and gives it back afterwards. Stable/immutable definer helpers
# (the ones policies call) are left alone, so reads keep working during the window, and so are
# functions a policy calls whatever their volatility (production's is_admin() is plpgsql, so
# volatile by default: taking it away would make every read of profiles fail).
WRITER_FUNCTIONS_SQL = """
select p.oid::regprocedure::text as signature,
       array(select case when a.grantee = 0 then 'public' else a.grantee::regrole::text end
             from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
             where a.privilege_type = 'EXECUTE'
               and (a.grantee = 0 or a.grantee::regrole::text = any(%(roles)s))) as grantees,
       has_function_privilege('service_role', p.oid, 'EXECUTE') as service_can
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
where n.nspname = any(%(schemas)s) and p.prosecdef and p.provolatile = 'v'
  and p.prokind in ('f', 'p')
  and not exists (select 1 from pg_depend d
                   where d.classid = 'pg_policy'::regclass
                     and d.refclassid = 'pg_proc'::regclass and d.refobjid = p.oid)
"""


def maintenance_on(url: str, schemas: list[str]) -> dict[str, Any]:
    """Refuse writes by the API roles: a restrictive policy per write command on every table,
    and no EXECUTE on volatile security-definer functions (they would bypass RLS).

    Restrictive policies are ANDed with the table's own, so nothing else changes, and the
    owner's session (the migration's) is not subject to RLS. Tables without RLS are listed as
    unprotected rather than silently passed over. Idempotent.
    """
    protected: list[str] = []
    unprotected: list[str] = []
    with connect(url, autocommit=False) as conn:
        conn.execute("set local lock_timeout = '5s'")
        for schema, table, rls in maintenance_tables(conn, schemas):
            if not rls:
                unprotected.append(f"{schema}.{table}")
                continue
            for command, clause in (("insert", "with check (false)"),
                                    ("update", "using (false)"), ("delete", "using (false)")):
                name = f"{MAINTENANCE_PREFIX}{command}"
                conn.execute(sql.SQL("drop policy if exists {} on {}.{}").format(
                    sql.Identifier(name), sql.Identifier(schema), sql.Identifier(table)))
                conn.execute(sql.SQL(
                    "create policy {} on {}.{} as restrictive for " + command + " to "
                    + ", ".join(API_ROLES) + " " + clause).format(
                    sql.Identifier(name), sql.Identifier(schema), sql.Identifier(table)))
            protected.append(f"{schema}.{table}")
        functions = _close_writer_functions(conn, schemas)
        conn.commit()
    return {"protected": protected, "unprotected": unprotected, "functions": functions}


def _close_writer_functions(conn: psycopg.Connection[Any], schemas: list[str]) -> list[str]:
    conn.execute(MAINTENANCE_FUNCTIONS_DDL)
    closed: list[str] = []
    rows = conn.execute(WRITER_FUNCTIONS_SQL, {"roles": list(API_ROLES), "schemas": schemas})
    for signature, grantees, service_can in rows.fetchall():
        if not grantees:
            continue
        # service_role may hold EXECUTE only through PUBLIC: keep it able to run the function.
        granted = ["service_role"] if "public" in grantees and service_can and not \
            _explicit_execute(conn, signature, "service_role") else []
        for role in granted:
            conn.execute(sql.SQL("grant execute on function {} to {}").format(
                sql.SQL(signature), sql.Identifier(role)))
        for role in grantees:
            conn.execute(sql.SQL("revoke execute on function {} from {}").format(
                sql.SQL(signature), _grantee(role)))
        conn.execute(
            "insert into rollout.maintenance_functions (signature, revoked_from, granted_to) "
            "values (%s, %s, %s) on conflict (signature) do update set revoked_from = "
            "(select array(select distinct unnest(maintenance_functions.revoked_from "
            "|| excluded.revoked_from))), granted_to = (select array(select distinct "
            "unnest(maintenance_functions.granted_to || excluded.granted_to)))",
            (signature, list(grantees), granted))
        closed.append(signature)
    return closed


def _grantee(role: str) -> sql.Composable:
    return sql.SQL("public") if role == "public" else sql.Identifier(role)


def _explicit_execute(conn: psycopg.Connection[Any], signature: str, role: str) -> bool:
    row = conn.execute(
        "select exists (select from aclexplode(coalesce((select proacl from pg_proc "
        "where oid = %s::regprocedure), '{}')) a "
        "where a.grantee = %s::regrole and a.privilege_type = 'EXECUTE')",
        (signature, role)).fetchone()
    return bool(row and row[0])


def _reopen_writer_functions(conn: psycopg.Connection[Any]) -> list[str]:
    exists = conn.execute("select to_regclass('rollout.maintenance_functions')").fetchone()
    if not exists or exists[0] is None:
        return []
    reopened: list[str] = []
    rows = conn.execute("select signature, revoked_from, granted_to, "
                        "to_regprocedure(signature) is not null "
                        "from rollout.maintenance_functions").fetchall()
    for signature, revoked_from, granted_to, still_there in rows:
        if still_there:  # a function the migration dropped has nothing to give back
            for role in revoked_from:
                conn.execute(sql.SQL("grant execute on function {} to {}").format(
                    sql.SQL(signature), _grantee(role)))
            for role in granted_to:
                conn.execute(sql.SQL("revoke execute on function {} from {}").format(
                    sql.SQL(signature), sql.Identifier(role)))
            reopened.append(signature)
        conn.execute("delete from rollout.maintenance_functions where signature = %s",
                     (signature,))
    return reopened


def maintenance_off(url: str) -> list[str]:
    """Drop every maintenance policy and give functions back their EXECUTE, wherever they
    are (also after a crash). Idempotent."""
    lifted: list[str] = []
    with connect(url, autocommit=False) as conn:
        rows = conn.execute(
            "select schemaname, tablename, policyname from pg_policies where policyname like %s",
            (MAINTENANCE_PREFIX + "%",),
        ).fetchall()
        for schema, table, policy in rows:
            conn.execute(sql.SQL("drop policy if exists {} on {}.{}").format(
                sql.Identifier(policy), sql.Identifier(schema), sql.Identifier(table)))
            lifted.append(f"{schema}.{table}")
        lifted += _reopen_writer_functions(conn)
        conn.commit()
    return sorted(set(lifted))


def maintenance_active(url: str) -> bool:
    with connect(url) as conn:
        row = conn.execute("select exists (select from pg_policies where policyname like %s), "
                           "to_regclass('rollout.maintenance_functions') is not null",
                           (MAINTENANCE_PREFIX + "%",)).fetchone()
        if row and not row[0] and row[1]:
            row = conn.execute("select exists (select from rollout.maintenance_functions)"
                               ).fetchone()
    return bool(row and row[0])


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

