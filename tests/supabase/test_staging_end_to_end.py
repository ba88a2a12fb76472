"""plans/staging.yaml end to end against a Supabase stand-in: the real CLI, a real PostgreSQL 15
with pg_cron (what Supabase runs), and the Management API faked at the HTTP boundary.

The fake (tests/supabase/conftest.py) follows the published request/response shapes; here it is
served over real HTTP on 127.0.0.1 so the CLI subprocess talks to it exactly as it would to
api.supabase.com. It also answers the deployed functions' health URL, standing in for the
hosted edge runtime. Everything SQL-side is real: migration, maintenance window, pg_cron job
reading Vault, flags, journal, rollback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest

from rollout.adapters.local_stack.bootstrap import apply_bootstrap
from tests.supabase.conftest import REF, TOKEN, FakeSupabase
from tests.supabase.test_pg_cron import CronServer, cron_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
SERVICE_KEY = "service-role-key-for-the-staging-rehearsal-0123456789"
JWT_SECRET = "staging-jwt-secret-with-at-least-thirty-two-characters"


class FakeHttp(ThreadingHTTPServer):
    fake: FakeSupabase


class Handler(BaseHTTPRequestHandler):
    server: FakeHttp

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/functions/v1/"):
            slug = self.path.split("/")[3]
            live = slug in self.server.fake.functions
            self._reply(200 if live else 404, b'{"status":"ok","db":"ok"}' if live else b"{}",
                        {"content-type": "application/json"})
            return
        request = httpx.Request(self.command, f"https://api.supabase.com{self.path}",
                                headers=dict(self.headers.items()), content=body)
        response = self.server.fake.handle(request)
        self._reply(response.status_code, response.content, dict(response.headers))

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


@pytest.fixture
def supabase() -> Iterator[tuple[FakeSupabase, str]]:
    fake = FakeSupabase()
    server = FakeHttp(("127.0.0.1", 0), Handler)
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def project(cron_server: CronServer) -> str:  # noqa: F811
    """The staging project's database as it is today: Supabase roles, the legacy app, Vault."""
    with psycopg.connect(cron_server.url, autocommit=True) as conn:
        conn.execute("select cron.unschedule(jobid) from cron.job")
        conn.execute("truncate vault.secrets")
        apply_bootstrap(conn)
        for name in ("legacy_baseline.sql", "local/demo_seed.sql"):
            conn.execute((ROOT / "migrations" / name).read_text().encode())
        conn.execute("select vault.create_secret(%s, 'project_url')",
                     ("https://abcdefghijklmnopqrst.supabase.co",))
        conn.execute("select vault.create_secret(%s, 'service_role_key')", (SERVICE_KEY,))
    return cron_server.url


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_staging_plan_applies_and_rolls_back(project: str, supabase: tuple[FakeSupabase, str],
                                             tmp_path: Path) -> None:
    fake, url = supabase
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(tmp_path), "ROLLOUT_OPERATOR": "ci",
           "SUPABASE_PROJECT_REF": REF, "DATABASE_URL": project, "SUPABASE_URL": url,
           "SUPABASE_API_URL": url, "SUPABASE_ACCESS_TOKEN": TOKEN,
           "SUPABASE_ANON_KEY": "anon-key-for-the-staging-rehearsal",
           "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY, "SUPABASE_JWT_SECRET": JWT_SECRET,
           "ROLLOUT_LOAD": "false", "COLUMNS": "200"}
    applied = run(["apply", "plans/staging.yaml", "--yes", "--json"], env)
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr
    for secret in (TOKEN, SERVICE_KEY, JWT_SECRET):
        assert secret not in applied.stdout + applied.stderr
    steps = {s["step_id"]: s["status"] for s in json.loads(applied.stdout)["steps"]}
    assert steps["migrate"] == "succeeded" and steps["deploy-functions"] == "succeeded"

    assert {f.slug: f.status for f in fake.functions.values()} == {
        "send-broadcast": "ACTIVE", "reset-broadcast-quotas": "ACTIVE"}
    assert "JWT_SECRET" in fake.secrets
    with psycopg.connect(project) as conn:
        jobs = conn.execute("select schedule, command from cron.job "
                            "where jobname = 'reset-broadcast-quotas'").fetchall()
        assert len(jobs) == 1 and jobs[0][0] == "0 2 * * *"
        assert "vault.decrypted_secrets" in jobs[0][1] and SERVICE_KEY not in jobs[0][1]
        assert conn.execute("select rollout_percentage from public.feature_flags "
                            "where name = 'messaging_v2_enabled'").fetchone() == (100,)
        journal = conn.execute("select string_agg(detail::text || coalesce(error, ''), ' ') "
                               "from rollout.step_events").fetchone()
        assert journal and all(s not in (journal[0] or "") for s in (TOKEN, JWT_SECRET))
        assert conn.execute("select count(*) from pg_trigger "
                            "where tgname = 'rollout_maintenance_guard'").fetchone() == (0,)

    back = run(["rollback", "plans/staging.yaml", "--yes"], env)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr
    assert fake.functions == {}  # neither function existed before: both deleted
    assert "JWT_SECRET" not in fake.secrets  # created by the plan: removed
    with psycopg.connect(project) as conn:
        assert conn.execute("select count(*) from cron.job").fetchone() == (0,)
        assert conn.execute("select to_regclass('public.broadcast_quotas')").fetchone() == (None,)
        assert conn.execute("select count(*) from public.messages").fetchone()[0] >= 200  # type: ignore[index]
