"""The staging end-to-end flows (seed plan §4.2) as code, against any target, over HTTP.

The flows talk to the target exactly as the mobile app does: the official `supabase` Python
client (`rpc` → `/rest/v1/rpc/<fn>`, `functions.invoke` → `/functions/v1/<name>`) with a
signed-in user's JWT. Only the demo data is written through SQL, on the service connection,
because no API lets a client create users or choose their roles.

Demo data uses fixed, recognisable ids (`5a0c0000-0000-4000-80xx-…`, emails
`smoke+<who>@rollout.invalid`) so `remove_demo` deletes exactly those rows and everything that
references them, and a second `seed_demo` is a no-op apart from resetting the demo
organizer's broadcast quota (a re-run on the same UTC day must start from a clean quota).
"""

from __future__ import annotations

import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import psycopg
from psycopg import sql

from rollout.errors import TargetError

Progress = Callable[[str, float], None]
"""`progress(message, fraction)`: what is happening now and how far along (0..1) the run is."""

# ---- the demo cast ---------------------------------------------------------------------------

_PREFIX = "5a0c0000-0000-4000"


def _demo_id(group: str, n: int) -> str:
    return f"{_PREFIX}-{group}-{n:012d}"


DEMO_USERS: dict[str, tuple[str, str, str]] = {
    # key: (id, role, display name)
    "attendee1": (_demo_id("8000", 101), "attendee", "Smoke Attendee One"),
    "attendee2": (_demo_id("8000", 102), "attendee", "Smoke Attendee Two"),
    "dealer": (_demo_id("8000", 201), "dealer", "Smoke Dealer"),
    "mvp_dealer": (_demo_id("8000", 301), "mvp_dealer", "Smoke MVP Dealer"),
    "organizer": (_demo_id("8000", 401), "show_organizer", "Smoke Organizer"),
    "admin": (_demo_id("8000", 501), "admin", "Smoke Admin (moderator)"),
}
DEMO_SHOW_ID = _demo_id("8000", 601)
DEMO_LEGACY_CONVERSATION_ID = _demo_id("8000", 701)
DEMO_LEGACY_MESSAGES = 120
"""More than two pages of `get_conversation_messages` (50 a page), so paging is exercised."""
# Who is registered for the demo show (the organizer organizes it, the admin is not in it).
_SHOW_PARTICIPANTS = ("attendee1", "attendee2", "dealer", "mvp_dealer")
# The legacy chat: attendee 2 and the dealer, started before v2 made dealers unreachable.
_LEGACY_PAIR = ("attendee2", "dealer")


def demo_email(key: str) -> str:
    return f"smoke+{key}@rollout.invalid"


def legacy_message_id(n: int) -> str:
    return _demo_id("8001", n)


@dataclass(frozen=True)
class DemoCast:
    """The ids `seed_demo` wrote: six users, one upcoming show, one legacy chat."""

    attendee1: str
    attendee2: str
    dealer: str
    mvp_dealer: str
    organizer: str
    admin: str
    show_id: str
    legacy_conversation_id: str
    legacy_message_ids: tuple[str, ...]

    @property
    def user_ids(self) -> list[str]:
        return [self.attendee1, self.attendee2, self.dealer, self.mvp_dealer, self.organizer,
                self.admin]


def demo_cast() -> DemoCast:
    """The fixed demo ids (what `seed_demo` writes), without touching any database."""
    ids = {key: value[0] for key, value in DEMO_USERS.items()}
    return DemoCast(
        **ids,
        show_id=DEMO_SHOW_ID,
        legacy_conversation_id=DEMO_LEGACY_CONVERSATION_ID,
        legacy_message_ids=tuple(legacy_message_id(n) for n in range(1, DEMO_LEGACY_MESSAGES + 1)),
    )


# ---- SQL helpers shared with the load check -------------------------------------------------


