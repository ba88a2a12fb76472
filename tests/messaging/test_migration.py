"""The migration files themselves: round trips, losslessness, catalog rules, lint, PG 15."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import create_database
from tests.messaging.catalog import row_snapshot, schema_snapshot
from tests.messaging.conftest import (
    ADA,
    ALICE,
    ALICE_MAX_CONV,
    ARTHUR,
    DANA,
    MAX,
    OLGA,
    ROLLBACK,
    SPRING_SHOW,
    V2,
    Api,
    Db,
    apply_file,
)
from tests.messaging.helpers import (
    assert_unread_exact,
    refused,
    stored_unread,
    sync_legacy_columns,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "this text was moderated away"


def write_v2_data(db: Db) -> dict[str, str]:
    """Everything v2 can write: DMs, broadcasts, quota, reports, moderation, flag changes."""
    alice, max_, olga, ada = (db.as_user(u) for u in (ALICE, MAX, OLGA, ADA))
    dm = alice.rpc1("send_direct_message", p_recipient_id=MAX, p_message_text=SECRET)
    alice.rpc1("send_direct_message", p_recipient_id=MAX, p_message_text="a newer message")
    bc = olga.rpc1(
        "send_broadcast", p_show_id=SPRING_SHOW, p_message_text="Doors open at 9",
        p_recipient_roles=["attendee", "dealer"],
    )
    max_.rpc1(
        "send_broadcast", p_show_id=SPRING_SHOW, p_message_text="MVP booth 12",
        p_recipient_roles=["attendee"],
    )
    report = max_.rpc1("report_message", p_message_id=dm, p_reason="rude")
    assert ada.rpc1("moderate_delete_message", p_message_id=dm, p_reason="rude") is True
    # The deleted message is the conversation's latest: its placeholder is the last message.
    last = alice.rpc1("send_direct_message", p_recipient_id=MAX, p_message_text=SECRET + " 2")
    ada.rpc1("moderate_delete_message", p_message_id=last)
    with db.admin.transaction():
        db.q("select set_config('rollout.actor', 'pm@example.com', true)")
        db.q("select set_config('rollout.reason', 'ramp', true)")
        db.q("update public.feature_flags set rollout_percentage = 25 "
             "where name = 'messaging_v2_enabled'")
    db.as_user(ARTHUR).rpc("mark_conversation_read", p_conversation_id=bc["conversation_id"])
    return {"dm": dm, "report": report, "broadcast": bc["message_id"]}


def no_secret_anywhere_public(db: Db) -> None:
    tables = db.q(
        "select quote_ident(table_name) from information_schema.tables "
        "where table_schema = 'public' and table_type = 'BASE TABLE'"
    )
    for (table,) in tables:
        hits = db.val(
            f"select count(*) from public.{table} t where to_jsonb(t)::text like %s",
            (f"%{SECRET}%",),
        )
        assert hits == 0, f"moderated text visible in public.{table}"


def v2_rows(db: Db) -> dict[str, tuple[int, str]]:
    """Row digests, less the legacy sync's position (a time: each apply starts its own)."""
    rows = row_snapshot(db.admin)
    assert rows.pop("public.messaging_legacy_sync", (1,))[0] == 1
    return rows


