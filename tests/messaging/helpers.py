"""Small helpers shared by the messaging tests."""

from __future__ import annotations

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


def stored_unread(db: Any, conversation_id: str, user_id: str) -> int:
    return int(
        db.val(
            "select unread_count from public.conversation_participants "
            "where conversation_id = %s and user_id = %s",
            (conversation_id, user_id),
        )
    )


def assert_unread_exact(db: Any) -> None:
    """Every participant row's unread_count equals the definition."""
    rows = db.q(
        "select cp.conversation_id, cp.user_id, cp.unread_count, "
        "(select count(*) from public.messages m where m.conversation_id = cp.conversation_id "
        " and m.sender_id is distinct from cp.user_id"
        " and not (cp.user_id = any(m.read_by_user_ids))) "
        "from public.conversation_participants cp"
    )
    wrong = [r for r in rows if r[2] != r[3]]
    assert not wrong, wrong