@contextmanager
def service_connection(db_url: str) -> Iterator[psycopg.Connection]:
    """The service (owner) connection; a failure to connect is a TargetError without the URL."""
    try:
        conn = psycopg.connect(db_url, autocommit=True, connect_timeout=10)
    except psycopg.Error as err:
        raise TargetError(f"cannot connect to the target database: {first_line(err)}") from err
    try:
        yield conn
    finally:
        conn.close()


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def table_exists(conn: psycopg.Connection, qualified: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (qualified,)).fetchone()
    return bool(row and row[0])


# Columns of auth.users we know how to fill. Hosted Supabase has many more, all nullable or
# defaulted; `aud` and `role` are what GoTrue writes for an ordinary signed-up user.
_AUTH_USER_VALUES: dict[str, Callable[[str, str, str], Any]] = {
    "id": lambda uid, email, name: uid,
    "email": lambda uid, email, name: email,
    "aud": lambda uid, email, name: "authenticated",
    "role": lambda uid, email, name: "authenticated",
    "raw_user_meta_data": lambda uid, email, name: json.dumps({"name": name}),
    "raw_app_meta_data": lambda uid, email, name: json.dumps(
        {"provider": "email", "providers": ["email"]}),
}


def insert_auth_users(conn: psycopg.Connection, users: Sequence[tuple[str, str, str]]) -> None:
    """Insert (id, email, display name) rows into `auth.users`, only with columns it has.

    The local stand-in has a handful of columns, hosted Supabase dozens: introspect, write the
    ones present among those we know, and refuse clearly if the table requires one we do not.
    """
    rows = conn.execute(
        """select column_name, is_nullable = 'NO' and column_default is null
                  and is_generated = 'NEVER' and identity_generation is null, data_type
             from information_schema.columns
            where table_schema = 'auth' and table_name = 'users'"""
    ).fetchall()
    if not rows:
        raise TargetError("the target has no auth.users table (is this a Supabase database?)")
    present = {name: dtype for name, _, dtype in rows}
    required = {name for name, needs_value, _ in rows if needs_value}
    unknown = sorted(required - set(_AUTH_USER_VALUES))
    if unknown:
        raise TargetError(f"auth.users requires columns the smoke seed cannot fill: "
                          f"{', '.join(unknown)}")
    columns = [c for c in _AUTH_USER_VALUES if c in present]
    casts = [sql.SQL("::jsonb") if present[c] == "jsonb" else sql.SQL("") for c in columns]
    query = sql.SQL("insert into auth.users ({}) values ({}) on conflict do nothing").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Composed([sql.Placeholder(), cast])
                           for cast in casts),
    )
    with conn.cursor() as cur:
        cur.executemany(query, [[_AUTH_USER_VALUES[c](*user) for c in columns] for user in users])


# The subscription production's role trigger turns into each role (profiles.role is derived
# from account_type + subscription_status; no subscription makes an admin).
SUBSCRIPTION_OF_ROLE = {
    "attendee": ("collector", "none"),
    "dealer": ("dealer", "none"),
    "mvp_dealer": ("dealer", "active"),
    "show_organizer": ("organizer", "active"),
    "admin": ("collector", "none"),
}


def upsert_profiles(conn: psycopg.Connection, people: Sequence[tuple[str, str, str]]) -> None:
    """Create or update (id, role, name) profiles the way production does: the role comes from
    the subscription written here. An admin is then set by this privileged connection, which
    v2's role trigger keeps (it only derives roles for the API roles' writes)."""
    rows = [(uid, f"{uid}@rollout.invalid", name, *SUBSCRIPTION_OF_ROLE[role], role == "admin")
            for uid, role, name in people]
    conn.execute(
        """insert into public.profiles (id, email, first_name, account_type, subscription_status)
           select id, email, name, account_type, status
             from unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[])
                  as t (id, email, name, account_type, status)
           on conflict (id) do update
             set account_type = excluded.account_type,
                 subscription_status = excluded.subscription_status""",
        [list(column) for column in zip(*[r[:5] for r in rows], strict=True)],
    )
    admins = [uid for uid, *_, admin in rows if admin]
    if admins:
        conn.execute("update public.profiles set role = 'admin' where id = any(%s::uuid[])",
                     (admins,))


