"""Exact unread counts, and today's app builds writing the tables directly under v2."""

from __future__ import annotations

import json
import threading

import psycopg

from tests.messaging.conftest import Api, Db
from tests.messaging.helpers import (
    assert_unread_exact,
    exact_unread,
    open_transaction_as,
    refused,
    stored_unread,
    sync_legacy_columns,
    wait_until,
)


def pair(db: Db) -> tuple[str, str, str]:
    a, m = db.make_user("attendee"), db.make_user("mvp_dealer")
    db.as_user(a).rpc1("send_direct_message", p_recipient_id=m, p_message_text="hi")
    conv = str(db.val("select conversation_id from public.conversation_participants "
                      "where user_id = %s", (a,)))
    return a, m, conv


def test_unread_counts_and_mark_read_via_functions(v2db: Db) -> None:
    a, m, conv = pair(v2db)
    for i in range(3):
        v2db.as_user(m).rpc1("send_message", p_conversation_id=conv, p_message_text=f"m{i}")
    assert v2db.as_user(a).rpc1("get_total_unread_count") == 3
    assert v2db.as_user(m).rpc1("get_total_unread_count") == 1
    v2db.as_user(a).rpc("mark_conversation_read", p_conversation_id=conv)
    assert v2db.as_user(a).rpc1("get_total_unread_count") == 0
    assert exact_unread(v2db, conv, a) == 0
    assert_unread_exact(v2db)


def old_build_send(api: Api, conv: str, user: str, text: str) -> None:
    api.sql("insert into public.messages (conversation_id, sender_id, message_text, "
            "read_by_user_ids) values (%s, %s, %s, array[%s]::uuid[])", (conv, user, text, user))


def old_build_mark_read(api: Api, conv: str, user: str) -> None:
    api.sql("update public.messages set read_by_user_ids = array_append(read_by_user_ids, %s) "
            "where conversation_id = %s and not (%s = any(read_by_user_ids))", (user, conv, user))
    api.sql("update public.conversation_participants set unread_count = 0 "
            "where conversation_id = %s and user_id = %s", (conv, user))


def state(db: Db, conv: str, attendee: str) -> tuple:
    """Last message, the attendee's and the MVP's unread counts, read-state per message: what
    today's builds read, once the legacy sync has run."""
    sync_legacy_columns(db)
    return db.q(
        "select c.last_message_text, "
        "(select array_agg(cp.unread_count order by cp.user_id = %s) "
        " from public.conversation_participants cp where cp.conversation_id = c.id), "
        "(select array_agg(cardinality(m.read_by_user_ids) order by m.created_at, m.id) "
        " from public.messages m where m.conversation_id = c.id) "
        "from public.conversations c where c.id = %s", (attendee, conv))[0]


def test_old_build_direct_calls_end_in_the_same_state_as_functions(v2db: Db) -> None:
    a1, m1, conv1 = pair(v2db)
    a2, m2, conv2 = pair(v2db)
    # Same conversation of events, one through functions, one as an old build.
    for i in range(3):
        v2db.as_user(m1).rpc1("send_message", p_conversation_id=conv1, p_message_text=f"t{i}")
        old_build_send(v2db.as_user(m2), conv2, m2, f"t{i}")
    assert state(v2db, conv1, a1) == state(v2db, conv2, a2)
    assert stored_unread(v2db, conv1, a1) == stored_unread(v2db, conv2, a2) == 3
    v2db.as_user(a1).rpc("mark_conversation_read", p_conversation_id=conv1)
    old_build_mark_read(v2db.as_user(a2), conv2, a2)
    assert state(v2db, conv1, a1) == state(v2db, conv2, a2)
    assert stored_unread(v2db, conv1, a1) == stored_unread(v2db, conv2, a2) == 0
    assert v2db.val("select last_message_text from public.conversations where id = %s",
                    (conv2,)) == "t2"
    # Old build marking read by only resetting the counter also marks the messages read.
    old_build_send(v2db.as_user(m2), conv2, m2, "t3")
    v2db.as_user(a2).sql("update public.conversation_participants set unread_count = 0 "
                         "where conversation_id = %s and user_id = %s", (conv2, a2))
    assert exact_unread(v2db, conv2, a2) == 0
    assert_unread_exact(v2db)


