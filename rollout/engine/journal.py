"""The journal (schema `rollout` in the target database) and the per-environment lock.

Runs and step events are written on their own autocommit connection, so they survive a failing
step. `step_state` is the environment's current truth: which steps are applied, with the detail
their rollback needs. The lock is a session advisory lock held by a dedicated connection for the
whole run: a crash (even SIGKILL) drops the connection and with it the lock; `rollout.locks`
says who holds it, for the refusal message.
"""

from __future__ import annotations

import _thread
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from rollout.adapters import database as db
from rollout.engine.events import Masker
from rollout.errors import LockHeld, StepFailed, TargetError, TargetUnreachable

SCHEMA_SQL = """
create schema if not exists rollout;
comment on schema rollout is 'rollout''s journal: runs, step events, applied state, lock holders.';
revoke all on schema rollout from public;
create table if not exists rollout.runs (
  id uuid primary key,
  environment text not null,
  command text not null,
  plan_name text not null,
  plan_path text not null,
  plan_checksum text not null,
  git_commit text,
  operator text not null,
  host text not null,
  status text not null,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  message text
);
-- What the run shipped (Plan.release_fingerprint): matches a staging rehearsal to production.
alter table rollout.runs add column if not exists release_fingerprint text;
-- The run's process beats every second, on a connection of its own: alive = a recent beat.
alter table rollout.runs add column if not exists heartbeat_at timestamptz;
alter table rollout.runs add column if not exists heartbeat_pid int;
create index if not exists runs_environment_started on rollout.runs (environment, started_at desc);
create table if not exists rollout.step_events (
  id bigserial primary key,
  run_id uuid not null references rollout.runs (id),
  step_id text not null,
  kind text not null,
  action text not null,
  status text not null,
  at timestamptz not null default now(),
  seconds double precision,
  detail jsonb not null default '{}'::jsonb,
  error text
);
create index if not exists step_events_run on rollout.step_events (run_id, id);
create table if not exists rollout.step_state (
  environment text not null,
  step_id text not null,
  kind text not null,
  status text not null,
  fingerprint text not null,
  run_id uuid not null,
  detail jsonb not null default '{}'::jsonb,
  updated_at timestamptz not null default now(),
  primary key (environment, step_id)
);
create table if not exists rollout.migrations (
  filename text primary key,
  checksum text not null,
  applied_at timestamptz not null default now(),
  run_id uuid
);
create table if not exists rollout.locks (
  environment text primary key,
  run_id uuid,
  operator text,
  host text,
  pid int,
  since timestamptz not null default now()
);
create table if not exists rollout.approvals (
  run_id uuid not null,
  step_id text not null,
  approved_by text not null,
  approved_at timestamptz not null default now(),
  primary key (run_id, step_id)
);
create table if not exists rollout.confirmations (
  environment text not null,
  item text not null,
  plan_checksum text not null,
  confirmed_by text not null,
  confirmed_at timestamptz not null default now(),
  primary key (environment, item, plan_checksum)
);
"""


@dataclass
class RunInfo:
    id: str
    environment: str
    command: str
    plan_name: str
    plan_path: str
    plan_checksum: str
    git_commit: str | None
    operator: str
    host: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    message: str | None
    release_fingerprint: str | None = None
    """sha256 of the files the plan ships (Plan.release_fingerprint); None before it existed."""


@dataclass
class StepState:
    step_id: str
    kind: str
    status: str
    fingerprint: str
    run_id: str
    detail: dict[str, Any]
    updated_at: datetime


STATE_UPSERT = (
    "insert into rollout.step_state (environment, step_id, kind, status, fingerprint, "
    "run_id, detail, updated_at) values (%s, %s, %s, %s, %s, %s, %s, now()) "
    "on conflict (environment, step_id) do update set kind = excluded.kind, "
    "status = excluded.status, fingerprint = excluded.fingerprint, "
    "run_id = excluded.run_id, detail = excluded.detail, updated_at = now()")
