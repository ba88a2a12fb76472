"""The real `rollout` CLI with test-only pause points, for landing faults at exact places.

Used only by tests/reliability: `python -m tests.reliability.hooked_cli apply PLAN ...` behaves
exactly like `python -m rollout apply PLAN ...`, except that when RELIABILITY_PAUSE names a
point, the process writes RELIABILITY_MARKER (a JSON line with details) on reaching it and
waits there until `<marker>.go` exists (or until it is killed, which is the usual outcome).
Nothing here is part of the product; it only wraps product functions.

Points:
  before:<step>      before the step's `running` event (the previous step is fully finished)
  started:<step>     after the step's `running` event, before it does anything
  succeeded:<step>   right after the step's success is journaled (event and state, one
                     transaction), before anything else
  finish             after every step, before the run's final status is written
  during:backup      pg_dump has written part of the dump; pg_dump is SIGSTOPped there
  during:migrate     the migration's statements ran, its transaction is open (not committed)
  deployed:<name>    edge.deploy has started function <name>, before the next one
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POINT = os.environ.get("RELIABILITY_PAUSE", "")
MARKER = Path(os.environ.get("RELIABILITY_MARKER", "/nonexistent/marker"))


def pause(**info: Any) -> None:
    """Announce that the point is reached, then wait for `<marker>.go` (or a kill)."""
    MARKER.write_text(json.dumps({"point": POINT, "pid": os.getpid(), **info}) + "\n")
    go = MARKER.with_name(MARKER.name + ".go")
    deadline = time.monotonic() + 600
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def install() -> None:
    kind, _, arg = POINT.partition(":")
    if not kind:
        return
    from rollout.adapters import database
    from rollout.engine import journal as journal_mod

    if kind in ("before", "started"):
        original_event = journal_mod.Journal.step_event

        def step_event(self: Any, run_id: str, step_id: str, kind_: str, action: str,
                       status: str, *args: Any, **kwargs: Any) -> None:
            hit = step_id == arg and action == "apply"
            if hit and kind == "before" and status == "running":
                pause(step=step_id)
            original_event(self, run_id, step_id, kind_, action, status, *args, **kwargs)
            if hit and kind == "started" and status == "running":
                pause(step=step_id)

        journal_mod.Journal.step_event = step_event  # type: ignore[method-assign]

    if kind == "succeeded":
        original_succeeded = journal_mod.Journal.step_succeeded

        def step_succeeded(self: Any, run_id: str, environment: str, step_id: str,
                           *args: Any, **kwargs: Any) -> None:
            original_succeeded(self, run_id, environment, step_id, *args, **kwargs)
            if step_id == arg:
                pause(step=step_id)

        journal_mod.Journal.step_succeeded = step_succeeded  # type: ignore[method-assign]

    if kind == "finish":
        original_status = journal_mod.Journal.set_run_status

        def set_run_status(self: Any, run_id: str, status: str, *args: Any,
                           **kwargs: Any) -> None:
            if status == "succeeded":
                pause(status=status)
            original_status(self, run_id, status, *args, **kwargs)

        journal_mod.Journal.set_run_status = set_run_status  # type: ignore[method-assign]

    if POINT == "during:backup":
        real_run = subprocess.run

        def run(argv: Any, *args: Any, **kwargs: Any) -> Any:
            if not (isinstance(argv, list) and str(argv[0]).endswith("pg_dump")
                    and any(str(a).startswith("--file=") for a in argv)):
                return real_run(argv, *args, **kwargs)
            out = Path(next(str(a) for a in argv if str(a).startswith("--file="))[7:])
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            while proc.poll() is None and not (out.exists() and out.stat().st_size > 0):
                time.sleep(0.001)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGSTOP)  # frozen mid-write
                pause(pg_dump_pid=proc.pid, file=str(out), bytes=out.stat().st_size)
                os.kill(proc.pid, signal.SIGCONT)
            else:
                pause(pg_dump_pid=None, file=str(out), finished_first=True)
            stdout, stderr = proc.communicate()
            return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

        database.subprocess.run = run  # type: ignore[attr-defined]

    if POINT == "during:migrate":
        original_file = database.run_sql_file

        def run_sql_file(url: str, text: str, **kwargs: Any) -> None:
            if kwargs.get("record"):
                # Sleep inside the migration's own transaction, after its last statement.
                head, sep, tail = text.rpartition("\ncommit;")
                if sep:
                    text = head + "\nselect pg_sleep(3600);" + sep + tail
            original_file(url, text, **kwargs)

        database.run_sql_file = run_sql_file

    if kind == "deployed":
        from rollout.adapters.local_stack import stack as stack_mod

        original_deploy = stack_mod.LocalStack.deploy_function

        def deploy_function(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            worker = original_deploy(self, name, *args, **kwargs)
            if name == arg:
                pause(function=name, worker_pid=worker.pid, gateway_pid=self.state.gateway_pid)
            return worker

        stack_mod.LocalStack.deploy_function = deploy_function  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from rollout.cli.app import run

    sys.argv[0] = "rollout"
    run()
