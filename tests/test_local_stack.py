"""The embedded local stack: up/down by pid, JWT-verified RPC through the gateway."""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest

from rollout.adapters.local_stack.postgres import EmbeddedPostgres, process_alive, shared_dir
from rollout.adapters.local_stack.processes import spawn, start_on_port, stop_pid, wait_for_port
from rollout.adapters.local_stack.stack import LocalStack, deno_bin, sign_user_jwt
from rollout.adapters.targets import LocalFunctions
from rollout.errors import PortTaken, TargetError
from rollout.paths import project_root

SUB = "6f1c2a4e-7d2b-4c1e-9a51-3b0f8e2d9c11"
PROBE_SQL = """
create table if not exists public.rpc_calls (uid uuid, role text, at timestamptz default now());
create or replace function public.whoami(p_note text default null) returns jsonb
language plpgsql volatile as $$
begin
  insert into public.rpc_calls (uid, role) values (auth.uid(), current_user);
  return jsonb_build_object('uid', auth.uid(), 'role', current_user, 'note', p_note);
end $$;
grant insert on public.rpc_calls to anon, authenticated;
create or replace function public.pairs() returns setof jsonb language sql as
$$ select jsonb_build_object('n', g) from generate_series(1, 3) g $$;
create or replace function public.inbox_shaped() returns table (id integer, type text,
  last_message_text text, unread_count integer) language sql as
$$ select 1, 'direct', 'hi', 2 $$;
create or replace function public.write_then_fail() returns void language plpgsql as $$
begin
  insert into public.rpc_calls (uid, role) values (auth.uid(), current_user);
  raise exception using errcode = 'PT409', message = 'changed my mind';
end $$;
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="rollout-stack-", dir=shared_dir("rollout-tests")))
    root.chmod(0o755)
    stack = LocalStack(root)
    stack.up()
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        conn.execute(PROBE_SQL.encode())
    yield stack
    stack.down()


def token(stack: LocalStack, **claims: object) -> str:
    payload = {"sub": SUB, "role": "authenticated", "aud": "authenticated",
               "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, stack.secret("jwt_secret"), algorithm="HS256")


def es256_token(stack: LocalStack, **claims: object) -> str:
    """A user token as a project on asymmetric signing keys issues it."""
    payload = {"sub": SUB, "role": "authenticated", "aud": "authenticated",
               "iat": int(time.time()), "exp": int(time.time()) + 60, **claims}
    return sign_user_jwt(payload, stack.secret("signing_key"))


def rpc(stack: LocalStack, fn: str, body: object, bearer: str | None) -> httpx.Response:
    headers = {"apikey": stack.secret("anon_key")}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx.post(f"{stack.api_url}/rest/v1/rpc/{fn}", json=body, headers=headers, timeout=10)


def calls(stack: LocalStack) -> int:
    with psycopg.connect(stack.db_url) as conn:
        row = conn.execute("select count(*) from public.rpc_calls").fetchone()
    assert row is not None
    return int(row[0])


def test_rpc_runs_as_authenticated_with_the_tokens_subject(stack: LocalStack) -> None:
    response = rpc(stack, "whoami", {"p_note": "hi"}, token(stack))
    assert response.status_code == 200, response.text
    assert response.json() == {"uid": SUB, "role": "authenticated", "note": "hi"}


def test_anon_key_alone_runs_as_anon(stack: LocalStack) -> None:
    response = rpc(stack, "whoami", {}, None)
    assert response.status_code == 200
    assert response.json()["role"] == "anon" and response.json()["uid"] is None


def test_setof_functions_return_json_arrays(stack: LocalStack) -> None:
    assert rpc(stack, "pairs", {}, token(stack)).json() == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_rows_keep_the_functions_column_order_like_postgrest(stack: LocalStack) -> None:
    # PostgREST aggregates with json_agg: keys in column order (jsonb would sort them by length).
    response = rpc(stack, "inbox_shaped", {}, token(stack))
    assert response.text.replace(" ", "") == (
        '[{"id":1,"type":"direct","last_message_text":"hi","unread_count":2}]')


def unsigned(stack: LocalStack) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': SUB, 'role': 'authenticated'})}."


def test_es256_user_tokens_verify_against_the_local_jwks(stack: LocalStack) -> None:
    response = rpc(stack, "whoami", {"p_note": "es"}, es256_token(stack))
    assert response.status_code == 200, response.text
    assert response.json() == {"uid": SUB, "role": "authenticated", "note": "es"}


def test_new_api_keys_run_as_anon_and_service_role(stack: LocalStack) -> None:
    for key, role in (("publishable_key", "anon"), ("secret_key", "service_role")):
        headers = {"apikey": stack.secret(key)}
        response = httpx.post(f"{stack.api_url}/rest/v1/rpc/whoami", json={}, headers=headers)
        assert response.json()["role"] == role
        headers["Authorization"] = f"Bearer {stack.secret(key)}"  # as supabase-js sends it
        response = httpx.post(f"{stack.api_url}/rest/v1/rpc/whoami", json={}, headers=headers)
        assert response.json()["role"] == role


def test_get_runs_the_function_read_only_like_postgrest(stack: LocalStack) -> None:
    before = calls(stack)
    response = httpx.get(f"{stack.api_url}/rest/v1/rpc/whoami", params={"p_note": "x"},
                         headers={"apikey": stack.secret("anon_key"),
                                  "Authorization": f"Bearer {token(stack)}"})
    assert response.status_code == 405 and response.json()["code"] == "25006"
    assert calls(stack) == before
    read = httpx.get(f"{stack.api_url}/rest/v1/rpc/pairs",
                     headers={"apikey": stack.secret("anon_key"),
                              "Authorization": f"Bearer {token(stack)}"})
    assert read.status_code == 200 and len(read.json()) == 3


def test_a_failed_call_writes_nothing_and_leaves_the_pool_clean(stack: LocalStack) -> None:
    # Begin, claims, call and commit go out pipelined: the call's error is the answer, its
    # write is rolled back, and the connection serves the next calls (no aborted transaction).
    before = calls(stack)
    for _ in range(25):  # more than the pool's connections
        failed = rpc(stack, "write_then_fail", {}, token(stack))
        assert failed.status_code == 409 and failed.json()["message"] == "changed my mind"
    assert calls(stack) == before
    assert rpc(stack, "whoami", {}, token(stack)).json()["uid"] == SUB
    assert calls(stack) == before + 1


def test_cors_preflight_on_rest_answers_like_hosted(stack: LocalStack) -> None:
    response = httpx.options(f"{stack.api_url}/rest/v1/rpc/whoami", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,apikey,content-type,x-client-info"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "apikey" in response.headers["access-control-allow-headers"]
    assert response.content == b""


def test_rpc_body_reading_stops_at_the_limit(stack: LocalStack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"p_note": "'
        for _ in range(2048):
            yield b"x" * 1024  # 2 MiB, streamed without a content-length
        yield b'"}'

    response = httpx.post(f"{stack.api_url}/rest/v1/rpc/whoami", content=chunks(),
                          headers={"apikey": stack.secret("anon_key"),
                                   "Authorization": f"Bearer {token(stack)}"}, timeout=30)
    assert response.status_code == 413 and response.json()["code"] == "PGRST413"


@pytest.mark.parametrize("kind", ["unsigned", "expired", "wrong-secret", "garbage",
                                  "escalated-role", "future-iat", "role-not-string",
                                  "wrong-aud", "es256-other-key"])
def test_bad_tokens_get_401_and_never_reach_the_database(stack: LocalStack, kind: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    bad = {
        "unsigned": unsigned(stack),
        "expired": token(stack, exp=int(time.time()) - 40),
        "wrong-secret": jwt.encode({"sub": SUB, "role": "authenticated"}, "not-the-secret" * 3,
                                   algorithm="HS256"),
        "garbage": "not.a.jwt",
        "escalated-role": token(stack, role="postgres"),
        "future-iat": token(stack, iat=int(time.time()) + 120),
        "role-not-string": token(stack, role=["authenticated"]),
        "wrong-aud": token(stack, aud="somebody-else"),
        "es256-other-key": sign_user_jwt({"sub": SUB, "role": "authenticated",
                                          "aud": "authenticated",
                                          "exp": int(time.time()) + 60}, other),
    }[kind]
    before = calls(stack)
    response = rpc(stack, "whoami", {}, bad)
    assert response.status_code == 401
    assert set(response.json()) >= {"code", "message"}
    assert calls(stack) == before


def test_a_token_verified_before_is_still_refused_once_it_expires(stack: LocalStack) -> None:
    """The gateway keeps verified tokens (as PostgREST's JWT cache), never their expiry: a token
    accepted one second is refused, with PostgREST's answer, the second it expires."""
    expiring = token(stack, exp=int(time.time()) - 28)  # within the 30 s clock skew, for now
    assert rpc(stack, "whoami", {}, expiring).json()["uid"] == SUB  # verified, and kept
    time.sleep(3)
    before = calls(stack)
    refused = rpc(stack, "whoami", {}, expiring)
    assert (refused.status_code, refused.json()["code"]) == (401, "PGRST303")
    assert refused.json()["message"] == "JWT expired"
    assert calls(stack) == before


def test_unknown_function_and_arguments_are_404_like_postgrest(stack: LocalStack) -> None:
    assert rpc(stack, "nope", {}, token(stack)).json()["code"] == "PGRST202"
    assert rpc(stack, "whoami", {"p_unknown": 1}, token(stack)).status_code == 404


def test_invalid_json_body_is_400(stack: LocalStack) -> None:
    response = httpx.post(f"{stack.api_url}/rest/v1/rpc/whoami", content=b"{not json",
                          headers={"apikey": stack.secret("anon_key"),
                                   "Authorization": f"Bearer {token(stack)}"})
    assert response.status_code == 400 and response.json()["code"] == "PGRST102"


def test_undeployed_function_is_404(stack: LocalStack) -> None:
    response = httpx.post(f"{stack.api_url}/functions/v1/send-broadcast", json={})
    assert response.status_code == 404


def test_up_again_reports_the_running_stack(stack: LocalStack) -> None:
    pids = (stack.postgres.pid(), stack.state.gateway_pid)
    assert LocalStack(stack.dir.parent).up() is False
    again = LocalStack(stack.dir.parent)
    assert (again.postgres.pid(), again.state.gateway_pid) == pids


def test_secrets_are_owner_only(stack: LocalStack) -> None:
    for name in ("jwt_secret", "anon_key", "service_role_key", "signing_key", "secret_key"):
        assert (stack.secrets_dir / name).stat().st_mode & 0o077 == 0
    assert stack.secrets_dir.stat().st_mode & 0o077 == 0


def test_down_leaves_no_process_behind() -> None:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="rollout-stack-", dir=shared_dir("rollout-tests")))
    root.chmod(0o755)
    stack = LocalStack(root)
    stack.up()
    stack.deploy_function("send-broadcast")
    pids = [stack.postgres.pid(), stack.state.gateway_pid,
            *(w.pid for w in stack.state.functions.values())]
    assert all(pid and process_alive(pid) for pid in pids)
    stopped = stack.down()
    assert set(stopped) == {"postgres", "gateway", "function send-broadcast"}
    time.sleep(0.2)
    assert not any(process_alive(pid) for pid in pids)


