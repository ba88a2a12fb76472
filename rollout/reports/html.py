"""The release report as one self-contained HTML file: no external asset, readable offline.

Charts are drawn by Chart.js (vendored from the npm registry, `vendor/README.md`), inlined into
the page; the load test's own report is k6's web-dashboard export, embedded as it is. Every
value is printed whole (hashes, paths) and wraps rather than being cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from html import escape
from pathlib import Path
from typing import Any

from rollout.engine.events import Masker
from rollout.reports.release import LoadSection, ReleaseReport

VENDOR = Path(__file__).parent / "vendor"
CHART_JS = VENDOR / "chart.umd.min.js"
_THRESHOLD = re.compile(r"^p\((?P<q>\d+(?:\.\d+)?)\)\s*<=?\s*(?P<ms>\d+(?:\.\d+)?)$")

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1d232a}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f4f5f7}code,.value{font-family:ui-monospace,monospace;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere;font-family:ui-monospace,monospace}
.succeeded,.passed,.ok{color:#17803d}.failed,.missing,.crossed{color:#b42318}
.chart{position:relative;width:100%}iframe{width:100%;height:60rem;border:1px solid #ddd}
#errors:empty{display:none}#errors{color:#b42318}
"""

SCRIPT = """
(function () {
  const errors = document.getElementById('errors');
  window.addEventListener('error', e => { errors.textContent += e.message + '\\n'; });
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const colour = {phase: '#8da2bf', step: '#2f9e5a', undo: '#e8912d', check: '#2a9bb0',
                  gate: '#8a5cd0', window: 'rgba(240, 200, 40, 0.55)', failed: '#d64545'};
  const spans = data.spans;
  const canvas = document.getElementById('timeline');
  canvas.parentNode.style.height = Math.max(160, 26 * spans.length + 80) + 'px';
  new Chart(canvas, {
    type: 'bar',
    data: {labels: spans.map(s => (s.lane === 'step' ? '' : s.lane + ': ') + s.label),
           datasets: [{label: 'seconds since start', data: spans.map(s => [s.start, s.end]),
                       backgroundColor: spans.map(s => s.status === 'failed' ? colour.failed
                                                       : colour[s.lane]),
                       minBarLength: 3}]},
    options: {indexAxis: 'y', animation: false, maintainAspectRatio: false,
              plugins: {legend: {display: false},
                        tooltip: {callbacks: {label: c => {
                          const s = spans[c.dataIndex];
                          return s.status + ' ' + (s.end - s.start).toFixed(1) + 's ' + s.summary;
                        }}}},
              scales: {x: {type: 'linear', title: {display: true, text: 'seconds'}}}}
  });
  canvas.dataset.rendered = 'true';
  data.load.forEach((load, i) => {
    const el = document.getElementById(i === 0 ? 'latency' : 'latency-' + i);
    const s = load.series;
    const point = values => s.seconds.map((x, j) => ({x: x, y: values[j]}));
    const datasets = [
      {label: 'p50 ms', data: point(s.p50), borderColor: '#2f9e5a', yAxisID: 'ms'},
      {label: 'p95 ms', data: point(s.p95), borderColor: '#e8912d', yAxisID: 'ms'},
      {label: 'p99 ms', data: point(s.p99), borderColor: '#d64545', yAxisID: 'ms'},
      {label: 'requests/s', data: point(s.requests), borderColor: '#2a9bb0',
       borderDash: [2, 2], yAxisID: 'rps'},
    ].concat(load.thresholds.map(t => ({
      label: 'threshold ' + t.label, borderColor: '#b42318', borderDash: [8, 4],
      pointRadius: 0, yAxisID: 'ms',
      data: [{x: 0, y: t.ms}, {x: Math.max(1, s.seconds[s.seconds.length - 1] || 0), y: t.ms}]})));
    new Chart(el, {type: 'line', data: {datasets: datasets},
      options: {animation: false, parsing: true, spanGaps: true,
                scales: {x: {type: 'linear', title: {display: true, text: 'seconds'}},
                         ms: {position: 'left', title: {display: true, text: 'latency ms'}},
                         rps: {position: 'right', title: {display: true, text: 'requests/s'},
                               grid: {drawOnChartArea: false}}}}});
    el.dataset.rendered = 'true';
  });
})();
"""


