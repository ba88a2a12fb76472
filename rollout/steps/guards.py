"""Guards: measurements watched while something risky runs (a flag ramp), each with a failure
condition, an interval and a limit of consecutive failures before it counts as a breach.

A guard measures with gate.analysis's code (a `query` or a `url` + `json_field`) or a built-in
source by name (`source: gateway-errors`, see checks/guard_sources.py). A measurement that
cannot be taken is *inconclusive*: neither a pass nor a failure — the caller asks a person.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rollout.adapters.targets import Target
from rollout.checks import guard_sources
from rollout.steps.gates import Measured, check_condition, check_duration, holds, measure, seconds

Verdict = Literal["ok", "failing", "breach", "inconclusive"]
KEEP_VALUES = 10  # values a guard remembers (the breach message and `status` show them)


class GuardParams(Measured):
    SOURCES: ClassVar[tuple[str, ...]] = ("query", "url", "source")

    name: str = Field("", description="How the journal, the audit and alerts name it "
                                      "(default: the source's name).")
    source: str | None = Field(None, description="A built-in source: "
                                                 + ", ".join(guard_sources.SOURCES))
    options: dict[str, Any] = Field(default_factory=dict, alias="with",
                                    description="The built-in source's parameters.")
    failure: str = Field(description="Condition that counts as a failed measurement, "
                                     "e.g. '> 0.005'.")
    interval: str | float = "1m"
    failure_limit: int = Field(1, ge=1, description="Consecutive failed measurements that make "
                                                    "a breach.")

    _duration = field_validator("interval")(check_duration)
    _condition = field_validator("failure")(check_condition)

    @model_validator(mode="after")
    def _named(self) -> GuardParams:
        if self.source is not None:
            guard_sources.check(self.source, self.options)
        elif self.options:
            raise ValueError("`with` gives a built-in `source` its parameters; there is none")
        if not self.name:
            if self.source is None:
                raise ValueError("a `query` or `url` guard needs a `name`")
            self.name = self.source
        return self


@dataclass
class Guard:
    """One guard while it runs: its schedule, its consecutive failures, its last values."""

    params: GuardParams
    target: Target
    failures: int = 0
    values: list[float | str] = field(default_factory=list)
    due: float = 0.0  # time.monotonic() of the next measurement: at once at first
    _source: guard_sources.Measure | None = None

    def __post_init__(self) -> None:
        if self.params.source is not None:
            self._source = guard_sources.build(self.params.source, self.params.options,
                                               self.target)

    @property
    def name(self) -> str:
        return self.params.name

    def measure(self) -> float:
        if self._source is not None:
            return self._source()
        return measure(self.params, self.target.db_url)

    def check(self) -> Verdict:
        """Measure once and judge it; schedules the next measurement."""
        self.due = time.monotonic() + seconds(self.params.interval)
        try:
            value: float | str = self.measure()
        except Exception as err:  # noqa: BLE001 — no number is inconclusive, whatever the cause
            value = f"error: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
        self.values = [*self.values, value][-KEEP_VALUES:]
        if isinstance(value, str):
            return "inconclusive"
        if not holds(self.params.failure, value):
            self.failures = 0
            return "ok"
        self.failures += 1
        return "breach" if self.failures >= self.params.failure_limit else "failing"

    def failing_values(self) -> list[float | str]:
        """The consecutive failed measurements behind the current failure count."""
        return self.values[-self.failures:] if self.failures else []

    def state(self) -> dict[str, Any]:
        """What the journal keeps (and `status` shows) about this guard."""
        return {"last": self.values[-1] if self.values else None, "failures": self.failures,
                "failure": self.params.failure, "limit": self.params.failure_limit}