RECONNECT_SECONDS = 30.0
HEARTBEAT_SECONDS = 1.0  # how often a run beats (rollout.runs.heartbeat_at) and renews its lease
ALIVE_SECONDS = 10  # a run whose last beat is older is not alive (dead, or frozen)
T = TypeVar("T")


def lock_key(environment: str) -> str:
    return f"rollout:{environment}"


def connect_with_retry(url: str, seconds: float) -> psycopg.Connection[Any]:
    """Connect; keep trying for `seconds` (a restarting server refuses for a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as err:
            if time.monotonic() >= deadline:
                raise TargetUnreachable(f"cannot reach the journal database: "
                                  f"{str(err).strip().splitlines()[0]}") from err
            time.sleep(0.5)


class EnvironmentLock:
    """The session advisory lock of one environment, held on its own connection.

    If that connection dies (the database restarted), the lock died with it: `ensure()`
    re-takes it before the next step, or stops the run if someone else took it meanwhile.
    That session is also the run's life for the maintenance window (the lease is bound to it),
    and a heartbeat thread, on a connection of its own, beats every second and renews the lease
    (db.renew_lease); if the process stops renewing (SIGSTOP, a hung machine) and the lease
    lapses, `ensure()` stops the run.
    """

    def __init__(self, journal: Journal, environment: str, run_id: str, operator: str,
                 host: str) -> None:
        self.journal = journal
        self.environment = environment
        self.run_id = run_id
        self.operator = operator
        self.host = host
        self.holder: psycopg.Connection[Any] | None = None
        self.lapsed = False
        self.stopped_by: str | None = None  # set when another operator told this run to stop
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The backend pid of the run's session (the maintenance lease is bound to it)."""
        return self.holder.info.backend_pid if self.holder and not self.holder.closed else None

    def _beat(self) -> None:
        """Every second, on a connection of its own (it outlives the lock session: after
        `unlock --force` the process is still seen alive until it stops): the run's heartbeat,
        and the renewal of its maintenance lease."""
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.journal.url, autocommit=True, connect_timeout=5)
                row = conn.execute(
                    "update rollout.runs set heartbeat_at = now(), heartbeat_pid = "
                    "pg_backend_pid() where id = %s returning status, message",
                    (self.run_id,)).fetchone()
                if row and row[0] == "stopping" and not self.stopped_by:
                    # `unlock --force --stop-live-run`: stop now, the way Ctrl-C does.
                    self.stopped_by = str(row[1])
                    _thread.interrupt_main()
                if db.renew_lease(conn, self.run_id) is False:
                    self.lapsed = True
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None  # the database restarted: reconnect at the next beat
        if conn is not None:
            conn.close()

    def acquire(self) -> bool:
        self.holder = connect_with_retry(self.journal.url, RECONNECT_SECONDS)
        row = self.holder.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))",
                                  (lock_key(self.environment),)).fetchone()
        if not row or not row[0]:
            return False
        self.holder.execute(
            "insert into rollout.locks (environment, run_id, operator, host, pid, since) "
            "values (%s, %s, %s, %s, pg_backend_pid(), now()) on conflict (environment) do "
            "update set run_id = excluded.run_id, operator = excluded.operator, "
            "host = excluded.host, pid = excluded.pid, since = excluded.since",
            (self.environment, self.run_id, self.operator, self.host))
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                               name="rollout-heartbeat")
            self._heartbeat.start()
        return True

    def ensure(self) -> None:
        """Before each step: the lock is still ours (re-taken after a restart) and the
        window's lease, if any, has not lapsed."""
        try:
            if self.holder is not None and not self.holder.closed:
                if db.renew_lease(self.holder, self.run_id) is False:
                    self.lapsed = True
                if self.lapsed:
                    raise StepFailed(
                        "the maintenance window's lease lapsed (this process stopped renewing "
                        "it, e.g. it was suspended): API writes were allowed again, so the run "
                        "stops here", hint="check the data, then `--resume` or `rollout rollback`")
                return
        except psycopg.OperationalError:
            pass
        if self.holder is not None:
            self.holder.close()
        if self.acquire():
            assert self.holder is not None
            stop = self.journal.stop_request(self.run_id)
            if stop:
                raise StepFailed(f"stopped: {stop}")
            db.move_lease(self.holder, self.run_id)  # the window follows the new session
            return
        raise LockHeld(f"lost the lock on {self.environment!r} (the database restarted) "
                       f"and another run took it: "
                       f"{self.journal._holder_message(self.environment)}")

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.holder is None:
            return
        with contextlib.suppress(psycopg.Error):
            self.holder.execute("delete from rollout.locks where environment = %s and pid = "
                                "pg_backend_pid()", (self.environment,))
        self.holder.close()