def test_apply_rollback_apply_rollback_is_lossless_and_exact(v2db: Db) -> None:
    ids = write_v2_data(v2db)
    sync_legacy_columns(v2db)  # as the job would have by now
    applied_schema = schema_snapshot(v2db.admin)
    applied_rows = v2_rows(v2db)

    apply_file(v2db.url, ROLLBACK)
    rolled_schema = schema_snapshot(v2db.admin)
    rolled_rows = row_snapshot(v2db.admin)
    # Every row is still there (public or archive), counted per kind of data.
    assert v2db.val("select count(*) from public.messages") == applied_rows["public.messages"][0]
    # Reports and broadcasts live in production's own tables and columns: they stay put.
    assert v2db.val("select count(*) from public.reported_messages where id = %s",
                    (ids["report"],)) == 1
    assert v2db.val("select count(*) from public.messages where is_broadcast and is_one_way") == 2
    # Today's quota use is folded into production's earlier shape; v2's rows are archived.
    assert v2db.q("select pre_show_remaining, post_show_remaining from public.broadcast_quotas "
                  "where organizer_id = %s and show_id = %s", (OLGA, SPRING_SHOW)) == [(1, 1)]
    assert v2db.val("select count(*) from messaging_v2_archive.broadcast_quotas") == 1
    assert v2db.val("select count(*) from messaging_v2_archive.feature_flag_audit") == 2
    assert v2db.val("select count(*) from messaging_v2_archive.moderated_message_texts") == 2
    # Legacy behaviour: no v2 function, the deleted text nowhere in public.
    assert v2db.val(
        "select to_regprocedure('public.send_broadcast(uuid,text,text[],boolean)')") is None
    no_secret_anywhere_public(v2db)
    # The API roles cannot reach the archive.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        v2db.as_user(ALICE).sql("select * from messaging_v2_archive.moderated_message_texts")

    # Re-apply restores the v2 state exactly; production's quota table, which the rollback
    # gave today's usage, waits in the archive with it.
    apply_file(v2db.url, V2)
    assert schema_snapshot(v2db.admin) == applied_schema
    reapplied_rows = v2_rows(v2db)
    assert reapplied_rows.pop("messaging_v2_archive.broadcast_quotas_v1")[0] == 1
    assert applied_rows.pop("messaging_v2_archive.broadcast_quotas_v1")[0] == 0
    assert reapplied_rows == applied_rows
    ada = v2db.as_user(ADA)
    conv = v2db.val("select conversation_id from public.messages where id = %s", (ids["dm"],))
    admin_view = {r[0]: r[2] for r in ada.rpc("get_conversation_messages", p_conversation_id=conv)}
    assert admin_view[ids["dm"]] == SECRET
    assert_unread_exact(v2db)

    apply_file(v2db.url, ROLLBACK)
    assert schema_snapshot(v2db.admin) == rolled_schema
    assert row_snapshot(v2db.admin) == rolled_rows


def test_a_re_apply_brings_the_pairs_up_to_date_with_what_changed_while_rolled_back(
        v2db: Db) -> None:
    """While v2 is rolled back no trigger follows production's changes: on re-apply a pair
    whose member left is forgotten (its next DM starts a new conversation), and the flags a
    steady DM reads say what the rows say now."""
    o, m, a = (v2db.make_user(r) for r in ("show_organizer", "mvp_dealer", "attendee"))
    for recipient in (m, a):
        v2db.as_user(o).rpc1("send_direct_message", p_recipient_id=recipient,
                             p_message_text="hi")
    left = v2db.val("select conversation_id from public.conversation_participants "
                    "where user_id = %s", (a,))
    apply_file(v2db.url, ROLLBACK)
    v2db.q("update public.profiles set subscription_status = 'expired' where id = %s", (m,))
    v2db.q("delete from public.conversation_participants where user_id = %s", (a,))
    apply_file(v2db.url, V2)
    pairs = {tuple(sorted((str(lo), str(hi)))): (low, high) for lo, hi, low, high in v2db.q(
        "select user_low, user_high, low_may_send, high_may_send "
        "from public.direct_conversations where %s in (user_low, user_high)", (o,))}
    assert list(pairs) == [tuple(sorted((o, m)))]  # the attendee's pair is forgotten
    assert pairs[tuple(sorted((o, m)))] == ((True, False) if o < m else (False, True))
    refused(lambda: v2db.as_user(m).rpc1("send_direct_message", p_recipient_id=o,
                                         p_message_text="still a dealer?"), "PT403")
    again = v2db.as_user(o).rpc1("send_direct_message", p_recipient_id=a, p_message_text="back")
    assert v2db.val("select conversation_id from public.messages where id = %s",
                    (again,)) != left


def test_rollback_catches_production_columns_up_without_the_job(v2db: Db) -> None:
    """The legacy sync job never ran: the rollback's own last run leaves production's
    unread_count and last_message_* exact for the app that takes over."""
    write_v2_data(v2db)
    stale = v2db.val("select count(*) from public.conversations c where c.last_message_timestamp "
                     "is distinct from (select max(created_at) from public.messages m "
                     "where m.conversation_id = c.id)")
    assert stale > 0
    apply_file(v2db.url, ROLLBACK)
    assert v2db.val("select count(*) from public.conversations c where c.last_message_timestamp "
                    "is distinct from (select max(created_at) from public.messages m "
                    "where m.conversation_id = c.id)") == 0
    assert_unread_exact(v2db)


