"""`rollout check reports | health | errors` — the runbook's monitors (§6) as commands.

Exit 0 when the check holds, 1 on a breach (or when it cannot measure), 2 on bad usage: made
for cron, CI and alerting. `--watch SECONDS` repeats with a live table until Ctrl-C (the exit
code is then the last sample's); `--json` prints one JSON object per sample.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import typer
from rich.live import Live
from rich.table import Table

from rollout.cli.app import app, flag_option, out
from rollout.cli.flags_cmd import ENV_OPT, PLAN_OPT, plan_for
from rollout.errors import UsageError

if TYPE_CHECKING:
    from rollout.adapters.targets import Target
    from rollout.checks import monitors
    from rollout.checks.monitors import CheckResult

check_app = typer.Typer(
    help="Monitors of a live environment (runbook §6). Exit 1 on a breach: run them from cron, "
    "CI or an alerting system; `--watch 30` for a live view.",
    no_args_is_help=True,
)
app.add_typer(check_app, name="check")

JSON_OPT = flag_option("--json", help="One JSON object per sample on stdout.")
WATCH_OPT = typer.Option(None, "--watch", metavar="SECONDS",
                         help="Repeat every SECONDS with a live table until Ctrl-C.")


def _target(plan: str | None, env: str | None) -> Target:
    from rollout.engine.targets import build_target

    loaded = plan_for(plan, env, database_only=False)
    target = build_target(loaded)
    if not target.reachable():
        raise UsageError(f"the {loaded.model.target.kind} target of {loaded.path.name} "
                         f"({loaded.environment}) is not reachable",
                         hint="`rollout local up` starts the local stack")
    return target


def _row_table(history: list[CheckResult]) -> Table:
    table = Table("time (UTC)", "check", "result", "value", "threshold", "summary",
                  title="rollout check — Ctrl-C to stop")
    for result in history[-20:]:
        mark = "[green]ok[/green]" if result.ok else "[red]BREACH[/red]"
        value = "-" if result.value is None else f"{result.value:g}"
        table.add_row(result.at[11:19], result.check, mark, value, result.threshold,
                      result.summary)
    return table


def _print(result: CheckResult, json_output: bool) -> None:
    if json_output:
        print(json.dumps(result.to_dict(), default=str), flush=True)
        return
    color = "green" if result.ok else "red"
    verdict = "ok" if result.ok else "BREACH"
    out.print(f"[{color}]{result.check} {verdict}[/{color}]: {result.summary} "
              f"[dim](threshold {result.threshold})[/dim]", soft_wrap=True)


def _run(measure: Callable[[], CheckResult], watch: float | None, json_output: bool) -> None:
    """Once, or every `watch` seconds until Ctrl-C; exit 1 when the (last) result breached."""

    if watch is None:
        result = measure()
        _print(result, json_output)
        raise typer.Exit(0 if result.ok else 1)
    if watch <= 0:
        raise UsageError("--watch needs a positive number of seconds")
    history: list[CheckResult] = []
    try:
        if json_output:
            while True:
                history.append(measure())
                _print(history[-1], True)
                time.sleep(watch)
        with Live(_row_table(history), console=out, auto_refresh=False) as live:
            while True:
                history.append(measure())
                live.update(_row_table(history), refresh=True)
                time.sleep(watch)
    except KeyboardInterrupt:
        pass
    raise typer.Exit(0 if history and history[-1].ok else 1)


@check_app.command("reports")
def reports(
    max_pending: int = typer.Option(..., "--max-pending", min=0,
                                    help="Breach when more reports than this are pending."),
    plan: str = PLAN_OPT,
    env: str = ENV_OPT,
    watch: float = WATCH_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """Pending moderation reports (`reported_messages` with report_status 'pending')."""
    from rollout.checks import monitors

    target = _target(plan, env)
    _run(lambda: monitors.pending_reports(target.db_url, max_pending), watch, json_output)


@check_app.command("health")
def health(
    function: str = typer.Option("send-broadcast", "--function",
                                 help="The function whose /health to call."),
    max_latency: float = typer.Option(None, "--max-latency", metavar="MS",
                                      help="Also breach when slower than MS milliseconds."),
    plan: str = PLAN_OPT,
    env: str = ENV_OPT,
    watch: float = WATCH_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """`GET /functions/v1/send-broadcast/health`: status and latency (breach unless 200).

    Also a breach: a release run that died (what it left, and how to finish or undo it).
    """
    from dataclasses import replace

    from rollout.checks import monitors
    from rollout.engine.liveness import dead_run_at

    loaded = plan_for(plan, env, database_only=False)
    target = _target(plan, env)

    def measure() -> CheckResult:
        result = monitors.function_health(target, function, max_latency)
        dead = dead_run_at(loaded, target.db_url)
        if dead is None:
            return result
        return replace(result, ok=False, summary=f"{result.summary}; " + "; ".join(dead.lines()))

    _run(measure, watch, json_output)


@check_app.command("errors")
def errors(
    max_rate: str = typer.Option("0.1%", "--max-rate",
                                 help="Breach above this share of 5xx answers (0.1% or 0.001)."),
    window: int = typer.Option(15, "--window", metavar="MINUTES",
                               help="Supabase: how far back to read the edge logs."),
    plan: str = PLAN_OPT,
    env: str = ENV_OPT,
    watch: float = WATCH_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """Edge-function error rate: local from the gateway's counters, Supabase from its logs."""
    from rollout.checks import monitors

    rate = monitors.parse_rate(max_rate)
    if not 1 <= window <= 24 * 60:
        raise UsageError("--window is 1 to 1440 minutes (the logs API reads at most 24 hours)")
    target = _target(plan, env)
    last: list[monitors.ErrorCounts | None] = [None]

    def measure() -> CheckResult:
        # While watching a local stack, each sample covers the interval since the last one.
        result, counts = monitors.error_rate(target, rate, window=timedelta(minutes=window),
                                             previous=last[0] if watch else None)
        last[0] = counts or last[0]
        return result

    _run(measure, watch, json_output)
