"""`--help` teaches the tool, and shell completion works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.conftest import ROOT


def rollout(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout", *args], cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200", **env}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_top_level_help_names_the_main_job_and_every_command() -> None:
    result = rollout("--help")
    assert result.returncode == 0
    assert "rollout apply plans/local.yaml" in result.stdout
    for command in ("plan", "apply", "rollback", "status", "history", "approve", "unlock",
                    "local", "db", "cron"):
        assert f" {command} " in result.stdout, command


@pytest.mark.parametrize(("command", "teaches"), [
    (["apply"], ["--dry-run", "--resume", "--from", "Exit codes", "on_failure"]),
    (["rollback"], ["--to", "maintenance window"]),
    (["plan"], ["rollout plan schema", "Exit 2"]),
    (["local", "up"], ["idempotent"]),
    (["unlock"], ["--force", "environment name"]),
    (["db", "restore"], ["--yes", "journal"]),
])
def test_command_help_explains_itself(command: list[str], teaches: list[str]) -> None:
    result = rollout(*command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for fragment in teaches:
        assert fragment in text, (command, fragment)


def complete(words: str) -> list[str]:
    """What bash completion offers, asked the way the installed completion script asks."""
    script = Path(sys.executable).parent / "rollout"
    result = subprocess.run([str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "_ROLLOUT_COMPLETE": "complete_bash",
                                 "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)},
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completion_completes_commands_and_options() -> None:
    assert "apply" in complete("rollout ap")
    assert "Usage:" not in complete("rollout ap")
    assert "--dry-run" in complete("rollout apply --dr")
    assert "up" in complete("rollout local u")


def test_starting_the_cli_loads_no_engine() -> None:
    """`--help` and completion must not pay for psycopg, httpx, pydantic, jwt or the supabase
    client: every CLI module imports the engine inside its commands."""
    probe = ("import sys, rollout.cli.main; "
             "print(','.join(m for m in ('psycopg', 'httpx', 'pydantic', 'jwt', 'supabase', "
             "'yaml', 'rollout.engine.runner') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""
