"""Concurrency on a running stack: quotas under a burst, unread counts under 100 parallel sends,
concurrent flag changes, and a rollback racing an apply.

(Two `apply` of the same plan at once is tests/engine/test_failures.py::
test_second_apply_is_refused_naming_the_holder; here the other side is a `rollback`.)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from rollout.adapters import flags
from tests.engine.conftest import Cli
from tests.messaging.conftest import ALICE, ALICE_MAX_CONV, ARTHUR, DANA, MAX, OLGA
from tests.reliability.conftest import PLAN, Live, hooked, maintenance_on

BROADCASTS = 50
SENDS = 100


_local = threading.local()


def client() -> httpx.Client:
    """One HTTP client per thread (a shared pool raced on sockets under 100 threads)."""
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=60)
    return _local.client


def burst(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run `call(i)` for i < n on n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        barrier.wait()
        return call(i)

    def close(_: int) -> None:
        if hasattr(_local, "client"):
            _local.client.close()
            del _local.client

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
        list(pool.map(lambda i: (barrier.wait(), close(i)), range(n)))
    return results


def new_show(live: Live, organizer: str = OLGA) -> str:
    """A fresh upcoming show of `organizer` (so a fresh quota) with the demo users registered."""
    show = str(live.one(
        "insert into public.shows (title, location, address, start_date, end_date, "
        "organizer_id) values ('Burst show', 'Burst City', '1 Burst St', "
        "now() + interval '10 days', now() + interval '11 days', %s) "
        "returning id", (organizer,)))
    for user in (ALICE, ARTHUR, DANA, MAX):
        live.sql("insert into public.show_participants (userid, showid, role) "
                 "select %s, %s, role from public.profiles where id = %s", (user, show, user))
    return show


def test_50_concurrent_broadcasts_against_a_quota_of_2(live: Live) -> None:
    show = new_show(live)
    token = live.token(OLGA)
    before = live.one("select count(*) from public.messages where is_broadcast")

    def send(i: int) -> httpx.Response:
        return client().post(f"{live.api}/functions/v1/send-broadcast",
                           headers=live.headers(token),
                           json={"show_id": show, "recipient_roles": ["attendee"],
                                 "message": f"burst {i}", "is_pre_show": True})

    responses = burst(BROADCASTS, send)
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 2, 429: BROADCASTS - 2}, statuses
    for response in responses:
        body = response.json()
        if response.status_code == 429:
            assert body["quota_remaining"] == 0 and body["error"]
        else:
            assert body["recipient_count"] == 2 and body["quota_remaining"] in (0, 1)
    assert sorted(r.json()["quota_remaining"] for r in responses if r.status_code == 200) == [0, 1]
    assert live.one("select pre_show_used from public.broadcast_quotas where organizer_id = %s "
                    "and show_id = %s", (OLGA, show)) == 2
    assert live.one("select count(*) from public.messages where is_broadcast") == before + 2
    assert live.one("select count(*) from public.conversations where show_id = %s "
                    "and type = 'show'", (show,)) == 2


def true_unread(live: Live, user: str, conversation: str) -> int:
    return int(live.one(
        "select count(*) from public.messages where conversation_id = %s and sender_id <> %s "
        "and not (%s = any(coalesce(read_by_user_ids, '{}')))", (conversation, user, user)))


def api_unread(live: Live, user: str, conversation: str) -> int:
    """The unread count the API answers (derived from the messages at once)."""
    inbox = httpx.post(f"{live.api}/rest/v1/rpc/get_user_conversations",
                       headers=live.headers(live.token(user)), json={}, timeout=30)
    assert inbox.status_code == 200, inbox.text
    return next(int(c["unread_count"]) for c in inbox.json() if c["id"] == conversation)


def unread(live: Live, user: str, conversation: str) -> int:
    """Production's unread_count, as today's builds read it once the legacy sync has run."""
    live.one("select public.sync_legacy_message_columns()")
    return int(live.one("select unread_count from public.conversation_participants "
                        "where conversation_id = %s and user_id = %s", (conversation, user)))


def test_100_concurrent_sends_into_one_conversation_keep_unread_counts_exact(
        live: Live) -> None:
    conv = ALICE_MAX_CONV
    before = {u: unread(live, u, conv) for u in (ALICE, MAX)}
    messages_before = live.one("select count(*) from public.messages where conversation_id = %s",
                               (conv,))
    tokens = {ALICE: live.token(ALICE), MAX: live.token(MAX)}

    def send(i: int) -> httpx.Response:
        sender = ALICE if i % 2 else MAX
        return client().post(f"{live.api}/rest/v1/rpc/send_message",
                           headers=live.headers(tokens[sender]),
                           json={"p_conversation_id": conv, "p_message_text": f"msg {i}"})

    responses = burst(SENDS, send)
    assert Counter(r.status_code for r in responses) == {200: SENDS}, \
        [r.text for r in responses if r.status_code != 200][:3]
    assert live.one("select count(*) from public.messages where conversation_id = %s",
                    (conv,)) == messages_before + SENDS
    for user in (ALICE, MAX):
        assert api_unread(live, user, conv) == true_unread(live, user, conv)
        assert unread(live, user, conv) == before[user] + SENDS // 2
        assert unread(live, user, conv) == true_unread(live, user, conv)


def test_concurrent_sends_and_mark_read_agree_with_the_truth(live: Live) -> None:
    """Max sends 60 messages while Alice marks the conversation read 20 times, concurrently:
    Alice's counter must equal the messages she has really not read."""
    conv = ALICE_MAX_CONV
    alice, max_ = live.token(ALICE), live.token(MAX)

    def act(i: int) -> httpx.Response:
        if i % 4 == 0:
            return client().post(f"{live.api}/rest/v1/rpc/mark_conversation_read",
                               headers=live.headers(alice), json={"p_conversation_id": conv})
        return client().post(f"{live.api}/rest/v1/rpc/send_message",
                           headers=live.headers(max_),
                           json={"p_conversation_id": conv, "p_message_text": f"m{i}"})

    responses = burst(80, act)
    assert {r.status_code for r in responses} <= {200, 204}, \
        [r.text for r in responses if r.status_code >= 300][:3]
    assert api_unread(live, ALICE, conv) == true_unread(live, ALICE, conv)
    assert unread(live, ALICE, conv) == true_unread(live, ALICE, conv)
    # Reading once more settles it at zero.
    done = httpx.post(f"{live.api}/rest/v1/rpc/mark_conversation_read",
                      headers=live.headers(alice), json={"p_conversation_id": conv}, timeout=30)
    assert done.status_code == 204
    assert api_unread(live, ALICE, conv) == 0
    assert unread(live, ALICE, conv) == 0 == true_unread(live, ALICE, conv)


