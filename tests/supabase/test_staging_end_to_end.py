"""plans/staging.yaml end to end against a Supabase stand-in: the real CLI, a real PostgreSQL 15
with pg_cron (what Supabase runs), and the Management API faked at the HTTP boundary.

The fake (tests/supabase/conftest.py) follows the recorded request/response shapes and rules
(rate limits, verify_jwt, reserved secrets); here it is served over real HTTP on 127.0.0.1 so
the CLI subprocess talks to it exactly as it would to api.supabase.com. Its function gateway
checks verify_jwt as the platform does and then, in the main test, runs the *uploaded files*
in a real Deno worker with the platform's environment (`SUPABASE_JWKS`, `SUPABASE_SECRET_KEYS`,
`SUPABASE_DB_URL`, and the project's function secrets), standing in for the hosted edge
runtime. Everything SQL-side is real: migration, maintenance window, pg_cron job reading Vault,
flags, journal, rollback.
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
from rollout.adapters.local_stack.processes import spawn, start_on_port, stop_pid, wait_for_port
from rollout.adapters.local_stack.stack import DENO_NPM_FLAGS, deno_bin
from rollout.checks import smoke
from rollout.engine.plan import load_plan
from tests.supabase.conftest import REF, TOKEN, FakeSupabase, StoredFunction, parse_deploy_form
from tests.supabase.test_pg_cron import CronServer, cron_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
SERVICE_KEY = "service-role-key-for-the-staging-rehearsal-0123456789"
SECRET_KEY = "sb_secret_staging-rehearsal-0123456789abcdef"
JWT_SECRET = "staging-jwt-secret-with-at-least-thirty-two-characters"


class EdgeRuntime:
    """The hosted edge runtime, stood in for: each deployed bundle (the files the deploy
    uploaded, as the fake keeps them) runs in its own Deno worker with what the platform gives
    a function; a new bundle hash gets a new worker."""

    def __init__(self, fake: FakeSupabase, db_url: str, root: Path) -> None:
        self.fake, self.db_url, self.root = fake, db_url, root
        self.workers: dict[tuple[str, str], int] = {}  # (slug, bundle hash) → port
        self.pids: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, stored: StoredFunction, request: httpx.Request) -> httpx.Response:
        with self.lock:
            port = self._worker(stored)
        rest = request.url.path.split(f"/functions/v1/{stored.slug}", 1)[1]
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        return httpx.request(request.method, f"http://127.0.0.1:{port}/{stored.slug}{rest}",
                             headers=headers, content=request.content, timeout=30)

    def _worker(self, stored: StoredFunction) -> int:
        key = (stored.slug, stored.ezbr_sha256)
        if key in self.workers:
            return self.workers[key]
        bundle = self.root / f"{stored.slug}-{stored.ezbr_sha256[:12]}"
        for rel, content in stored.files.items():
            (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
            (bundle / rel).write_bytes(content)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DENO_DIR")}
        env |= {"SUPABASE_DB_URL": self.db_url, "SUPABASE_JWKS": json.dumps(self.fake.jwks()),
                "SUPABASE_SECRET_KEYS": json.dumps({"default": SECRET_KEY}), **self.fake.secrets}
        log = bundle / "worker.log"

        def start(port: int) -> int:
            pid = spawn([deno_bin(), "run", *DENO_NPM_FLAGS, "--config", str(bundle / "deno.json"),
                         "--lock", str(bundle / "deno.lock"), "--frozen",
                         str(bundle / stored.entrypoint)],
                        {**env, "DENO_SERVE_ADDRESS": f"tcp:127.0.0.1:{port}"}, log, cwd=bundle)
            self.pids.append(pid)
            wait_for_port(port, pid, f"function {stored.slug}", log)
            return port

        port = start_on_port(start)
        self.workers[key] = port
        return port

    def close(self) -> None:
        for pid in self.pids:
            stop_pid(pid)


class FakeHttp(ThreadingHTTPServer):
    fake: FakeSupabase
    runtime: EdgeRuntime | None = None


class Handler(BaseHTTPRequestHandler):
    server: FakeHttp

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        request = httpx.Request(self.command, f"https://api.supabase.com{self.path}",
                                headers=dict(self.headers.items()), content=body)
        if self.path.startswith("/functions/v1/"):
            response = self.server.fake.invoke(request, self.server.runtime)
        else:
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
def server() -> Iterator[FakeHttp]:
    server = FakeHttp(("127.0.0.1", 0), Handler)
    server.fake = FakeSupabase()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        if server.runtime is not None:
            server.runtime.close()


@pytest.fixture
def supabase(server: FakeHttp) -> tuple[FakeSupabase, str]:
    return server.fake, f"http://127.0.0.1:{server.server_address[1]}"


# The app's tables and functions in public, the journal and the archive; extensions stay.
RESET_APP = """
drop schema if exists messaging_v2_archive, rollout cascade;
do $$
declare
  r record;
