"""The release meets production as it is (../shared/production/): its schema is our baseline,
and each fact of its README that a migration must survive is checked here, on PostgreSQL 15
(what Supabase runs) with production-shaped data (`app_data.sql`, scaled down)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rollout.adapters.local_stack.app_data import Sizes, load
from rollout.adapters.local_stack.bootstrap import apply_bootstrap
from rollout.checks import snapshot
from tests.conftest import create_database
from tests.messaging.catalog import row_snapshot, schema_snapshot
from tests.messaging.conftest import LEGACY, ROLLBACK, V2, Api, Db, apply_file
from tests.messaging.helpers import assert_unread_exact, refused, sync_legacy_columns

SHARED_SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "production" / "app_schema.sql"
SIZES = Sizes(users=1_000, shows=100, conversations=2_000, messages=20_000)
PRODUCTION_TABLES = ("profiles", "shows", "show_participants", "conversations",
                     "conversation_participants", "messages", "broadcast_quotas",
                     "reported_messages")


def user_id(n: int) -> str:
    """app_data.sql's people: ids from their row number."""
    return f"00000000-0000-0000-0000-{n:012x}"


@pytest.fixture(scope="session")
def prod15_template(pg15) -> str:  # type: ignore[no-untyped-def]
    """PostgreSQL 15: bootstrap → production's schema → production-like data."""
    url = create_database(pg15, "tmpl_prod15")
    with psycopg.connect(url, autocommit=True) as conn:
        apply_bootstrap(conn)
    apply_file(url, LEGACY)
    load(url, SIZES)
    return "tmpl_prod15"


