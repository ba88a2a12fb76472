"""Catalog and row snapshots, to prove that migrations round-trip exactly."""

from __future__ import annotations

from typing import Any

import psycopg

SCHEMAS = ("public", "messaging_v2_archive")

_QUERIES: dict[str, str] = {
    "tables": """
        select n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               obj_description(c.oid, 'pg_class'),
               (select array_agg(a::text order by a::text) from aclexplode(c.relacl) a)
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'v', 'S')
         order by 1, 2""",
    "columns": """
        select n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
               (select array_agg(x::text order by x::text) from aclexplode(a.attacl) x)
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p')
           and a.attnum > 0 and not a.attisdropped
         order by 1, 2, 3""",
    "constraints": """
        select n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated
          from pg_constraint k
          join pg_class c on c.oid = k.conrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s)
         order by 1, 2, 3""",
    "indexes": """
        select schemaname, tablename, indexname, indexdef
          from pg_indexes where schemaname = any(%(schemas)s) order by 1, 2, 3""",
    "policies": """
        select schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
          from pg_policies where schemaname = any(%(schemas)s) order by 1, 2, 3""",
    "functions": """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), md5(p.prosrc), p.prosecdef, p.provolatile,
               p.proconfig::text,
               (select array_agg(a::text order by a::text) from aclexplode(p.proacl) a)
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = any(%(schemas)s)
         order by 1, 2, 3""",
    "triggers": """
        select n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid)
          from pg_trigger t
          join pg_class c on c.oid = t.tgrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s) and not t.tgisinternal
         order by 1, 2, 3""",
}


def schema_snapshot(
    conn: psycopg.Connection, schemas: tuple[str, ...] = SCHEMAS
) -> dict[str, list[tuple[Any, ...]]]:
    """Tables, columns (by name, not position), constraints, indexes, policies, functions,
    triggers and privileges of the given schemas."""
    return {
        kind: conn.execute(query, {"schemas": list(schemas)}).fetchall()
        for kind, query in _QUERIES.items()
    }


def row_snapshot(
    conn: psycopg.Connection, schemas: tuple[str, ...] = SCHEMAS
) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row (columns by name) of every table."""
    tables = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = any(%s) and c.relkind = 'r' order by 1, 2",
        (list(schemas),),
    ).fetchall()
    result: dict[str, tuple[int, str]] = {}
    for schema, table in tables:
        count, digest = conn.execute(
            f'select count(*), md5(coalesce(string_agg(r, e\'\\n\' order by r), \'\')) '
            f"from (select (select jsonb_object_agg(key, value) "
            f"from jsonb_each(to_jsonb(t)))::text r "
            f'from "{schema}"."{table}" t) s'
        ).fetchone()
        result[f"{schema}.{table}"] = (count, digest)
    return result