begin
  for r in select c.oid::regclass as t from pg_class c
            where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
              and not exists (select from pg_depend d where d.objid = c.oid and d.deptype = 'e')
  loop
    execute format('drop table if exists %s cascade', r.t);
  end loop;
  for r in select p.oid::regprocedure as f from pg_proc p
            where p.pronamespace = 'public'::regnamespace
              and not exists (select from pg_depend d where d.objid = p.oid and d.deptype = 'e')
  loop
    execute format('drop function if exists %s cascade', r.f);
  end loop;
end
$$;
"""


@pytest.fixture
def project(cron_server: CronServer) -> str:  # noqa: F811
    """The staging project's database as it is today: Supabase roles, the legacy app, Vault."""
    with psycopg.connect(cron_server.url, autocommit=True) as conn:
        conn.execute("select cron.unschedule(jobid) from cron.job")
        conn.execute("truncate vault.secrets, net._http_response")
        conn.execute("delete from cron.job_run_details")
        # Production's schema is not re-runnable (it is a dump): start each test from nothing.
        conn.execute(RESET_APP)
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


def environment(project: str, url: str, state: Path) -> dict[str, str]:
    return {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "ci",
            "SUPABASE_PROJECT_REF": REF, "DATABASE_URL": project, "SUPABASE_URL": url,
            "SUPABASE_API_URL": url, "SUPABASE_ACCESS_TOKEN": TOKEN,
            "SUPABASE_ANON_KEY": "sb_publishable_staging-rehearsal-0123456789",
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY, "SUPABASE_JWT_SECRET": JWT_SECRET,
            "ROLLOUT_LOAD": "false", "COLUMNS": "200",
            # Debian's pg_cron is 1.4 (no 'N seconds'; Supabase runs 1.6).
            "ROLLOUT_LEGACY_SYNC_SCHEDULE": "* * * * *"}


def variant(tmp_path: Path, old: str, new: str) -> str:
    """plans/staging.yaml with one edit, written beside the test's state."""
    text = (ROOT / "plans" / "staging.yaml").read_text()
    assert old in text
    path = tmp_path / "staging-variant.yaml"
    path.write_text(text.replace(old, new))
    return str(path)


def call(url: str, slug: str, headers: dict[str, str], body: object) -> httpx.Response:
    return httpx.post(f"{url}/functions/v1/{slug}", headers=headers, json=body, timeout=60)