def test_old_build_reads_its_conversations_participants_and_messages(v2db: Db) -> None:
    a, m, conv = pair(v2db)
    api = v2db.as_user(a)
    assert [r[0] for r in api.sql("select id::text from public.conversations")] == [conv]
    assert {r[0] for r in api.sql("select user_id::text from public.conversation_participants")} \
        == {a, m}
    assert len(api.sql("select * from public.messages")) == 1


def test_old_build_insert_is_normalised(v2db: Db) -> None:
    a, m, conv = pair(v2db)
    api = v2db.as_user(m)
    api.sql("insert into public.messages (conversation_id, sender_id, message_text, created_at, "
            "read_by_user_ids) values (%s, %s, '  padded  ', '2001-01-01', array[%s]::uuid[])",
            (conv, m, a))
    row = v2db.q("select message_text, created_at > now() - interval '1 hour', read_by_user_ids "
                 "from public.messages where sender_id = %s", (m,))[0]
    assert row[0] == "padded" and row[1] is True and [str(u) for u in row[2]] == [m]
    assert stored_unread(v2db, conv, a) == 1
    refused(lambda: api.sql("insert into public.messages (conversation_id, sender_id, "
                            "message_text) values (%s, %s, '   ')", (conv, m)), "PT400")


def test_exact_unread_counts_under_50_concurrent_sends(v2db: Db) -> None:
    a, m, conv = pair(v2db)
    third = v2db.make_user("show_organizer")
    v2db.q("insert into public.conversation_participants (conversation_id, user_id) "
           "values (%s, %s)", (conv, third))
    senders = [a, m, third]
    apis = [Api(psycopg.connect(v2db.url, autocommit=True), senders[i % 3]) for i in range(50)]
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def run(i: int, api: Api) -> None:
        barrier.wait()
        try:
            if i % 2:
                api.rpc1("send_message", p_conversation_id=conv, p_message_text=f"c{i}")
            else:
                old_build_send(api, conv, api.user_id or "", f"c{i}")
            if i % 7 == 0:
                api.rpc("mark_conversation_read", p_conversation_id=conv)
        except BaseException as exc:  # noqa: BLE001 — re-raised by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, api)) for i, api in enumerate(apis)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for api in apis:
            api.conn.close()
    assert errors == []
    assert v2db.val("select count(*) from public.messages where conversation_id = %s",
                    (conv,)) == 51
    assert_unread_exact(v2db)
    # The conversation shows the newest message (ties in created_at may pick either).
    assert v2db.val(
        "select c.last_message_timestamp = (select max(created_at) from public.messages m "
        "where m.conversation_id = c.id) and exists (select 1 from public.messages m "
        "where m.conversation_id = c.id and m.created_at = c.last_message_timestamp "
        "and m.message_text = c.last_message_text) from public.conversations c where c.id = %s",
        (conv,)) is True


def inbox_row(db: Db, user: str, conv: str) -> tuple:
    rows = {str(r[0]): r for r in db.as_user(user).rpc("get_user_conversations")}
    return rows[conv][3], rows[conv][5]


def test_a_send_writes_the_message_only_and_the_sync_catches_production_columns_up(
        v2db: Db) -> None:
    a, m, conv = pair(v2db)
    sync_legacy_columns(v2db)
    legacy = v2db.q("select c.last_message_text, cp.unread_count from public.conversations c "
                    "join public.conversation_participants cp on cp.conversation_id = c.id "
                    "where c.id = %s and cp.user_id = %s", (conv, a))
    assert legacy == [("hi", 0)]
    v2db.as_user(m).rpc1("send_message", p_conversation_id=conv, p_message_text="later")
    # The API answers from the messages at once ...
    assert inbox_row(v2db, a, conv) == ("later", 1)
    assert v2db.as_user(a).rpc1("get_total_unread_count") == 1
    # ... production's columns (today's builds) are untouched by the send ...
    assert v2db.q("select c.last_message_text, cp.unread_count from public.conversations c "
                  "join public.conversation_participants cp on cp.conversation_id = c.id "
                  "where c.id = %s and cp.user_id = %s", (conv, a)) == legacy
    # ... until the job runs; a second run has nothing left to do.
    assert sync_legacy_columns(v2db) == 2
    assert stored_unread(v2db, conv, a) == 1
    assert v2db.val("select last_message_text from public.conversations where id = %s",
                    (conv,)) == "later"
    assert sync_legacy_columns(v2db) == 0