def delete_cast(conn: psycopg.Connection, user_ids: Sequence[str],
                show_ids: Sequence[str]) -> dict[str, int]:
    """Delete the given users and shows and every row that references them, children first.

    Conversations are the cast's when any participant is one of the users (a DM or broadcast
    always has its sender as a participant). v2 tables are skipped when absent, so this works
    before the migration and after its rollback. Returns rows deleted per table.
    """
    users = list(user_ids)
    shows = list(show_ids)
    deleted: dict[str, int] = {}

    def run(label: str, query: str, params: Mapping[str, Any]) -> None:
        cur = conn.execute(query, params)
        deleted[label] = deleted.get(label, 0) + max(cur.rowcount, 0)

    p = {"users": users, "shows": shows}
    with conn.transaction():
        conn.execute(
            """create temporary table _rollout_cast_conversations on commit drop as
               select distinct conversation_id as id from public.conversation_participants
                where user_id = any(%(users)s::uuid[])""",
            p,
        )
        # The messaging system's lock order: conversation rows (in id order, as the legacy
        # sync takes them), then participants, then messages. Deleting messages and
        # participants first deadlocks with a sync run that holds the conversations.
        conn.execute("""select c.id from public.conversations c
                         where c.id in (select id from _rollout_cast_conversations)
                         order by c.id for update""")
        if table_exists(conn, "public.broadcast_quotas"):
            run("broadcast_quotas", """delete from public.broadcast_quotas
                 where organizer_id = any(%(users)s::uuid[]) or show_id = any(%(shows)s::uuid[])""",
                p)
        if table_exists(conn, "public.reported_messages"):
            run("reported_messages", """delete from public.reported_messages r
                 where r.reported_by = any(%(users)s::uuid[])
                    or r.message_id in (select m.id from public.messages m
                         where m.conversation_id in (select id from _rollout_cast_conversations)
                            or m.sender_id = any(%(users)s::uuid[]))""", p)
        if table_exists(conn, "public.moderated_message_texts"):
            run("moderated_message_texts", """delete from public.moderated_message_texts t
                 where t.message_id in (select m.id from public.messages m
                         where m.conversation_id in (select id from _rollout_cast_conversations)
                            or m.sender_id = any(%(users)s::uuid[]))""", p)
        run("messages", """delete from public.messages
             where conversation_id in (select id from _rollout_cast_conversations)
                or sender_id = any(%(users)s::uuid[])""", p)
        run("conversation_participants", """delete from public.conversation_participants
             where conversation_id in (select id from _rollout_cast_conversations)
                or user_id = any(%(users)s::uuid[])""", p)
        run("conversations", """delete from public.conversations
             where id in (select id from _rollout_cast_conversations)""", p)
        run("show_participants", """delete from public.show_participants
             where userid = any(%(users)s::uuid[]) or showid = any(%(shows)s::uuid[])""", p)
        run("shows", "delete from public.shows where id = any(%(shows)s::uuid[])", p)
        run("profiles", "delete from public.profiles where id = any(%(users)s::uuid[])", p)
        run("auth.users", "delete from auth.users where id = any(%(users)s::uuid[])", p)
    return deleted


def clear_quotas(conn: psycopg.Connection, organizer_ids: Sequence[str]) -> int:
    """Forget the organizers' broadcast quota rows: a re-run on the same UTC day starts clean."""
    if not table_exists(conn, "public.broadcast_quotas"):
        return 0
    cur = conn.execute("delete from public.broadcast_quotas where organizer_id = any(%s::uuid[])",
                       (list(organizer_ids),))
    return max(cur.rowcount, 0)


# ---- seeding -----------------------------------------------------------------------------------