class Journal:
    def __init__(self, url: str, masker: Masker | None = None) -> None:
        self.url = url
        self.masker = masker or Masker()
        self._conn: psycopg.Connection[Any] | None = None
        self._fingerprint_column: bool | None = None  # older journals lack it until upgraded

    # ---- connection ------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect_with_retry(self.url, RECONNECT_SECONDS if self._conn else 0)
        return self._conn

    def _with_retry(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `work` on the journal connection; after a lost connection (the database
        restarted), reconnect once and run it again: the journal must outlive a restart."""
        try:
            return work(self.conn)
        except psycopg.OperationalError:
            if self._conn is not None:
                self._conn.close()
            return work(self.conn)

    def execute(self, query: str | bytes, params: Any = None) -> psycopg.Cursor[Any]:
        return self._with_retry(lambda conn: conn.execute(query, params))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def exists(self) -> bool:
        row = self.execute("select to_regclass('rollout.step_state')").fetchone()
        return bool(row and row[0])

    def ensure_schema(self) -> None:
        self.execute("select pg_advisory_lock(hashtext('rollout:journal-schema'))")
        try:
            self.execute(SCHEMA_SQL.encode())
            self._fingerprint_column = True
        finally:
            self.execute("select pg_advisory_unlock(hashtext('rollout:journal-schema'))")

    # ---- lock --------------------------------------------------------------------------------

    @contextmanager
    def lock(self, environment: str, run_id: str, operator: str,
             host: str) -> Iterator[EnvironmentLock]:
        """Hold the environment's advisory lock for the block, or refuse naming the holder."""
        lock = EnvironmentLock(self, environment, run_id, operator, host)
        try:
            if not lock.acquire():
                raise LockHeld(self._holder_message(environment),
                               hint=f"wait for it, or if it is dead: rollout unlock {environment} "
                                    "--force")
            yield lock
        finally:
            lock.release()

    def _holder_message(self, environment: str) -> str:
        row = self.execute(
            "select run_id, operator, host, since from rollout.locks where environment = %s",
            (environment,)).fetchone()
        if not row:
            return f"environment {environment!r} is locked by another run"
        run_id, operator, host, since = row
        return (f"environment {environment!r} is locked by run {str(run_id)[:8]} "
                f"({operator}@{host}) since {since:%Y-%m-%d %H:%M:%S} UTC")

    def lock_holder(self, environment: str) -> dict[str, Any] | None:
        """The session holding the advisory lock, and what `rollout.locks` says about it."""
        row = self.execute(
            "select l.pid, k.run_id, k.operator, k.host, k.since from pg_locks l "
            "left join rollout.locks k on k.environment = %s "
            "where l.locktype = 'advisory' and l.granted and "
            "((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(%s, 0)",
            (environment, lock_key(environment))).fetchone()
        if not row:
            return None
        return dict(zip(("pid", "run_id", "operator", "host", "since"), row, strict=True))

    def force_unlock(self, environment: str, stopped_by: str | None = None
                     ) -> dict[str, Any] | None:
        """End the lock holder's session. A live run is first told to stop (`stopped_by`):
        it sees the request when it re-takes the lock before its next step, and stops there."""
        holder = self.lock_holder(environment)
        if holder and stopped_by:
            self.execute("update rollout.runs set status = 'stopping', message = %s "
                         "where id = %s", (f"told to stop by {stopped_by} (rollout unlock "
                                           "--force --stop-live-run)", holder["run_id"]))
        if holder:
            self.execute("select pg_terminate_backend(%s)", (holder["pid"],))
        self.execute("delete from rollout.locks where environment = %s", (environment,))
        return holder

    def stop_request(self, run_id: str) -> str | None:
        row = self.execute("select message from rollout.runs where id = %s and "
                           "status = 'stopping'", (run_id,)).fetchone()
        return str(row[0]) if row else None

    def beat_age(self, run_id: str) -> float | None:
        """Seconds since the run's process last beat, if the session it beats on is still
        connected; None otherwise (killed: at once). Read through to_jsonb, so a journal from
        before heartbeats needs no upgrade."""
        row = self.execute(
            "select extract(epoch from now() - (b ->> 'heartbeat_at')::timestamptz), "
            "exists (select from pg_stat_activity where pid = (b ->> 'heartbeat_pid')::int) "
            "from (select to_jsonb(r) b from rollout.runs r where id = %s) s",
            (run_id,)).fetchone()
        return float(row[0]) if row and row[0] is not None and row[1] else None

    def alive(self, run_id: str) -> bool:
        """The run's process is alive: it beat within ALIVE_SECONDS."""
        age = self.beat_age(run_id)
        return age is not None and age < ALIVE_SECONDS

    # ---- runs ----------------------------------------------------------------------------------

    def start_run(self, run: RunInfo) -> None:
        self.execute(
            "insert into rollout.runs (id, environment, command, plan_name, plan_path, "
            "plan_checksum, git_commit, operator, host, status, release_fingerprint, "
            "heartbeat_at, heartbeat_pid) "  # alive from its first row: the beats follow
            "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), pg_backend_pid())",
            (run.id, run.environment, run.command, run.plan_name, run.plan_path,
             run.plan_checksum, run.git_commit, run.operator, run.host, run.status,
             run.release_fingerprint))

    def set_run_status(self, run_id: str, status: str, message: str | None = None,
                       finished: bool = True) -> None:
        self.execute(
            "update rollout.runs set status = %s, message = %s, "
            "finished_at = case when %s then now() else null end where id = %s",
            (status, self.masker.text(message) if message else None, finished, run_id))

    def runs(self, environment: str | None = None, limit: int = 20) -> list[RunInfo]:
        # Read-only readers (sign-off reading another environment's journal) never upgrade the
        # schema, so a journal from before release fingerprints reads as null.
        query = (
            "select id::text, environment, command, plan_name, plan_path, plan_checksum, "
            "git_commit, operator, host, status, started_at, finished_at, message, "
            "release_fingerprint from rollout.runs where %s::text is null or environment = %s "
            "order by started_at desc limit %s"
            if self._has_fingerprint_column() else
            "select id::text, environment, command, plan_name, plan_path, plan_checksum, "
            "git_commit, operator, host, status, started_at, finished_at, message, null "
            "from rollout.runs where %s::text is null or environment = %s "
            "order by started_at desc limit %s")
        rows = self.execute(query, (environment, environment, limit)).fetchall()
        return [RunInfo(*row) for row in rows]

    def _has_fingerprint_column(self) -> bool:
        if self._fingerprint_column is None:
            row = self.execute(
                "select 1 from pg_attribute where attrelid = to_regclass('rollout.runs') "
                "and attname = 'release_fingerprint' and not attisdropped").fetchone()
            self._fingerprint_column = row is not None
        return self._fingerprint_column

    def interrupted_run(self, environment: str) -> RunInfo | None:
        """The newest apply that never finished (its process died holding nothing, or it
        parked at a gate: `waiting`)."""
        for run in self.runs(environment, limit=5):
            if run.command == "apply" and run.status in ("running", "interrupted", "stopping",
                                                         "waiting"):
                return run
            if run.command == "apply":
                return None
        return None

    # ---- steps -----------------------------------------------------------------------------------

    def step_event(self, run_id: str, step_id: str, kind: str, action: str, status: str,
                   seconds: float | None = None, detail: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        self.execute(
            "insert into rollout.step_events (run_id, step_id, kind, action, status, seconds, "
            "detail, error) values (%s, %s, %s, %s, %s, %s, %s, %s)",
            (run_id, step_id, kind, action, status, seconds,
             Jsonb(self.masker.data(detail or {})), self.masker.text(error) if error else None))

    def step_succeeded(self, run_id: str, environment: str, step_id: str, kind: str,
                       action: str, seconds: float, detail: dict[str, Any],
                       state: tuple[str, str] | None) -> None:
        """The `succeeded` event and the environment's step state, in ONE transaction: a kill
        between two separate writes would leave a step done in the run but not applied."""
        masked = Jsonb(self.masker.data(detail))

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(
                    "insert into rollout.step_events (run_id, step_id, kind, action, status, "
                    "seconds, detail) values (%s, %s, %s, %s, 'succeeded', %s, %s)",
                    (run_id, step_id, kind, action, seconds, masked))
                if state is not None:
                    status, fingerprint = state
                    conn.execute(STATE_UPSERT, (environment, step_id, kind, status, fingerprint,
                                                run_id, masked))

        self._with_retry(write)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.execute(
            "select step_id, kind, action, status, at, seconds, detail, error "
            "from rollout.step_events where run_id = %s order by id", (run_id,))
        columns = [c.name for c in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    def completed_in_run(self, run_id: str) -> set[str]:
        rows = self.execute(
            "select distinct step_id from rollout.step_events where run_id = %s "
            "and action = 'apply' and status in ('succeeded', 'already-applied')",
            (run_id,)).fetchall()
        return {row[0] for row in rows}

    def set_state(self, environment: str, step_id: str, kind: str, status: str,
                  fingerprint: str, run_id: str, detail: dict[str, Any]) -> None:
        self.execute(STATE_UPSERT, (environment, step_id, kind, status, fingerprint, run_id,
                                    Jsonb(self.masker.data(detail))))

    def states(self, environment: str) -> dict[str, StepState]:
        rows = self.execute(
            "select step_id, kind, status, fingerprint, run_id::text, detail, updated_at "
            "from rollout.step_state where environment = %s", (environment,)).fetchall()
        return {row[0]: StepState(*row) for row in rows}

    # ---- approvals and confirmations -------------------------------------------------------------

    def approve(self, run_id: str, step_id: str, approver: str) -> None:
        self.execute(
            "insert into rollout.approvals (run_id, step_id, approved_by) values (%s, %s, %s) "
            "on conflict do nothing", (run_id, step_id, approver))

    def approval(self, run_id: str, step_id: str) -> str | None:
        row = self.execute(
            "select approved_by from rollout.approvals where run_id = %s and step_id = %s",
            (run_id, step_id)).fetchone()
        return str(row[0]) if row else None

    def find_run(self, prefix: str) -> RunInfo:
        rows = self.execute(
            "select id::text from rollout.runs where id::text like %s order by started_at desc",
            (prefix + "%",)).fetchall()
        if len(rows) != 1:
            raise TargetError(f"no single run matches {prefix!r} ({len(rows)} found)")
        return next(r for r in self.runs(limit=1000) if r.id == rows[0][0])

    def confirm(self, environment: str, item: str, plan_checksum: str, who: str) -> None:
        self.execute(
            "insert into rollout.confirmations (environment, item, plan_checksum, confirmed_by) "
            "values (%s, %s, %s, %s) on conflict (environment, item, plan_checksum) do update "
            "set confirmed_by = excluded.confirmed_by, confirmed_at = now()",
            (environment, item, plan_checksum, who))

    def confirmations(self, environment: str, plan_checksum: str) -> dict[str, str]:
        rows = self.execute(
            "select item, confirmed_by from rollout.confirmations "
            "where environment = %s and plan_checksum = %s", (environment, plan_checksum))
        return {row[0]: row[1] for row in rows.fetchall()}

