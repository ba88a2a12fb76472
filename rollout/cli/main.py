"""Registers every command group on the Typer app (imported by `rollout.cli.app.run`)."""

from rollout.cli import (  # noqa: F401
    checks_cmd,
    db_cmd,
    flags_cmd,
    local,
    monitors_cmd,
    release,
    signoff_cmd,
)
from rollout.cli.app import run

__all__ = ["run"]
