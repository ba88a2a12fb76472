"""Snapshots that prove a rollback: the app schemas' catalog, and which rows exist.

`catalog` reads tables (with RLS flags and privileges), columns (by name, with types, defaults
and column privileges), constraints, indexes, policies, functions (body digest, security,
privileges), triggers and types of the given schemas; `catalog_differences` says, object by
object, what differs. `rows` records the ids (count and digest) of a set of tables, read as one
union, so rows that moved to another schema (the rollback's `messaging_v2_archive`) still count.
`write_witness` writes a DM and a report through the API, as the app would, so a rehearsal has
something written while v2 was live to look for after the rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from psycopg import sql

from rollout.checks.smoke import (
    delete_cast,
    first_line,
    insert_auth_users,
    mint_token,
    service_connection,
    table_exists,
    upsert_profiles,
)
from rollout.errors import TargetError

Catalog = dict[str, dict[str, list[str | None]]]
"""kind → object name → its definition (strings), e.g. catalog["policies"]["public.messages.x"]."""

# Each query returns the object's name parts first (`ident` of them), then its definition.
_QUERIES: dict[str, tuple[int, str]] = {
    "tables": (2, """
        select n.nspname, c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
               (select array_agg(a::text order by a::text) from aclexplode(c.relacl) a)::text,
               case when c.relkind in ('v', 'm') then md5(pg_get_viewdef(c.oid)) end
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')"""),
    "columns": (3, """
        select n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
               a.attgenerated::text,
               (select array_agg(x::text order by x::text) from aclexplode(a.attacl) x)::text
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'v', 'm', 'f')
           and a.attnum > 0 and not a.attisdropped"""),
    "constraints": (3, """
        select n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated
          from pg_constraint k
          join pg_class c on c.oid = k.conrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s)"""),
    "indexes": (3, """
        select schemaname, tablename, indexname, indexdef
          from pg_indexes where schemaname = any(%(schemas)s)"""),
    "policies": (3, """
        select schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
          from pg_policies where schemaname = any(%(schemas)s)"""),
    "functions": (3, """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), md5(p.prosrc), p.prosecdef, p.provolatile::text,
               p.proconfig::text,
               (select array_agg(a::text order by a::text) from aclexplode(p.proacl) a)::text
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = any(%(schemas)s)"""),
    "triggers": (3, """
        select n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
          from pg_trigger t
          join pg_class c on c.oid = t.tgrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s) and not t.tgisinternal"""),
    "types": (2, """
        select n.nspname, t.typname, t.typtype::text,
               (select string_agg(e.enumlabel, ',' order by e.enumsortorder)
                  from pg_enum e where e.enumtypid = t.oid),
               case when t.typtype = 'd' then format_type(t.typbasetype, t.typtypmod) end
          from pg_type t join pg_namespace n on n.oid = t.typnamespace
         where n.nspname = any(%(schemas)s) and t.typtype in ('e', 'd')
            or (n.nspname = any(%(schemas)s) and t.typtype = 'c' and exists (
                  select from pg_class c where c.oid = t.typrelid and c.relkind = 'c'))"""),
}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def catalog(db_url: str, schemas: list[str]) -> Catalog:
    """The catalog of `schemas`: every object by name, with what defines it."""
    result: Catalog = {}
    try:
        with service_connection(db_url) as conn:
            for kind, (ident, query) in _QUERIES.items():
                rows = conn.execute(query, {"schemas": schemas}).fetchall()
                objects = {}
                for row in rows:
                    name = ".".join(str(p) for p in row[:ident])
                    if kind == "functions":
                        name = f"{row[0]}.{row[1]}({row[2]})"
                    objects[name] = [_text(v) for v in row[ident:]]
                result[kind] = dict(sorted(objects.items()))
    except psycopg.Error as err:
        raise TargetError(f"reading the catalog failed: {first_line(err)}") from err
    return result


