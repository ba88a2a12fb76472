"""The Typer application object and the process-level error handling (the CLI's only exits)."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console

from rollout.errors import RolloutError

app = typer.Typer(
    name="rollout",
    help=(
        "Release the role-based messaging system to Supabase, safely.\n\n"
        "Start with `rollout apply plans/local.yaml`: it brings up the embedded local stack "
        "(PostgreSQL + Deno, no Docker, no account) and runs the whole runbook. "
        "`rollout plan PLAN` shows what would run; `rollout rollback PLAN` undoes it."
    ),
    no_args_is_help=True,
    # Plain help (click's formatter): typer's rich help imports rich's Markdown, Syntax and
    # Traceback (markdown-it, pygments, attrs) on every --help, 90 ms of a 230 ms start-up.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
    pretty_exceptions_enable=False,
)

def flag_option(*names: str, help: str) -> Any:
    """A boolean option, shown in --help as the flag it is (no `<bool>` value column)."""
    return typer.Option(False, *names, help=help, metavar="")


out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"rollout {version('rollout')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 metavar="", help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", metavar="",
                               help="Tracebacks for expected errors (or ROLLOUT_DEBUG=1); "
                                    "accepted anywhere on the command line."),
) -> None:
    """Release the role-based messaging system to Supabase, safely."""


def debug_enabled() -> bool:
    return os.environ.get("ROLLOUT_DEBUG") == "1"


def run() -> None:
    """Console-script entry point: expected errors are one red line and an exit code."""
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        os.environ["ROLLOUT_DEBUG"] = "1"
    from rollout.cli import main  # noqa: F401  (registers the commands)

    try:
        # Standalone mode: click itself answers usage errors (exit 2) and exits with the
        # command's own code; what reaches us is ours to shape.
        app()
    except RolloutError as error:
        if debug_enabled():
            err.print_exception()
        err.print(f"[red]error:[/red] {error}", soft_wrap=True)
        if error.hint:
            err.print(f"[dim]hint: {error.hint}[/dim]", soft_wrap=True)
        sys.exit(error.exit_code)
    except Exception as error:  # noqa: BLE001 — the last line of defence: exit 4, no traceback
        if debug_enabled():
            err.print_exception()
        err.print(f"[red]internal error:[/red] {type(error).__name__}: {error} "
                  "(run again with --debug for the traceback)", soft_wrap=True)
        sys.exit(4)
