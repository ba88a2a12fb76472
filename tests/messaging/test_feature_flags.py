"""Feature flags: bucketing reproducible in Python, sticky rollout, audit trail."""

from __future__ import annotations

import hashlib
import uuid

from tests.messaging.conftest import ALICE, Db
from tests.messaging.helpers import refused


def python_bucket(salt: str, user_id: str) -> int:
    return int(hashlib.md5(f"{salt}:{user_id}".encode()).hexdigest()[:8], 16) % 100


def test_sql_bucket_equals_python_over_1000_random_uuids(v2db: Db) -> None:
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    rows = v2db.q(
        "select u::text, public.feature_bucket('messaging_v2_enabled', u) "
        "from unnest(%s::uuid[]) u", (ids,))
    assert {u: b for u, b in rows} == {u: python_bucket("messaging_v2_enabled", u) for u in ids}
    # Buckets with the high bit set (>= 2^31) are where a signed cast would go wrong.
    assert any(int(hashlib.md5(f"messaging_v2_enabled:{u}".encode()).hexdigest()[0], 16) >= 8
               for u in ids)


def test_rollout_is_sticky_and_matches_the_bucket(v2db: Db) -> None:
    users = [v2db.make_user("attendee") for _ in range(40)]
    enabled: dict[int, set[str]] = {}
    for pct in (0, 25, 50, 100):
        v2db.q("update public.feature_flags set rollout_percentage = %s "
               "where name = 'messaging_v2_enabled'", (pct,))
        enabled[pct] = {u for u in users if v2db.as_user(u).rpc1(
            "is_feature_enabled", p_flag="messaging_v2_enabled")}
        assert enabled[pct] == {u for u in users
                                if python_bucket("messaging_v2_enabled", u) < pct}
    assert enabled[0] == set() and enabled[100] == set(users)
    assert enabled[25] <= enabled[50] <= enabled[100]
    assert v2db.as_user(ALICE).rpc1("is_feature_enabled", p_flag="no_such_flag") is False


def test_audit_trail_takes_actor_and_reason_from_settings(v2db: Db) -> None:
    with v2db.admin.transaction():
        v2db.q("select set_config('rollout.actor', 'pm@example.com', true), "
               "set_config('rollout.reason', 'ramp to 25', true)")
        v2db.q("update public.feature_flags set rollout_percentage = 25 "
               "where name = 'messaging_v2_enabled'")
    v2db.q("insert into public.feature_flags (name, rollout_percentage) values ('other_flag', 5)")
    rows = v2db.q("select flag_name, changed_by, from_percentage, to_percentage, reason "
                  "from public.feature_flag_audit order by id")
    assert rows == [
        ("messaging_v2_enabled", "postgres", None, 0, None),
        ("messaging_v2_enabled", "pm@example.com", 0, 25, "ramp to 25"),
        ("other_flag", "postgres", None, 5, None),
    ]
    assert v2db.q("select salt, updated_by from public.feature_flags where name = 'other_flag'"
                  ) == [("other_flag", "postgres")]
    assert v2db.val("select updated_by from public.feature_flags "
                    "where name = 'messaging_v2_enabled'") == "pm@example.com"


def test_percentage_is_bounded(v2db: Db) -> None:
    refused(lambda: v2db.q("update public.feature_flags set rollout_percentage = 101"), "23514")


def test_audit_falls_back_to_the_role_that_made_the_change(v2db: Db) -> None:
    with v2db.admin.transaction():
        v2db.q("set local role service_role")
        v2db.q("update public.feature_flags set rollout_percentage = 10 "
               "where name = 'messaging_v2_enabled'")
    assert v2db.q("select changed_by, to_percentage, reason from public.feature_flag_audit "
                  "order by id desc limit 1") == [("service_role", 10, None)]
