"""The DM matrix and the reply rule, through the functions and through direct table writes."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import psycopg
import pytest

from tests.messaging.conftest import ROLES, Db
from tests.messaging.helpers import (
    exact_unread,
    open_transaction_as,
    refused,
    stored_unread,
    wait_until,
)

# who may START a DM with whom (DESIGN.md)
MATRIX = {
    ("attendee", "mvp_dealer"),
    ("mvp_dealer", "attendee"), ("mvp_dealer", "dealer"), ("mvp_dealer", "show_organizer"),
    ("show_organizer", "attendee"), ("show_organizer", "dealer"),
    ("show_organizer", "mvp_dealer"), ("show_organizer", "show_organizer"),
    ("show_organizer", "admin"),
}
PAIRS = list(itertools.product(ROLES, ROLES))


def test_matrix_has_25_pairs() -> None:
    assert len(PAIRS) == 25


def test_all_25_pairs_through_send_direct_message(v2db: Db) -> None:
    outcomes = {}
    for sender_role, recipient_role in PAIRS:
        sender = v2db.make_user(sender_role)
        recipient = v2db.make_user(recipient_role)
        api = v2db.as_user(sender)
        assert api.rpc1("can_user_send_dm", p_sender_id=sender, p_recipient_id=recipient) is (
            (sender_role, recipient_role) in MATRIX
        )
        try:
            message_id = api.rpc1(
                "send_direct_message", p_recipient_id=recipient, p_message_text="hello"
            )
        except psycopg.Error as exc:
            assert exc.sqlstate == "PT403", exc
            outcomes[(sender_role, recipient_role)] = False
            assert v2db.val(
                "select count(*) from public.conversation_participants where user_id = %s",
                (sender,)) == 0
            continue
        outcomes[(sender_role, recipient_role)] = True
        # The flags the first message wrote are the ones a refresh computes from the rows.
        flags = (may_send(v2db, sender, recipient), may_send(v2db, recipient, sender))
        assert flags == (True, recipient_role != "dealer")
        v2db.q("select public.direct_conversations_refresh_v2(array(select conversation_id "
               "from public.direct_conversations where user_low = least(%(a)s::uuid, %(b)s) "
               "and user_high = greatest(%(a)s::uuid, %(b)s)))", {"a": sender, "b": recipient})
        assert (may_send(v2db, sender, recipient), may_send(v2db, recipient, sender)) == flags
        conv = v2db.val("select conversation_id from public.messages where id = %s", (message_id,))
        assert v2db.val("select type from public.conversations where id = %s", (conv,)) == "direct"
        assert stored_unread(v2db, conv, recipient) == 1 == exact_unread(v2db, conv, recipient)
        # A second message reuses the conversation.
        again = api.rpc1("send_direct_message", p_recipient_id=recipient, p_message_text="again")
        again_conv = v2db.val("select conversation_id from public.messages where id = %s", (again,))
        assert again_conv == conv
    assert {pair for pair, ok in outcomes.items() if ok} == MATRIX


@pytest.mark.parametrize("sender_role", ROLES)
def test_direct_table_creation_of_conversations_is_refused(v2db: Db, sender_role: str) -> None:
    """Old builds started conversations by inserting rows; v2 routes that through the function."""
    sender = v2db.make_user(sender_role)
    api = v2db.as_user(sender)
    refused(lambda: api.sql("insert into public.conversations (type) values ('direct')"), "42501")
    conv = v2db.val("insert into public.conversations (type) values ('direct') returning id")
    refused(lambda: api.sql(
        "insert into public.conversation_participants (conversation_id, user_id) values (%s, %s)",
        (conv, sender)), "42501")


def test_all_25_pairs_through_direct_table_inserts(v2db: Db) -> None:
    """Old-build path: once a conversation exists, a direct insert follows the reply rule for
    both sides, and a user outside the conversation can never insert into it."""
    for sender_role, recipient_role in PAIRS:
        sender = v2db.make_user(sender_role)
        recipient = v2db.make_user(recipient_role)
        outsider = v2db.make_user(sender_role)
        conv = v2db.val("insert into public.conversations (type) values ('direct') returning id")
        v2db.q("insert into public.conversation_participants (conversation_id, user_id) "
               "values (%s, %s), (%s, %s)", (conv, sender, conv, recipient))
        insert = ("insert into public.messages (conversation_id, sender_id, message_text, "
                  "read_by_user_ids) values (%s, %s, 'direct', array[%s]::uuid[]) returning id")
        for user, role in ((sender, sender_role), (recipient, recipient_role)):
            api = v2db.as_user(user)
            if role == "dealer":
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    api.sql(insert, (conv, user, user))
            else:
                api.sql(insert, (conv, user, user))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            v2db.as_user(outsider).sql(insert, (conv, outsider, outsider))
        for user in (sender, recipient):
            assert stored_unread(v2db, conv, user) == exact_unread(v2db, conv, user)


@pytest.mark.parametrize("role", ROLES)
def test_reply_by_role(v2db: Db, role: str) -> None:
    organizer = v2db.make_user("show_organizer")
    user = v2db.make_user(role)
    v2db.as_user(organizer).rpc1("send_direct_message", p_recipient_id=user, p_message_text="hi")
    conv = v2db.val("select conversation_id from public.conversation_participants "
                    "where user_id = %s", (user,))
    api = v2db.as_user(user)
    may = role != "dealer"
    assert api.rpc1("can_user_reply", p_user_id=user, p_conversation_id=conv) is may
    if may:
        api.rpc1("send_message", p_conversation_id=conv, p_message_text="thanks")
        api.rpc1("send_direct_message", p_recipient_id=organizer, p_message_text="and again")
    else:
        refused(lambda: api.rpc1("send_message", p_conversation_id=conv,
                                 p_message_text="thanks"), "PT403")
        refused(lambda: api.rpc1("send_direct_message", p_recipient_id=organizer,
                                 p_message_text="thanks"), "PT403")


def test_non_participant_cannot_send_or_read(v2db: Db) -> None:
    a, m, x = v2db.make_user("attendee"), v2db.make_user("mvp_dealer"), v2db.make_user("attendee")
    v2db.as_user(a).rpc1("send_direct_message", p_recipient_id=m, p_message_text="hi")
    conv = v2db.val("select conversation_id from public.conversation_participants "
                    "where user_id = %s", (a,))
    api = v2db.as_user(x)
    refused(lambda: api.rpc1("send_message", p_conversation_id=conv, p_message_text="x"), "PT403")
    refused(lambda: api.rpc("get_conversation_messages", p_conversation_id=conv), "PT403")
    refused(lambda: api.rpc("mark_conversation_read", p_conversation_id=conv), "PT403")
    assert api.sql("select * from public.messages where conversation_id = %s", (conv,)) == []
    assert api.sql("select * from public.conversations where id = %s", (conv,)) == []
    assert api.sql("select * from public.conversation_participants "
                   "where conversation_id = %s", (conv,)) == []
    # A non-participant learns nothing about another user's reply rights either.
    assert api.rpc1("can_user_reply", p_user_id=a, p_conversation_id=conv) is False


@pytest.mark.parametrize("text", ["", "   ", "x" * 1001, None])
def test_message_text_is_validated(v2db: Db, text: str | None) -> None:
    a, m = v2db.make_user("attendee"), v2db.make_user("mvp_dealer")
    api = v2db.as_user(a)
    refused(lambda: api.rpc1("send_direct_message", p_recipient_id=m, p_message_text=text),
            "PT400")


def test_message_text_is_trimmed_and_1000_chars_allowed(v2db: Db) -> None:
    a, m = v2db.make_user("attendee"), v2db.make_user("mvp_dealer")
    api = v2db.as_user(a)
    mid = api.rpc1("send_direct_message", p_recipient_id=m, p_message_text="  " + "y" * 1000 + " ")
    assert v2db.val("select message_text from public.messages where id = %s", (mid,)) == "y" * 1000


def test_recipient_checks(v2db: Db) -> None:
    a = v2db.make_user("show_organizer")
    api = v2db.as_user(a)
    refused(lambda: api.rpc1("send_direct_message", p_recipient_id=a, p_message_text="me"), "PT400")
    refused(lambda: api.rpc1("send_direct_message",
                             p_recipient_id="00000000-0000-4000-8000-000000000000",
                             p_message_text="nobody"), "PT404")


def test_deleted_user_gets_nothing(v2db: Db) -> None:
    a, m = v2db.make_user("attendee"), v2db.make_user("mvp_dealer")
    v2db.as_user(a).rpc1("send_direct_message", p_recipient_id=m, p_message_text="hi")
    # Production deletes the profile (auth.users rows stay referenced by messages).
    v2db.q("delete from public.profiles where id = %s", (a,))
    api = v2db.as_user(a)  # the JWT is still valid for a while
    assert api.rpc("get_user_conversations") == []
    assert api.rpc1("get_total_unread_count") == 0
    assert api.sql("select * from public.messages") == []
    assert api.sql("select * from public.conversations") == []
    refused(lambda: api.rpc1("send_direct_message", p_recipient_id=m, p_message_text="x"), "PT403")
    refused(lambda: api.rpc1("send_broadcast", p_show_id="60000000-0000-4000-8000-000000000001",
                             p_message_text="x", p_recipient_roles=["attendee"]), "PT403")


def test_a_pair_already_talking_follows_every_change_the_reply_rule_depends_on(
        v2db: Db) -> None:
    """A steady-state DM is one statement over the pair's row and the rows the reply rule reads:
    a withdrawn reply right, a lapsed subscription and a removed profile must all reach it."""
    a, m = v2db.make_user("attendee"), v2db.make_user("mvp_dealer")
    attendee, mvp = v2db.as_user(a), v2db.as_user(m)
    attendee.rpc1("send_direct_message", p_recipient_id=m, p_message_text="hi")
    conv = v2db.val("select conversation_id from public.conversation_participants "
                    "where user_id = %s", (a,))

    def sends(api: Any, to: str) -> str:
        try:
            api.rpc1("send_direct_message", p_recipient_id=to, p_message_text="again")
        except psycopg.Error as error:
            return error.sqlstate or ""
        return "sent"

    assert (sends(mvp, a), sends(attendee, m)) == ("sent", "sent")
    v2db.q("update public.conversation_participants set can_reply = false "
           "where conversation_id = %s and user_id = %s", (conv, m))
    assert (sends(mvp, a), sends(attendee, m)) == ("PT403", "sent")
    v2db.q("update public.conversation_participants set can_reply = null "
           "where conversation_id = %s and user_id = %s", (conv, m))
    v2db.q("update public.profiles set subscription_status = 'expired' where id = %s", (m,))
    assert v2db.val("select role from public.profiles where id = %s", (m,)) == "dealer"
    assert (sends(mvp, a), sends(attendee, m)) == ("PT403", "sent")
    v2db.q("update public.profiles set subscription_status = 'active' where id = %s", (m,))
    assert sends(mvp, a) == "sent"
    profile = v2db.val("select to_jsonb(p) from public.profiles p where id = %s", (a,))
    v2db.q("delete from public.profiles where id = %s", (a,))
    assert (sends(mvp, a), sends(attendee, m)) == ("PT404", "PT403")
    v2db.q("insert into public.profiles select * from jsonb_populate_record("
           "null::public.profiles, %s)", (psycopg.types.json.Jsonb(profile),))
    assert (sends(mvp, a), sends(attendee, m)) == ("sent", "sent")
    # ... and all in the one conversation the pair started with.
    assert v2db.val("select count(distinct conversation_id) from public.messages "
                    "where sender_id in (%s, %s)", (a, m)) == 1


def may_send(db: Db, sender: str, recipient: str) -> bool:
    """The pair row's flag a steady DM from `sender` reads instead of the rows themselves."""
    return bool(db.val(
        "select case when %(s)s::uuid = user_low then low_may_send else high_may_send end "
        "from public.direct_conversations "
        "where user_low = least(%(s)s::uuid, %(r)s::uuid) "
        "and user_high = greatest(%(s)s::uuid, %(r)s::uuid)", {"s": sender, "r": recipient}))