def test_taken_port_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import tempfile

    from rollout.errors import StackError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("ROLLOUT_LOCAL_PG_PORT", str(port))
        root = Path(tempfile.mkdtemp(prefix="rollout-stack-", dir=shared_dir("rollout-tests")))
        root.chmod(0o755)
        with pytest.raises(StackError, match=f"port {port}.*already in use"):
            LocalStack(root).up()


@contextmanager
def port_held_by_another_process() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_port_taken_before_postgres_binds_it_is_traded_for_a_free_one(tmp_path: Path) -> None:
    """Between finding a port free and binding it another process (a parallel stack, an
    outgoing connection) can take it: the server starts on another port instead of failing."""
    root = Path(tempfile.mkdtemp(prefix="rollout-stack-", dir=shared_dir("rollout-tests")))
    root.chmod(0o755)
    server = EmbeddedPostgres.for_state_dir(root, 0)
    server.init()
    tried: list[int] = []

    def start(port: int) -> None:
        tried.append(port)
        server.port = port
        server.start()

    try:
        with port_held_by_another_process() as taken:
            start_on_port(start, taken)
            assert tried[0] == taken and len(tried) == 2 and tried[1] != taken
            assert server.pid() is not None
            with psycopg.connect(server.url(), autocommit=True) as conn:
                assert conn.execute("show port").fetchone() == (str(tried[1]),)
            server.stop()
            with pytest.raises(PortTaken):  # the user's own choice is never traded
                start_on_port(start, taken, fixed=True)
    finally:
        server.stop()


