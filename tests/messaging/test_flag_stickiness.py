"""Sticky percentage rollout over 10,000 users, as each user sees it through PostgREST.

The flag is raised 0 → 10 → 25 → 50 → 100 with rollout's own `set_flag`; at each step every
user asks `public.is_feature_enabled` the way PostgREST runs an RPC (its own transaction,
`set local role authenticated`, `request.jwt.claims` with the user's `sub`). The answers must
equal the Python `bucket()` for every id, nobody may ever drop out while raising, and the
share of users in must track the percentage.
"""

from __future__ import annotations

import json
import random
import uuid

import psycopg
import pytest

from rollout.adapters.flags import bucket, get_flag, set_flag
from rollout.errors import UsageError
from tests.messaging.conftest import Db

FLAG = "messaging_v2_enabled"
USERS = 10_000
STEPS = (10, 25, 50, 100)


def user_ids() -> list[str]:
    rng = random.Random(20261125)  # fixed: the same 10,000 ids every run
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(USERS)]


def enabled_as_each_user(url: str, ids: list[str]) -> dict[str, bool]:
    """`is_feature_enabled` as each user: role `authenticated`, the user's JWT claims set
    locally, then the RPC — pipelined in one transaction per batch (a transaction per user
    costs a round trip each: 10,000 of them would take a minute)."""
    answers: dict[str, bool] = {}
    with psycopg.connect(url) as conn:
        for start in range(0, len(ids), 2500):
            batch = ids[start:start + 2500]
            with conn.transaction(), conn.pipeline():
                conn.execute("set local role authenticated")
                cursors = []
                for user_id in batch:
                    # The claims are set (locally) before the call reads them: the FROM
                    # item runs first; the returned auth.uid() proves it for every row.
                    cursors.append((user_id, conn.execute(
                        "select public.is_feature_enabled(%s), auth.uid()::text, current_user "
                        "from (select set_config('request.jwt.claims', %s, true)) as claims",
                        (FLAG, json.dumps({"sub": user_id, "role": "authenticated"})))))
                for user_id, cur in cursors:
                    row = cur.fetchone()
                    # The call really ran as that user, with the API role.
                    assert row is not None and row[1:] == (user_id, "authenticated")
                    answers[user_id] = bool(row[0])
    return answers


def test_raising_never_removes_anyone_and_sql_equals_python(v2db: Db) -> None:
    ids = user_ids()
    salt = get_flag(v2db.url, FLAG).salt
    buckets = {u: bucket(salt, u) for u in ids}
    assert not any(enabled_as_each_user(v2db.url, ids[:200]).values())  # seeded at 0 %
    previous: set[str] = set()
    for pct in STEPS:
        change = set_flag(v2db.url, FLAG, pct, actor="pytest", reason=f"ramp {pct}",
                          allow_decrease=False)
        assert change.after == pct
        answers = enabled_as_each_user(v2db.url, ids)
        now_in = {u for u, on in answers.items() if on}
        assert now_in == {u for u in ids if buckets[u] < pct}  # SQL == Python, every id
        assert previous <= now_in, f"raising to {pct}% took {len(previous - now_in)} users out"
        share = 100 * len(now_in) / USERS
        assert abs(share - pct) <= 2, f"{share:.2f}% of users in at {pct}%"
        previous = now_in
    assert previous == set(ids)
    assert [r[0] for r in v2db.q(
        "select to_percentage from public.feature_flag_audit where flag_name = %s "
        "and changed_by = 'pytest' order by id", (FLAG,))] == list(STEPS)


def test_lowering_needs_allow_decrease_and_changes_nothing(v2db: Db) -> None:
    set_flag(v2db.url, FLAG, 50, actor="pytest", reason="up", allow_decrease=False)
    audit_rows = v2db.val("select count(*) from public.feature_flag_audit")
    with pytest.raises(UsageError, match="takes users out") as refused:
        set_flag(v2db.url, FLAG, 25, actor="pytest", reason="down", allow_decrease=False)
    assert "--allow-decrease" in (refused.value.hint or "")
    assert get_flag(v2db.url, FLAG).percentage == 50
    assert v2db.val("select count(*) from public.feature_flag_audit") == audit_rows