def test_rollback_restores_the_legacy_schema(legacy_db: Db) -> None:
    before = schema_snapshot(legacy_db.admin, ("public",))
    apply_file(legacy_db.url, V2)
    apply_file(legacy_db.url, ROLLBACK)
    assert schema_snapshot(legacy_db.admin, ("public",)) == before


def test_both_files_can_be_re_run(v2db: Db) -> None:
    once = schema_snapshot(v2db.admin)
    apply_file(v2db.url, V2)
    assert schema_snapshot(v2db.admin) == once
    apply_file(v2db.url, ROLLBACK)
    rolled = schema_snapshot(v2db.admin)
    apply_file(v2db.url, ROLLBACK)
    assert schema_snapshot(v2db.admin) == rolled


def test_legacy_app_works_after_rollback(v2db: Db) -> None:
    """After a rollback the app is production's again: its bookkeeping trigger alone counts
    (once), and its direct reads behave as they did before the release."""
    write_v2_data(v2db)
    apply_file(v2db.url, ROLLBACK)
    conv = "70000000-0000-4000-8000-000000000002"
    before = stored_unread(v2db, conv, ALICE)
    service = Api(v2db.as_user(None).conn, None, role="service_role")
    service.sql("insert into public.messages (conversation_id, sender_id, message_text) "
                "values (%s, %s, 'back on legacy')", (conv, DANA))
    assert v2db.val("select last_message_text from public.conversations where id = %s",
                    (conv,)) == "back on legacy"
    assert stored_unread(v2db, conv, ALICE) == before + 1
    # As deployed, the participants policy recurses for API users: the same after a rollback.
    refused(lambda: v2db.as_user(ALICE).sql(
        "select id from public.messages where conversation_id = %s", (ALICE_MAX_CONV,)), "42P17")


def test_a_failed_run_leaves_nothing(legacy_db: Db) -> None:
    before = schema_snapshot(legacy_db.admin)
    broken = V2.read_text().replace("commit;", "select 1/0;\ncommit;")
    with (
        pytest.raises(psycopg.errors.DivisionByZero),
        psycopg.connect(legacy_db.url, autocommit=True) as conn,
    ):
        conn.execute(broken.encode())
    assert schema_snapshot(legacy_db.admin) == before
    apply_file(legacy_db.url, V2)