def test_the_pair_row_says_who_may_write_as_the_rows_it_derives_from_change(v2db: Db) -> None:
    """The steady DM's one probe reads the pair's flags: true exactly when the full rule allows
    (set at the first message, refreshed by every change the rule depends on)."""
    o, m = v2db.make_user("show_organizer"), v2db.make_user("mvp_dealer")
    d = v2db.make_user("dealer")
    v2db.as_user(o).rpc1("send_direct_message", p_recipient_id=m, p_message_text="hi")
    v2db.as_user(o).rpc1("send_direct_message", p_recipient_id=d, p_message_text="hi")
    assert (may_send(v2db, o, m), may_send(v2db, m, o)) == (True, True)
    assert (may_send(v2db, o, d), may_send(v2db, d, o)) == (True, False)  # dealers never reply
    conv = v2db.val("select conversation_id from public.direct_conversations "
                    "where %s in (user_low, user_high) and %s in (user_low, user_high)", (o, m))
    v2db.q("update public.conversation_participants set can_reply = false "
           "where conversation_id = %s and user_id = %s", (conv, m))
    assert (may_send(v2db, o, m), may_send(v2db, m, o)) == (True, False)
    v2db.q("update public.conversation_participants set can_reply = true "
           "where conversation_id = %s and user_id = %s", (conv, m))
    v2db.q("update public.profiles set subscription_status = 'expired' where id = %s", (m,))
    assert (may_send(v2db, o, m), may_send(v2db, m, o)) == (True, False)
    v2db.q("update public.profiles set subscription_status = 'active' where id = %s", (m,))
    assert (may_send(v2db, o, m), may_send(v2db, m, o)) == (True, True)
    v2db.q("update public.profiles set subscription_status = 'active' where id = %s", (d,))
    assert may_send(v2db, d, o)  # the dealer's upgrade reaches every pair of theirs
    profile = v2db.val("select to_jsonb(p) from public.profiles p where id = %s", (o,))
    v2db.q("delete from public.profiles where id = %s", (o,))
    assert (may_send(v2db, o, m), may_send(v2db, m, o), may_send(v2db, d, o)) == (
        False, False, False)  # no profile on one side: neither writes by the short path
    v2db.q("insert into public.profiles select * from jsonb_populate_record("
           "null::public.profiles, %s)", (psycopg.types.json.Jsonb(profile),))
    assert (may_send(v2db, o, m), may_send(v2db, m, o), may_send(v2db, d, o)) == (
        True, True, True)