def chart_js() -> str:
    """The vendored Chart.js, without its source-map comment (the map is not shipped)."""
    return re.sub(r"//# sourceMappingURL=\S+\s*$", "", CHART_JS.read_text())


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
           classes: int | None = None) -> str:
    """A table of escaped cells; `classes`: the column whose value is also the row's class."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        css = f' class="{escape(str(row[classes]))}"' if classes is not None else ""
        cells = "".join(f"<td>{escape('' if v is None else str(v))}</td>" for v in row)
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _section(title: str, body: str, ident: str) -> str:
    return f'<section id="{ident}"><h2>{escape(title)}</h2>{body}</section>'


def _facts(report: ReleaseReport) -> str:
    runs = ", ".join(dict.fromkeys(r["run_id"] for r in report.runs)) or "-"
    facts = [("result", f"{report.status} (exit {report.exit_code})"),
             ("message", report.message or "-"),
             ("plan", f"{report.plan} ({report.plan_path})"),
             ("plan checksum", report.plan_checksum),
             ("release fingerprint", report.release_fingerprint or "-"),
             ("git commit", report.git_commit or "-"),
             ("target", f"{report.environment} ({report.target}"
                        f"{', production' if report.production else ''})"),
             ("who", f"{report.operator}@{report.host}"),
             ("started", report.started_at), ("finished", report.finished_at),
             ("runs", runs)]
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts) \
        + "</dl>"


def _thresholds(load: LoadSection) -> list[dict[str, Any]]:
    """Latency thresholds (`p(99)<200` on http_req_duration…) as lines for the chart."""
    lines = []
    for t in load.report.get("thresholds", []):
        match = _THRESHOLD.match(t["expression"].replace(" ", ""))
        if t["metric"].startswith("http_req_duration") and match:
            lines.append({"label": f"{t['metric']} {t['expression']}",
                          "ms": float(match["ms"])})
    return lines


def _load(load: LoadSection, index: int) -> str:
    ident = "latency" if index == 0 else f"latency-{index}"
    report = load.report
    endpoints = _table(["endpoint", "requests", "rate/s", "p50 ms", "p95 ms", "p99 ms",
                        "errors"],
                       [(e["kind"], e["requests"], e["rate"], e["p50_ms"], e["p95_ms"],
                         e["p99_ms"], e["error_rate"])
                        for e in report.get("endpoints", {}).values()])
    verdicts = _table(["threshold", "observed", "verdict"],
                      [(f"{t['metric']} {t['expression']}", t["observed"], t["verdict"])
                       for t in report.get("thresholds", [])], classes=2)
    dashboard = "<p>k6 exported no dashboard for this run.</p>"
    if load.dashboard_html:
        dashboard = (f"<details open><summary>k6's own report (web dashboard export)</summary>"
                     f'<iframe title="k6 dashboard" srcdoc="{escape(load.dashboard_html)}">'
                     f"</iframe></details>")
    totals = (f"<p>{report.get('requests', 0)} requests at {report.get('rate', 0):.1f}/s, "
              f"error rate {report.get('error_rate', 0):.2%}; k6 summary: "
              f"<code>{escape(str(report.get('summary_path', '-')))}</code></p>")
    return (f"<h3>{escape(load.step_id)}</h3>{totals}"
            f'<div class="chart"><canvas id="{ident}" aria-label="latency over time">'
            f"</canvas></div>{endpoints}{verdicts}{dashboard}")


def render(report: ReleaseReport) -> str:
    data = {"spans": [asdict(s) for s in report.spans],
            "load": [{"series": load.series, "thresholds": _thresholds(load)}
                     for load in report.load]}
    title = (f"rollout {report.command} {report.plan} → {report.environment}: "
             f"{report.status}")
    parts = [_section("Run", _facts(report), "run")]
    timeline = ('<div class="chart"><canvas id="timeline" aria-label="timeline"></canvas></div>'
                + _table(["step", "kind", "action", "result", "seconds", "what"],
                         [(s["step"], s["kind"], s["action"], s["status"], s["seconds"],
                           s["summary"]) for s in report.steps], classes=3))
    parts.append(_section("Timeline", timeline, "timeline-section"))
    if report.phases:
        parts.append(_section("Rehearsal phases", _table(
            ["phase", "result", "seconds", "what"],
            [(p["name"], p["status"], p["seconds"], p["summary"]) for p in report.phases],
            classes=1), "phases"))
    parts.append(_section("Load test", "".join(_load(load, i) for i, load in
                                               enumerate(report.load))
                          or "<p>No load test ran.</p>", "load"))
    smoke = "".join(f"<h3>{escape(s['step'])}: {escape(s['summary'])}</h3>" + _table(
        ["flow", "passed", "seconds", "detail"],
        [(f["name"], f["passed"], f["seconds"], f["detail"]) for f in s["flows"]])
        for s in report.smoke) or "<p>No smoke test ran.</p>"
    parts.append(_section("Smoke tests", smoke, "smoke"))
    checklist = report.checklist or {"items": []}
    parts.append(_section("§8 sign-off checklist (as it stands)", (
        f"<p>{escape(checklist['error'])}</p>" if checklist.get("error") else "") + _table(
        ["item", "state", "evidence", "how to get it"],
        [(i["title"], i["state"], i["evidence"], i["how"]) for i in checklist["items"]],
        classes=1), "checklist"))
    parts.append(_section("Backup", _table(["step", "file", "sha256", "bytes"], [
        (b["step"], b["file"], b["sha256"], b["bytes"]) for b in report.backups]), "backup"))
    parts.append(_section("Flag changes", _table(["step", "change"], [
        (f["step"], ", ".join(f"{k}={v}" for k, v in f.items() if k != "step"))
        for f in report.flags]), "flags"))
    if report.notices:
        parts.append(_section("Notices", "<ul>" + "".join(
            f"<li>{escape(n)}</li>" for n in report.notices) + "</ul>", "notices"))
    payload = json.dumps(data).replace("</", "<\\/")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f'<h1 class="{escape(report.status)}">{escape(title)}</h1>'
            f'<pre id="errors"></pre>{"".join(parts)}'
            f'<script type="application/json" id="report-data">{payload}</script>'
            f"<script>{chart_js()}</script><script>{SCRIPT}</script></body></html>\n")


def report_paths(requested: str | None, default_dir: Path) -> tuple[Path, Path]:
    """(html, json): `--report FILE` names one, the other sits beside it; else `default_dir`."""
    if requested is None:
        return default_dir / "report.html", default_dir / "report.json"
    path = Path(requested)
    if path.suffix == ".html":
        return path, path.with_suffix(".json")
    return path.with_suffix(".html"), path


def write(report: ReleaseReport, html_path: Path, masker: Masker,
          json_path: Path | None = None) -> Path:
    """Write the HTML report (and the same facts as JSON, when asked), masked."""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(masker.text(render(report)))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(masker.text(json.dumps(report.to_dict(), indent=2, default=str))
                             + "\n")
    return html_path