def test_a_message_committed_late_is_neither_lost_by_the_sync_nor_hidden_by_a_read_mark(
        v2db: Db) -> None:
    """A message's time is its transaction's start. One that commits after a sync run or a
    mark-read that began later is still counted: both stop at the oldest open transaction."""
    a, m, conv = pair(v2db)
    sync_legacy_columns(v2db)
    late = open_transaction_as(v2db.url, m)  # left open across the others
    try:
        late.execute("select public.send_message(%s, 'slow')", (conv,))
        v2db.as_user(m).rpc1("send_message", p_conversation_id=conv, p_message_text="fast")
        v2db.as_user(a).rpc("mark_conversation_read", p_conversation_id=conv)
        sync_legacy_columns(v2db)
        assert stored_unread(v2db, conv, a) == 0
        late.commit()
    finally:
        late.close()
    # "slow" is older than the read mark's time, but the reader never saw it.
    assert exact_unread(v2db, conv, a) == 1
    assert inbox_row(v2db, a, conv)[1] == 1
    assert stored_unread(v2db, conv, a) == 1
    assert_unread_exact(v2db)


def test_a_message_moderated_while_the_sync_runs_stays_out_of_the_legacy_columns(
        v2db: Db) -> None:
    """The sync waits for the moderation's conversation lock and only then reads the last
    message: the moderated text never comes back into production's last_message_text."""
    a, m, conv = pair(v2db)
    sync_legacy_columns(v2db)
    secret = "words a moderator will remove"
    message = v2db.as_user(m).rpc1("send_message", p_conversation_id=conv, p_message_text=secret)
    admin = v2db.make_user("admin")
    moderation = open_transaction_as(v2db.url, admin)  # holding the conversation row
    try:
        moderation.execute("select public.moderate_delete_message(%s, 'spam')", (message,))

        def run_sync() -> None:
            with psycopg.connect(v2db.url, autocommit=True) as conn:
                conn.execute("select public.sync_legacy_message_columns()")

        sync = threading.Thread(target=run_sync)
        sync.start()
        wait_until(lambda: bool(v2db.val(  # the sync waits on the moderation's lock
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
            "and query like '%sync_legacy_message_columns%'")), timeout=10)
        moderation.commit()
        sync.join(30)
    finally:
        moderation.close()
    text = v2db.val("select last_message_text from public.conversations where id = %s", (conv,))
    assert text == "[message removed by a moderator]"
    assert secret not in json.dumps(v2db.as_user(a).rpc("get_user_conversations"), default=str)


def test_a_message_dated_in_the_past_is_counted_into_the_legacy_columns_at_once_and_once(
        v2db: Db) -> None:
    """A backfill (a privileged insert dated before the sync's position) is behind the sync:
    the insert trigger counts it into production's columns itself, and the sync does not again."""
    a, m, conv = pair(v2db)
    sync_legacy_columns(v2db)
    v2db.q("insert into public.messages (conversation_id, sender_id, message_text, created_at, "
           "read_by_user_ids) values (%s, %s, '  from the archive\u3000', "
           "now() - interval '1 day', array[%s]::uuid[])", (conv, m, m))
    counted = v2db.q("select c.last_message_text, cp.unread_count from public.conversations c "
                     "join public.conversation_participants cp on cp.conversation_id = c.id "
                     "where c.id = %s and cp.user_id = %s", (conv, a))
    assert counted == [("hi", 1)]  # counted at once; older than "hi", so not the last message
    assert v2db.val("select message_text from public.messages where conversation_id = %s "
                    "and created_at < now() - interval '1 hour'", (conv,)) == "from the archive"
    assert sync_legacy_columns(v2db) == 0
    assert stored_unread(v2db, conv, a) == exact_unread(v2db, conv, a) == 1
    assert_unread_exact(v2db)
