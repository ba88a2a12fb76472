"""Hostile callers against the running stack: every RPC of the SQL API and both edge functions,
with forged, expired, escalated and orphaned tokens, and with malformed or malicious bodies.

Each is refused with the right status and PostgREST's error shape (`code, details, hint,
message`) on /rest/v1, `{"error": …}` on the functions, and nothing is written: a fingerprint
of every application table (public, auth) is the same before and after each batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.messaging.conftest import ALICE, ALICE_MAX_CONV, MAX, OLGA, SPRING_SHOW
from tests.reliability.conftest import Live, data_snapshot, new_id

WRONG_SECRET = "not-the-local-secret-but-long-enough-to-look-real-0123456789"
NO_ROWS_AFTER = ("public.messages", "public.reported_messages", "public.broadcast_quotas",
                 "public.conversations", "public.conversation_participants")

# A valid value for every argument name of the SQL API, so that only the token (or the one
# field under test) is wrong. A new function with a new argument name fails loudly here.
ARGS: dict[str, Any] = {
    "p_user_id": ALICE, "p_sender_id": ALICE, "p_recipient_id": MAX,
    "p_conversation_id": ALICE_MAX_CONV, "p_message_text": "hello", "p_show_id": SPRING_SHOW,
    "p_recipient_roles": ["attendee"], "p_is_pre_show": True, "p_reason": "spam",
    "p_flag": "messaging_v2_enabled", "p_salt": "salt", "p_text": "hello", "p_limit": 10,
    "p_before": None, "p_message_id": None,  # p_message_id: filled in with a real message
    "p_message": {}, "p_conversation_ids": [ALICE_MAX_CONV],
}


@pytest.fixture(scope="module")
def rpcs(live: Live) -> dict[str, dict[str, Any]]:
    """Every callable function of the public SQL API (not triggers) with valid arguments."""
    message = str(live.one("select id from public.messages where conversation_id = %s "
                           "order by created_at limit 1", (ALICE_MAX_CONV,)))
    rows = live.sql(
        "select p.proname, coalesce(p.proargnames, '{}'), p.pronargs, p.pronargdefaults "
        "from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'public' and p.prorettype <> 'trigger'::regtype order by 1")
    found: dict[str, dict[str, Any]] = {}
    for name, argnames, nargs, ndefaults in rows:
        required = argnames[: nargs - ndefaults]
        unknown = [a for a in required if a not in ARGS]
        assert not unknown, f"{name}: no test value for {unknown}"
        found[name] = {a: (message if a == "p_message_id" else ARGS[a]) for a in required}
    assert {"send_message", "send_broadcast", "report_message", "moderate_delete_message",
            "mark_conversation_read", "reset_broadcast_quotas"} <= set(found)
    return found


@pytest.fixture(scope="module")
def deleted_user(live: Live) -> str:
    """A user who existed (signed tokens for them are still around) and was then deleted."""
    user = new_id()
    live.sql("insert into auth.users (id, email) values (%s, %s)", (user, f"{user}@gone.local"))
    live.sql("insert into public.profiles (id, email, account_type, subscription_status) "
             "values (%s, %s, 'organizer', 'active')", (user, f"{user}@gone.local"))
    live.sql("delete from public.profiles where id = %s", (user,))
    live.sql("delete from auth.users where id = %s", (user,))
    return user


@pytest.fixture
def unchanged(live: Live) -> Iterator[None]:
    """Every application table is byte-for-byte the same after the test."""
    with psycopg.connect(live.cli.stack.db_url, autocommit=True) as conn:
        # The legacy sync job (every 5 s) first takes up earlier tests' messages: its next runs
        # then have nothing to write unless this test's refused call wrote a message.
        conn.execute("select public.sync_legacy_message_columns()")
        before = data_snapshot(conn)
    yield
    with psycopg.connect(live.cli.stack.db_url, autocommit=True) as conn:
        after = data_snapshot(conn)
    changed = [t for t in before if before[t] != after.get(t)]
    assert changed == [], f"written despite refusal: {changed}"


def tokens(live: Live, deleted: str) -> dict[str, tuple[dict[str, str], tuple[int, ...]]]:
    """Bad credentials → (headers, the statuses a refusal may have)."""
    now = int(time.time())
    unsigned = live.token(OLGA, alg="none")
    return {
        "no token, no apikey": ({}, (401,)),
        "garbage bearer": ({"Authorization": "Bearer not.a.jwt"}, (401,)),
        "basic auth": ({"Authorization": "Basic dXNlcjpwYXNz"}, (401,)),
        "alg none": (live.headers(unsigned, apikey=unsigned), (401,)),
        "wrong secret": (live.headers(live.token(OLGA, secret=WRONG_SECRET)), (401,)),
        "expired": (live.headers(live.token(OLGA, exp=now - 60, iat=now - 3600)), (401,)),
        "not yet valid": (live.headers(live.token(OLGA, nbf=now + 3600)), (401,)),
        "service_role, wrong key": (live.headers(live.token(None, "service_role",
                                                            secret=WRONG_SECRET)), (401,)),
        "postgres, right key": (live.headers(live.token(OLGA, "postgres")), (401, 403)),
        "supabase_admin, right key": (live.headers(live.token(OLGA, "supabase_admin")),
                                      (401, 403)),
        "anon key": (live.headers(live.anon_key, apikey=live.anon_key), (401,)),
        "deleted user": (live.headers(live.token(deleted)), (403, 404)),
    }


BAD_TOKENS = ("no token, no apikey", "garbage bearer", "basic auth", "alg none", "wrong secret",
              "expired", "not yet valid", "service_role, wrong key", "postgres, right key",
              "supabase_admin, right key", "anon key", "deleted user")
# What a deleted user may still get from a read-only function: nothing of anyone's.
EMPTY_READS = {"can_user_reply": False, "get_user_conversations": [],
               "get_total_unread_count": 0, "get_conversation_messages": [],
               "current_profile_role": None, "is_admin": False, "is_mvp_dealer": False,
               "is_show_organizer": False, "is_conversation_participant": False}
# Answers that hold no one's data: the DM matrix for two given roles (a UI helper), a flag's
# bucket arithmetic (at 100 % every id is in), text normalisation and its white space.
PURE = {"feature_bucket", "normalize_message_text", "message_white_space", "can_user_send_dm",
        "is_feature_enabled"}
# Production's own policy helpers, granted to anon by production (its policies call them for
# every role): they answer `false` for a caller without an identity and hold no one's data.
ANON_FALSE = {"is_admin", "is_mvp_dealer", "is_show_organizer"}


def pgrst_shaped(response: httpx.Response) -> bool:
    body = response.json()
    return isinstance(body, dict) and set(body) == {"code", "details", "hint", "message"}


@pytest.mark.parametrize("credential", BAD_TOKENS)
def test_every_rpc_refuses_bad_credentials(live: Live, rpcs: dict[str, dict[str, Any]],
                                           deleted_user: str, unchanged: None,
                                           credential: str) -> None:
    headers, allowed = tokens(live, deleted_user)[credential]
    wrong = []
    with httpx.Client(timeout=30) as client:
        for fn, args in rpcs.items():
            response = client.post(f"{live.api}/rest/v1/rpc/{fn}", headers=headers, json=args)
            if credential == "deleted user" and response.status_code == 200 and (
                    fn in PURE or response.json() == EMPTY_READS.get(fn, "(a write)")):
                continue
            if credential == "anon key" and fn in ANON_FALSE and response.status_code == 200 \
                    and response.json() is False:
                continue
            if response.status_code not in allowed or not pgrst_shaped(response):
                wrong.append(f"{fn}: {response.status_code} {response.text[:120]}")
    assert wrong == [], f"{credential}: {wrong}"


@pytest.mark.parametrize("function", ["send-broadcast", "reset-broadcast-quotas"])
@pytest.mark.parametrize("credential", BAD_TOKENS)
def test_edge_functions_refuse_bad_credentials(live: Live, deleted_user: str, unchanged: None,
                                               credential: str, function: str) -> None:
    headers, allowed = tokens(live, deleted_user)[credential]
    body = {"show_id": SPRING_SHOW, "recipient_roles": ["attendee"], "message": "hi"}
    response = httpx.post(f"{live.api}/functions/v1/{function}", headers=headers, json=body,
                          timeout=30)
    expected = set(allowed) | {403}  # a valid token of the wrong role is a 403 here
    if credential == "deleted user":
        expected = {403}
    assert response.status_code in expected, response.text
    assert set(response.json()) >= {"error"}


def test_reset_quotas_refuses_a_signed_in_user(live: Live, unchanged: None) -> None:
    response = httpx.post(f"{live.api}/functions/v1/reset-broadcast-quotas",
                          headers=live.headers(live.token(OLGA)), json={}, timeout=30)
    assert response.status_code == 403
    rpc = httpx.post(f"{live.api}/rest/v1/rpc/reset_broadcast_quotas",
                     headers=live.headers(live.token(OLGA)), json={}, timeout=30)
    assert rpc.status_code in (401, 403) and pgrst_shaped(rpc)


SQLI = "'; drop table public.messages; --"
HTML = "<script>alert(document.cookie)</script>"

# (path, raw body, content type, expected status, expected PostgREST code or None)
RPC_BODIES: list[tuple[str, bytes, str, int, str | None]] = [
    ("send_message", b"{not json", "application/json", 400, "PGRST102"),
    ("send_message", b"[1, 2, 3]", "application/json", 400, "PGRST102"),
    ("send_message", b"\"a string\"", "application/json", 400, "PGRST102"),
    ("send_message", b"null", "application/json", 400, "PGRST102"),
    ("send_message", b"\xff\xfe\x00garbage", "application/json", 400, None),
    ("send_message", b'{"p_conversation_id": 12, "p_message_text": "x"}', "application/json",
     400, None),
    ("send_message", b'{"p_conversation_id": "not-a-uuid", "p_message_text": "x"}',
     "application/json", 400, "22P02"),
    ("send_message", f'{{"p_conversation_id": "{SQLI}", "p_message_text": "x"}}'.encode(),
     "application/json", 400, "22P02"),
    ("send_broadcast", f'{{"p_show_id": "{SPRING_SHOW}", "p_message_text": "x", '
     f'"p_recipient_roles": ["attendee"], "p_is_pre_show": "maybe"}}'.encode(),
     "application/json", 400, "22P02"),
    ("send_message", f'{{"p_conversation_id": "{ALICE_MAX_CONV}"}}'.encode(),
     "application/json", 404, "PGRST202"),
    ("send_message", f'{{"p_conversation_id": "{ALICE_MAX_CONV}", "p_message_text": "x", '
     f'"p_sender_id": "{MAX}"}}'.encode(), "application/json", 404, "PGRST202"),
    ("send_message", f'{{"p_conversation_id": "{ALICE_MAX_CONV}", "p_message_text": "x", '
     f'"p_x\\"; drop table public.messages; --": 1}}'.encode(), "application/json", 404,
     "PGRST202"),
    ("send_message", f'{{"p_conversation_id": "{ALICE_MAX_CONV}", "p_message_text": "   "}}'
     .encode(), "application/json", 400, "PT400"),
    ("send_message", f'{{"p_conversation_id": "{ALICE_MAX_CONV}", "p_message_text": "{"x" * 1001}"'
     f'}}'.encode(), "application/json", 400, "PT400"),
    ("send_message", b'{"p_conversation_id": "' + ALICE_MAX_CONV.encode()
     + b'", "p_message_text": "' + b"x" * (1024 * 1024 + 10) + b'"}', "application/json",
     413, "PGRST413"),
    ("send_broadcast", f'{{"p_show_id": "{SPRING_SHOW}", "p_message_text": "x", '
     f'"p_recipient_roles": "attendee"}}'.encode(), "application/json", 400, None),
    ("send_broadcast", f'{{"p_show_id": "{SPRING_SHOW}", "p_message_text": "x", '
     f'"p_recipient_roles": ["{SQLI}"]}}'.encode(), "application/json", 400, "PT400"),
    ("send_broadcast", f'{{"p_show_id": "{SPRING_SHOW}", "p_message_text": "x", '
     f'"p_recipient_roles": []}}'.encode(), "application/json", 400, "PT400"),
    ("get_conversation_messages", f'{{"p_conversation_id": "{ALICE_MAX_CONV}", "p_limit": 100000}}'
     .encode(), "application/json", 400, "PT400"),
    ("get_conversation_messages", f'{{"p_conversation_id": "{ALICE_MAX_CONV}", "p_limit": "1; '
     f'select 1"}}'.encode(), "application/json", 400, "22P02"),
    ("report_message", b'{"p_message_id": "00000000-0000-4000-8000-000000000000", '
     b'"p_reason": "spam"}', "application/json", 404, "PT404"),
    ("send_direct_message", f'{{"p_recipient_id": "{ALICE}", "p_message_text": "me"}}'.encode(),
     "application/json", 400, "PT400"),
    ("no_such_function", b"{}", "application/json", 404, "PGRST202"),
    ("pg_sleep", b'{"seconds": 5}', "application/json", 404, "PGRST202"),
]


@pytest.mark.parametrize(("fn", "body", "ctype", "status", "code"), RPC_BODIES,
                         ids=[f"{i}-{b[0]}" for i, b in enumerate(RPC_BODIES)])
def test_rpc_refuses_bad_bodies(live: Live, unchanged: None, fn: str, body: bytes, ctype: str,
                                status: int, code: str | None) -> None:
    # Alice (attendee) may reply in her conversation with Max; Olga organizes the shows.
    caller = OLGA if fn == "send_broadcast" else ALICE
    headers = {**live.headers(live.token(caller)), "content-type": ctype}
    response = httpx.post(f"{live.api}/rest/v1/rpc/{fn}", headers=headers, content=body,
                          timeout=30)
    assert response.status_code == status, response.text[:300]
    assert pgrst_shaped(response)
    if code:
        assert response.json()["code"] == code, response.text[:300]


@pytest.mark.parametrize("path", [
    "/rest/v1/rpc/send_message;drop table messages", "/rest/v1/rpc/send_message'--",
    "/rest/v1/rpc/pg_catalog.pg_sleep", "/rest/v1/rpc/../rpc/send_message%00",
    "/rest/v1/messages", "/functions/v1/%2e%2e/rest/v1/rpc/send_message",
    "/functions/v1/no-such-function",
])
def test_odd_paths_are_404(live: Live, unchanged: None, path: str) -> None:
    response = httpx.post(f"{live.api}{path}", headers=live.headers(live.token(ALICE)),
                          json={"p_conversation_id": ALICE_MAX_CONV, "p_message_text": "x"},
                          timeout=30)
    assert response.status_code == 404, response.text[:200]


def test_sql_metacharacters_and_html_in_text_are_data_not_code(live: Live) -> None:
    """A message made of SQL or HTML is accepted as text (it is a message), stored verbatim,
    and executes nothing: the messages table is still there and counts one more row."""
    before = live.one("select count(*) from public.messages")
    # The gateway quotes the body into its query as an E'' literal: backslashes and quotes in
    # every arrangement, and one at the very end.
    for text in (SQLI, HTML, "Robert'); drop table students;--", "$$; select 1; $$",
                 "\\'; drop table public.messages; -- it\\'s \\\\' \\x27 \\u0027", "ends in \\"):
        response = httpx.post(f"{live.api}/rest/v1/rpc/send_message",
                              headers=live.headers(live.token(ALICE)),
                              json={"p_conversation_id": ALICE_MAX_CONV, "p_message_text": text},
                              timeout=30)
        assert response.status_code == 200, response.text
        stored = live.one("select message_text from public.messages where id = %s",
                          (response.json(),))
        assert stored == text
    assert live.one("select count(*) from public.messages") == before + 6


# (body, expected status, field)
BROADCAST_BODIES: list[tuple[bytes, int, str | None]] = [
    (b"{not json", 400, "body"),
    (b"[]", 400, "body"),
    (b"", 400, "body"),
    (b'{"show_id": 1, "recipient_roles": ["attendee"], "message": "x"}', 400, "show_id"),
    (f'{{"show_id": "{SQLI}", "recipient_roles": ["attendee"], "message": "x"}}'.encode(), 400,
     "show_id"),
    (f'{{"show_id": "{SPRING_SHOW}", "recipient_roles": "attendee", "message": "x"}}'.encode(),
     400, "recipient_roles"),
    (f'{{"show_id": "{SPRING_SHOW}", "recipient_roles": ["root"], "message": "x"}}'.encode(),
     400, "recipient_roles"),
    (f'{{"show_id": "{SPRING_SHOW}", "recipient_roles": ["attendee"], "message": 5}}'.encode(),
     400, "message"),
    (f'{{"show_id": "{SPRING_SHOW}", "recipient_roles": ["attendee"], "message": "{HTML}"}}'
     .encode(), 400, "message"),
    (f'{{"show_id": "{SPRING_SHOW}", "recipient_roles": ["attendee"], "message": "{"y" * 1001}"}}'
     .encode(), 400, "message"),
    (f'{{"show_id": "{SPRING_SHOW}", "recipient_roles": ["attendee"], "message": "x", '
     f'"is_pre_show": "yes"}}'.encode(), 400, "is_pre_show"),
    (f'{{"show_id": "{SPRING_SHOW}", "recipient_roles": ["attendee"], "message": "x", '
     f'"sender_id": "{ALICE}"}}'.encode(), 403, None),
    (b'{"message": "' + b"z" * (70 * 1024) + b'"}', 413, "body"),
    (b'{"show_id": "00000000-0000-4000-8000-000000000000", "recipient_roles": ["attendee"], '
     b'"message": "x"}', 404, None),
]


@pytest.mark.parametrize(("body", "status", "field"), BROADCAST_BODIES,
                         ids=[str(i) for i in range(len(BROADCAST_BODIES))])
def test_send_broadcast_refuses_bad_bodies(live: Live, unchanged: None, body: bytes,
                                           status: int, field: str | None) -> None:
    headers = {**live.headers(live.token(OLGA)), "content-type": "application/json"}
    response = httpx.post(f"{live.api}/functions/v1/send-broadcast", headers=headers,
                          content=body, timeout=30)
    assert response.status_code == status, response.text[:300]
    doc = response.json()
    assert isinstance(doc.get("error"), str) and doc["error"]
    if field:
        assert doc.get("field") == field
    assert "select" not in doc["error"].lower()  # no SQL or internals in client errors


def test_rpc_errors_hide_nothing_worse_than_the_sqlstate(live: Live) -> None:
    """An RPC refusal carries the function's client message, never a stack or a DSN."""
    response = httpx.post(f"{live.api}/rest/v1/rpc/send_message",
                          headers=live.headers(live.token(MAX)),
                          json={"p_conversation_id": new_id(), "p_message_text": "x"},
                          timeout=30)
    assert response.status_code in (403, 404)
    assert "postgresql://" not in response.text and "127.0.0.1" not in response.text
