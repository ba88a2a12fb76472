"""Fixtures for the CLI and engine: a throw-away local stack per test, driven by the real CLI.

Each test gets its own state directory (so its own PostgreSQL, gateway and journal); the
stack is stopped by pid afterwards. Commands run as subprocesses, so exit codes, stdout and
stderr are exactly what a person or CI sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollout.adapters.local_stack.postgres import shared_dir
from rollout.adapters.local_stack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT = [sys.executable, "-m", "rollout"]


@dataclass
class Cli:
    state: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ROLLOUT, *args], cwd=ROOT, env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout, check=False)

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*ROLLOUT, *args], cwd=ROOT, env={**self.env, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @property
    def stack(self) -> LocalStack:
        return LocalStack(self.state)

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.stack.db_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def one(self, query: str, params: Any = None) -> Any:
        return self.sql(query, params)[0][0]


@pytest.fixture
def cli() -> Iterator[Cli]:
    state = Path(tempfile.mkdtemp(prefix="rollout-cli-", dir=shared_dir("rollout-tests")))
    state.chmod(0o755)
    # The local plan's k6 step costs seconds per apply; tests of the load check turn it on.
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(state), "ROLLOUT_OPERATOR": "pytest",
           "COLUMNS": "200", "NO_COLOR": "1", "ROLLOUT_LOAD": "false"}
    env.pop("ROLLOUT_DEBUG", None)
    yield Cli(state, env)
    LocalStack(state).down()


def write_plan(directory: Path, body: str, name: str = "plan.yaml") -> Path:
    path = directory / name
    path.write_text(body)
    return path


LOCAL_HEADER = """
name: test
environment: local
target: {kind: local}
steps:
"""