@pytest.mark.parametrize("first", ["the first message", "the role change"])
def test_a_role_change_racing_a_pairs_first_message_leaves_no_stale_right(
        v2db: Db, first: str) -> None:
    """An MVP dealer lapses to dealer while an organizer's first DM to them creates the pair's
    row. Whichever holds the profile first, the row ends up saying the dealer may not write:
    a flag from the role as it was would let the dealer's DMs through the one-probe path."""
    o, m = v2db.make_user("show_organizer"), v2db.make_user("mvp_dealer")
    lapse = "update public.profiles set subscription_status = 'expired' where id = %s"
    holder = open_transaction_as(v2db.url, o) if first == "the first message" else (
        psycopg.connect(v2db.url))
    errors: list[BaseException] = []

    def other() -> None:
        try:
            if first == "the first message":
                with psycopg.connect(v2db.url, autocommit=True) as conn:
                    conn.execute(lapse, (m,))
            else:
                v2db.as_user(o).rpc1("send_direct_message", p_recipient_id=m,
                                     p_message_text="hi")
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    try:
        if first == "the first message":
            holder.execute("select public.send_direct_message(%s, 'hi')", (m,))
        else:
            holder.execute(lapse, (m,))
        racer = threading.Thread(target=other)
        racer.start()
        wait_until(lambda: not racer.is_alive() or bool(v2db.val(  # done, or waiting on the
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "  # holder
            "and backend_type = 'client backend'")), timeout=10)
        holder.commit()
        racer.join(30)
    finally:
        holder.close()
    assert errors == []
    assert v2db.val("select role from public.profiles where id = %s", (m,)) == "dealer"
    assert (may_send(v2db, o, m), may_send(v2db, m, o)) == (True, False)
    refused(lambda: v2db.as_user(m).rpc1("send_direct_message", p_recipient_id=o,
                                         p_message_text="let me in"), "PT403")
