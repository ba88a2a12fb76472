"""Starting, waiting for and stopping the stack's child processes, always by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from rollout.adapters.local_stack.postgres import process_alive
from rollout.errors import StackError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def spawn(argv: list[str], env: Mapping[str, str], log_file: Path, cwd: Path) -> int:
    """Start a detached child (own session, so Ctrl-C of the CLI does not kill the stack)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, start_new_session=True,
        )
    return proc.pid


def wait_for_port(port: int, pid: int, name: str, log_file: Path, timeout: float = 30) -> None:
    """Wait until `port` accepts connections; fail fast, with the log's tail, if the child dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        if not process_alive(pid):
            raise StackError(f"{name} exited during start-up: {log_tail(log_file)}")
        time.sleep(0.05)
    raise StackError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def stop_pid(pid: int | None, timeout: float = 5) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after `timeout`."""
    if not pid or not process_alive(pid):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not process_alive(pid):
                return
            time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