def test_staging_plan_applies_and_rolls_back(project: str, server: FakeHttp,
                                             supabase: tuple[FakeSupabase, str],
                                             tmp_path: Path) -> None:
    fake, url = supabase
    server.runtime = EdgeRuntime(fake, project, tmp_path / "edge-runtime")
    fake.jwt_secret = JWT_SECRET
    fake.realtime, fake.window, fake.rate_limit = True, 2.0, 1  # 429s that clear in 2 s
    env = environment(project, url, tmp_path)
    applied = run(["apply", "plans/staging.yaml", "--yes", "--json"], env)
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr
    for secret in (TOKEN, SERVICE_KEY, JWT_SECRET, url, REF):
        assert secret not in applied.stdout + applied.stderr
    steps = {s["step_id"]: s["status"] for s in json.loads(applied.stdout)["steps"]}
    assert steps["migrate"] == "succeeded" and steps["deploy-functions"] == "succeeded"

    assert {f.slug: (f.status, f.verify_jwt) for f in fake.functions.values()} == {
        "send-broadcast": ("ACTIVE", False), "reset-broadcast-quotas": ("ACTIVE", False)}
    assert any(r.url.path.endswith("/functions/v1/send-broadcast/health") for r in probes(fake))
    assert fake.rate_limited > 0  # 429s happened and were waited out
    # What the release fingerprint counts is what was uploaded (deno.lock included).
    uploaded = {path for r in fake.calls("POST", "functions/deploy")
                for path in parse_deploy_form(r)[1]}
    plan = load_plan(ROOT / "plans" / "staging.yaml", env)
    shipped = {p.relative_to(ROOT).as_posix() for planned in plan.steps
               if planned.spec.kind == "edge.deploy" for p in planned.step.shipped_files(ROOT)}
    assert uploaded == shipped and "deno.lock" in uploaded
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

    # Smoke the deployed functions as the platform serves them (verify_jwt off, so they
    # decide): a user token signed by the project's ES256 key and a legacy HS256 one both
    # send; the nightly reset takes the secret key in apikey and nothing else.
    cast = smoke.seed_demo(project)
    body = {"show_id": cast.show_id, "recipient_roles": ["attendee"], "message": "hi"}
    for legacy in (False, True):
        bearer = {"Authorization": f"Bearer {fake.user_token(cast.organizer, legacy=legacy)}"}
        sent = call(url, "send-broadcast", bearer, {**body, "message": f"hi {legacy}"})
        assert sent.status_code == 200 and sent.json()["message_id"], sent.text
    forged = fake.user_token(cast.organizer).rsplit(".", 1)[0] + ".AAAA"
    assert call(url, "send-broadcast", {"Authorization": f"Bearer {forged}"}, body
                ).status_code == 401
    assert call(url, "reset-broadcast-quotas", {"apikey": SECRET_KEY}, {}).status_code == 200
    for wrong in ({"apikey": "sb_publishable_staging-rehearsal-0123456789"},
                  {"Authorization": f"Bearer {fake.user_token(cast.organizer)}"}):
        assert call(url, "reset-broadcast-quotas", wrong, {}).status_code in (401, 403)
    assert server.runtime is not None  # the real functions answered all of the above
    assert {slug for slug, _ in server.runtime.workers} == {"send-broadcast",
                                                              "reset-broadcast-quotas"}

    # `rollout check errors` reads the edge logs from the ClickHouse logs endpoint.
    fake.edge_logs["send-broadcast"] = [200] * 998 + [500] * 2
    errors = run(["check", "errors", "--plan", "plans/staging.yaml", "--json"], env)
    assert errors.returncode == 1, errors.stdout + errors.stderr  # 0.2 % > 0.1 %
    assert "2 of 1000" in errors.stdout and fake.calls("GET", "analytics/endpoints/logs")

    # The nightly call: pg_cron says "succeeded", the function answered 401; status says so.
    # (The run id is pg_cron's own: its scheduler may have run the minutely legacy sync.)
    with psycopg.connect(project, autocommit=True) as conn:
        conn.execute(
            "insert into cron.job_run_details (jobid, job_pid, database, username, command,"
            " status, return_message, start_time, end_time) select jobid, 1, 'postgres',"
            " 'postgres', command, 'succeeded', '1 row', now(), now() from cron.job"
            " where jobname = 'reset-broadcast-quotas'")
        conn.execute("insert into net._http_response (id, status_code, created)"
                     " values (1, 401, clock_timestamp())")
    cron = run(["cron", "status", "plans/staging.yaml"], env)
    assert cron.returncode == 1 and "HTTP 401" in cron.stdout, cron.stdout + cron.stderr

    back = run(["rollback", "plans/staging.yaml", "--yes"], env)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr
    assert fake.functions == {}  # neither function existed before: both deleted
    assert "JWT_SECRET" not in fake.secrets  # created by the plan: removed
    with psycopg.connect(project) as conn:
        assert conn.execute("select count(*) from cron.job").fetchone() == (0,)
        assert conn.execute("select to_regclass('public.feature_flags')").fetchone() == (None,)
        assert conn.execute(  # production's earlier-shape quota table is back
            "select count(*) from information_schema.columns where table_schema = 'public' "
            "and table_name = 'broadcast_quotas' and column_name = 'pre_show_remaining'"
        ).fetchone() == (1,)
        assert conn.execute("select count(*) from public.messages").fetchone()[0] >= 200  # type: ignore[index]


def probes(fake: FakeSupabase) -> list[httpx.Request]:
    return [r for r in fake.requests if r.url.path.startswith("/functions/v1/")]


