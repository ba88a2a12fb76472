"""The seed plan's §4.2 staging flows at SQL level, on the demo seed."""

from __future__ import annotations

from tests.messaging.conftest import (
    ADA,
    ALICE,
    ALICE_MAX_CONV,
    ARTHUR,
    DANA,
    MAX,
    OLGA,
    SPRING_SHOW,
    Db,
)
from tests.messaging.helpers import assert_unread_exact, refused


def test_seed_is_idempotent_and_complete(v2db: Db) -> None:
    from tests.messaging.conftest import SEED, apply_file

    counts = v2db.q("select (select count(*) from public.messages), "
                    "(select count(*) from public.profiles), "
                    "(select array_agg(distinct role order by role) from public.profiles)")
    apply_file(v2db.url, SEED)
    assert v2db.q("select (select count(*) from public.messages), "
                  "(select count(*) from public.profiles), "
                  "(select array_agg(distinct role order by role) from public.profiles)") == counts
    assert counts[0][0] >= 200
    assert counts[0][2] == ["admin", "attendee", "dealer", "mvp_dealer", "show_organizer"]
    assert_unread_exact(v2db)


def test_attendee_to_mvp_dm_works(v2db: Db) -> None:
    message = v2db.as_user(ARTHUR).rpc1("send_direct_message", p_recipient_id=MAX,
                                        p_message_text="Do you have a PSA 10?")
    assert message is not None
    assert v2db.as_user(MAX).rpc1("get_total_unread_count") == 1


def test_attendee_to_dealer_dm_is_blocked(v2db: Db) -> None:
    refused(lambda: v2db.as_user(ARTHUR).rpc1("send_direct_message", p_recipient_id=DANA,
                                              p_message_text="hi"), "PT403")


def test_organizer_pre_show_broadcast_twice_third_blocked(v2db: Db) -> None:
    api = v2db.as_user(OLGA)
    for _ in range(2):
        api.rpc1("send_broadcast", p_show_id=SPRING_SHOW, p_message_text="See you soon",
                 p_recipient_roles=["attendee", "dealer"])
    refused(lambda: api.rpc1("send_broadcast", p_show_id=SPRING_SHOW,
                             p_message_text="Third", p_recipient_roles=["attendee"]), "PT429")


def test_mvp_broadcast_to_attendees_ok_to_dealers_blocked(v2db: Db) -> None:
    api = v2db.as_user(MAX)
    result = api.rpc1("send_broadcast", p_show_id=SPRING_SHOW, p_message_text="Booth 12 deals",
                      p_recipient_roles=["attendee"])
    assert result["recipient_count"] == 2 and result["quota_remaining"] is None
    refused(lambda: api.rpc1("send_broadcast", p_show_id=SPRING_SHOW, p_message_text="Dealers",
                             p_recipient_roles=["dealer"]), "PT403")


def test_moderator_soft_deletes_and_placeholder_shows(v2db: Db) -> None:
    message = v2db.as_user(ALICE).rpc1("send_message", p_conversation_id=ALICE_MAX_CONV,
                                       p_message_text="offensive words")
    assert v2db.as_user(ADA).rpc1("moderate_delete_message", p_message_id=message) is True
    page = v2db.as_user(MAX).rpc("get_conversation_messages", p_conversation_id=ALICE_MAX_CONV,
                                 p_limit=1)
    assert [(r[0], r[2], r[3]) for r in page] == [(message, None, True)]


def test_legacy_chat_loads_all_historical_messages_after_v2(v2db: Db) -> None:
    api = v2db.as_user(ALICE)
    direct = api.sql("select message_text from public.messages where conversation_id = %s",
                     (ALICE_MAX_CONV,))
    assert len(direct) == 240
    seen, before = [], None
    while True:
        page = api.rpc("get_conversation_messages", p_conversation_id=ALICE_MAX_CONV,
                       p_before=before, p_limit=50)
        if not page:
            break
        seen += page
        before = page[-1][5]
    assert len(seen) == 240 == len({r[0] for r in seen})
    assert seen[0][2] == "Historical message 240" and seen[-1][2] == "Historical message 1"
    inbox = {str(r[0]): r for r in api.rpc("get_user_conversations")}
    assert inbox[ALICE_MAX_CONV][5] == 5  # the five unread from Max, as before v2
    assert api.rpc1("get_total_unread_count") == 5
