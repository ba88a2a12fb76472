"""Built-in guard sources: named measurements a ramp's guards (or an analysis) can watch.

Each source turns one of monitors.py's checks into one number per call. A source that cannot
measure raises (TargetError): the caller treats that as inconclusive, never as a pass or a
breach. Rates are over the interval since the previous call when the source can tell (the
local gateway's counters), so a fault shows up at the next measurement, not diluted by hours
of healthy traffic.

    gateway-errors   5xx answers / requests of the edge functions (local gateway counters;
                     Supabase: edge logs over `window_minutes`)
    rpc-errors       RPC calls failing with a SQLSTATE of the given classes / RPC calls
                     (PostgREST-shape errors, counted by the local gateway)
    health-p99       p99 latency (ms) of `samples` health probes; a non-200 answer counts as
                     the probe's timeout
    pending-reports  reported messages waiting for a moderator
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from rollout.adapters.targets import Target
from rollout.checks import monitors
from rollout.errors import TargetError, UsageError

Measure = Callable[[], float]

# Server-side trouble, not a caller refused by the rules (42xxx) or a business rule (P0xxx).
SERVER_CLASSES = ["08", "40", "53", "54", "55", "57", "58", "XX"]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOptions(Options):
    functions: list[str] = Field(default_factory=lambda: list(monitors.DEFAULT_FUNCTIONS))
    window_minutes: int = Field(15, ge=1, description="Supabase edge logs only.")


class RpcOptions(Options):
    classes: list[str] = Field(default_factory=lambda: list(SERVER_CLASSES),
                               description="SQLSTATE classes counted as errors; ['*'] for all.")


class HealthOptions(Options):
    function: str = monitors.HEALTH_FUNCTION
    path: str = "/health"
    samples: int = Field(5, ge=1, le=100)
    timeout: float = Field(10, gt=0, description="Seconds; a failed probe counts as this.")


class ReportOptions(Options):
    pass


def _rate(errors: int, requests: int) -> float:
    return errors / requests if requests else 0.0


def gateway_errors(target: Target, options: ErrorOptions) -> Measure:
    previous: monitors.ErrorCounts | None = None

    def measure() -> float:
        nonlocal previous
        result, counts = monitors.error_rate(
            target, 1.0, tuple(options.functions), timedelta(minutes=options.window_minutes),
            previous)
        if result.error or result.value is None:
            raise TargetError(f"no error rate: {result.error}")
        previous = counts
        return result.value

    return measure


def rpc_counts(target: Target) -> dict[str, Any]:
    """The local gateway's RPC counters: requests and errors by SQLSTATE class."""
    try:
        counters: dict[str, Any] = httpx.get(f"{target.api_url}/health",
                                             timeout=10).json().get("counters", {})
    except (httpx.HTTPError, ValueError) as err:
        raise TargetError(f"the gateway did not answer ({type(err).__name__})") from err
    if "rpc_requests" not in counters:
        raise TargetError("this gateway does not count RPC requests (restart the local stack)")
    return counters


def rpc_errors(target: Target, options: RpcOptions) -> Measure:
    previous = (0, 0)

    def measure() -> float:
        nonlocal previous
        counters = rpc_counts(target)
        by_class: dict[str, int] = counters.get("rpc_errors_by_class", {})
        errors = sum(n for c, n in by_class.items() if "*" in options.classes
                     or c in options.classes)
        requests = int(counters["rpc_requests"])
        last_requests, last_errors = previous
        previous = (requests, errors)
        if requests < last_requests:  # the gateway restarted: its counters did too
            return _rate(errors, requests)
        return _rate(errors - last_errors, requests - last_requests)

    return measure


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def health_p99(target: Target, options: HealthOptions) -> Measure:
    def measure() -> float:
        latencies = []
        for _ in range(options.samples):
            result = monitors.function_health(target, options.function, timeout=options.timeout,
                                              path=options.path)
            if result.error:
                raise TargetError(result.summary)
            latencies.append(float(result.value or 0) if result.ok
                             else options.timeout * 1000)
        return p99(latencies)

    return measure


def pending_reports(target: Target, options: ReportOptions) -> Measure:
    def measure() -> float:
        result = monitors.pending_reports(target.db_url, 0)
        if result.error or result.value is None:
            raise TargetError(result.summary)
        return result.value

    return measure


@dataclass(frozen=True)
class Source:
    options: type[Options]
    build: Callable[[Target, Any], Measure]
    targets: tuple[str, ...] = ("local", "supabase")


SOURCES: dict[str, Source] = {
    "gateway-errors": Source(ErrorOptions, gateway_errors),
    "rpc-errors": Source(RpcOptions, rpc_errors, ("local",)),
    "health-p99": Source(HealthOptions, health_p99),
    "pending-reports": Source(ReportOptions, pending_reports),
}


def check(name: str, options: dict[str, Any]) -> None:
    """Validate a source's name and options (at plan load: a typo is exit 2, nothing run)."""
    if name not in SOURCES:
        raise ValueError(f"unknown guard source {name!r} (known: {', '.join(SOURCES)})")
    SOURCES[name].options.model_validate(options)


def build(name: str, options: dict[str, Any], target: Target) -> Measure:
    source = SOURCES[name]
    if target.kind not in source.targets:
        raise UsageError(f"guard source {name} is not available on a {target.kind} target "
                         f"(only {', '.join(source.targets)})",
                         hint="measure it with a `query` or `url` guard instead")
    return source.build(target, source.options.model_validate(options))
