"""`rollout check reports | health | errors` against a running local stack: healthy → exit 0,
breached → exit 1 (pending reports beyond the max; the send-broadcast worker stopped, which
the gateway answers with 502s that also count as function errors).

One stack (migration applied, functions deployed) serves the module.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx

from rollout.adapters.local_stack.postgres import shared_dir
from rollout.adapters.local_stack.processes import stop_pid
from rollout.adapters.local_stack.stack import LocalStack
from rollout.adapters.supabase_target import SupabaseTarget
from rollout.adapters.targets import LocalTarget
from rollout.checks import guard_sources
from rollout.checks.monitors import error_rate, parse_rate
from rollout.errors import UsageError
from tests.engine.conftest import Cli
from tests.engine.test_flags_cli import run_all


@pytest.fixture(scope="module")
def stack() -> Iterator[Cli]:
    state = Path(tempfile.mkdtemp(prefix="rollout-checks-", dir=shared_dir("rollout-tests")))
    state.chmod(0o755)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "pytest",
           "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("ROLLOUT_DEBUG", None)
    cli = Cli(state, env)
    try:
        setup = cli.run("apply", "plans/local.yaml", "--to", "deploy-functions")
        assert setup.returncode == 0, setup.stderr
        yield cli
    finally:
        LocalStack(state).down()


def report_pending(cli: Cli, how_many: int) -> list[str]:
    """Pending reports on distinct (message, reporter) pairs, as `report_message` would leave."""
    rows = cli.sql(
        "insert into public.reported_messages (message_id, reported_by, report_reason) "
        "select m.id, p.id, 'spam' from public.messages m cross join public.profiles p "
        "where not exists (select 1 from public.reported_messages r where r.message_id = m.id "
        "and r.reported_by = p.id) limit %s returning id::text", (how_many,))
    return [r[0] for r in rows]


def test_pending_reports_within_and_beyond_the_max(stack: Cli) -> None:
    pending = stack.one("select count(*) from public.reported_messages "
                        "where report_status = 'pending'")
    limit = pending + 2
    calm = stack.run("check", "reports", "--max-pending", str(limit), "--json")
    assert calm.returncode == 0, calm.stderr
    doc = json.loads(calm.stdout)
    assert doc["check"] == "reports" and doc["ok"] is True and doc["value"] == pending
    assert doc["threshold"] == f"<= {limit}"

    added = report_pending(stack, 3)
    try:
        busy = stack.run("check", "reports", "--max-pending", str(limit))
        assert busy.returncode == 1, busy.stderr
        assert "BREACH" in busy.stdout and f"{pending + 3} pending report(s)" in busy.stdout
    finally:
        stack.sql("update public.reported_messages set report_status = 'dismissed' "
                  "where id = any(%s::uuid[])", (added,))


def test_health_and_error_rate_breach_when_the_worker_stops(stack: Cli) -> None:
    # Traffic through the gateway, all of it good.
    for _ in range(5):
        assert httpx.get(f"{stack.stack.api_url}/functions/v1/send-broadcast/health").status_code \
            == 200
    (health, health_out, err), (errors, errors_out, err2) = run_all(
        stack, ("check", "health", "--json"), ("check", "errors", "--max-rate", "0.1%", "--json"))
    assert health == 0, err
    assert errors == 0, err2
    doc = json.loads(health_out)
    assert doc["ok"] is True and doc["detail"]["status_code"] == 200
    assert doc["detail"]["body"]["status"] == "ok" and doc["value"] > 0
    rate = json.loads(errors_out)
    assert rate["detail"]["errors"] == 0 and rate["detail"]["requests"] >= 5
    assert rate["detail"]["source"] == "gateway counters"

    worker = stack.stack.deployed()["send-broadcast"]
    stop_pid(worker.pid)
    try:
        down = stack.run("check", "health")
        assert down.returncode == 1
        assert "BREACH" in down.stdout and "HTTP 502" in down.stdout
        failing = stack.run("check", "errors", "--max-rate", "0.1%", "--json")
        assert failing.returncode == 1, failing.stderr
        rate = json.loads(failing.stdout)
        assert rate["ok"] is False and rate["detail"]["errors"] >= 1
        assert rate["value"] == rate["detail"]["errors"] / rate["detail"]["requests"]
    finally:
        stack.stack.activate_version("send-broadcast", worker.version)
    assert httpx.get(f"{stack.stack.api_url}/functions/v1/send-broadcast/health").status_code \
        == 200


def test_watch_repeats_until_ctrl_c(stack: Cli) -> None:
    proc = stack.spawn("check", "reports", "--max-pending", "100000", "--watch", "0.2", "--json")
    try:
        assert proc.stdout is not None
        samples = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [s["check"] for s in samples] == ["reports", "reports"]
    assert all(s["ok"] for s in samples)


def test_bad_usage_exits_2(stack: Cli) -> None:
    results = run_all(stack, ("check", "errors", "--max-rate", "lots"),
                      ("check", "reports", "--max-pending", "3", "--env", "nowhere"))
    for code, _, err in results:
        assert code == 2 and "Traceback" not in err


def test_rates_read_as_percentages_or_fractions() -> None:
    assert parse_rate("0.1%") == pytest.approx(0.001)
    assert parse_rate("0.5") == 0.5
    for bad in ("150%", "-1", "fast"):
        with pytest.raises(UsageError):
            parse_rate(bad)


def test_supabase_error_rate_comes_from_the_edge_logs() -> None:
    """The Management API faked at the HTTP boundary (its published shapes)."""
    ref, base = "abcdefghijklmnopqrst", "https://api.supabase.test"
    target = SupabaseTarget({"project_ref": ref, "access_token": "sbp_" + "x" * 40,
                             "database_url": "postgresql://u@db.invalid/postgres",
                             "supabase_url": f"https://{ref}.supabase.co", "api_url": base})
    counts = {"send-broadcast": (2000, 3), "reset-broadcast-quotas": (10, 0)}
    with respx.mock(base_url=base, assert_all_called=True) as router:
        # The ClickHouse logs endpoint (logs.all was removed on 2026-09-23).
        logs = router.get(f"/v1/projects/{ref}/analytics/endpoints/logs")
        logs.side_effect = [httpx.Response(200, json={"result": [
            {"requests": r, "server_errors": e, "client_errors": 1}]}) for r, e in
            counts.values()]
        strict, _ = error_rate(target, parse_rate("0.1%"))
        sql = logs.calls[0].request.url.params["sql"]
        assert "source_name = 'function_edge_logs'" in sql and "/send-broadcast(" in sql
    assert strict.ok is False and strict.detail["requests"] == 2010
    assert strict.detail["errors"] == 3
    assert strict.detail["per_function"]["send-broadcast"] == {"requests": 2000, "errors": 3}
    assert strict.value == pytest.approx(3 / 2010)


# ---- guard sources (flags.ramp's built-in guards): the same checks, one number each ----------


def guard(stack: Cli, name: str, **options: object) -> guard_sources.Measure:
    return guard_sources.build(name, dict(options), LocalTarget(stack.stack))


def test_guard_sources_measure_the_stack_and_see_faults(stack: Cli) -> None:
    pending = guard(stack, "pending-reports")
    before = pending()
    added = report_pending(stack, 2)
    try:
        assert pending() == before + 2
    finally:
        stack.sql("update public.reported_messages set report_status = 'dismissed' "
                  "where id = any(%s::uuid[])", (added,))

    errors, p99 = guard(stack, "gateway-errors"), guard(stack, "health-p99", samples=3, timeout=5)
    errors()  # the baseline sample: later ones measure the interval since
    assert 0 < p99() < 5000
    assert errors() == 0.0  # the probes were good
    worker = stack.stack.deployed()["send-broadcast"]
    stop_pid(worker.pid)
    try:
        assert p99() == 5000  # a 502 counts as the probe's timeout
        assert errors() == 1.0  # every request since the last sample failed
    finally:
        stack.stack.activate_version("send-broadcast", worker.version)


def test_rpc_errors_count_by_sqlstate_class(stack: Cli) -> None:
    server, refused, everything = (guard(stack, "rpc-errors"),
                                   guard(stack, "rpc-errors", classes=["42"]),
                                   guard(stack, "rpc-errors", classes=["*"]))
    for measure in (server, refused, everything):
        measure()
    key = stack.stack.secret("anon_key")
    answer = httpx.post(f"{stack.stack.api_url}/rest/v1/rpc/get_user_conversations", json={},
                        headers={"apikey": key, "authorization": f"Bearer {key}"})
    assert answer.status_code in (401, 403) and answer.json()["code"].startswith("42"), \
        answer.text
    assert server() == 0.0  # a refused caller is not a server error
    assert refused() > 0 and everything() > 0
