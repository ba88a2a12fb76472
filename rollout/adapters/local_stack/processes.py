"""Starting, waiting for and stopping the stack's child processes, always by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from rollout.adapters.local_stack.postgres import process_alive, start_failure
from rollout.errors import PortTaken, StackError

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_on_port(start: Callable[[int], T], preferred: int | None = None, *,
                  fixed: bool = False, attempts: int = 3) -> T:
    """`start(port)` on `preferred` (or a free port). A port found free can be bound by another
    process before the server binds it: on `PortTaken` pick another, unless the port is `fixed`
    (the user chose it)."""
    port = preferred or free_port()
    for attempt in range(1, attempts + 1):
        try:
            return start(port)
        except PortTaken:
            if fixed or attempt == attempts:
                raise
            port = free_port()
    raise AssertionError("unreachable")


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


def _listening_sockets(port: int) -> set[str] | None:
    """Inodes of the TCP sockets listening on `port` (None where /proc/net cannot be read)."""
    found: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(inode)
    return found if readable else None


def listens(pid: int, port: int) -> bool:
    """`pid` itself listens on `port`, not merely some process (e.g. another stack's server
    that took the port first). Without /proc, anything accepting connections there counts."""
    inodes = _listening_sockets(port)
    if inodes is None:
        return port_in_use(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return port_in_use(port)
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


def wait_for_port(port: int, pid: int, name: str, log_file: Path, timeout: float = 30) -> None:
    """Wait until the child `pid` listens on `port`; fail fast, with the log's tail, if it dies
    (`PortTaken` when another process had bound the port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listens(pid, port):
            return
        if not process_alive(pid):
            raise start_failure(f"{name} exited during start-up: {log_tail(log_file)}", log_file)
        time.sleep(0.02)  # a Deno worker listens ~130 ms after its start
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