def test_a_probe_the_platform_would_refuse_fails_the_deploy(
        project: str, supabase: tuple[FakeSupabase, str], tmp_path: Path) -> None:
    # verify_jwt on, and the only JWT the probe can sign uses a secret the project does not
    # accept (it rotated to signing keys): the platform answers 401, the deploy step fails and
    # is rolled back, and the run says so.
    fake, url = supabase
    plan = variant(tmp_path, "{name: send-broadcast, verify_jwt: false,",
                   "{name: send-broadcast, verify_jwt: true,")
    applied = run(["apply", plan, "--yes"], environment(project, url, tmp_path))
    assert applied.returncode == 1, applied.stdout[-3000:] + applied.stderr
    assert "HTTP 401" in applied.stdout + applied.stderr
    assert [r.headers.get("authorization", "")[:10] for r in probes(fake)] == ["Bearer eyJ"]
    assert fake.functions == {}  # the deploy was undone


def test_verify_jwt_without_any_jwt_for_the_probe_is_refused_before_anything_changes(
        project: str, supabase: tuple[FakeSupabase, str], tmp_path: Path) -> None:
    # A project on signing keys and new API keys: no legacy secret, a publishable key.
    fake, url = supabase
    plan = variant(tmp_path, "{name: send-broadcast, verify_jwt: false,",
                   "{name: send-broadcast, verify_jwt: true,")
    env = {**environment(project, url, tmp_path), "SUPABASE_JWT_SECRET": "",
           "SUPABASE_LEGACY_JWT": "false"}
    applied = run(["apply", plan, "--yes"], env)
    assert applied.returncode == 2, applied.stdout[-3000:] + applied.stderr
    assert "verify_jwt on" in applied.stderr
    assert fake.calls("POST", "functions/deploy") == []


def test_a_project_on_signing_keys_gets_no_legacy_secret(
        project: str, supabase: tuple[FakeSupabase, str], tmp_path: Path) -> None:
    # The plan says the project no longer uses the legacy JWT secret: the functions' JWT_SECRET
    # (left from before) is removed, the deploy and its probes need no JWT (verify_jwt off).
    fake, url = supabase
    fake.secrets["JWT_SECRET"] = "the-old-legacy-secret-still-set-on-the-project"
    env = {**environment(project, url, tmp_path), "SUPABASE_JWT_SECRET": "",
           "SUPABASE_LEGACY_JWT": "false"}
    applied = run(["apply", "plans/staging.yaml", "--yes", "--json"], env)
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr
    steps = {s["step_id"]: s["status"] for s in json.loads(applied.stdout)["steps"]}
    assert steps["no-legacy-jwt-secret"] == "succeeded"
    assert steps["function-secrets"] == "skipped"
    assert "JWT_SECRET" not in fake.secrets
    assert all("authorization" not in r.headers for r in probes(fake))
    assert fake.functions["send-broadcast"].verify_jwt is False
    back = run(["rollback", "plans/staging.yaml", "--yes"], env)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr


def test_a_rollback_that_leaves_the_new_code_live_does_not_succeed(
        project: str, supabase: tuple[FakeSupabase, str], tmp_path: Path) -> None:
    fake, url = supabase
    for slug in ("send-broadcast", "reset-broadcast-quotas"):
        fake.seed(slug, {f"functions/{slug}/index.ts": b"Deno.serve(() => new Response());"},
                  f"functions/{slug}/index.ts", version=7)
    before = {slug: f.ezbr_sha256 for slug, f in fake.functions.items()}
    env = environment(project, url, tmp_path)
    applied = run(["apply", "plans/staging.yaml", "--yes"], env)
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr
    released = {slug: f.ezbr_sha256 for slug, f in fake.functions.items()}
    assert all(released[s] != before[s] for s in before)

    fake.ignore_activation = True  # the platform says 200 to the bulk update, switches nothing
    back = run(["rollback", "plans/staging.yaml", "--yes"], env)
    assert back.returncode == 3, back.stdout[-3000:] + back.stderr
    assert "the release's bundle is still live" in back.stdout + back.stderr
    assert {s: f.ezbr_sha256 for s, f in fake.functions.items()} == released

    fake.ignore_activation = False  # a person fixes it; the same rollback now completes
    again = run(["rollback", "plans/staging.yaml", "--yes"], env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert {s: f.ezbr_sha256 for s, f in fake.functions.items()} == before
