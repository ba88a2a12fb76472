"""`rollout db restore` and `rollout cron status`: the operator's hands on the target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from rollout.cli.app import app, flag_option, out
from rollout.cli.release import PLAN_OR_ENV, YES_OPT, _resolve
from rollout.errors import UsageError

db_app = typer.Typer(help="Backups: restore a dump taken by a `db.backup` step.",
                     no_args_is_help=True)
cron_app = typer.Typer(help="The scheduled jobs a plan created.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(cron_app, name="cron")


@db_app.command()
def restore(
    plan: str = PLAN_OR_ENV,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, metavar="FILE",
                                help="A custom-format dump."),
    yes: bool = YES_OPT,
) -> None:
    """Restore FILE over the plan's database (one transaction; the journal is left alone).

    Objects in the dump are dropped and recreated from it; rows written since the dump are
    lost. Asks for the environment name unless --yes.
    """
    from rollout.adapters import database as db
    from rollout.engine.targets import build_target

    loaded = _resolve(plan)
    target = build_target(loaded)
    target.prepare()
    entries = db.pg_restore_list(target.pg_tool("pg_restore"), file)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("restoring replaces data: pass --yes when not interactive")
        typed = typer.prompt(f"Restore {file.name} ({entries} entries) over {loaded.environment}? "
                             f"Type the environment name to continue")
        if typed.strip() != loaded.environment:
            raise UsageError("the environment name did not match: nothing was changed")
    with out.status(f"restoring {file.name}…"):
        db.pg_restore(target.pg_tool("pg_restore"), target.db_url, file)
    out.print(f"[green]restored {file.name} ({entries} entries) into {loaded.environment}[/green]")


@cron_app.command("status")
def cron_status(
    plan: str = PLAN_OR_ENV,
    job: str = typer.Option("reset-broadcast-quotas", help="The job name."),
    json_output: bool = flag_option("--json", help="One JSON document."),
) -> None:
    """The job's schedule and its last runs (pg_cron's job_run_details on Supabase)."""
    from rollout.adapters.targets import failed_call
    from rollout.engine.targets import build_target

    loaded = _resolve(plan)
    target = build_target(loaded)
    status = target.scheduler.status(job)
    if json_output:
        print(json.dumps(status, default=str, indent=2))
        return
    if not status.get("job"):
        out.print(f"no job {job!r} on {loaded.environment}")
        raise typer.Exit(1)
    out.print(f"{job}: '{status['job'].get('schedule')}' UTC → {status['job'].get('function', '')}")
    runs = status.get("runs", [])
    if not runs:
        out.print("no runs yet")
        return
    table = Table("started", "finished", "status", "HTTP", "detail")
    for run in runs:
        table.add_row(str(run.get("started") or run.get("start_time")),
                      str(run.get("finished") or run.get("end_time")), str(run.get("status")),
                      str(run.get("http_status") or run.get("http_error") or "—"),
                      str(run.get("detail") or run.get("return_message") or ""))
    out.print(table)
    # pg_cron's "succeeded" only means the request was queued: the function's answer decides.
    failed = failed_call(runs[0]) if runs else None
    if failed:
        out.print(f"[red]the last run of {job} called the function and got {failed}[/red]")
        raise typer.Exit(1)
