"""The HTML release report of `apply` and `rehearse`, rendered in real headless Chromium."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rollout.engine.events import StepFinished, StepStarted
from rollout.reports import html
from rollout.reports.release import Recorder
from tests.engine.conftest import Cli

CHART_JS_SHA256 = "48444a82d4edcb5bec0f1965faacdde18d9c17db3063d042abada2f705c9f54a"
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def chromium_dom(page: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and every console message Chromium logged."""
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is needed: scripts/system-packages.sh installs it"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def k6_dashboard_data(cli: Cli) -> str:
    """What k6's dashboard export carries (gzip + base64 inside the page), decoded: the masker
    cannot see into it, so nothing secret may be in it in the first place."""
    texts = []
    for export in cli.state.glob("runs/*/load/k6-dashboard.html"):
        blob = re.search(r'<script id="data"[^>]*>(.*?)</script>', export.read_text(), re.S)
        assert blob, export
        texts.append(gzip.decompress(base64.b64decode(blob[1].strip())).decode())
    assert texts, "no k6 dashboard was exported"
    return "\n".join(texts)


def canvas(dom: str, ident: str) -> str:
    match = re.search(rf'<canvas id="{ident}"[^>]*>', dom)
    assert match, f"no canvas #{ident} in the report"
    return match.group(0)


def test_vendored_chart_js_is_the_pinned_npm_file() -> None:
    assert hashlib.sha256(html.CHART_JS.read_bytes()).hexdigest() == CHART_JS_SHA256
    assert "sourceMappingURL" not in html.chart_js()


def test_recorder_spans_the_maintenance_window_and_gates() -> None:
    seen: list[object] = []
    recorder = Recorder(seen.append)
    for step_id, kind, detail in (("on", "db.maintenance", {"since": "t"}),
                                  ("gate", "gate.analysis", {}),
                                  ("off", "db.maintenance", {"lifted": 3})):
        recorder(StepStarted(step_id, kind, "apply", ""))
        recorder(StepFinished(step_id, kind, "apply", "succeeded", 0.0, "", detail))
    lanes = {s.label: s.lane for s in recorder.spans}
    assert lanes == {"on": "step", "gate": "gate", "off": "step",
                     "maintenance window": "window"}
    assert len(seen) == 6  # every event passed on to the renderer


def test_rehearsal_report_opens_in_chromium_with_timeline_and_latency_chart(
        cli: Cli, tmp_path: Path) -> None:
    report_path = tmp_path / "rehearsal.html"
    result = cli.run("rehearse", "plans/local.yaml", "--yes", "--report", str(report_path),
                     timeout=300, ROLLOUT_LOAD="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert f"release report: {report_path}" in result.stdout
    assert json.loads(report_path.with_suffix(".json").read_text())["passed"] is True

    page = report_path.read_text()
    secrets = [cli.stack.secret(name) for name in ("jwt_secret", "service_role_key", "anon_key")]
    assert not [secret for secret in secrets if secret in page]
    assert "<script src" not in page and "<link" not in page  # nothing fetched: offline
    dom, console = chromium_dom(report_path)
    assert console == []
    assert 'data-rendered="true"' in canvas(dom, "timeline")
    assert 'data-rendered="true"' in canvas(dom, "latency")
    assert re.search(r'<pre id="errors">\s*</pre>', dom)
    assert 'title="k6 dashboard"' in dom  # k6's own report, embedded

    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
    lanes = {(s["lane"], s["label"]) for s in data["spans"]}
    assert {("phase", "rollback"), ("phase", "reapply"), ("window", "maintenance window"),
            ("gate", "adoption-gate"), ("undo", "migrate")} <= lanes
    series = data["load"][0]["series"]
    assert sum(series["requests"]) > 0 and any(v is not None for v in series["p99"])
    assert data["load"][0]["thresholds"] == [
        {"label": "http_req_duration{kind:dm} p(99)<200", "ms": 200.0}]

    facts = json.loads(report_path.with_suffix(".json").read_text())
    assert not [secret for secret in secrets if secret in k6_dashboard_data(cli)]
    backup = re.search(r"<td>([^<]+\.dump)</td><td>([0-9a-f]{64})</td>", page)
    assert backup and hashlib.sha256(Path(backup[1]).read_bytes()).hexdigest() == backup[2]
    assert facts["plan_checksum"] in page and HEX64.fullmatch(facts["plan_checksum"])
    for section in ("checklist", "smoke", "flags", "phases"):
        assert f'id="{section}"' in page
    assert "Rollback script validated" in page and "messaging_v2_enabled" in page


@pytest.mark.parametrize("requested", ["out/report.html", "out/report.json"])
def test_report_paths_put_html_and_json_side_by_side(requested: str) -> None:
    html_path, json_path = html.report_paths(requested, Path("unused"))
    assert (html_path.name, json_path.name) == ("report.html", "report.json")
    assert html.report_paths(None, Path("runs/x")) == (Path("runs/x/report.html"),
                                                      Path("runs/x/report.json"))


def test_apply_writes_the_report_and_masks_secrets(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("apply", "plans/local.yaml", "--yes", "--to", "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    path = Path(re.search(r"release report: (\S+)", result.stdout)[1])
    assert path.name == "report.html" and path.parent.parent.name == "runs"
    page = path.read_text()
    assert cli.stack.secret("jwt_secret") not in page
    facts = json.loads(path.with_suffix(".json").read_text())
    assert facts["status"] == "succeeded" and facts["backups"][0]["sha256"] in page
    assert facts["runs"][0]["run_id"] == path.parent.name
    unwritable = cli.run("apply", "plans/local.yaml", "--yes", "--to", "migrate",
                         "--report", "/proc/no-such-dir/report.html")
    assert unwritable.returncode == 0, unwritable.stderr  # the run's result stands
    assert "could not write the release report" in unwritable.stderr
