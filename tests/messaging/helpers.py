"""Small helpers shared by the messaging tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest


def refused(call: Callable[[], Any], *sqlstates: str) -> str:
    """Run `call`, expect a database error with one of `sqlstates`; return the SQLSTATE."""
    with pytest.raises(psycopg.Error) as exc:
        call()
    state = exc.value.sqlstate
    assert state in sqlstates, f"expected {sqlstates}, got {state}: {exc.value}"
    return state or ""


def exact_unread(db: Any, conversation_id: str, user_id: str) -> int:
    """Unread count by definition: messages from others the user has not read."""
    return int(
        db.val(
            "select count(*) from public.messages where conversation_id = %s "
            "and sender_id is distinct from %s and not (%s = any(read_by_user_ids))",
            (conversation_id, user_id, user_id),
        )
    )


def v2_applied(db: Any) -> bool:
    return bool(db.val("select to_regprocedure('public.sync_legacy_message_columns(timestamptz)') "
                       "is not null"))


def sync_legacy_columns(db: Any) -> int:
    """What the legacy sync cron job does every few seconds: production's last_message_* and
    unread_count catch up with the messages v2's functions sent (rows changed)."""
    return int(db.val("select public.sync_legacy_message_columns()"))


def stored_unread(db: Any, conversation_id: str, user_id: str) -> int:
    """Production's unread_count as today's builds read it, once the legacy sync has run."""
    if v2_applied(db):
        sync_legacy_columns(db)
    return int(
        db.val(
            "select unread_count from public.conversation_participants "
            "where conversation_id = %s and user_id = %s",
            (conversation_id, user_id),
        )
    )


_DEFINITION = (
    "(select count(*) from public.messages m where m.conversation_id = cp.conversation_id"
    " and m.sender_id is distinct from cp.user_id"
    " and not (cp.user_id = any(coalesce(m.read_by_user_ids, '{}'))))"
)


def assert_unread_exact(db: Any) -> None:
    """Every participant's unread count equals the definition: under v2 what the API answers
    (get_user_conversations) at once, and production's unread_count column once the legacy
    sync has run; before v2, the column."""
    if v2_applied(db):
        rows = db.q(f"select cp.conversation_id, cp.user_id, {_DEFINITION} "
                    "from public.conversation_participants cp")
        for conversation_id, user_id, expected in rows:
            answered = api_unread(db, str(conversation_id), str(user_id))
            assert answered == expected, ("API", conversation_id, user_id, answered, expected)
        sync_legacy_columns(db)
    rows = db.q(
        f"select cp.conversation_id, cp.user_id, cp.unread_count, {_DEFINITION} "
        "from public.conversation_participants cp"
    )
    wrong = [r for r in rows if r[2] != r[3]]
    assert not wrong, ("stored", wrong)


def api_unread(db: Any, conversation_id: str, user_id: str) -> int:
    """The unread count get_user_conversations answers the user for the conversation."""
    with db.admin.transaction():
        db.q("select set_config('request.jwt.claims', %s, true)",
             (json.dumps({"sub": user_id, "role": "authenticated"}),))
        return int(db.val("select unread_count from public.get_user_conversations() "
                          "where id = %s", (conversation_id,)))


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def open_transaction_as(url: str, user_id: str) -> psycopg.Connection:
    """A connection inside an open transaction acting as `user_id` (PostgREST's role and claims,
    set locally): what it writes stays uncommitted, and its locks held, until it commits."""
    conn = psycopg.connect(url)
    conn.execute("set local role authenticated")
    conn.execute("select set_config('request.jwt.claims', %s, true)",
                 (json.dumps({"role": "authenticated", "sub": user_id}),))
    return conn