def test_concurrent_flag_changes_are_all_audited(live: Live) -> None:
    url = live.cli.stack.db_url
    name = "messaging_v2_enabled"
    start_id = live.one("select coalesce(max(id), 0) from public.feature_flag_audit")
    values = [(i * 7) % 101 for i in range(1, 31)]

    def set_one(i: int) -> flags.FlagChange:
        return flags.set_flag(url, name, values[i], actor=f"pm-{i}", reason=f"burst {i}",
                              allow_decrease=True)

    changes = burst(len(values), set_one)
    final = live.one("select rollout_percentage from public.feature_flags where name = %s",
                     (name,))
    assert final in values
    audit = live.sql("select changed_by, from_percentage, to_percentage, reason "
                     "from public.feature_flag_audit where flag_name = %s and id > %s "
                     "order by id", (name, start_id))
    real = [c for c in changes if c.before != c.after]
    assert len(audit) == len(real)  # one audit row per change that happened, none lost
    # The audit is a chain: each row starts where the previous one ended, and ends at `final`.
    for previous, row in itertools.pairwise(audit):
        assert row[1] == previous[2]
    assert audit[-1][2] == final
    assert sorted((r[1], r[2]) for r in audit) == sorted((c.before, c.after) for c in real)
    assert all(r[0].startswith("pm-") and r[3].startswith("burst ") for r in audit)


def test_rollback_while_an_apply_runs_is_refused_naming_the_holder(cli: Cli) -> None:
    run = hooked(cli, "started:migrate", "apply", PLAN)
    run.reached()
    refused = cli.run("rollback", PLAN)
    assert refused.returncode == 5, refused.stdout + refused.stderr  # refused: locked
    assert "locked by run" in refused.stderr and "pytest@" in refused.stderr
    assert cli.one("select count(*) from rollout.runs where command = 'rollback'") == 0
    run.go()
    code, out, err = run.finish()
    assert code == 0, out + err
    assert not maintenance_on(cli)
    back = cli.run("rollback", PLAN)  # and once the apply is done, the rollback runs
    assert back.returncode == 0, back.stderr



def test_the_scheduled_legacy_sync_keeps_production_columns_for_todays_builds(
        live: Live) -> None:
    """v2's send writes only the message; the plan's cron job (every 5 s, run by the local
    gateway as pg_cron runs it on Supabase) brings the columns today's builds read up to date."""
    conv = ALICE_MAX_CONV
    text = f"for today's builds {time.time()}"
    sent = httpx.post(f"{live.api}/rest/v1/rpc/send_message",
                      headers=live.headers(live.token(MAX)), timeout=30,
                      json={"p_conversation_id": conv, "p_message_text": text})
    assert sent.status_code == 200, sent.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if live.one("select last_message_text from public.conversations where id = %s",
                    (conv,)) == text:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the legacy sync job did not bring last_message_text up to date")
    stored = live.one("select unread_count from public.conversation_participants "
                      "where conversation_id = %s and user_id = %s", (conv, ALICE))
    assert stored == true_unread(live, ALICE, conv)
    runs = live.cli.stack.cron_runs("messaging-legacy-sync")
    assert runs and runs[-1]["status"] == "succeeded", runs[-3:]
