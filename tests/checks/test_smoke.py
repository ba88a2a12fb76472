"""The §4.2 smoke flows against a real local stack, healthy and deliberately broken."""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import jwt
import psycopg
import pytest

from rollout.checks import smoke
from rollout.checks.smoke import FlowResult, SmokeReport
from rollout.errors import TargetError
from tests.checks.conftest import Target, counts, fingerprint

FLOW_DM_OK, FLOW_DM_REFUSED, FLOW_QUOTA, FLOW_MVP, FLOW_MODERATION, FLOW_LEGACY = (
    name for name, _ in smoke.FLOWS)


def by_name(report: SmokeReport) -> dict[str, FlowResult]:
    return {flow.name: flow for flow in report.flows}


def assert_no_secrets(target: Target, *texts: str) -> None:
    for text in texts:
        for secret in target.secrets:
            assert secret not in text


def run(target: Target, **kwargs: object) -> SmokeReport:
    return smoke.run_flows(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                           **kwargs)  # type: ignore[arg-type]


def sql(target: Target, statement: str) -> None:
    with psycopg.connect(target.db_url, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]  # fixed test statements


def test_every_flow_passes_and_cleans_up(target: Target) -> None:
    before = fingerprint(target.db_url)
    seen: list[tuple[str, float]] = []
    report = run(target, progress=lambda message, fraction: seen.append((message, fraction)))

    assert report.passed, report.to_json()
    assert [f.name for f in report.flows] == [name for name, _ in smoke.FLOWS]
    assert all(f.seconds >= 0 and f.detail for f in report.flows)
    assert "120 historical messages" in by_name(report)[FLOW_LEGACY].detail
    assert "#3 refused (HTTP 429" in by_name(report)[FLOW_QUOTA].detail
    assert "PT403" in by_name(report)[FLOW_DM_REFUSED].detail
    assert seen[0][1] == 0.0 and seen[-1][1] == 1.0
    assert all(0.0 <= fraction <= 1.0 for _, fraction in seen)
    assert_no_secrets(target, report.to_json(), report.to_junit_xml(), *(m for m, _ in seen))
    # Everything the flows wrote (DMs, broadcasts, quota rows, moderated texts) is gone.
    assert fingerprint(target.db_url) == before


def test_rerun_on_the_same_day_keeps_passing_and_keep_leaves_data(target: Target) -> None:
    """The quota is per UTC day: a second run the same day must still get its two broadcasts."""
    before = fingerprint(target.db_url)
    first = run(target, keep=True)
    second = run(target, keep=True)
    assert first.passed, first.to_json()
    assert second.passed, second.to_json()
    cast = smoke.demo_cast()
    with psycopg.connect(target.db_url) as conn:
        row = conn.execute("select count(*) from public.messages where sender_id = any(%s)",
                           (cast.user_ids,)).fetchone()
    assert row is not None and row[0] > smoke.DEMO_LEGACY_MESSAGES  # kept: legacy + the flows'
    smoke.remove_demo(target.db_url)
    assert fingerprint(target.db_url) == before


def test_seed_and_remove_are_idempotent_and_exact(target: Target) -> None:
    before = fingerprint(target.db_url)
    cast = smoke.seed_demo(target.db_url)
    seeded = counts(target.db_url)
    assert smoke.seed_demo(target.db_url) == cast
    assert counts(target.db_url) == seeded
    n = {table: seeded[table] - before[table][0] for table in seeded}
    assert n["auth.users"] == 6 and n["public.profiles"] == 6
    assert n["public.shows"] == 1 and n["public.show_participants"] == 4
    assert n["public.conversations"] == 1 and n["public.conversation_participants"] == 2
    assert n["public.messages"] == smoke.DEMO_LEGACY_MESSAGES
    with psycopg.connect(target.db_url) as conn:
        emails = conn.execute("select email from auth.users where id = any(%s) order by email",
                              (cast.user_ids,)).fetchall()
    assert [e for (e,) in emails] == sorted(smoke.demo_email(k) for k in smoke.DEMO_USERS)
    assert all(uid.startswith("5a0c0000-") for uid in cast.user_ids)

    removed = smoke.remove_demo(target.db_url)
    assert removed["auth.users"] == 6 and removed["messages"] == smoke.DEMO_LEGACY_MESSAGES
    assert fingerprint(target.db_url) == before  # the demo_seed.sql rows are untouched
    assert smoke.remove_demo(target.db_url)["auth.users"] == 0
    assert fingerprint(target.db_url) == before