def seed_demo(db_url: str) -> DemoCast:
    """Write the demo cast (idempotent) and reset the demo organizer's quota; return its ids.

    Only legacy tables and columns are written, so the seed also works before the v2
    migration. Profiles are upserted (a project's own `on auth user created` trigger may have
    made one with a default role); the show's dates are refreshed so it stays upcoming.
    """
    cast = demo_cast()
    users = [(uid, demo_email(key), name) for key, (uid, _, name) in DEMO_USERS.items()]
    try:
        with service_connection(db_url) as conn, conn.transaction():
            insert_auth_users(conn, users)
            upsert_profiles(conn, list(DEMO_USERS.values()))
            conn.execute(
                """insert into public.shows (id, title, location, address, start_date, end_date,
                                             status, organizer_id)
                   values (%(id)s, 'Rollout smoke show', 'Smoke City', '1 Smoke St',
                           date_trunc('day', now()) + interval '14 days',
                           date_trunc('day', now()) + interval '15 days', 'ACTIVE', %(org)s)
                   on conflict (id) do update
                     set start_date = excluded.start_date, end_date = excluded.end_date,
                         status = excluded.status, organizer_id = excluded.organizer_id""",
                {"id": cast.show_id, "org": cast.organizer},
            )
            with conn.cursor() as cur:
                cur.executemany(
                    """insert into public.show_participants (userid, showid, role, status)
                       values (%s, %s, %s, 'registered') on conflict do nothing""",
                    [(DEMO_USERS[k][0], cast.show_id, DEMO_USERS[k][1])
                     for k in _SHOW_PARTICIPANTS],
                )
            _seed_legacy_chat(conn, cast)
            clear_quotas(conn, [cast.organizer])
    except psycopg.Error as err:
        raise TargetError(f"seeding the smoke demo data failed: {first_line(err)}") from err
    return cast


def _seed_legacy_chat(conn: psycopg.Connection, cast: DemoCast) -> None:
    """A pre-v2 direct chat with DEMO_LEGACY_MESSAGES messages, one an hour, all read."""
    a, b = (DEMO_USERS[k][0] for k in _LEGACY_PAIR)
    conn.execute(
        """insert into public.conversations (id, type, created_at)
           values (%s, 'direct', '2024-03-01 00:00:00+00') on conflict do nothing""",
        (cast.legacy_conversation_id,),
    )
    with conn.cursor() as cur:
        cur.executemany(
            """insert into public.conversation_participants (conversation_id, user_id)
               values (%s, %s) on conflict do nothing""",
            [(cast.legacy_conversation_id, a), (cast.legacy_conversation_id, b)],
        )
        cur.executemany(
            """insert into public.messages
                 (id, conversation_id, sender_id, message_text, created_at, read_by_user_ids)
               values (%s, %s, %s, %s,
                       timestamptz '2024-03-01 00:00:00+00' + %s * interval '1 hour',
                       array[%s, %s]::uuid[])
               on conflict do nothing""",
            [(mid, cast.legacy_conversation_id, a if n % 2 else b, f"Smoke legacy message {n}",
              n, a, b) for n, mid in enumerate(cast.legacy_message_ids, start=1)],
        )
    # Whatever triggers ran: exact unread counts (0: all read) and last message.
    conn.execute(
        """update public.conversation_participants set unread_count = 0
            where conversation_id = %s and unread_count <> 0""",
        (cast.legacy_conversation_id,),
    )
    conn.execute(
        """update public.conversations c
              set last_message_text = m.message_text, last_message_timestamp = m.created_at
             from (select message_text, created_at from public.messages
                    where conversation_id = %(id)s order by created_at desc, id desc limit 1) m
            where c.id = %(id)s""",
        {"id": cast.legacy_conversation_id},
    )


