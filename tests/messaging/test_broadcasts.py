"""Broadcasts: who may send to whom, quotas (also under concurrency), one-way conversations."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.messaging.conftest import ROLES, Api, Db
from tests.messaging.helpers import assert_unread_exact, refused


def show_with_everyone(db: Db, *, days_from_now: int = 10) -> tuple[str, str, dict[str, str]]:
    organizer = db.make_user("show_organizer")
    show = db.make_show(organizer, days_from_now=days_from_now)
    members = {role: db.make_user(role) for role in ROLES}
    for user in members.values():
        db.register(user, show)
    return organizer, show, members


@pytest.mark.parametrize("audience", ROLES)
@pytest.mark.parametrize("sender_role", [*ROLES, "other_organizer", "unregistered_mvp"])
def test_broadcast_by_role_and_audience(v2db: Db, sender_role: str, audience: str) -> None:
    organizer, show, members = show_with_everyone(v2db)
    if sender_role == "show_organizer":
        sender = organizer
    elif sender_role == "other_organizer":
        sender = v2db.make_user("show_organizer")
    elif sender_role == "unregistered_mvp":
        sender = v2db.make_user("mvp_dealer")
    else:
        sender = members[sender_role]
    allowed = sender_role == "show_organizer" or (
        sender_role == "mvp_dealer" and audience == "attendee"
    )
    api = v2db.as_user(sender)
    call = lambda: api.rpc1(  # noqa: E731
        "send_broadcast", p_show_id=show, p_message_text="Hello show", p_recipient_roles=[audience]
    )
    if not allowed:
        refused(call, "PT403")
        return
    result = call()
    recipients = {r[0] for r in v2db.q(
        "select user_id::text from public.conversation_participants "
        "where conversation_id = %s and user_id <> %s", (result["conversation_id"], sender))}
    expected = {members[audience]} - {sender}
    assert recipients == expected
    assert result["recipient_count"] == len(expected)
    for user in expected:
        convs = v2db.as_user(user).rpc("get_user_conversations")
        assert [(c[1], c[5]) for c in convs] == [("show", 1)]


def test_broadcast_to_several_roles_and_recipients_cannot_reply(v2db: Db) -> None:
    organizer, show, members = show_with_everyone(v2db)
    result = v2db.as_user(organizer).rpc1(
        "send_broadcast", p_show_id=show, p_message_text="Welcome",
        p_recipient_roles=["attendee", "dealer", "mvp_dealer", "attendee"],
    )
    conv = result["conversation_id"]
    assert result["recipient_count"] == 3
    assert result["quota_remaining"] == 1
    for role in ("attendee", "mvp_dealer"):
        api = v2db.as_user(members[role])
        assert api.rpc1("can_user_reply", p_user_id=members[role], p_conversation_id=conv) is False
        refused(lambda api=api: api.rpc1("send_message", p_conversation_id=conv,
                                         p_message_text="reply"), "PT403")
        refused(lambda api=api, role=role: api.sql(
            "insert into public.messages (conversation_id, sender_id, message_text) "
            "values (%s, %s, 'reply')", (conv, members[role])), "42501")
    # The organizer may follow up in their own broadcast.
    v2db.as_user(organizer).rpc1("send_message", p_conversation_id=conv, p_message_text="P.S.")
    assert_unread_exact(v2db)


def test_invalid_broadcast_input(v2db: Db) -> None:
    organizer, show, _ = show_with_everyone(v2db)
    api = v2db.as_user(organizer)
    for roles in ([], ["wizard"], None, [None]):
        refused(lambda roles=roles: api.rpc1("send_broadcast", p_show_id=show, p_message_text="x",
                                             p_recipient_roles=roles), "PT400")
    refused(lambda: api.rpc1("send_broadcast", p_show_id=show, p_message_text=" ",
                             p_recipient_roles=["attendee"]), "PT400")
    refused(lambda: api.rpc1("send_broadcast", p_show_id="00000000-0000-4000-8000-000000000000",
                             p_message_text="x", p_recipient_roles=["attendee"]), "PT404")
    # Nothing was charged for refused calls.
    assert v2db.val("select count(*) from public.broadcast_quotas") == 0


def test_quota_two_pre_show_one_post_show_then_429(v2db: Db) -> None:
    organizer, show, _ = show_with_everyone(v2db, days_from_now=10)
    api = v2db.as_user(organizer)

    def send(pre: bool | None) -> dict:
        return api.rpc1("send_broadcast", p_show_id=show, p_message_text="News",
                        p_recipient_roles=["attendee"], p_is_pre_show=pre)

    assert send(None)["quota_remaining"] == 1  # derived: the show starts in 10 days
    assert send(True)["quota_remaining"] == 0
    refused(lambda: send(True), "PT429")
    refused(lambda: send(None), "PT429")
    # The phase comes from the show's dates: declaring post-show before it starts is refused
    # (it used to buy a third broadcast in a day) and charges nothing.
    refused(lambda: send(False), "PT400")
    assert v2db.val("select post_show_used from public.broadcast_quotas") == 0
    # Quota is per organizer and show: another show of the same organizer is untouched.
    other = v2db.make_show(organizer, days_from_now=-5)
    v2db.register(v2db.make_user("attendee"), other)
    assert api.rpc1("send_broadcast", p_show_id=other, p_message_text="Thanks for coming",
                    p_recipient_roles=["attendee"])["quota_remaining"] == 0  # derived post-show
    refused(lambda: api.rpc1("send_broadcast", p_show_id=other, p_message_text="Again",
                             p_recipient_roles=["attendee"]), "PT429")
    refused(lambda: api.rpc1("send_broadcast", p_show_id=other, p_message_text="Again",
                             p_recipient_roles=["attendee"], p_is_pre_show=True), "PT400")
    assert v2db.val("select count(*) from public.messages where is_broadcast") == 3


def test_quota_is_per_utc_day_and_does_not_need_the_reset(v2db: Db) -> None:
    organizer, show, _ = show_with_everyone(v2db)
    api = v2db.as_user(organizer)
    send = lambda: api.rpc1("send_broadcast", p_show_id=show, p_message_text="x",  # noqa: E731
                            p_recipient_roles=["attendee"], p_is_pre_show=True)
    send(), send()
    refused(send, "PT429")
    # Yesterday's exhausted row (no reset ran): today is a new row, and full.
    v2db.q("update public.broadcast_quotas set quota_date = quota_date - 1")
    assert send()["quota_remaining"] == 1
    # A doubled reset neither blocks nor grants anything extra.
    svc = psycopg.connect(v2db.url, autocommit=True)
    try:
        with svc.transaction():
            svc.execute("set local role service_role")
            stats1 = svc.execute("select public.reset_broadcast_quotas()").fetchone()[0]
        with svc.transaction():
            svc.execute("set local role service_role")
            svc.execute("select public.reset_broadcast_quotas()")
    finally:
        svc.close()
    assert stats1["quotas_today"] == 1
    assert send()["quota_remaining"] == 0
    refused(send, "PT429")
    refused(lambda: api.rpc1("reset_broadcast_quotas"), "42501")


def test_reset_deletes_only_rows_past_retention(v2db: Db) -> None:
    organizer, show, _ = show_with_everyone(v2db)
    v2db.q("insert into public.broadcast_quotas (organizer_id, show_id, quota_date, pre_show_used) "
           "values (%s, %s, current_date - 40, 2), (%s, %s, current_date - 1, 2)",
           (organizer, show, organizer, show))
    stats = v2db.val("select public.reset_broadcast_quotas()")
    assert stats["deleted_rows"] == 1
    assert v2db.val("select count(*) from public.broadcast_quotas") == 1


def concurrently(apis: list[Api], fn: str, **args: object) -> list[object]:
    """Call the same function from many connections at once; return results or SQLSTATEs."""
    barrier = threading.Barrier(len(apis))
    results: list[object] = [None] * len(apis)

    def run(i: int, api: Api) -> None:
        barrier.wait()
        try:
            results[i] = api.rpc1(fn, **args)
        except psycopg.Error as exc:
            results[i] = exc.sqlstate

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(apis)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_20_concurrent_broadcasts_against_a_quota_of_2(v2db: Db) -> None:
    """Defect 6: the quota must be taken atomically — exactly 2 of 20 succeed."""
    organizer, show, _ = show_with_everyone(v2db)
    apis = [Api(psycopg.connect(v2db.url, autocommit=True), organizer) for _ in range(20)]
    try:
        results = concurrently(apis, "send_broadcast", p_show_id=show, p_message_text="Rush",
                               p_recipient_roles=["attendee"], p_is_pre_show=True)
    finally:
        for api in apis:
            api.conn.close()
    ok = [r for r in results if isinstance(r, dict)]
    assert len(ok) == 2, results
    assert sorted(r["quota_remaining"] for r in ok) == [0, 1]
    assert sorted(r for r in results if not isinstance(r, dict)) == ["PT429"] * 18
    assert v2db.val("select pre_show_used from public.broadcast_quotas") == 2
    assert v2db.val("select count(*) from public.messages where is_broadcast") == 2
    assert_unread_exact(v2db)


def test_broadcast_counts_once_per_recipient(v2db: Db) -> None:
    """Defect 5: a broadcast counted twice in unread counts."""
    organizer, show, members = show_with_everyone(v2db)
    v2db.as_user(organizer).rpc1("send_broadcast", p_show_id=show, p_message_text="Once",
                                 p_recipient_roles=list(ROLES))
    for user in members.values():
        api = v2db.as_user(user)
        assert api.rpc1("get_total_unread_count") == 1
        assert [c[5] for c in api.rpc("get_user_conversations")] == [1]
    assert v2db.as_user(organizer).rpc1("get_total_unread_count") == 0
    assert_unread_exact(v2db)