@pytest.fixture
def prod(pg15, prod15_template: str) -> Iterator[Db]:  # type: ignore[no-untyped-def]
    url = create_database(pg15, f"t_prod_{uuid.uuid4().hex[:10]}", prod15_template)
    db = Db(url=url, admin=psycopg.connect(url, autocommit=True))
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(pg15.url(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{url.rsplit("/", 1)[1].split("?")[0]}" '
                         "with (force)")


def of_role(db: Db, role: str, offset: int = 0) -> str:
    return str(db.val("select id from public.profiles where role = %s order by id offset %s "
                      "limit 1", (role, offset)))


def service(db: Db) -> Api:
    return Api(db.as_user(None).conn, None, role="service_role")


# --- the baseline is production ---------------------------------------------------------------

def test_legacy_baseline_has_production_catalog(pg15) -> None:  # type: ignore[no-untyped-def]
    """migrations/legacy_baseline.sql and the production dump give the same catalog."""
    if not SHARED_SCHEMA.exists():
        pytest.skip(f"{SHARED_SCHEMA} is not beside this checkout")
    urls = []
    for name, schema in (("t_cat_ours", LEGACY), ("t_cat_prod", SHARED_SCHEMA)):
        url = create_database(pg15, f"{name}_{uuid.uuid4().hex[:8]}")
        with psycopg.connect(url, autocommit=True) as conn:
            apply_bootstrap(conn)
        apply_file(url, schema)
        urls.append(url)
    ours, theirs = (snapshot.catalog(url, ["public"]) for url in urls)
    assert snapshot.catalog_differences(theirs, ours) == []
    assert len(ours["policies"]) > 25 and len(ours["triggers"]) == 3


# --- the migration applies, and the rollback restores production exactly ----------------------

def test_apply_on_production_data_then_rollback_restores_catalog_and_rows(prod: Db) -> None:
    catalog, rows = schema_snapshot(prod.admin, ("public",)), row_snapshot(prod.admin, ("public",))
    columns_before = prod.q("select table_name, column_name from information_schema.columns "
                            "where table_schema = 'public' order by 1, 2")
    apply_file(prod.url, V2)
    # v2 adds no column to production's tables (it assumes none it does not have); only
    # broadcast_quotas, whose earlier shape steps aside, is v2's own table while it is live.
    kept_tables = [t for t in PRODUCTION_TABLES if t != "broadcast_quotas"]
    assert prod.q("select table_name, column_name from information_schema.columns "
                  "where table_schema = 'public' and table_name = any(%s) order by 1, 2",
                  (kept_tables,)) == [c for c in columns_before if c[0] in kept_tables]
    assert_unread_exact(prod)
    apply_file(prod.url, ROLLBACK)
    assert schema_snapshot(prod.admin, ("public",)) == catalog
    assert row_snapshot(prod.admin, ("public",)) == rows
    apply_file(prod.url, V2)
    apply_file(prod.url, ROLLBACK)
    assert schema_snapshot(prod.admin, ("public",)) == catalog
    assert row_snapshot(prod.admin, ("public",)) == rows


def test_orphan_messages_and_a_non_utc_session_are_survived(prod: Db) -> None:
    """messages.conversation_id has no foreign key (orphans may exist), and its created_at
    default is only right in UTC: v2 applies and timestamps the instant whatever the zone."""
    sender = of_role(prod, "attendee")
    prod.q("insert into public.messages (conversation_id, sender_id, message_text) "
           "values (gen_random_uuid(), %s, 'orphan')", (sender,))
    apply_file(prod.url, V2)
    conv, member = prod.q("select cp.conversation_id, cp.user_id from "
                          "public.conversation_participants cp join public.conversations c "
                          "on c.id = cp.conversation_id join public.profiles p on p.id = "
                          "cp.user_id where c.type = 'direct' and p.role = 'attendee' "
                          "limit 1")[0]
    api = prod.as_user(str(member))
    api.sql("set time zone 'America/New_York'")
    message = api.rpc1("send_message", p_conversation_id=conv, p_message_text="hello")
    assert prod.val("select abs(extract(epoch from now() - created_at)) < 60 "
                    "from public.messages where id = %s", (message,)) is True
    apply_file(prod.url, ROLLBACK)
    assert prod.val("select count(*) from public.messages where message_text = 'orphan'") == 1


# --- roles come from subscriptions; admins are not demoted ------------------------------------

def role_of(db: Db, uid: str) -> str:
    return str(db.val("select role from public.profiles where id = %s", (uid,)))


def test_roles_derive_from_subscriptions_and_v2_keeps_admins(prod: Db) -> None:
    admin, dealer = of_role(prod, "admin"), of_role(prod, "dealer")
    touch = "update public.profiles set home_zip_code = home_zip_code where id = %s"
    # As deployed, any update demotes an admin: the trigger cannot produce 'admin'.
    with prod.admin.transaction():
        prod.q(touch, (admin,))
        assert role_of(prod, admin) != "admin"
        raise psycopg.Rollback()
    apply_file(prod.url, V2)
    prod.q(touch, (admin,))                 # the owner / service role
    prod.as_user(admin).sql(touch, (admin,))  # the admin editing their own profile
    assert role_of(prod, admin) == "admin"
    # Subscriptions still drive every other role.
    prod.q("update public.profiles set subscription_status = 'active' where id = %s", (dealer,))
    assert role_of(prod, dealer) == "mvp_dealer"
    prod.q("update public.profiles set subscription_status = 'expired' where id = %s", (dealer,))
    assert role_of(prod, dealer) == "dealer"


EDITABLE = {"first_name": "Ann", "last_name": "Lee", "home_zip_code": "02139",
            "favorite_shows": "{a,b}", "attended_shows": "{c}", "profile_image_url": "https://i/1",
            "banner_image_url": "https://i/2", "business_name": "Ann's Cards",
            "dealer_bio": "Vintage", "external_links": '{"site": "https://x"}',
            "dealer_specialties": "{baseball}", "phone_number": "555", "facebook_url": "https://f",
            "instagram_url": "https://i", "twitter_url": "https://t", "whatnot_url": "https://w",
            "ebay_store_url": "https://e", "favorite_shows_count": "2", "updated_at": "now()"}
DERIVES_THE_ROLE = {"role": "show_organizer", "account_type": "organizer",
                    "subscription_status": "active", "payment_status": "paid",
                    "subscription_type": "pro", "subscription_id": "sub_1",
                    "subscription_expiry": "2099-01-01"}


def test_the_app_edits_its_profile_but_not_what_its_role_derives_from(prod: Db) -> None:
    me = of_role(prod, "attendee")
    api = prod.as_user(me)
    # Today any user makes themselves an organizer with the table-wide UPDATE.
    api.sql("update public.profiles set account_type = 'organizer', "
            "subscription_status = 'active' where id = %s", (me,))
    assert role_of(prod, me) == "show_organizer"
    prod.q("update public.profiles set account_type = 'collector', subscription_status = 'none' "
           "where id = %s", (me,))
    apply_file(prod.url, V2)
    for column, value in EDITABLE.items():
        api.sql(f"update public.profiles set {column} = %s where id = %s", (value, me))
    assert prod.q("select first_name, home_zip_code, instagram_url, role from public.profiles "
                  "where id = %s", (me,)) == [("Ann", "02139", "https://i", "attendee")]
    for column, value in DERIVES_THE_ROLE.items():
        refused(lambda c=column, v=value: api.sql(
            f"update public.profiles set {c} = %s where id = %s", (v, me)), "42501")
    assert role_of(prod, me) == "attendee"
    # Reading profiles (its own and others') works as before.
    assert len(api.sql("select id, first_name from public.profiles limit 5")) == 5


def test_the_app_registers_reads_sends_and_marks_read_directly(prod: Db) -> None:
    conv, me, other = (str(v) for v in prod.q(
        "select c.id, a.user_id, b.user_id from public.conversations c "
        "join public.conversation_participants a on a.conversation_id = c.id "
        "join public.profiles pa on pa.id = a.user_id and pa.role = 'attendee' "
        "join public.conversation_participants b on b.conversation_id = c.id "
        "and b.user_id <> a.user_id "
        "where c.type = 'direct' order by c.id limit 1")[0])
    api = prod.as_user(me)
    # As deployed, the participants policy recurses: API users cannot read their chats.
    refused(lambda: api.sql("select * from public.conversation_participants"), "42P17")
    apply_file(prod.url, V2)
    mine = {str(r[0]) for r in api.sql("select conversation_id from "
                                       "public.conversation_participants where user_id = %s",
                                       (me,))}
    assert conv in mine
    visible = {str(r[0]) for r in api.sql("select id from public.conversations")}
    assert visible == mine
    assert {str(r[0]) for r in api.sql("select distinct conversation_id from public.messages")} \
        <= mine
    # Register for a show (itself only).
    show = str(prod.val("select id from public.shows where id not in (select showid from "
                        "public.show_participants where userid = %s) limit 1", (me,)))
    api.sql("insert into public.show_participants (userid, showid) values (%s, %s)", (me, show))
    refused(lambda: api.sql("insert into public.show_participants (userid, showid) "
                            "values (%s, %s)", (other, show)), "42501")
    # Send in its own conversation: the other side's unread goes up by exactly one (once the
    # legacy sync has run, as its job does every few seconds).
    sync_legacy_columns(prod)
    unread = prod.val("select unread_count from public.conversation_participants "
                      "where conversation_id = %s and user_id = %s", (conv, other))
    api.sql("insert into public.messages (conversation_id, sender_id, message_text) "
            "values (%s, %s, 'hi from the old build')", (conv, me))
    sync_legacy_columns(prod)
    assert prod.val("select unread_count from public.conversation_participants "
                    "where conversation_id = %s and user_id = %s", (conv, other)) == unread + 1
    assert prod.val("select last_message_text from public.conversations where id = %s",
                    (conv,)) == "hi from the old build"
    # Mark read, as the old build does it.
    reader = prod.as_user(other)
    reader.sql("update public.conversation_participants set unread_count = 0 "
               "where conversation_id = %s and user_id = %s", (conv, other))
    assert prod.val("select count(*) from public.messages where conversation_id = %s and "
                    "sender_id <> %s and not (%s = any(read_by_user_ids))",
                    (conv, other, other)) == 0
    assert_unread_exact(prod)


# --- earlier shapes: quotas converted and restored, reports and moderation reused --------------

def test_earlier_shape_quotas_convert_by_day_and_come_back(prod: Db) -> None:
    upcoming = prod.q(
        "select q.organizer_id::text, q.show_id::text, q.pre_show_remaining from "
        "public.broadcast_quotas q join public.shows s on s.id = q.show_id "
        "where s.start_date > now() + interval '1 day' and s.organizer_id = q.organizer_id "
        "and exists (select 1 from public.show_participants sp where sp.showid = s.id) "
        "order by q.pre_show_remaining, s.id")
    spent = next(r for r in upcoming if r[2] == 0)
    fresh = next(r for r in upcoming if r[2] == 2)
    stale = next(r for r in upcoming if r[2] == 1)
    prod.q("update public.broadcast_quotas set last_updated = now() - interval '2 days' "
           "where organizer_id = %s and show_id = %s", stale[:2])
    v1 = prod.q("select * from public.broadcast_quotas order by 1, 2")
    apply_file(prod.url, V2)

    def broadcast(organizer: str, show: str) -> object:
        return prod.as_user(organizer).rpc1("send_broadcast", p_show_id=show,
                                            p_message_text="Doors at 9",
                                            p_recipient_roles=["attendee", "dealer",
                                                               "mvp_dealer"])
    # Spent today (0 remaining, changed today) stays spent; a row from two days ago says
    # nothing about today; 2 remaining means 2 today.
    refused(lambda: broadcast(*spent[:2]), "PT429")
    assert broadcast(*stale[:2])["quota_remaining"] == 1  # type: ignore[index]
    assert broadcast(*fresh[:2])["quota_remaining"] == 1  # type: ignore[index]
    assert prod.val("select type from public.conversations c join public.messages m on "
                    "m.conversation_id = c.id where m.is_broadcast and m.sender_id = %s "
                    "order by m.created_at desc limit 1", (fresh[0],)) == "show"
    apply_file(prod.url, ROLLBACK)
    after = {(str(r[0]), str(r[1])): r for r in prod.q("select * from public.broadcast_quotas")}
    for row in v1:
        key = (str(row[0]), str(row[1]))
        if key in (tuple(stale[:2]), tuple(fresh[:2])):
            assert after[key][2] == 1 and after[key][4] > row[4]  # today's use, folded in
        else:
            assert after[key] == row


def test_reports_and_moderation_columns_already_there_are_reused(prod: Db) -> None:
    reports = prod.val("select count(*) from public.reported_messages")
    assert reports > 0
    victim, conv = (str(v) for v in prod.q(
        "select m.id, m.conversation_id from public.messages m join public.conversations c on "
        "c.id = m.conversation_id where c.type = 'direct' order by m.id limit 1")[0])
    prod.q("update public.messages set is_deleted = true, deletion_reason = 'spam', "
           "deleted_at = now() where id = %s", (victim,))
    text = prod.val("select message_text from public.messages where id = %s", (victim,))
    apply_file(prod.url, V2)
    assert prod.val("select count(*) from public.reported_messages") == reports
    reporter = str(prod.val("select reported_by from public.reported_messages limit 1"))
    assert len(prod.as_user(reporter).sql("select id, report_reason from "
                                          "public.reported_messages")) >= 1
    admin = of_role(prod, "admin")
    assert len(prod.as_user(admin).sql("select id from public.reported_messages")) == reports
    # The text of a message deleted before v2 is hidden from participants, kept for admins.
    member = str(prod.val("select user_id from public.conversation_participants "
                          "where conversation_id = %s limit 1", (conv,)))
    page = prod.as_user(member).rpc("get_conversation_messages", p_conversation_id=conv,
                                    p_limit=500)
    assert [(r[2], r[3]) for r in page if str(r[0]) == victim] == [(None, True)]
    assert all(text != r[0] for r in prod.as_user(member).sql(
        "select message_text from public.messages where conversation_id = %s", (conv,)))
    admin_page = prod.as_user(admin).rpc("get_conversation_messages", p_conversation_id=conv,
                                         p_limit=500)
    assert [r[2] for r in admin_page if str(r[0]) == victim] == [text]
    assert prod.val("select deletion_reason from public.messages where id = %s",
                    (victim,)) == "spam"


def test_definer_functions_reach_production_functions_and_blank_text_is_refused(
        prod: Db) -> None:
    attendee = of_role(prod, "attendee", 3)
    mvp = str(prod.val("select id from public.profiles where role = 'mvp_dealer' and id not in "
                       "(select b.user_id from public.conversation_participants a join "
                       "public.conversation_participants b using (conversation_id) "
                       "where a.user_id = %s) limit 1", (attendee,)))
    apply_file(prod.url, V2)
    api = prod.as_user(attendee)
    # A new conversation: the participants' insert runs production's role_when_added trigger
    # from a search_path = '' function.
    message = api.rpc1("send_direct_message", p_recipient_id=mvp, p_message_text="hello")
    assert prod.q("select p.role_when_added from public.conversation_participants p join "
                  "public.messages m on m.conversation_id = p.conversation_id where m.id = %s "
                  "order by 1", (message,)) == [("attendee",), ("mvp_dealer",)]
    conv = prod.val("select conversation_id from public.messages where id = %s", (message,))
    for blank in ("\n\t\n", "\u00a0\u2003\u3000", " \u2028\ufeff "):
        refused(lambda b=blank: api.rpc1("send_message", p_conversation_id=conv,
                                         p_message_text=b), "PT400")
        refused(lambda b=blank: api.sql(
            "insert into public.messages (conversation_id, sender_id, message_text) "
            "values (%s, %s, %s)", (conv, attendee, b)), "PT400")
    assert api.rpc1("send_message", p_conversation_id=conv,
                    p_message_text="\u00a0 trimmed \n") is not None
    assert prod.val("select message_text from public.messages where conversation_id = %s "
                    "order by created_at desc limit 1", (conv,)) == "trimmed"
