"""`rollout signoff PLAN` — the runbook's §8 checklist, from the journal and named people."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from rollout.cli.app import app, flag_option, out
from rollout.cli.release import PLAN_OR_ENV, _resolve
from rollout.errors import UsageError

if TYPE_CHECKING:
    pass

STATE = {"ok": "[green]✓[/green]", "missing": "[red]✗ missing[/red]", "n/a": "[dim]n/a[/dim]"}


@app.command("signoff")
def signoff(
    plan: str = PLAN_OR_ENV,
    confirm: str = typer.Option(None, "--confirm", metavar="ITEM",
                                help="Record that a person vouches for ITEM (oncall-informed)."),
    by: str = typer.Option(None, "--by", metavar="NAME",
                           help="Who confirms (default: ROLLOUT_OPERATOR or the login name)."),
    rehearsed_on: list[str] = typer.Option(
        [], "--rehearsed-on", metavar="PLAN",
        help="Also look for this release's rehearsal in PLAN's journal (read-only), e.g. "
             "plans/staging.yaml: it counts when it shipped the same files. Repeatable."),
    rehearsed_on_env: str = typer.Option(
        None, "--rehearsed-on-env", metavar="FILE",
        help="NAME=value lines for loading the --rehearsed-on plan (its own DATABASE_URL …), "
             "over the environment."),
    json_output: bool = flag_option("--json", help="One JSON document on stdout."),
) -> None:
    """The runbook's §8 sign-off checklist: proven from the journal, or confirmed by a person.

    A rehearsal counts for "rollback validated" when it ran the same plan version, or shipped
    the same release (same migrations and functions): staging's, with --rehearsed-on.

    Lists what is missing and how to get it; exit 1 while anything is missing. When every
    item holds, appends a CHANGELOG entry (ROLLOUT_CHANGELOG, default CHANGELOG.md) and
    announces the release in the plan's Slack channel, once per plan version.
    """
    from rollout.engine.journal import Journal
    from rollout.engine.runner import operator_name
    from rollout.engine.targets import build_target
    from rollout.workflows import signoff as checklist

    loaded = _resolve(plan)
    if rehearsed_on_env and not rehearsed_on:
        raise UsageError("--rehearsed-on-env goes with --rehearsed-on PLAN")
    environ = ({**os.environ, **checklist.read_env_file(Path(rehearsed_on_env))}
               if rehearsed_on_env else None)
    target = build_target(loaded)
    if not target.reachable():
        raise UsageError(f"the {loaded.model.target.kind} target of {plan} is not running",
                         hint="`rollout local up` starts the local stack")
    sources = [checklist.rehearsal_source(Path(other), target.db_url, environ)
               for other in rehearsed_on]
    journal = Journal(target.db_url)
    try:
        if confirm:
            checklist.confirm(loaded, journal, confirm, by or operator_name())
        result = checklist.evaluate(loaded, journal, target, sources)
        final = (checklist.finalize(result, loaded, journal, operator_name())
                 if result.complete else None)
    finally:
        journal.close()
    if json_output:
        print(json.dumps({**result.to_dict(), "final": final.to_dict() if final else None},
                         default=str, indent=2))
        raise typer.Exit(0 if result.complete else 1)
    if confirm:
        out.print(f"recorded: {confirm} confirmed by {by or operator_name()}")
    table = Table("", "item", "evidence / how to satisfy",
                  title=f"sign-off: {loaded.name} → {loaded.environment}")
    for item in result.items:
        text = item.evidence if item.holds else f"{item.evidence}\n[yellow]→ {item.how}[/yellow]"
        table.add_row(STATE.get(item.state, item.state), item.title, text)
    out.print(table)
    if not result.complete:
        out.print(f"[red]{len(result.missing)} item(s) missing:[/red] "
                  + ", ".join(i.id for i in result.missing))
        raise typer.Exit(1)
    assert final is not None
    if final.already:
        out.print(f"[green]signed off[/green] (already, by {final.signed_by})")
    else:
        out.print(f"[green]signed off by {final.signed_by}[/green]: entry added to "
                  f"{final.changelog}")
        if final.announcement is not None and final.announcement.ok:
            out.print("announced in the release channel")
    for note in final.notes:
        out.print(f"[yellow]• {note}[/yellow]", soft_wrap=True)
