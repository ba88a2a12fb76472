"""A throw-away local stack for the smoke and load checks: real PostgreSQL, gateway and Deno.

One stack for this package's tests, in a temp dir under /var/tmp (the embedded server runs as an
unprivileged user when we are root, so the directory must be world-traversable), with the
legacy baseline, the local demo seed and the v2 migration applied and `send-broadcast`
deployed; always stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from rollout.adapters.local_stack.postgres import shared_dir
from rollout.adapters.local_stack.stack import LocalStack

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
APPLY_ORDER = (
    MIGRATIONS / "legacy_baseline.sql",
    MIGRATIONS / "local" / "demo_seed.sql",
    MIGRATIONS / "production_messaging_system.sql",
)
# Every table the demo or load data can touch: the fingerprint of these must come back
# unchanged after seed + remove (or after a full run that cleans up).
TABLES = (
    "auth.users", "public.profiles", "public.shows", "public.show_participants",
    "public.conversations", "public.conversation_participants", "public.messages",
    "public.broadcast_quotas", "public.reported_messages", "public.moderated_message_texts",
)


@dataclass
class Target:
    stack: LocalStack
    api_url: str
    anon_key: str
    jwt_secret: str
    db_url: str

    @property
    def secrets(self) -> list[str]:
        return [self.anon_key, self.jwt_secret, self.stack.secret("service_role_key")]


@pytest.fixture(scope="package")
def target() -> Iterator[Target]:
    """Package-scoped: stopped as soon as tests/checks is done, even inside a full-suite run."""
    root = Path(tempfile.mkdtemp(prefix="rollout-checks-", dir=shared_dir("rollout-tests")))
    root.chmod(0o755)
    # A developer's fixed ports would collide with their own running stack.
    saved = {k: os.environ.pop(k) for k in ("ROLLOUT_LOCAL_PG_PORT", "ROLLOUT_LOCAL_API_PORT")
             if k in os.environ}
    stack = LocalStack(root)
    try:
        stack.up()
        for path in APPLY_ORDER:
            with psycopg.connect(stack.db_url, autocommit=True) as conn:
                conn.execute(path.read_bytes())
        stack.deploy_function("send-broadcast")
        yield Target(stack, stack.api_url, stack.secret("anon_key"), stack.secret("jwt_secret"),
                     stack.db_url)
    finally:
        stack.down()
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)


def fingerprint(db_url: str) -> dict[str, tuple[int, str]]:
    """(row count, md5 of all rows) per table: equal fingerprints = identical contents."""
    result = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        for table in TABLES:
            row = conn.execute(
                f"select count(*), coalesce(md5(string_agg(t::text, '|' order by t::text)), '')"
                f" from {table} t"  # table names are the constants above
            ).fetchone()
            assert row is not None
            result[table] = (int(row[0]), str(row[1]))
    return result


def counts(db_url: str) -> dict[str, int]:
    return {table: n for table, (n, _) in fingerprint(db_url).items()}
