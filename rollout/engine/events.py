"""What the engine tells the world. It never prints: renderers consume these events."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

MASK = "***"


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    command: str
    plan: str
    environment: str
    target: str
    steps: list[str]
    resumed: bool = False


@dataclass(frozen=True)
class StepStarted:
    step_id: str
    kind: str
    action: str
    description: str


@dataclass(frozen=True)
class StepProgress:
    step_id: str
    message: str
    fraction: float | None = None


@dataclass(frozen=True)
class StepFinished:
    step_id: str
    kind: str
    action: str
    status: str  # succeeded | failed | skipped | already-applied
    seconds: float
    summary: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Notice:
    message: str
    level: str = "info"  # info | warning | error


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    command: str
    status: str
    exit_code: int
    seconds: float
    message: str = ""


Event = RunStarted | StepStarted | StepProgress | StepFinished | Notice | RunFinished
Sink = Callable[[Event], None]


class Masker:
    """Replaces every known secret value with `***`, in text and in nested data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Short values would mask ordinary words; real secrets are long.
        self._secrets |= {s for s in secrets if s and len(s) >= 6}
        if self._secrets:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern else value

    def data(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def event(self, event: Event) -> Event:
        if not is_dataclass(event):
            return event
        changes = {f.name: self.data(getattr(event, f.name)) for f in fields(event)}
        return replace(event, **changes)