def test_a_deno_server_is_up_only_when_it_listens_itself(tmp_path: Path) -> None:
    """Someone else listening on the port is not our server being up: its death is PortTaken."""
    script = tmp_path / "serve.ts"
    script.write_text('Deno.serve(() => new Response("ok"));\n')
    log = tmp_path / "serve.log"
    with port_held_by_another_process() as taken:
        pid = spawn([deno_bin(), "run", "--allow-net", "--allow-env", str(script)],
                    {**os.environ, "DENO_SERVE_ADDRESS": f"tcp:127.0.0.1:{taken}"}, log, tmp_path)
        try:
            with pytest.raises(PortTaken, match="exited during start-up"):
                wait_for_port(taken, pid, "the test server", log)
        finally:
            stop_pid(pid)


def test_the_gateway_honours_each_functions_verify_jwt(stack: LocalStack) -> None:
    url = f"{stack.api_url}/functions/v1/send-broadcast"
    stack.deploy_function("send-broadcast", verify_jwt=True)
    try:
        for bearer in (None, "garbage", token(stack, exp=int(time.time()) - 40),
                       stack.secret("publishable_key")):
            headers = {"apikey": stack.secret("anon_key")}
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            refused = httpx.post(url, json={}, headers=headers, timeout=30)
            assert (refused.status_code, refused.json()) == (401, {"msg": "Invalid JWT"})
        assert httpx.options(url, timeout=30).status_code in (200, 204)  # preflight passes
        for jwt_ in (stack.secret("anon_key"), es256_token(stack)):
            health = httpx.get(f"{url}/health", timeout=30,
                               headers={"Authorization": f"Bearer {jwt_}"})
            assert health.status_code == 200
        stack.deploy_function("send-broadcast", verify_jwt=False)
        reached = httpx.post(url, json={}, timeout=30)
        assert reached.status_code == 401 and "msg" not in reached.json()  # the function's own
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        stack.remove_function("send-broadcast")