def remove_demo(db_url: str) -> dict[str, int]:
    """Delete the demo cast and everything referencing it (quotas first). Idempotent."""
    cast = demo_cast()
    try:
        with service_connection(db_url) as conn:
            return delete_cast(conn, cast.user_ids, [cast.show_id])
    except psycopg.Error as err:
        raise TargetError(f"removing the smoke demo data failed: {first_line(err)}") from err


# ---- tokens ------------------------------------------------------------------------------------


def mint_token(jwt_secret: str, user_id: str, ttl: int = 600) -> str:
    """A user's access token as Supabase Auth issues it: HS256, role/aud `authenticated`."""
    now = int(time.time())
    claims = {"sub": user_id, "role": "authenticated", "aud": "authenticated",
              "iat": now, "exp": now + ttl}
    return jwt.encode(claims, jwt_secret, algorithm="HS256")


# ---- the report --------------------------------------------------------------------------------


@dataclass
class FlowResult:
    name: str
    passed: bool
    seconds: float
    detail: str


@dataclass
class SmokeReport:
    """Each flow's verdict, time and reason; JSON for machines, JUnit XML for CI."""

    target: str
    started_at: str
    flows: list[FlowResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.flows) and all(f.passed for f in self.flows)

    @property
    def seconds(self) -> float:
        return sum(f.seconds for f in self.flows)

    def to_json(self) -> str:
        body = {"target": self.target, "started_at": self.started_at, "passed": self.passed,
                "seconds": round(self.seconds, 3), "flows": [asdict(f) for f in self.flows]}
        return json.dumps(body, indent=2)

    def to_junit_xml(self) -> str:
        failures = sum(not f.passed for f in self.flows)
        suites = ET.Element("testsuites", name="rollout smoke", tests=str(len(self.flows)),
                            failures=str(failures), errors="0", time=f"{self.seconds:.3f}")
        suite = ET.SubElement(suites, "testsuite", name="rollout.smoke",
                              tests=str(len(self.flows)), failures=str(failures), errors="0",
                              skipped="0", time=f"{self.seconds:.3f}", timestamp=self.started_at)
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="target", value=self.target)
        for flow in self.flows:
            case = ET.SubElement(suite, "testcase", classname="rollout.smoke", name=flow.name,
                                 time=f"{flow.seconds:.3f}")
            if flow.passed:
                ET.SubElement(case, "system-out").text = flow.detail
            else:
                failure = ET.SubElement(case, "failure", message=flow.detail.splitlines()[0]
                                        if flow.detail else "failed", type="SmokeFlowFailed")
                failure.text = flow.detail
        ET.indent(suites)
        return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# ---- talking to the target as the app does ---------------------------------------------------


class FlowFailed(Exception):
    """A flow's expectation did not hold; the message is the reason shown in the report."""


@dataclass
class Outcome:
    """One API call's result: HTTP status, body (parsed), and the error code/message if any."""

    status: int
    data: Any = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        if self.ok:
            return f"HTTP {self.status}"
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {self.message or 'no message'}"


class AppSession:
    """One signed-in user, talking to the target through the official supabase client.

    The user's JWT goes in `options.headers["Authorization"]` (the anon key stays in
    `apikey`), as an app holding a session does. All sessions share one httpx client whose
    response hook records the last HTTP status: the postgrest client's `APIError` carries the
    PostgREST body (`code`, `message`) but not the status, and the flows assert on both.
    """

    def __init__(self, api_url: str, anon_key: str, token: str, http: httpx.Client,
                 last_status: list[int]) -> None:
        from supabase import ClientOptions, create_client

        options = ClientOptions(
            headers={"Authorization": f"Bearer {token}"},
            httpx_client=http,  # our client: no per-call deprecation warnings, closed by us
            postgrest_client_retry=False,  # a refusal must be observed once, never re-sent
            auto_refresh_token=False,
            persist_session=False,
        )
        self.client = create_client(api_url, anon_key, options)
        self._last_status = last_status

    def rpc(self, fn: str, params: dict[str, Any] | None = None) -> Outcome:
        from postgrest.exceptions import APIError

        self._last_status[0] = 0
        try:
            response = self.client.rpc(fn, params or {}).execute()
        except APIError as err:
            return Outcome(self._last_status[0] or 0, None, err.code, err.message)
        return Outcome(self._last_status[0] or 200, response.data)

    def invoke(self, function: str, body: dict[str, Any]) -> Outcome:
        from supabase_functions.errors import FunctionsError

        self._last_status[0] = 0
        try:
            data = self.client.functions.invoke(function, {"body": body, "responseType": "json"})
        except FunctionsError as err:
            # An edge function's error body is `{error}`: no SQLSTATE to report.
            return Outcome(err.status, None, None, err.message)
        return Outcome(self._last_status[0] or 200, data)