def catalog_differences(before: Catalog, after: Catalog, *, limit: int = 50) -> list[str]:
    """Object by object, what `after` has that `before` had not, lacks, or defines otherwise.
    A table's columns, constraints, indexes, policies and triggers go with the table's line."""
    old_tables, new_tables = before.get("tables", {}), after.get("tables", {})
    whole = {name + "." for name in set(old_tables) ^ set(new_tables)}
    found: list[str] = []
    for kind in ["tables", *sorted((set(before) | set(after)) - {"tables"})]:
        old, new = before.get(kind, {}), after.get(kind, {})
        label = kind[:-1] if kind.endswith("s") else kind
        for name in sorted(set(old) | set(new)):
            if kind != "tables" and name.startswith(tuple(whole)):
                continue
            if name not in new:
                found.append(f"{label} {name} is missing (it was there before)")
            elif name not in old:
                found.append(f"{label} {name} is left over (it was not there before)")
            elif old[name] != new[name]:
                found.append(f"{label} {name} differs: {_first_change(old[name], new[name])}")
    if len(found) > limit:
        return [*found[:limit], f"… and {len(found) - limit} more"]
    return found


def _first_change(old: list[str | None], new: list[str | None]) -> str:
    for a, b in zip(old, new, strict=False):
        if a != b:
            return f"{_short(a)} → {_short(b)}"
    return "definition changed"


def _short(value: str | None, width: int = 80) -> str:
    if value is None:
        return "null"
    return value if len(value) <= width else value[: width - 1] + "…"


def catalog_counts(snapshot: Catalog) -> dict[str, int]:
    return {kind: len(objects) for kind, objects in snapshot.items()}


# ---- rows ---------------------------------------------------------------------------------------


@dataclass
class Rows:
    """Which rows of a logical table exist, wherever they live (e.g. public or the archive)."""

    label: str
    count: int
    digest: str
    where: dict[str, int] = field(default_factory=dict)  # table → rows found there
    ids: list[str] | None = None  # kept when small enough to name what went missing

    def missing_from(self, later: Rows, allowed: set[str]) -> list[str]:
        """Ids of these rows that `later` lacks, but for `allowed` ones (needs both id lists)."""
        if self.ids is None or later.ids is None:
            return []
        return sorted(set(self.ids) - set(later.ids) - allowed)

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "digest": self.digest, "where": self.where}


def rows(db_url: str, label: str, tables: list[str], *, id_column: str = "id",
         keep_ids: int = 200_000) -> Rows:
    """Ids of the rows of `tables` (those that exist), as one set: count, md5, where they are."""
    try:
        with service_connection(db_url) as conn:
            present = [t for t in tables
                       if (r := conn.execute("select to_regclass(%s)", (t,)).fetchone())
                       and r[0] is not None]
            where: dict[str, int] = {}
            parts = []
            for table in present:
                schema, name = table.split(".", 1)
                source = sql.SQL("select {}::text as id from {}.{}").format(
                    sql.Identifier(id_column), sql.Identifier(schema), sql.Identifier(name))
                counted = conn.execute(sql.SQL("select count(*) from ({}) s").format(source)
                                       ).fetchone()
                where[table] = int(counted[0]) if counted else 0
                parts.append(source)
            if not parts:
                return Rows(label, 0, "", where, [])
            union = sql.SQL(" union all ").join(parts)
            row = conn.execute(sql.SQL(
                "select count(*), coalesce(md5(string_agg(id, ',' order by id)), '') "
                "from ({}) s").format(union)).fetchone()
            count, digest = (int(row[0]), str(row[1])) if row else (0, "")
            ids = None
            if count <= keep_ids:
                ids = [r[0] for r in conn.execute(union).fetchall()]
    except psycopg.Error as err:
        raise TargetError(f"reading {label} failed: {first_line(err)}") from err
    return Rows(label, count, digest, where, ids)


def kept(before: Rows, after: Rows, allowed: set[str] | None = None) -> list[str]:
    """What of `before` is not in `after` (empty: every row is still there, maybe elsewhere).
    `allowed`: ids that may have gone (removed on purpose, e.g. by a smoke check's clean-up)."""
    allowed = allowed or set()
    lost = before.missing_from(after, allowed)
    if lost:
        return [f"{before.label}: {len(lost)} row(s) lost, e.g. {', '.join(lost[:3])}"]
    if (before.ids is None or after.ids is None) and (
            after.count < before.count - len(allowed)
            or (not allowed and after.count == before.count and after.digest != before.digest)):
        return [f"{before.label}: {before.count} row(s) before, {after.count} after"]
    return []


# ---- witness data ------------------------------------------------------------------------------

