"""Monitors of a live environment (runbook §6): pending reports, function health, error rate.

Each check returns a typed `CheckResult` — measured value, threshold, verdict — and never
raises for a breach: a breach is a result (`ok=False`), an unreachable target is a result
too (`ok=False`, `error` set), so `rollout check …` can exit 1 for cron, CI and alerting
either way. Nothing here prints.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from rollout.adapters.database import connect
from rollout.adapters.targets import Target, probe_headers
from rollout.errors import RolloutError, UsageError

HEALTH_FUNCTION = "send-broadcast"
DEFAULT_FUNCTIONS = ("send-broadcast", "reset-broadcast-quotas")


@dataclass
class CheckResult:
    """One measurement and its verdict."""

    check: str  # reports | health | errors
    ok: bool
    value: float | None
    threshold: str
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_rate(text: str) -> float:
    """`0.1%` → 0.001; `0.001` → 0.001 (a bare number is a fraction)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{text!r} is not a rate: write it as a percentage (0.1%) or a "
                         "fraction (0.001)") from None
    if not 0 <= value <= 1:
        raise UsageError(f"{text!r} is not between 0% and 100%")
    return value


def _failed(check: str, threshold: str, error: str) -> CheckResult:
    return CheckResult(check, False, None, threshold, f"cannot measure: {error}", error=error)


# ---- reports ------------------------------------------------------------------------------


def pending_reports(db_url: str, max_pending: int) -> CheckResult:
    """`select count(*) from reported_messages where report_status = 'pending'` ≤ max."""
    threshold = f"<= {max_pending}"
    try:
        with connect(db_url) as conn:
            conn.execute("set default_transaction_read_only = on")
            exists = conn.execute("select to_regclass('public.reported_messages')").fetchone()
            if not exists or exists[0] is None:
                return _failed("reports", threshold, "public.reported_messages does not exist "
                               "(is the messaging migration applied?)")
            row = conn.execute("select count(*), min(created_at) from public.reported_messages "
                               "where report_status = 'pending'").fetchone()
    except (RolloutError, psycopg.Error) as err:
        return _failed("reports", threshold, _first_line(err))
    pending = int(row[0]) if row else 0
    oldest = row[1].isoformat() if row and row[1] else None
    ok = pending <= max_pending
    summary = f"{pending} pending report(s)" + ("" if ok else f", more than {max_pending}")
    return CheckResult("reports", ok, float(pending), threshold, summary,
                       {"pending": pending, "oldest_pending": oldest})


# ---- health -------------------------------------------------------------------------------


def function_health(target: Target, function: str = HEALTH_FUNCTION,
                    max_latency_ms: float | None = None, timeout: float = 10,
                    path: str = "/health") -> CheckResult:
    """GET `/functions/v1/<function>/health` (the Datadog synthetic of §6): 200 is healthy."""
    url = f"{target.api_url}/functions/v1/{function}{path}"
    threshold = "HTTP 200" + (f" within {max_latency_ms:g} ms" if max_latency_ms else "")
    headers = _api_headers(target)
    began = time.monotonic()
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as err:
        return _failed("health", threshold, f"{function}: no answer ({type(err).__name__})")
    latency = (time.monotonic() - began) * 1000
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    ok = response.status_code == 200
    slow = max_latency_ms is not None and latency > max_latency_ms
    summary = f"{function}: HTTP {response.status_code} in {latency:.0f} ms"
    if slow:
        summary += f" (slower than {max_latency_ms:g} ms)"
    return CheckResult("health", ok and not slow, round(latency, 1), threshold, summary,
                       {"function": function, "status_code": response.status_code,
                        "latency_ms": round(latency, 1),
                        "body": body if isinstance(body, dict) else None})


def _api_headers(target: Target) -> dict[str, str]:
    # What the gateway needs to let a synthetic check through (see `probe_headers`).
    try:
        return probe_headers(target.anon_key, target.jwt_secret)
    except RolloutError:
        return {}


# ---- error rate ---------------------------------------------------------------------------


@dataclass
class ErrorCounts:
    requests: int
    errors: int
    source: str
    per_function: dict[str, dict[str, int]] = field(default_factory=dict)


def error_counts(target: Target, functions: tuple[str, ...] = DEFAULT_FUNCTIONS,
                 window: timedelta = timedelta(minutes=15)) -> ErrorCounts:
    """Edge-function requests and 5xx answers.

    Local: the gateway's `/health` counters (since the gateway started). Supabase: the
    Management API's edge logs over `window` (`ManagementAPI.function_stats`).
    """
    if target.kind == "local":
        response = httpx.get(f"{target.api_url}/health", timeout=10)
        counters = response.json().get("counters", {})
        return ErrorCounts(int(counters.get("function_requests", 0)),
                           int(counters.get("function_errors", 0)), "gateway counters")
    from rollout.adapters.supabase_target import SupabaseTarget  # only Supabase needs it

    if not isinstance(target, SupabaseTarget):
        raise UsageError(f"no error-rate source for a {target.kind} target")
    api = target.api
    since = datetime.now(UTC) - window
    per: dict[str, dict[str, int]] = {}
    for slug in functions:
        stats = api.function_stats(slug, since)
        per[slug] = {"requests": int(stats.requests), "errors": int(stats.server_errors)}
    return ErrorCounts(sum(v["requests"] for v in per.values()),
                       sum(v["errors"] for v in per.values()),
                       f"edge logs, last {int(window.total_seconds() // 60)} min", per)


def error_rate(target: Target, max_rate: float, functions: tuple[str, ...] = DEFAULT_FUNCTIONS,
               window: timedelta = timedelta(minutes=15),
               previous: ErrorCounts | None = None) -> tuple[CheckResult, ErrorCounts | None]:
    """5xx answers / requests ≤ max_rate (§6: more than 0.1 % pages). With `previous` (the
    last sample of a watch on a local target) the rate is over the interval since then."""
    threshold = f"<= {max_rate:.4%}"
    try:
        counts = error_counts(target, functions, window)
    except (RolloutError, httpx.HTTPError, ValueError) as err:
        return _failed("errors", threshold, _first_line(err)), None
    requests, errors, source = counts.requests, counts.errors, counts.source
    if previous is not None and target.kind == "local" and counts.requests >= previous.requests:
        requests -= previous.requests
        errors -= previous.errors
        source = "gateway counters, since the last sample"
    rate = errors / requests if requests else 0.0
    ok = rate <= max_rate
    summary = (f"{errors} of {requests} function request(s) failed ({rate:.2%})"
               + ("" if ok else f", above {max_rate:.2%}"))
    return CheckResult("errors", ok, rate, threshold, summary,
                       {"requests": requests, "errors": errors, "source": source,
                        "per_function": counts.per_function}), counts


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
