"""Every spoofing attempt is refused, and none of the six measured defects recurs."""

from __future__ import annotations

import inspect

import psycopg

from tests.messaging.conftest import ALICE, DANA, MAX, OLGA, SPRING_SHOW, Api, Db
from tests.messaging.helpers import assert_unread_exact, refused


def broadcast_to(db: Db) -> tuple[str, str, str]:
    """Olga broadcasts to the Spring show's attendees; returns (conv, recipient, message)."""
    result = db.as_user(OLGA).rpc1("send_broadcast", p_show_id=SPRING_SHOW,
                                   p_message_text="One-way", p_recipient_roles=["attendee"])
    return result["conversation_id"], ALICE, result["message_id"]


def test_defect_1_messages_insert_policy_does_not_recurse(v2db: Db) -> None:
    """The original insert policy queried messages inside its own policy."""
    a, m = v2db.make_user("attendee"), v2db.make_user("mvp_dealer")
    v2db.as_user(a).rpc1("send_direct_message", p_recipient_id=m, p_message_text="hi")
    conv = v2db.val("select conversation_id from public.conversation_participants "
                    "where user_id = %s", (a,))
    api = v2db.as_user(m)
    api.sql("insert into public.messages (conversation_id, sender_id, message_text) "
            "values (%s, %s, 'direct insert')", (conv, m))
    assert len(api.sql("select * from public.messages")) == 2
    assert len(api.sql("select * from public.conversation_participants")) == 2
    api.sql("update public.messages set read_by_user_ids = read_by_user_ids || %s::uuid "
            "where conversation_id = %s and not (%s = any(read_by_user_ids))", (m, conv, m))


def test_defect_2_broadcast_identity_comes_from_the_jwt(v2db: Db) -> None:
    """Anyone could broadcast as an organizer by passing p_sender_id."""
    for user in (ALICE, DANA, MAX):
        api = v2db.as_user(user)
        refused(lambda api=api: api.rpc1("send_broadcast", p_show_id=SPRING_SHOW,
                                         p_message_text="fake", p_recipient_roles=["dealer"]),
                "PT403")
        refused(lambda api=api: api.rpc1("send_broadcast", p_sender_id=OLGA,
                                         p_show_id=SPRING_SHOW, p_message_text="fake",
                                         p_recipient_roles=["attendee"]), "42883")
    assert v2db.val("select count(*) from public.messages where is_broadcast") == 0


def test_defect_3_moderator_identity_comes_from_the_jwt(v2db: Db) -> None:
    message = v2db.as_user(ALICE).rpc1("send_direct_message", p_recipient_id=MAX,
                                       p_message_text="keep me")
    api = v2db.as_user(MAX)
    refused(lambda: api.rpc1("moderate_delete_message", p_message_id=message), "PT403")
    refused(lambda: api.rpc1("moderate_delete_message", p_message_id=message,
                             p_moderator_id="50000000-0000-4000-8000-000000000001",
                             p_reason="x"), "42883")
    assert v2db.val("select is_deleted from public.messages where id = %s", (message,)) is False


def test_defect_4_recipients_cannot_flip_can_reply(v2db: Db) -> None:
    conv, recipient, _ = broadcast_to(v2db)
    api = v2db.as_user(recipient)
    refused(lambda: api.sql("update public.conversation_participants set can_reply = true "
                            "where conversation_id = %s and user_id = %s",
                            (conv, recipient)), "42501")
    refused(lambda: api.sql("insert into public.conversation_participants "
                            "(conversation_id, user_id, can_reply) values (%s, %s, true) "
                            "on conflict do nothing", (conv, recipient)), "42501")
    refused(lambda: api.rpc1("send_message", p_conversation_id=conv, p_message_text="no"),
            "PT403")
    # Even with the flag flipped behind the API's back, a broadcast stays one-way.
    v2db.q("update public.conversation_participants set can_reply = true "
           "where conversation_id = %s", (conv,))
    refused(lambda: api.rpc1("send_message", p_conversation_id=conv, p_message_text="no"),
            "PT403")


def test_defect_5_and_6_are_covered_in_test_broadcasts() -> None:
    from tests.messaging import test_broadcasts

    assert inspect.isfunction(test_broadcasts.test_broadcast_counts_once_per_recipient)
    assert inspect.isfunction(test_broadcasts.test_20_concurrent_broadcasts_against_a_quota_of_2)


def test_insert_as_another_sender_is_refused(v2db: Db) -> None:
    conv = "70000000-0000-4000-8000-000000000001"
    refused(lambda: v2db.as_user(ALICE).sql(
        "insert into public.messages (conversation_id, sender_id, message_text) "
        "values (%s, %s, 'spoof')", (conv, MAX)), "42501")


def test_cannot_set_v2_columns_on_insert(v2db: Db) -> None:
    conv = "70000000-0000-4000-8000-000000000001"
    api = v2db.as_user(ALICE)
    for column, value in (("is_broadcast", True), ("is_deleted", True)):
        refused(lambda column=column, value=value: api.sql(
            f"insert into public.messages (conversation_id, sender_id, message_text, {column}) "
            "values (%s, %s, 'x', %s)", (conv, ALICE, value)), "42501")