@dataclass
class FlowContext:
    cast: DemoCast
    sessions: dict[str, AppSession]
    run_tag: str  # makes this run's message texts unique (re-runs, parallel targets)

    def as_(self, who: str) -> AppSession:
        return self.sessions[who]


def _expect_ok(outcome: Outcome, what: str) -> Any:
    if not outcome.ok:
        raise FlowFailed(f"{what}: expected success, got {outcome.describe()}")
    return outcome.data


def _expect_refused(outcome: Outcome, what: str, status: int) -> str:
    """The call must be refused with `status` by the API's own rule (SQLSTATE PT<status>)."""
    if outcome.ok:
        raise FlowFailed(f"{what}: expected a refusal (HTTP {status}), but it succeeded")
    if outcome.status != status:
        raise FlowFailed(f"{what}: expected HTTP {status}, got {outcome.describe()}")
    # Through PostgREST the body's code is the SQLSTATE: a PT403 is the rule refusing, while a
    # 42501 (permission denied, e.g. a revoked grant) is also a 403 but a broken deploy.
    if outcome.code not in (None, f"PT{status}"):
        raise FlowFailed(f"{what}: refused for another reason: {outcome.describe()}")
    return outcome.describe()


def _flow_dm_allowed(ctx: FlowContext) -> str:
    c = ctx.cast
    data = _expect_ok(ctx.as_("attendee1").rpc("send_direct_message", {
        "p_recipient_id": c.mvp_dealer, "p_message_text": f"Smoke hello to the MVP {ctx.run_tag}",
        "p_show_id": c.show_id}), "attendee → mvp_dealer send_direct_message")
    if not _is_uuid(data):
        raise FlowFailed(f"send_direct_message returned {data!r}, expected a message id")
    inbox = _expect_ok(ctx.as_("mvp_dealer").rpc("get_user_conversations"),
                       "mvp_dealer get_user_conversations")
    if not any(row.get("last_message_text") == f"Smoke hello to the MVP {ctx.run_tag}"
               for row in inbox or []):
        raise FlowFailed("the MVP dealer's inbox does not show the new message")
    return f"message {data} delivered; the recipient's inbox shows it"


def _flow_dm_refused(ctx: FlowContext) -> str:
    c = ctx.cast
    how = _expect_refused(ctx.as_("attendee1").rpc("send_direct_message", {
        "p_recipient_id": c.dealer, "p_message_text": f"Smoke hello to a dealer {ctx.run_tag}"}),
        "attendee → dealer send_direct_message", 403)
    return f"refused as expected ({how})"


def _broadcast(ctx: FlowContext, who: str, roles: list[str], text: str) -> Outcome:
    return ctx.as_(who).invoke("send-broadcast", {
        "show_id": ctx.cast.show_id, "recipient_roles": roles, "message": text})


