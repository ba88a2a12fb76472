"""Fixtures for the messaging migration suite: template databases and PostgREST-style callers.

Templates are built once per session (bootstrap → legacy baseline → demo seed → v2), and every
test gets a fresh copy (a file copy, milliseconds). `Api` acts exactly as PostgREST does: one
transaction per call, `set local role authenticated` and `request.jwt.claims` set locally.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rollout.adapters.local_stack.bootstrap import apply_bootstrap
from rollout.adapters.local_stack.postgres import EmbeddedPostgres
from rollout.checks.smoke import SUBSCRIPTION_OF_ROLE
from tests.conftest import create_database, running_server

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
LEGACY = MIGRATIONS / "legacy_baseline.sql"
SEED = MIGRATIONS / "local" / "demo_seed.sql"
V2 = MIGRATIONS / "production_messaging_system.sql"
ROLLBACK = MIGRATIONS / "rollback_production_messaging.sql"
PG15_BIN = Path("/usr/lib/postgresql/15/bin")

ROLES = ("attendee", "dealer", "mvp_dealer", "show_organizer", "admin")

# Demo seed ids (migrations/local/demo_seed.sql).
ALICE = "10000000-0000-4000-8000-000000000001"  # attendee
ARTHUR = "10000000-0000-4000-8000-000000000002"  # attendee
DANA = "20000000-0000-4000-8000-000000000001"  # dealer
DIRK = "20000000-0000-4000-8000-000000000002"  # dealer
MAX = "30000000-0000-4000-8000-000000000001"  # mvp_dealer
OLGA = "40000000-0000-4000-8000-000000000001"  # show_organizer, organizes both shows
OSCAR = "40000000-0000-4000-8000-000000000002"  # show_organizer, organizes nothing
ADA = "50000000-0000-4000-8000-000000000001"  # admin
SPRING_SHOW = "60000000-0000-4000-8000-000000000001"  # upcoming
WINTER_SHOW = "60000000-0000-4000-8000-000000000002"  # ended
ALICE_MAX_CONV = "70000000-0000-4000-8000-000000000001"  # 240 historical messages
ALICE_DANA_CONV = "70000000-0000-4000-8000-000000000002"
ARTHUR_OLGA_CONV = "70000000-0000-4000-8000-000000000003"


def make_profile(conn: psycopg.Connection, user_id: str, role: str, *, email: str,
                 first_name: str) -> None:
    """Insert a profile as production does (the trigger derives `role` from the subscription);
    an admin, which no subscription makes, with the trigger bypassed as production's were."""
    account_type, status = SUBSCRIPTION_OF_ROLE[role]
    with conn.transaction():
        conn.execute(
            "insert into public.profiles (id, email, first_name, account_type, "
            "subscription_status) values (%s, %s, %s, %s, %s)",
            (user_id, email, first_name, account_type, status))
        if role == "admin":
            conn.execute("set local session_replication_role = replica")
            conn.execute("update public.profiles set role = 'admin' where id = %s", (user_id,))


def apply_file(url: str, path: Path) -> None:
    """Apply a whole migration file as the owner, the way the CLI does."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(path.read_text().encode())


class Api:
    """A signed-in user calling the database through PostgREST (role `authenticated`)."""

    def __init__(
        self, conn: psycopg.Connection, user_id: str | None, role: str = "authenticated"
    ) -> None:
        self.conn = conn
        self.user_id = user_id
        self.role = role

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.transaction():
            self.conn.execute(sql.SQL("set local role {}").format(sql.Identifier(self.role)))
            claims: dict[str, str] = {"role": self.role}
            if self.user_id:
                claims["sub"] = self.user_id
            self.conn.execute(
                "select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),)
            )
            cur = self.conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def one(self, query: str, params: Any = None) -> Any:
        rows = self.sql(query, params)
        assert len(rows) == 1, rows
        return rows[0][0]

    def rpc(self, fn: str, **args: Any) -> list[tuple[Any, ...]]:
        """Call public.<fn>(name => value, ...) as PostgREST's /rpc/<fn> does."""
        named = sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in args
        )
        query = sql.SQL("select * from public.{}({})").format(sql.Identifier(fn), named)
        return self.sql(query.as_string(self.conn), args)

    def rpc1(self, fn: str, **args: Any) -> Any:
        rows = self.rpc(fn, **args)
        assert len(rows) == 1, rows
        return rows[0][0]