def test_cannot_read_another_users_conversation(v2db: Db) -> None:
    conv = "70000000-0000-4000-8000-000000000001"  # Alice <-> Max
    api = v2db.as_user(DANA)
    assert api.sql("select * from public.messages where conversation_id = %s", (conv,)) == []
    assert api.sql("select * from public.conversations where id = %s", (conv,)) == []
    refused(lambda: api.rpc("get_conversation_messages", p_conversation_id=conv), "PT403")
    # And updates to it touch nothing.
    api.sql("update public.messages set read_by_user_ids = read_by_user_ids || %s::uuid "
            "where conversation_id = %s", (DANA, conv))
    assert v2db.val("select count(*) from public.messages where %s = any(read_by_user_ids)",
                    (DANA,)) == 6  # her own legacy conversation only


def test_cannot_touch_quotas(v2db: Db) -> None:
    broadcast_to(v2db)
    api = v2db.as_user(OLGA)
    refused(lambda: api.sql("select * from public.broadcast_quotas"), "42501")
    refused(lambda: api.sql("update public.broadcast_quotas set pre_show_used = 0"), "42501")
    refused(lambda: api.sql("delete from public.broadcast_quotas"), "42501")
    refused(lambda: api.sql("insert into public.broadcast_quotas (organizer_id, show_id, "
                            "quota_date) values (%s, %s, current_date + 1)",
                            (OLGA, SPRING_SHOW)), "42501")
    refused(lambda: api.sql("select * from public.feature_flag_audit"), "42501")
    refused(lambda: api.sql("update public.feature_flags set rollout_percentage = 100"), "42501")


def test_cannot_update_another_users_unread_count_or_set_it_non_zero(v2db: Db) -> None:
    conv = "70000000-0000-4000-8000-000000000001"
    before = v2db.val("select unread_count from public.conversation_participants "
                      "where conversation_id = %s and user_id = %s", (conv, ALICE))
    assert before == 5
    api = v2db.as_user(MAX)
    api.sql("update public.conversation_participants set unread_count = 0 "
            "where conversation_id = %s and user_id = %s", (conv, ALICE))  # matches no row
    assert v2db.val("select unread_count from public.conversation_participants "
                    "where conversation_id = %s and user_id = %s", (conv, ALICE)) == 5
    alice = v2db.as_user(ALICE)
    refused(lambda: alice.sql("update public.conversation_participants set unread_count = 7 "
                              "where conversation_id = %s and user_id = %s", (conv, ALICE)),
            "PT403")
    refused(lambda: alice.sql("update public.conversation_participants set user_id = %s "
                              "where conversation_id = %s and user_id = %s",
                              (DANA, conv, ALICE)), "42501")
    assert_unread_exact(v2db)


def test_cannot_mark_read_for_others_or_edit_messages(v2db: Db) -> None:
    conv = "70000000-0000-4000-8000-000000000001"
    api = v2db.as_user(ALICE)
    refused(lambda: api.sql("update public.messages set read_by_user_ids = read_by_user_ids || "
                            "%s::uuid where conversation_id = %s", (DANA, conv)), "PT403")
    refused(lambda: api.sql("update public.messages set read_by_user_ids = '{}' "
                            "where conversation_id = %s", (conv,)), "PT403")
    refused(lambda: api.sql("update public.messages set message_text = 'edited' "
                            "where conversation_id = %s", (conv,)), "42501")
    refused(lambda: api.sql("update public.messages set is_deleted = true "
                            "where conversation_id = %s", (conv,)), "42501")
    refused(lambda: api.sql("delete from public.messages where conversation_id = %s", (conv,)),
            "42501")


def test_cannot_promote_yourself(v2db: Db) -> None:
    """Roles derive from the subscription: a user may edit their profile, not what makes them
    an MVP dealer or an organizer (today any user can, with the table-wide UPDATE)."""
    api = v2db.as_user(ALICE)
    for column, value in [("role", "show_organizer"), ("account_type", "organizer"),
                          ("subscription_status", "active"), ("payment_status", "paid"),
                          ("subscription_type", "pro"), ("subscription_id", "sub_1"),
                          ("subscription_expiry", "2099-01-01"),
                          ("pre_show_broadcasts_remaining", "99")]:
        refused(lambda c=column, v=value: api.sql(
            f"update public.profiles set {c} = %s where id = %s", (v, ALICE)), "42501")
    api.sql("update public.profiles set first_name = 'Alice', home_zip_code = '02139', "
            "instagram_url = 'https://instagram.com/alice', favorite_shows = '{spring}' "
            "where id = %s", (ALICE,))
    assert v2db.q("select role, home_zip_code from public.profiles where id = %s",
                  (ALICE,)) == [("attendee", "02139")]
    newbie = "99999999-0000-4000-8000-000000000001"
    v2db.q("insert into auth.users (id) values (%s)", (newbie,))
    refused(lambda: v2db.as_user(newbie).sql(
        "insert into public.profiles (id, email, role) values (%s, 'x@y', 'admin')", (newbie,)),
        "42501")


def test_anon_gets_nothing(v2db: Db) -> None:
    anon = Api(psycopg.connect(v2db.url, autocommit=True), None, role="anon")
    try:
        refused(lambda: anon.rpc("get_user_conversations"), "42501")
        refused(lambda: anon.rpc("send_message", p_conversation_id=SPRING_SHOW,
                                 p_message_text="x"), "42501")
        refused(lambda: anon.sql("select * from public.messages"), "42501")
        refused(lambda: anon.sql("select * from public.conversations"), "42501")
        refused(lambda: anon.sql("select * from public.reported_messages"), "42501")
    finally:
        anon.conn.close()
