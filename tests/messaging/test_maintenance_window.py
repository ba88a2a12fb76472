"""The maintenance window at the database level: API roles cannot write, the owner can.

This is what `db.maintenance` relies on, on the embedded server and on PostgreSQL 15 (what
Supabase runs): a direct-table client (today's app builds) and the v2 functions are both
refused while the window is open, reads keep working, and lifting it restores writes. The
window is a lease held by a session: when that session ends, or the lease is not renewed in
time, writes come back by themselves, with nobody lifting anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from rollout.adapters import database as db
from tests.conftest import create_database
from tests.messaging.conftest import ALICE, ALICE_MAX_CONV, MAX, V2, Db, apply_file
from tests.messaging.helpers import wait_until


def send_as_alice(url: str) -> None:
    handle = Db(url=url, admin=psycopg.connect(url, autocommit=True))
    try:
        handle.as_user(ALICE).rpc1("send_message", p_conversation_id=ALICE_MAX_CONV,
                                   p_message_text="during the window")
    finally:
        handle.close()


def insert_as_alice(url: str) -> None:
    handle = Db(url=url, admin=psycopg.connect(url, autocommit=True))
    try:
        handle.as_user(ALICE).sql(
            "insert into public.messages (conversation_id, sender_id, message_text, "
            "read_by_user_ids) values (%s, %s, 'direct', array[%s]::uuid[])",
            (ALICE_MAX_CONV, ALICE, ALICE))
    finally:
        handle.close()


@contextmanager
def run_session(url: str) -> Iterator[psycopg.Connection]:
    """A connection standing for a live run's session (the lock's, in the engine)."""
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def open_window(url: str, session: psycopg.Connection, seconds: int = 60) -> None:
    db.maintenance_on(url, ["public"], db.Lease(str(uuid.uuid4()), session.info.backend_pid,
                                                seconds))


def writes_refused(url: str) -> bool:
    try:
        insert_as_alice(url)
    except psycopg.errors.ReadOnlySqlTransaction:
        return True
    return False


def test_window_refuses_api_writes_but_not_the_owner(v2db: Db) -> None:
    url = v2db.url
    reads_before = v2db.as_user(ALICE).sql("select count(*) from public.messages")
    session = psycopg.connect(url, autocommit=True)
    detail = db.maintenance_on(url, ["public"], db.Lease(str(uuid.uuid4()),
                                                         session.info.backend_pid, 60))
    assert "public.messages" in detail["protected"]
    assert db.maintenance_active(url)

    with pytest.raises(psycopg.Error):
        insert_as_alice(url)
    assert v2db.as_user(ALICE).sql("select count(*) from public.messages") == reads_before
    owner_insert = v2db.admin.execute(
        "insert into public.messages (conversation_id, sender_id, message_text, "
        "read_by_user_ids) values (%s, %s, 'by the migration', array[%s]::uuid[]) returning id",
        (ALICE_MAX_CONV, MAX, MAX)).fetchone()
    assert owner_insert is not None

    lifted = db.maintenance_off(url, "lifted by the test")
    assert "public.messages" in lifted and not db.maintenance_active(url)
    insert_as_alice(url)
    assert db.maintenance_off(url) == []  # idempotent
    assert db.maintenance_state(url).lease["ended_how"] == "lifted by the test"  # type: ignore[index]
    session.close()


def test_window_holds_against_the_v2_functions_too(v2db: Db) -> None:
    with run_session(v2db.url) as session:
        open_window(v2db.url, session)
        try:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                send_as_alice(v2db.url)
        finally:
            db.maintenance_off(v2db.url)
    send_as_alice(v2db.url)


def test_window_ends_by_itself_when_the_runs_session_is_gone(v2db: Db) -> None:
    """kill -9 of the run closes its session: writes come back without anyone lifting."""
    with run_session(v2db.url) as session:
        open_window(v2db.url, session)
        assert writes_refused(v2db.url)
        v2db.admin.execute("select pg_terminate_backend(%s)", (session.info.backend_pid,))
    wait_until(lambda: not writes_refused(v2db.url))
    send_as_alice(v2db.url)  # the v2 functions too
    state = db.maintenance_state(v2db.url)
    assert state.present and not state.enforced  # guards left, inert
    db.maintenance_off(v2db.url)
    assert "session was gone" in state_lease(v2db.url)["ended_how"]


def test_window_ends_by_itself_when_the_lease_is_not_renewed(v2db: Db) -> None:
    """A live session that stops renewing (a suspended process, a hung machine) loses it."""
    with run_session(v2db.url) as session:
        open_window(v2db.url, session, seconds=3)
        assert writes_refused(v2db.url)
        wait_until(lambda: not writes_refused(v2db.url))
        assert db.maintenance_state(v2db.url).lease["ended_at"] is None  # type: ignore[index]
        # The next window (a resume) settles the lapsed one and records how it ended.
        open_window(v2db.url, session)
        assert writes_refused(v2db.url)
        db.maintenance_off(v2db.url)
    rows = v2db.admin.execute("select ended_how from rollout.maintenance_lease "
                              "order by id").fetchall()
    assert "lease expired" in rows[0][0]


def test_renewing_keeps_the_window(v2db: Db) -> None:
    with run_session(v2db.url) as session:
        run_id = str(uuid.uuid4())
        db.maintenance_on(v2db.url, ["public"], db.Lease(run_id, session.info.backend_pid, 3))
        expires = state_lease(v2db.url)["expires_at"]
        v2db.admin.execute("select pg_sleep(0.2)")
        assert db.renew_lease(session, run_id) is True
        assert state_lease(v2db.url)["expires_at"] > expires
        db.maintenance_off(v2db.url)
        assert db.renew_lease(session, run_id) is None  # ended: nothing to renew


def state_lease(url: str) -> dict[str, Any]:
    lease = db.maintenance_state(url).lease
    assert lease is not None
    return lease


def test_window_on_postgresql_15(pg15: object, pg15_legacy_template: str) -> None:
    from tests.conftest import drop_database

    name = "maint15"
    url = create_database(pg15, name, pg15_legacy_template)  # type: ignore[arg-type]
    try:
        apply_file(url, V2)
        with run_session(url) as session:
            open_window(url, session)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                insert_as_alice(url)
            session.execute("select 1")
        wait_until(lambda: not writes_refused(url))  # session gone: ends by itself on 15 too
        db.maintenance_off(url)
        insert_as_alice(url)
    finally:
        drop_database(pg15, name)  # type: ignore[arg-type]
