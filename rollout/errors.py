"""The errors `rollout` expects, each carrying the exit code the CLI ends with.

Exit codes (DESIGN.md): 0 done; 1 a step failed and the run was rolled back or stopped
cleanly; 2 bad usage or invalid plan, nothing changed; 3 rollback failed, state needs a
person; 4 internal error (anything not listed here); 5 refused: another run holds the
environment (or is still alive), nothing changed; 6 the target cannot be reached, nothing
changed; 7 the run is parked waiting on a gate (resume it with `apply --resume`).
"""

from __future__ import annotations

from typing import Any


class RolloutError(Exception):
    """An expected failure: printed as one line, no traceback."""

    exit_code = 4

    def __init__(self, message: str, *, hint: str | None = None,
                 partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.partial = partial
        """What a failing step had already done (journaled, so `rollback` can undo it)."""


class UsageError(RolloutError):
    """Bad input (command line or plan): nothing was changed."""

    exit_code = 2


class PlanError(UsageError):
    """An invalid plan file; the message names the file, line and column."""


class StepFailed(RolloutError):
    """A step failed; the run was stopped or rolled back cleanly."""

    exit_code = 1


class Parked(RolloutError):
    """A gate is not satisfied yet and stops polling for now: the run waits (lock released)
    until `apply --resume` checks the gate again."""

    exit_code = 7


class RollbackFailed(RolloutError):
    """Undoing failed: the target needs a person."""

    exit_code = 3


class LockHeld(RolloutError):
    """Another run holds the environment's lock, or is still alive: refused, nothing changed."""

    exit_code = 5


class StackError(RolloutError):
    """The local stack could not start, stop or be reached."""

    exit_code = 1


class PortTaken(StackError):
    """Another process bound the port a local server was about to listen on."""


class TargetError(RolloutError):
    """A remote target (database, Management API, webhook) refused or failed."""

    exit_code = 1


class TargetUnreachable(TargetError):
    """The target cannot be reached at all (before anything ran): nothing changed."""

    exit_code = 6
