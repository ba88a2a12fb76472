"""Registers every command group on the Typer app (imported by `rollout.cli.app.run`)."""

from rollout.cli import checks_cmd, db_cmd, local, release  # noqa: F401
from rollout.cli.app import run

__all__ = ["run"]