def test_squawk_lint_passes() -> None:
    squawk = ROOT / ".venv" / "bin" / "squawk"
    if not squawk.exists():
        pytest.skip("squawk not installed")
    result = subprocess.run(
        [str(squawk), str(V2)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_v2_sets_timeouts_and_is_one_transaction() -> None:
    text = V2.read_text()
    statements = re.findall(r"^(begin|commit);$", text, flags=re.M)
    assert statements == ["begin", "commit"]
    assert "set local lock_timeout = '5s';" in text
    assert "set local statement_timeout" in text


# --- catalog rules ------------------------------------------------------------------------

MESSAGING_TABLES = (
    "conversations", "conversation_participants", "messages", "broadcast_quotas",
    "reported_messages", "moderated_message_texts", "feature_flags", "feature_flag_audit",
)
# What v2 creates (the style rules below are v2's; production's own objects are as deployed).
V2_TABLES = set(re.findall(r"^create table if not exists public\.(\w+)", V2.read_text(), re.M))
V2_POLICIES = set(re.findall(r"^create policy (\w+)", V2.read_text(), re.M))
V2_FUNCTIONS = set(re.findall(r"^create or replace function public\.(\w+)", V2.read_text(),
                              re.M))
# Production's functions, whose search_path v2 pins (their bodies name tables unqualified).
PRODUCTION_FUNCTIONS = set(re.findall(r"^alter function public\.(\w+)\(\) set search_path",
                                      V2.read_text(), re.M))


def test_every_table_has_rls_and_v2_tables_a_comment(v2db: Db) -> None:
    rows = v2db.q(
        "select c.relname, c.relrowsecurity, obj_description(c.oid, 'pg_class') "
        "from pg_class c where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'"
    )
    assert {r[0] for r in rows} >= set(MESSAGING_TABLES)
    assert {"broadcast_quotas", "feature_flags", "feature_flag_audit",
            "moderated_message_texts", "direct_conversations", "messaging_legacy_sync"} \
        == V2_TABLES
    assert [r[0] for r in rows if not r[1]] == []
    assert [r[0] for r in rows if r[0] in V2_TABLES and not r[2]] == []


def test_every_policy_column_and_the_inbox_columns_are_indexed(v2db: Db) -> None:
    # Columns of its own table a policy depends on (pg_depend records them).
    policy_columns = v2db.q(
        """select distinct c.relname, a.attname
             from pg_policy p
             join pg_depend d on d.classid = 'pg_policy'::regclass and d.objid = p.oid
                             and d.refobjid = p.polrelid and d.refobjsubid > 0
             join pg_class c on c.oid = p.polrelid
             join pg_attribute a on a.attrelid = p.polrelid and a.attnum = d.refobjsubid
            where c.relnamespace = 'public'::regnamespace and p.polname = any(%s)""",
        (sorted(V2_POLICIES),))
    needed = set(policy_columns) | {
        ("conversation_participants", "user_id"),  # inbox, unread total
        ("conversation_participants", "conversation_id"),
        ("messages", "conversation_id"),  # conversation pages
        ("show_participants", "showid"),  # broadcast recipients
        ("broadcast_quotas", "quota_date"),  # nightly reset
        ("reported_messages", "report_status"),  # monitoring
    }
    leading = set(v2db.q(
        """select c.relname, a.attname from pg_index i
             join pg_class c on c.oid = i.indrelid
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
            where c.relnamespace = 'public'::regnamespace"""
    ))
    assert ("messages", "sender_id") in needed  # sanity: the insert policy was seen
    assert sorted(needed - leading) == []


def test_no_policy_queries_its_own_table(v2db: Db) -> None:
    rows = v2db.q(
        "select tablename, policyname, coalesce(qual, '') || ' ' || coalesce(with_check, '') "
        "from pg_policies where schemaname = 'public'"
    )
    offenders = [
        (t, p) for t, p, expr in rows
        if re.search(rf"\bfrom\s+(public\.)?{t}\b", expr, re.I)
    ]
    assert offenders == []


def test_policies_are_per_operation_to_authenticated_and_use_select_uid(v2db: Db) -> None:
    rows = v2db.q(
        "select tablename, policyname, roles::text, cmd, "
        "coalesce(qual, '') || ' ' || coalesce(with_check, '') from pg_policies "
        "where schemaname = 'public' and policyname = any(%s)", (sorted(V2_POLICIES),)
    )
    assert len(rows) == len(V2_POLICIES) >= 9
    for table, name, roles, cmd, expr in rows:
        assert roles == "{authenticated}", name
        assert cmd != "ALL", name
        assert not name.startswith("rollout_"), name
        bare = re.sub(r"\(\s*select auth\.uid\(\) as uid\)", "", expr, flags=re.I)
        assert "auth.uid()" not in bare, f"{table}.{name} uses bare auth.uid()"
    per_op = v2db.q(
        "select tablename, cmd, count(*) from pg_policies where schemaname = 'public' "
        "and tablename = any(%s) and permissive = 'PERMISSIVE' group by 1, 2 "
        "having count(*) > 1", (list(MESSAGING_TABLES),)
    )
    assert per_op == []
    triggers = v2db.q("select tgname from pg_trigger where tgname like 'rollout\\_%%'")
    assert triggers == []


def test_security_definer_functions_pin_search_path_and_say_why(v2db: Db) -> None:
    rows = v2db.q(
        "select p.proname, p.proconfig, obj_description(p.oid, 'pg_proc') from pg_proc p "
        "where p.pronamespace = 'public'::regnamespace and p.prosecdef"
    )
    assert len(rows) > 10
    for name, config, comment in rows:
        if name in PRODUCTION_FUNCTIONS:
            assert config == ["search_path=public, pg_temp"], (name, config)
            continue
        assert name in V2_FUNCTIONS, name
        assert config[0] in ("search_path=\"\"", "search_path=''"), (name, config)
        assert config[1:] in ([], ["plan_cache_mode=force_generic_plan"]), (name, config)
        assert comment and "definer" in comment.lower(), name
    pinned = v2db.q("select p.proname from pg_proc p where p.pronamespace = "
                    "'public'::regnamespace and p.proconfig is null")
    assert pinned == []  # every function in public, v2's and production's, pins search_path


def test_anon_executes_nothing_and_only_service_role_resets_quotas(v2db: Db) -> None:
    anon_exec = v2db.q(
        "select p.proname from pg_proc p where p.pronamespace = 'public'::regnamespace "
        "and p.proname = any(%s) and has_function_privilege('anon', p.oid, 'execute')",
        (sorted(V2_FUNCTIONS),))
    assert anon_exec == []
    assert v2db.val(
        "select has_function_privilege('authenticated', "
        "'public.reset_broadcast_quotas()', 'execute')"
    ) is False
    assert v2db.val(
        "select has_function_privilege('service_role', "
        "'public.reset_broadcast_quotas()', 'execute')"
    ) is True


def test_no_mutation_function_takes_an_identity_argument(v2db: Db) -> None:
    """Defects 2 and 3: identity comes from auth.uid(), never an argument."""
    rows = v2db.q(
        "select p.proname, p.proargnames from pg_proc p "
        "where p.pronamespace = 'public'::regnamespace and p.prosecdef and p.provolatile = 'v'"
    )
    for name, args in rows:
        assert not set(args or []) & {"p_sender_id", "p_moderator_id", "p_user_id",
                                      "p_reporter_id", "p_organizer_id"}, name


def test_an_old_defective_overload_is_dropped(legacy_db: Db) -> None:
    legacy_db.q(
        "create function public.moderate_delete_message(p_message_id uuid, p_moderator_id uuid, "
        "p_reason text) returns boolean language sql security definer as 'select true'"
    )
    apply_file(legacy_db.url, V2)
    assert legacy_db.q(
        "select p.oid::regprocedure::text from pg_proc p where proname = 'moderate_delete_message'"
    ) == [("moderate_delete_message(uuid,text)",)]


# --- PostgreSQL 15 ------------------------------------------------------------------------

def test_pg15_round_trip_and_permission_smoke(pg15, pg15_legacy_template: str) -> None:
    url = create_database(pg15, "t_msg15_roundtrip", pg15_legacy_template)
    db = Db(url=url, admin=psycopg.connect(url, autocommit=True))
    try:
        assert db.val("show server_version_num").startswith("15")
        apply_file(url, V2)
        applied = schema_snapshot(db.admin)
        write_v2_data(db)
        sync_legacy_columns(db)
        rows = v2_rows(db)
        apply_file(url, ROLLBACK)
        rolled = schema_snapshot(db.admin)
        rolled_rows = row_snapshot(db.admin)
        apply_file(url, V2)
        assert schema_snapshot(db.admin) == applied
        reapplied = v2_rows(db)
        # The rollback gave production's quota table today's usage (one row), kept with it.
        assert reapplied.pop("messaging_v2_archive.broadcast_quotas_v1")[0] == 1
        assert rows.pop("messaging_v2_archive.broadcast_quotas_v1")[0] == 0
        assert reapplied == rows
        apply_file(url, ROLLBACK)
        assert schema_snapshot(db.admin) == rolled
        assert row_snapshot(db.admin) == rolled_rows
        apply_file(url, V2)
        # Permission smoke: matrix, reply rule, quota, privileges.
        alice = db.as_user(ALICE)
        refused(lambda: db.as_user(ARTHUR).rpc1("send_direct_message", p_recipient_id=DANA,
                                   p_message_text="hi"), "PT403")
        refused(lambda: alice.sql("update public.conversation_participants set can_reply = true "
                                  "where user_id = %s", (ALICE,)), "42501")
        refused(lambda: db.as_user(DANA).sql(
            "insert into public.messages (conversation_id, sender_id, message_text) "
            "values ('70000000-0000-4000-8000-000000000002', %s, 'x')", (DANA,)), "42501")
        olga = db.as_user(OLGA)
        olga.rpc1("send_broadcast", p_show_id=SPRING_SHOW, p_message_text="2nd",
                  p_recipient_roles=["attendee"])
        refused(lambda: olga.rpc1("send_broadcast", p_show_id=SPRING_SHOW, p_message_text="3rd",
                                  p_recipient_roles=["attendee"]), "PT429")
        assert_unread_exact(db)
    finally:
        db.close()