def test_removal_takes_the_conversations_first_as_the_legacy_sync_does(target: Target) -> None:
    """A sync run that holds the demo chat's row and then updates its participants (the sync's
    lock order) finishes, and so does the removal: no deadlock, one waits for the other."""
    cast = smoke.seed_demo(target.db_url)
    conversation = cast.legacy_conversation_id
    removal: dict[str, object] = {}
    with psycopg.connect(target.db_url) as sync:
        sync.execute("select id from public.conversations where id = %s for no key update",
                     (conversation,))
        remover = threading.Thread(target=lambda: removal.update(
            result=_try(lambda: smoke.remove_demo(target.db_url))))
        remover.start()
        time.sleep(0.5)  # the removal is under way, waiting for the chat's row
        sync.execute("update public.conversation_participants set unread_count = unread_count "
                     "where conversation_id = %s", (conversation,))
        sync.commit()
    remover.join(timeout=30)
    result = removal["result"]
    assert isinstance(result, dict), result  # not "deadlock detected"
    assert result["conversations"] == 1 and result["auth.users"] == 6


def _try(action: Callable[[], object]) -> object:
    try:
        return action()
    except TargetError as error:
        return error


@contextmanager
def broken(target: Target, breaking: str, repairing: str, *, wait_for_rpc: bool = False
           ) -> Iterator[None]:
    sql(target, breaking)
    try:
        yield
    finally:
        sql(target, repairing)
        if wait_for_rpc:  # the gateway caches function signatures for 2 s
            wait_until_rpc_answers(target)