def _flow_organizer_quota(ctx: FlowContext) -> str:
    notes = []
    for n in (1, 2):
        data = _expect_ok(_broadcast(ctx, "organizer", ["attendee", "dealer"],
                                     f"Smoke pre-show broadcast {n} {ctx.run_tag}"),
                          f"organizer pre-show broadcast {n}")
        if not isinstance(data, dict) or not data.get("message_id"):
            raise FlowFailed(f"broadcast {n} answered {data!r}, expected a message_id")
        notes.append(f"#{n}: {data.get('recipient_count')} recipients, "
                     f"{data.get('quota_remaining')} left")
    how = _expect_refused(_broadcast(ctx, "organizer", ["attendee"],
                                     f"Smoke pre-show broadcast 3 {ctx.run_tag}"),
                          "organizer pre-show broadcast 3", 429)
    return "; ".join(notes) + f"; #3 refused ({how})"


def _flow_mvp_broadcast(ctx: FlowContext) -> str:
    data = _expect_ok(_broadcast(ctx, "mvp_dealer", ["attendee"],
                                 f"Smoke MVP broadcast {ctx.run_tag}"),
                      "mvp_dealer broadcast to attendees")
    if not isinstance(data, dict) or not data.get("message_id"):
        raise FlowFailed(f"the MVP broadcast answered {data!r}, expected a message_id")
    how = _expect_refused(_broadcast(ctx, "mvp_dealer", ["dealer"],
                                     f"Smoke MVP broadcast to dealers {ctx.run_tag}"),
                          "mvp_dealer broadcast to dealers", 403)
    return (f"to attendees: {data.get('recipient_count')} recipients; "
            f"to dealers refused ({how})")


def _find_conversation(session: AppSession, message_id: str) -> str:
    """The conversation holding `message_id`, found the way the app would: inbox, then pages."""
    inbox = _expect_ok(session.rpc("get_user_conversations"), "get_user_conversations")
    for row in inbox or []:
        page = _expect_ok(session.rpc("get_conversation_messages", {
            "p_conversation_id": row["id"], "p_limit": 50}), "get_conversation_messages")
        if any(m.get("id") == message_id for m in page or []):
            return str(row["id"])
    raise FlowFailed(f"message {message_id} is in none of the sender's conversations")


def _flow_moderation(ctx: FlowContext) -> str:
    c = ctx.cast
    original = f"Smoke message to be moderated {ctx.run_tag}"
    message_id = _expect_ok(ctx.as_("attendee1").rpc("send_direct_message", {
        "p_recipient_id": c.mvp_dealer, "p_message_text": original}),
        "attendee → mvp_dealer send_direct_message (the message to moderate)")
    conversation = _find_conversation(ctx.as_("attendee1"), str(message_id))
    deleted = _expect_ok(ctx.as_("admin").rpc("moderate_delete_message", {
        "p_message_id": message_id, "p_reason": "rollout smoke check"}),
        "admin moderate_delete_message")
    if deleted is not True:
        raise FlowFailed(f"moderate_delete_message returned {deleted!r}, expected true")
    for who in ("attendee1", "mvp_dealer"):
        session = ctx.as_(who)
        page = _expect_ok(session.rpc("get_conversation_messages", {
            "p_conversation_id": conversation, "p_limit": 50}),
            f"{who} get_conversation_messages")
        row = next((m for m in page or [] if m.get("id") == message_id), None)
        if row is None:
            raise FlowFailed(f"{who} no longer sees the deleted message as a placeholder")
        if row.get("is_deleted") is not True or row.get("message_text") is not None:
            raise FlowFailed(f"{who} sees is_deleted={row.get('is_deleted')!r} and "
                             f"{'the text' if row.get('message_text') else 'no text'}; "
                             f"expected a placeholder (is_deleted true, text null)")
        inbox = _expect_ok(session.rpc("get_user_conversations"), f"{who} get_user_conversations")
        if original in json.dumps(page) or original in json.dumps(inbox):
            raise FlowFailed(f"{who} still receives the original text of the deleted message")
    return f"message {message_id} shows as a placeholder to both participants"