def test_function_bodies_over_a_mebibyte_are_refused_at_the_gateway(stack: LocalStack) -> None:
    stack.deploy_function("send-broadcast", verify_jwt=False)
    try:
        response = httpx.post(f"{stack.api_url}/functions/v1/send-broadcast",
                              content=b"x" * (1024 * 1024 + 1), timeout=30)
        assert response.status_code == 413
        small = httpx.post(f"{stack.api_url}/functions/v1/send-broadcast", content=b"{}",
                           timeout=30)
        assert small.status_code == 401  # reached the function, which wants a token
    finally:
        stack.remove_function("send-broadcast")


def test_functions_deploy_side_by_side_and_a_failure_keeps_what_went_live(
        stack: LocalStack, tmp_path: Path) -> None:
    """Workers start in parallel threads: every one lands in the state and the routes, and when
    one fails the error carries the ones that went live, so that a rollback can take them back."""
    functions = LocalFunctions(stack)
    source = project_root() / "functions"
    both = {"send-broadcast": False, "reset-broadcast-quotas": True}
    done = functions.deploy(both, source, tmp_path)["functions"]
    assert set(done) == set(both) and all(e["previous_version"] is None for e in done.values())
    routes = json.loads((stack.dir / "routes.json").read_text())
    saved = json.loads(stack.state_file.read_text())["functions"]
    assert set(routes) == set(saved) == set(both)
    assert {name: r["verify_jwt"] for name, r in routes.items()} == both
    for name, worker in stack.deployed().items():
        assert process_alive(worker.pid) and routes[name]["port"] == worker.port
    functions.rollback({"functions": done})
    assert stack.deployed() == {}

    with pytest.raises(TargetError) as failed:
        functions.deploy({"send-broadcast": False, "no-such-function": False}, source, tmp_path)
    assert "no-such-function" in str(failed.value)
    partial = (failed.value.partial or {})["functions"]
    assert set(partial) == {"send-broadcast"} and set(stack.deployed()) == {"send-broadcast"}
    functions.rollback({"functions": partial})
    assert stack.deployed() == {}
    assert json.loads((stack.dir / "routes.json").read_text()) == {}
