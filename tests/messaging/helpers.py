"""Small helpers shared by the messaging tests."""

from __future__ import annotations

from collections.abc import Callable, Collection
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


def assert_unread_exact(db: Any, single_reads: Collection[tuple[str, str]] = ()) -> None:
    """Every participant's unread count equals the definition: under v2 the derived count (what
    the API answers) at once, and production's unread_count column once the legacy sync has
    run; before v2, the column. `single_reads`: (conversation, user) pairs where the user added
    themselves to read_by_user_ids of single messages without reading the conversation (today's
    builds never do): production's column, like production's trigger, still counts those until
    the next reset, so there it may only be higher."""
    if v2_applied(db):
        derived = db.q(
            f"select cp.conversation_id, cp.user_id, u.unread_count, {_DEFINITION} "
            "from public.conversation_participants cp join public.participant_unread u "
            "using (conversation_id, user_id)"
        )
        wrong = [r for r in derived if r[2] != r[3]]
        assert not wrong, ("derived", wrong)
        sync_legacy_columns(db)
    rows = db.q(
        f"select cp.conversation_id::text, cp.user_id::text, cp.unread_count, {_DEFINITION} "
        "from public.conversation_participants cp"
    )
    allowed = set(single_reads)
    wrong = [r for r in rows if r[2] != r[3] and not ((r[0], r[1]) in allowed and r[2] > r[3])]
    assert not wrong, ("stored", wrong)