def _flow_legacy(ctx: FlowContext) -> str:
    c = ctx.cast
    session = ctx.as_(_LEGACY_PAIR[0])
    seen: list[dict[str, Any]] = []
    before: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"p_conversation_id": c.legacy_conversation_id, "p_limit": 50}
        if before is not None:
            params["p_before"] = before
        page = _expect_ok(session.rpc("get_conversation_messages", params),
                          "get_conversation_messages on the legacy chat")
        pages += 1
        if not page:
            break
        seen.extend(page)
        before = page[-1]["created_at"]
        if len(page) < 50 or pages > DEMO_LEGACY_MESSAGES:
            break
    ids = [str(m["id"]) for m in seen]
    expected = set(c.legacy_message_ids)
    if set(ids) != expected or len(ids) != len(expected):
        raise FlowFailed(f"the legacy chat loaded {len(ids)} messages "
                         f"({len(set(ids) & expected)} of the {len(expected)} seeded)")
    blank = [m["id"] for m in seen if m.get("message_text") is None or m.get("is_deleted")]
    if blank:
        raise FlowFailed(f"{len(blank)} historical messages come back without their text")
    return f"all {len(ids)} historical messages loaded in {pages} pages"


FLOWS: list[tuple[str, Callable[[FlowContext], str]]] = [
    ("attendee → MVP dealer DM is delivered", _flow_dm_allowed),
    ("attendee → dealer DM is refused (403)", _flow_dm_refused),
    ("organizer pre-show broadcast ×2 ok, 3rd refused (429)", _flow_organizer_quota),
    ("MVP broadcast to attendees ok, to dealers refused (403)", _flow_mvp_broadcast),
    ("moderator soft-deletes a message; participants see the placeholder", _flow_moderation),
    ("legacy chat loads every historical message", _flow_legacy),
]


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    values = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def redact(text: str) -> str:
        for value in values:
            text = text.replace(value, "***")
        return text

    return redact


def run_flows(api_url: str, anon_key: str, jwt_secret: str, db_url: str, *, keep: bool = False,
              progress: Progress | None = None, timeout: float = 30.0) -> SmokeReport:
    """Seed the demo cast, run every §4.2 flow against `api_url`, and report each verdict.

    A flow that fails does not stop the others (each reports its own reason). The demo data
    is removed afterwards unless `keep`. Secrets (JWT secret, keys, tokens) never reach the
    report: details are built from statuses and API messages, and redacted once more.
    """
    notify = progress or (lambda message, fraction: None)
    report = SmokeReport(target=api_url, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    notify("seeding the demo cast", 0.0)
    cast = seed_demo(db_url)
    tokens = {key: mint_token(jwt_secret, uid) for key, (uid, _, _) in DEMO_USERS.items()}
    redact = _redactor([jwt_secret, anon_key, *tokens.values()])
    last_status = [0]

    def record(response: httpx.Response) -> None:
        last_status[0] = response.status_code

    try:
        with httpx.Client(timeout=timeout, follow_redirects=False,
                          event_hooks={"response": [record]}) as http:
            sessions = {key: AppSession(api_url, anon_key, token, http, last_status)
                        for key, token in tokens.items()}
            ctx = FlowContext(cast, sessions, run_tag=uuid.uuid4().hex[:8])
            for index, (name, flow) in enumerate(FLOWS):
                notify(f"flow {index + 1}/{len(FLOWS)}: {name}", index / len(FLOWS))
                began = time.perf_counter()
                try:
                    detail, passed = flow(ctx), True
                except FlowFailed as err:
                    detail, passed = str(err), False
                except Exception as err:  # noqa: BLE001 — a crash of one flow is that flow's failure
                    detail, passed = f"{type(err).__name__}: {first_line(err)}", False
                result = FlowResult(name, passed, round(time.perf_counter() - began, 4),
                                    redact(detail))
                report.flows.append(result)
                verdict = "passed" if passed else "FAILED"
                notify(f"{verdict}: {name} — {result.detail}", (index + 1) / len(FLOWS))
    finally:
        if not keep:
            remove_demo(db_url)
    return report