# Two users of the rehearsal's own (not the smoke cast, which smoke checks delete at their end).
WITNESS_USERS = {
    "attendee": ("4e4e0000-0000-4000-8000-000000000001", "Rehearsal witness attendee"),
    "mvp_dealer": ("4e4e0000-0000-4000-8000-000000000002", "Rehearsal witness MVP dealer"),
}


def write_witness(api_url: str, anon_key: str, jwt_secret: str, db_url: str,
                  timeout: float = 15.0) -> dict[str, str]:
    """Seed two witness users, then through the API as the app would: a DM (attendee → MVP
    dealer) and the MVP dealer's report of it. Returns their ids."""
    attendee, mvp = WITNESS_USERS["attendee"][0], WITNESS_USERS["mvp_dealer"][0]
    try:
        with service_connection(db_url) as conn, conn.transaction():
            insert_auth_users(conn, [(uid, f"rehearsal+{role}@rollout.invalid", name)
                                     for role, (uid, name) in WITNESS_USERS.items()])
            upsert_profiles(conn, [(uid, role, name)
                                   for role, (uid, name) in WITNESS_USERS.items()])
    except psycopg.Error as err:
        raise TargetError(f"seeding the witness users failed: {first_line(err)}") from err

    def rpc(user: str, fn: str, body: dict[str, Any]) -> str:
        headers = {"apikey": anon_key, "Authorization": f"Bearer {mint_token(jwt_secret, user)}",
                   "Content-Type": "application/json"}
        try:
            response = httpx.post(f"{api_url.rstrip('/')}/rest/v1/rpc/{fn}", json=body,
                                  headers=headers, timeout=timeout)
        except httpx.HTTPError as err:
            raise TargetError(f"{fn}: {type(err).__name__}") from err
        if response.status_code != 200:
            raise TargetError(f"{fn} answered HTTP {response.status_code}: "
                              f"{response.text[:200]}")
        return str(response.json())

    message = rpc(attendee, "send_direct_message", {
        "p_recipient_id": mvp, "p_message_text": "Rehearsal: this message must survive rollback"})
    report = rpc(mvp, "report_message", {"p_message_id": message,
                                         "p_reason": "rehearsal: this report must survive"})
    return {"message_id": message, "report_id": report}


def remove_witness(db_url: str) -> dict[str, int]:
    """Delete the witness users and everything that references them. Idempotent."""
    try:
        with service_connection(db_url) as conn:
            return delete_cast(conn, [uid for uid, _ in WITNESS_USERS.values()], [])
    except psycopg.Error as err:
        raise TargetError(f"removing the witness users failed: {first_line(err)}") from err


def owned_rows(db_url: str, user_ids: list[str]) -> set[str]:
    """Ids of the messages and reports in conversations of these users (or sent, reported by
    them): what deleting them with `delete_cast` takes away, on purpose."""
    queries = {
        "public.messages": """select m.id::text from public.messages m
             where m.sender_id = any(%(u)s::uuid[]) or m.conversation_id in (
                   select conversation_id from public.conversation_participants
                    where user_id = any(%(u)s::uuid[]))""",
        "public.reported_messages": """select r.id::text from public.reported_messages r
             join public.messages m on m.id = r.message_id
             where r.reported_by = any(%(u)s::uuid[]) or m.sender_id = any(%(u)s::uuid[])
                or m.conversation_id in (select conversation_id
                     from public.conversation_participants where user_id = any(%(u)s::uuid[]))""",
    }
    found: set[str] = set()
    try:
        with service_connection(db_url) as conn:
            for table, query in queries.items():
                if table_exists(conn, table):
                    found |= {r[0] for r in conn.execute(query, {"u": user_ids}).fetchall()}
    except psycopg.Error as err:
        raise TargetError(f"reading the demo rows failed: {first_line(err)}") from err
    return found


def has_row(db_url: str, tables: list[str], row_id: str) -> str | None:
    """The first of `tables` (that exists) holding a row with this id, or None."""
    with service_connection(db_url) as conn:
        for table in tables:
            found = conn.execute("select to_regclass(%s)", (table,)).fetchone()
            if not found or found[0] is None:
                continue
            schema, name = table.split(".", 1)
            hit = conn.execute(sql.SQL("select 1 from {}.{} where id::text = %s").format(
                sql.Identifier(schema), sql.Identifier(name)), (row_id,)).fetchone()
            if hit:
                return table
    return None