def wait_until_rpc_answers(target: Target) -> None:
    token = smoke.mint_token(target.jwt_secret, smoke.demo_cast().attendee1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = httpx.post(f"{target.api_url}/rest/v1/rpc/send_direct_message",
                              headers={"apikey": target.anon_key,
                                       "Authorization": f"Bearer {token}"},
                              json={"p_recipient_id": None, "p_message_text": "x"})
        if response.status_code != 404:
            return
        time.sleep(0.2)
    raise AssertionError("the gateway still does not see send_direct_message")


def test_revoked_execute_fails_the_dm_flows_with_the_reason(target: Target) -> None:
    fn = "public.send_direct_message(uuid, text, uuid)"
    with broken(target, f"revoke execute on function {fn} from authenticated",
                f"grant execute on function {fn} to authenticated"):
        report = run(target)
    flows = by_name(report)
    assert not report.passed
    assert not flows[FLOW_DM_OK].passed
    assert "HTTP 403 42501" in flows[FLOW_DM_OK].detail
    assert "permission denied" in flows[FLOW_DM_OK].detail
    # A 403 from a revoked grant is not the role matrix refusing: this flow fails too.
    assert not flows[FLOW_DM_REFUSED].passed
    assert "refused for another reason" in flows[FLOW_DM_REFUSED].detail
    assert not flows[FLOW_MODERATION].passed
    assert flows[FLOW_QUOTA].passed and flows[FLOW_MVP].passed and flows[FLOW_LEGACY].passed
    assert_no_secrets(target, report.to_json(), report.to_junit_xml())


def test_missing_function_fails_with_not_found(target: Target) -> None:
    with broken(target,
                "alter function public.send_direct_message(uuid, text, uuid) "
                "rename to send_direct_message_broken",
                "alter function public.send_direct_message_broken(uuid, text, uuid) "
                "rename to send_direct_message", wait_for_rpc=True):
        report = run(target)
    detail = by_name(report)[FLOW_DM_OK].detail
    assert not by_name(report)[FLOW_DM_OK].passed
    # PGRST202 from the gateway's catalog lookup, or 42883 from PostgreSQL while the gateway
    # still has the old signature cached: both are PostgREST's 404 for a missing function.
    assert ("HTTP 404 PGRST202" in detail or "HTTP 404 42883" in detail), detail
    assert "send_direct_message" in detail
    assert by_name(report)[FLOW_LEGACY].passed


def test_undeployed_edge_function_fails_the_broadcast_flows(target: Target) -> None:
    target.stack.remove_function("send-broadcast")
    try:
        report = run(target)
    finally:
        target.stack.deploy_function("send-broadcast")
    flows = by_name(report)
    assert not flows[FLOW_QUOTA].passed and not flows[FLOW_MVP].passed
    assert "HTTP 404" in flows[FLOW_QUOTA].detail
    assert flows[FLOW_DM_OK].passed and flows[FLOW_LEGACY].passed


def test_junit_xml_parses_and_counts_flows() -> None:
    report = SmokeReport(target="http://example.invalid", started_at="2025-01-01T00:00:00+00:00",
                         flows=[FlowResult("a flow", True, 0.5, "fine"),
                                FlowResult("b flow", False, 0.25, "HTTP 500: boom\nmore")])
    root = ET.fromstring(report.to_junit_xml())
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["a flow", "b flow"]
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "HTTP 500: boom"
    assert failure.text == "HTTP 500: boom\nmore"
    assert cases[0].find("failure") is None
    assert not report.passed
    assert not SmokeReport("x", "y").passed  # no flow ran: not a pass


def test_mint_token_is_a_supabase_user_token() -> None:
    token = smoke.mint_token("s" * 40, "5a0c0000-0000-4000-8000-000000000101", ttl=60)
    claims = jwt.decode(token, "s" * 40, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == "5a0c0000-0000-4000-8000-000000000101"
    assert claims["role"] == "authenticated"
    assert 0 < claims["exp"] - time.time() <= 60


def test_auth_users_insert_adapts_to_the_hosted_shape(target: Target) -> None:
    """Hosted auth.users has aud/role and more NOT NULL-with-default columns: only known ones
    are written; a required column we cannot fill is a clear error."""
    name = "smoke_hosted_shape"
    with psycopg.connect(target.db_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name}")
        conn.execute(f"create database {name}")
    url = target.stack.postgres.url(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("""
                create schema auth;
                create table auth.users (
                  instance_id uuid, id uuid primary key, aud varchar(255), role varchar(255),
                  email varchar(255), raw_app_meta_data jsonb, raw_user_meta_data jsonb,
                  is_sso_user boolean not null default false,
                  created_at timestamptz default now())""")
            smoke.insert_auth_users(conn, [("5a0c0000-0000-4000-8000-000000000101",
                                            "smoke+x@rollout.invalid", "X")])
            smoke.insert_auth_users(conn, [("5a0c0000-0000-4000-8000-000000000101",
                                            "smoke+x@rollout.invalid", "X")])
            row = conn.execute("select aud, role, email, raw_user_meta_data->>'name'"
                               " from auth.users").fetchall()
            assert row == [("authenticated", "authenticated", "smoke+x@rollout.invalid", "X")]
            conn.execute("truncate auth.users")
            conn.execute("alter table auth.users add column phone_secret text not null")
            with pytest.raises(TargetError, match="phone_secret"):
                smoke.insert_auth_users(conn, [("5a0c0000-0000-4000-8000-000000000102",
                                                "smoke+y@rollout.invalid", "Y")])
    finally:
        with psycopg.connect(target.db_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


def test_unreachable_database_is_a_target_error() -> None:
    with pytest.raises(TargetError, match="cannot connect") as info:
        smoke.seed_demo("postgresql://nobody:hunter22@127.0.0.1:1/none?sslmode=disable")
    assert "hunter22" not in str(info.value)
