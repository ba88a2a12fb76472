"""The maintenance window at the database level: API roles cannot write, the owner can.

This is what `db.maintenance` relies on, on the embedded server and on PostgreSQL 15 (what
Supabase runs): a direct-table client (today's app builds) and the v2 functions are both
refused while the window is open, reads keep working, and lifting it restores writes.
"""

from __future__ import annotations

import psycopg
import pytest

from rollout.adapters import database as db
from tests.conftest import create_database
from tests.messaging.conftest import ALICE, ALICE_MAX_CONV, MAX, V2, Db, apply_file


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


def test_window_refuses_api_writes_but_not_the_owner(v2db: Db) -> None:
    url = v2db.url
    reads_before = v2db.as_user(ALICE).sql("select count(*) from public.messages")
    detail = db.maintenance_on(url, ["public"])
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

    lifted = db.maintenance_off(url)
    assert "public.messages" in lifted and not db.maintenance_active(url)
    insert_as_alice(url)
    assert db.maintenance_off(url) == []  # idempotent


def test_window_holds_against_the_v2_functions_too(v2db: Db) -> None:
    db.maintenance_on(v2db.url, ["public"])
    try:
        with pytest.raises(psycopg.Error):
            send_as_alice(v2db.url)
    finally:
        db.maintenance_off(v2db.url)
    send_as_alice(v2db.url)


def test_window_on_postgresql_15(pg15: object, pg15_legacy_template: str) -> None:
    from tests.conftest import drop_database

    name = "maint15"
    url = create_database(pg15, name, pg15_legacy_template)  # type: ignore[arg-type]
    try:
        apply_file(url, V2)
        db.maintenance_on(url, ["public"])
        with pytest.raises(psycopg.Error):
            insert_as_alice(url)
        db.maintenance_off(url)
        insert_as_alice(url)
    finally:
        drop_database(pg15, name)  # type: ignore[arg-type]