@dataclass
class Db:
    """One test database: a superuser connection and PostgREST-style callers."""

    url: str
    admin: psycopg.Connection
    _apis: dict[str | None, Api] = field(default_factory=dict)

    def as_user(self, user_id: str | None) -> Api:
        if user_id not in self._apis:
            self._apis[user_id] = Api(psycopg.connect(self.url, autocommit=True), user_id)
        return self._apis[user_id]

    def q(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = self.admin.execute(query, params)
        return cur.fetchall() if cur.description else []

    def val(self, query: str, params: Any = None) -> Any:
        return self.q(query, params)[0][0]

    def make_user(self, role: str, name: str | None = None) -> str:
        """A person made the way production makes them: the role from the subscription."""
        user_id = str(uuid.uuid4())
        email = f"{name or role}-{user_id[:8]}@test.local"
        self.q("insert into auth.users (id, email) values (%s, %s)", (user_id, email))
        make_profile(self.admin, user_id, role, email=email, first_name=name or role)
        return user_id

    def make_show(self, organizer: str, *, days_from_now: int = 10) -> str:
        return str(
            self.val(
                "insert into public.shows (title, location, address, start_date, end_date, "
                "organizer_id) values ('Test show', 'Springfield', '1 Main St', "
                "now() + make_interval(days => %s), "
                "now() + make_interval(days => %s + 1), %s) returning id",
                (days_from_now, days_from_now, organizer),
            )
        )

    def register(self, user_id: str, show_id: str) -> None:
        self.q(
            "insert into public.show_participants (userid, showid, role) "
            "select %s, %s, role from public.profiles where id = %s",
            (user_id, show_id, user_id),
        )

    def close(self) -> None:
        for api in self._apis.values():
            api.conn.close()
        self.admin.close()


def _template(pg: EmbeddedPostgres, name: str, source: str, files: list[Path]) -> str:
    """A template database, made once per server even when another test package imports
    these fixtures (pytest then holds two instances of the same session fixture)."""
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            return name
    url = create_database(pg, name, source)
    for path in files:
        apply_file(url, path)
    return name


@pytest.fixture(scope="session")
def legacy_template(pg: EmbeddedPostgres, bootstrap_template: str) -> str:
    """bootstrap → legacy baseline → demo seed."""
    return _template(pg, "tmpl_msg_legacy", bootstrap_template, [LEGACY, SEED])


@pytest.fixture(scope="session")
def v2_template(pg: EmbeddedPostgres, legacy_template: str) -> str:
    """bootstrap → legacy baseline → demo seed → messaging v2."""
    return _template(pg, "tmpl_msg_v2", legacy_template, [V2])


def _db(url: str) -> Iterator[Db]:
    db = Db(url=url, admin=psycopg.connect(url, autocommit=True))
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def v2db(make_database: Callable[..., str], v2_template: str) -> Iterator[Db]:
    """A fresh database with the demo seed and messaging v2 applied."""
    yield from _db(make_database(template=v2_template))


@pytest.fixture
def legacy_db(make_database: Callable[..., str], legacy_template: str) -> Iterator[Db]:
    """A fresh database with the demo seed on the legacy schema (v2 not applied)."""
    yield from _db(make_database(template=legacy_template))


@pytest.fixture(scope="session")
def pg15() -> Iterator[EmbeddedPostgres]:
    """Debian's PostgreSQL 15 (what Supabase runs), when its binaries are installed."""
    if not (PG15_BIN / "postgres").exists():
        pytest.skip("PostgreSQL 15 binaries not installed at /usr/lib/postgresql/15/bin")
    with running_server("rollout-test-pg15-", PG15_BIN) as server:
        yield server


@pytest.fixture(scope="session")
def pg15_legacy_template(pg15: EmbeddedPostgres) -> str:
    url = create_database(pg15, "tmpl_msg15_legacy")
    with psycopg.connect(url, autocommit=True) as conn:
        apply_bootstrap(conn)
    for path in (LEGACY, SEED):
        apply_file(url, path)
    return "tmpl_msg15_legacy"


def sqlstate(exc: pytest.ExceptionInfo[psycopg.Error]) -> str | None:
    return exc.value.sqlstate
