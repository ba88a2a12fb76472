"""The Supabase-compatible bootstrap applied to local databases only."""

from __future__ import annotations

from importlib import resources

import psycopg


def bootstrap_sql() -> str:
    return resources.files(__package__).joinpath("bootstrap.sql").read_text()


def apply_bootstrap(conn: psycopg.Connection) -> None:
    """Roles, schema `auth` and default grants, as a new Supabase project has them."""
    conn.execute(bootstrap_sql().encode())
