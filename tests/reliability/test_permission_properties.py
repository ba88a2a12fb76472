"""Property: random sequences of actions by random users never reach a state the rules forbid.

Each example gets a fresh copy of the v2 template database (demo seed + messaging v2) and runs
up to 12 actions, each as one PostgREST-style call (`Api`: one transaction, `set local role
authenticated`, the user's JWT claims): DMs, replies, broadcasts, reports, moderation, mark
read, and what old app builds do directly (insert a message — also with someone else's
sender_id —, reset unread counters, edit read_by_user_ids, create conversations, promote
themselves). A refused call is fine; afterwards the invariants of docs/sql-api.md must hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.messaging.conftest import (  # noqa: F401 — the template fixtures are used by name
    ADA,
    ALICE,
    ALICE_DANA_CONV,
    ALICE_MAX_CONV,
    ARTHUR,
    ARTHUR_OLGA_CONV,
    DANA,
    DIRK,
    MAX,
    OLGA,
    OSCAR,
    SPRING_SHOW,
    WINTER_SHOW,
    Db,
    legacy_template,
    v2_template,
)
from tests.messaging.helpers import assert_unread_exact

USERS = (ALICE, ARTHUR, DANA, DIRK, MAX, OLGA, OSCAR, ADA)
ROLE = {ALICE: "attendee", ARTHUR: "attendee", DANA: "dealer", DIRK: "dealer",
        MAX: "mvp_dealer", OLGA: "show_organizer", OSCAR: "show_organizer", ADA: "admin"}
SHOWS = (SPRING_SHOW, WINTER_SHOW)  # Olga organizes both; everyone else is registered to both
PLACEHOLDER = "[message removed by a moderator]"
TEXTS = ("hi", "  padded  ", "'; drop table public.messages; --", "<b>bold</b>", "x" * 1000,
         "x" * 1001, "   ", "émoji 🎉")
CAN_START = {("attendee", "mvp_dealer"), ("mvp_dealer", "attendee"), ("mvp_dealer", "dealer"),
             ("mvp_dealer", "show_organizer")} | {("show_organizer", r) for r in ROLE.values()}

KINDS = ("dm", "reply", "broadcast", "report", "moderate", "mark_read", "insert_message",
         "insert_spoofed", "reset_unread", "set_unread", "read_by_other", "create_conversation",
         "promote")

# Who is likely to succeed at each kind, so that accepted actions are common, not just refusals.
LIKELY = {"broadcast": [OLGA, MAX], "moderate": [ADA], "dm": [OLGA, MAX, ALICE],
          "reply": [ALICE, MAX, OLGA, ARTHUR], "report": [ALICE, MAX, ARTHUR, OLGA]}


@st.composite
def action(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(KINDS))
    return {
        "kind": kind,
        # Two times in three a user who may do it, else anyone.
        "actor": draw(st.sampled_from(LIKELY[kind]) if kind in LIKELY
                      and draw(st.integers(0, 2)) else st.sampled_from(USERS)),
        "other": draw(st.sampled_from(USERS)),
        "own": draw(st.booleans()),  # pick among the actor's own conversations
        "pick": draw(st.integers(0, 1000)),
        "text": draw(st.sampled_from(TEXTS)),
        "show": draw(st.sampled_from(SHOWS)),
        "roles": draw(st.lists(st.sampled_from(sorted(set(ROLE.values()))), min_size=1,
                               max_size=3)),
        "pre": draw(st.sampled_from([None, True, False])),
    }



@dataclass
class World:
    db: Db
    conversations: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # message id → who created it
    broadcasts: list[tuple[str, str, bool]] = field(default_factory=list)  # organizer, show, pre
    moderated: dict[str, str] = field(default_factory=dict)  # message id → moderator

    def pick(self, items: list[str], i: int) -> str:
        return items[i % len(items)] if items else str(uuid.uuid4())


OUTCOMES: list[bool] = []


def attempt(call: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        result = True, call()
    except psycopg.Error:
        result = False, None
    OUTCOMES.append(result[0])
    return result


def run_action(world: World, a: dict[str, Any]) -> None:
    api = world.db.as_user(a["actor"])
    kind, actor = a["kind"], a["actor"]
    conversations, messages = world.conversations, world.messages
    if a["own"]:
        conversations = [str(r[0]) for r in world.db.q(
            "select conversation_id from public.conversation_participants where user_id = %s "
            "order by 1", (actor,))]
        messages = [str(r[0]) for r in world.db.q(
            "select m.id from public.messages m join public.conversation_participants p on "
            "p.conversation_id = m.conversation_id and p.user_id = %s "
            "order by m.created_at desc, m.id limit 20", (actor,))]
    conv = world.pick(conversations, a["pick"])
    msg = world.pick(messages, a["pick"])
    if kind == "dm":
        ok, mid = attempt(lambda: api.rpc1("send_direct_message", p_recipient_id=a["other"],
                                           p_message_text=a["text"]))
        if ok:
            world.created[str(mid)] = actor
    elif kind == "reply":
        ok, mid = attempt(lambda: api.rpc1("send_message", p_conversation_id=conv,
                                           p_message_text=a["text"]))
        if ok:
            world.created[str(mid)] = actor
    elif kind == "broadcast":
        ok, res = attempt(lambda: api.rpc1("send_broadcast", p_show_id=a["show"],
                                           p_message_text=a["text"],
                                           p_recipient_roles=a["roles"], p_is_pre_show=a["pre"]))
        if ok:
            world.created[str(res["message_id"])] = actor
            # The phase is the show's (Spring is upcoming, Winter over), whatever was declared.
            pre = a["show"] == SPRING_SHOW
            assert a["pre"] in (None, pre), "a broadcast went through in a declared wrong phase"
            world.broadcasts.append((actor, a["show"], pre))
    elif kind == "report":
        attempt(lambda: api.rpc1("report_message", p_message_id=msg, p_reason="spam"))
    elif kind == "moderate":
        ok, now = attempt(lambda: api.rpc1("moderate_delete_message", p_message_id=msg))
        if ok and now:
            world.moderated[msg] = actor
    elif kind == "mark_read":
        attempt(lambda: api.rpc("mark_conversation_read", p_conversation_id=conv))
    elif kind in ("insert_message", "insert_spoofed"):
        mid = str(uuid.uuid4())
        sender = actor if kind == "insert_message" else a["other"]
        ok, _ = attempt(lambda: api.sql(
            "insert into public.messages (id, conversation_id, sender_id, message_text) "
            "values (%s, %s, %s, %s)", (mid, conv, sender, a["text"])))
        if ok:
            world.created[mid] = sender if sender == actor else f"SPOOFED by {actor}"
    elif kind == "reset_unread":
        attempt(lambda: api.sql("update public.conversation_participants set unread_count = 0 "
                                "where conversation_id = %s and user_id = %s", (conv, actor)))
    elif kind == "set_unread":
        attempt(lambda: api.sql("update public.conversation_participants set unread_count = 7 "
                                "where conversation_id = %s", (conv,)))
    elif kind == "read_by_other":
        attempt(lambda: api.sql("update public.messages set read_by_user_ids = "
                                "array_append(read_by_user_ids, %s) where id = %s",
                                (a["other"], msg)))
    elif kind == "create_conversation":
        attempt(lambda: api.sql("insert into public.conversations (id, type) values (%s, "
                                "'direct')", (str(uuid.uuid4()),)))
    elif kind == "promote":
        attempt(lambda: api.sql("update public.profiles set role = 'admin' where id = %s",
                                (actor,)))
    # `pytest --hypothesis-show-statistics` shows how often each kind went through.
    event(f"{kind}: {'accepted' if OUTCOMES and OUTCOMES[-1] else 'refused'}")
    refresh(world)


def refresh(world: World) -> None:
    world.conversations = [str(r[0]) for r in world.db.q(
        "select id from public.conversations order by created_at, id")]
    world.messages = [str(r[0]) for r in world.db.q(
        "select id from public.messages order by created_at desc, id limit 40")]


def check_invariants(world: World, initial_messages: set[str]) -> None:
    db = world.db
    # Roles never change; a broadcast ('show' conversation) only comes from the functions:
    # whoever broadcast in it is its participant allowed to write.
    assert dict(db.q("select id::text, role from public.profiles")) == ROLE
    assert db.val("select count(*) from public.messages m where m.is_broadcast "
                  "and not exists (select from public.conversation_participants p "
                  "where p.conversation_id = m.conversation_id and p.user_id = m.sender_id "
                  "and p.can_reply)") == 0

    # Every new message was sent by the caller, who was allowed to send it there.
    new = {str(r[0]): r for r in db.q(
        "select m.id, m.sender_id::text, c.type, (select b.sender_id::text from "
        "public.messages b where b.conversation_id = c.id and b.is_broadcast order by "
        "b.created_at, b.id limit 1), c.show_id::text, "
        "p.can_reply from public.messages m join public.conversations c on c.id = "
        "m.conversation_id left join public.conversation_participants p on p.conversation_id "
        "= m.conversation_id and p.user_id = m.sender_id") if str(r[0]) not in initial_messages}
    assert set(new) == set(world.created), "a message appeared that no allowed action created"
    for mid, (_, sender, ctype, creator, _show, can_reply) in new.items():
        assert world.created[mid] == sender, f"message {mid} sent as someone else"
        assert can_reply is not None, f"{sender} wrote in a conversation they are not in"
        assert ROLE[sender] != "dealer", "a dealer sent a message (they never start or reply)"
        if ctype == "show":
            assert sender == creator, "a broadcast recipient replied"
            assert (ROLE[sender], sender) in (("show_organizer", OLGA), ("mvp_dealer", MAX))
        else:
            assert can_reply, f"{sender} replied without the right to"

    # Quotas: at most 2 pre-show and 1 post-show broadcasts per organizer, show and day.
    for show in SHOWS:
        for pre, limit in ((True, 2), (False, 1)):
            sent = sum(1 for o, s, p in world.broadcasts if o == OLGA and s == show and p == pre)
            assert sent <= limit
    assert db.val("select count(*) from public.broadcast_quotas where pre_show_used > 2 "
                  "or post_show_used > 1") == 0

    # Unread counts are exact: messages from others not in the member's read_by_user_ids (what
    # the API answers at once; production's column once the legacy sync has run).
    assert_unread_exact(db)
    # Nobody appears in read_by_user_ids of a conversation they are not in.
    assert db.val("select count(*) from public.messages m, unnest(m.read_by_user_ids) r(uid) "
                  "where not exists (select from public.conversation_participants p where "
                  "p.conversation_id = m.conversation_id and p.user_id = r.uid)") == 0

    # Moderation: only admins, or the organizer of the conversation's show; text hidden.
    for mid, deleted_by, show in db.q(
            "select m.id::text, m.deleted_by::text, c.show_id::text from public.messages m "
            "join public.conversations c on c.id = m.conversation_id where m.is_deleted"):
        assert ROLE[deleted_by] == "admin" or (deleted_by == OLGA and show in SHOWS)
        assert world.moderated.get(mid) == deleted_by
    for user in USERS:
        if ROLE[user] == "admin":
            continue
        api = db.as_user(user)
        assert api.one("select count(*) from public.messages where is_deleted and "
                       "message_text <> %s", (PLACEHOLDER,)) == 0
        ok, seen = attempt(lambda api=api: api.one(
            "select count(*) from public.moderated_message_texts"))
        assert not ok or seen == 0
        for conv in db.q("select conversation_id from public.conversation_participants "
                         "where user_id = %s", (user,)):
            texts = {r[2] for r in api.rpc("get_conversation_messages",
                                           p_conversation_id=conv[0], p_limit=500)
                     if r[3]}
            assert texts <= {PLACEHOLDER, None}  # hidden: the placeholder or null
        # The inbox's last message text is never a hidden original (unless the same text
        # was also sent, undeleted, in that conversation).
        for conv_id, _, _, last_text, *_ in api.rpc("get_user_conversations"):
            hidden = {r[0] for r in db.q(
                "select t.message_text from public.moderated_message_texts t join "
                "public.messages m on m.id = t.message_id where m.conversation_id = %s "
                "except select message_text from public.messages where conversation_id = %s "
                "and not is_deleted", (conv_id, conv_id))}
            assert last_text not in hidden

    # Reports come from participants of the reported message's conversation.
    assert db.val("select count(*) from public.reported_messages r join public.messages m on "
                  "m.id = r.message_id where not exists (select from "
                  "public.conversation_participants p where p.conversation_id = "
                  "m.conversation_id and p.user_id = r.reported_by)") == 0


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(actions=st.lists(action(), min_size=1, max_size=12))
def test_random_action_sequences_keep_the_rules(make_database: Callable[..., str],
                                                v2_template: str,  # noqa: F811
                                                actions: list[dict[str, Any]]) -> None:
    url = make_database(template=v2_template)
    db = Db(url=url, admin=psycopg.connect(url, autocommit=True))
    try:
        world = World(db)
        refresh(world)
        initial = {str(r[0]) for r in db.q("select id from public.messages")}
        for a in actions:
            run_action(world, a)
        check_invariants(world, initial)
    finally:
        db.close()
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres?sslmode=disable",
                             autocommit=True) as conn:
            conn.execute(f'drop database if exists "{url.rsplit("/", 1)[1].split("?")[0]}" '
                         "with (force)")


def test_known_conversations_exist(make_database: Callable[..., str],
                                   v2_template: str) -> None:  # noqa: F811
    """The demo ids this property test relies on are in the template."""
    url = make_database(template=v2_template)
    with psycopg.connect(url, autocommit=True) as conn:
        found = {str(r[0]) for r in conn.execute("select id from public.conversations")}
    assert {ALICE_MAX_CONV, ALICE_DANA_CONV, ARTHUR_OLGA_CONV} <= found
