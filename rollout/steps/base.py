"""What every step kind is: describe / apply / verify / rollback, over a target.

A step kind is a class with a pydantic `Params` model (its `with:` block in the plan). The
engine calls `preflight` for every step before anything changes (bad input → exit 2, nothing
touched), then `apply` and `verify` in order; `rollback` gets back the detail `apply` returned
(as kept in the journal), so it can undo exactly what was done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationInfo

from rollout.adapters.targets import Target
from rollout.errors import UsageError

Detail = dict[str, Any]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def project_file(value: str, info: ValidationInfo) -> str:
    """A file parameter: relative to the project, never escaping it (no `../../etc/passwd`)."""
    root: Path = (info.context or {})["root"]
    candidate = (root / value).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise ValueError(f"{value!r} points outside the project directory")
    if not candidate.is_file():
        raise ValueError(f"{value!r} does not exist (paths are relative to {root})")
    return value


class Background(Protocol):
    """Work a step leaves running while later steps run (a background analysis)."""

    step_id: str
    kind: str
    until: str | None
    """The last step it watches; None: to the end of the run."""

    def failure(self) -> str | None: ...

    def stop(self) -> Detail: ...


@dataclass
class StepContext:
    """What a running step may use. The engine builds one per step."""

    target: Target
    run_id: str
    environment: str
    operator: str
    artifacts: Path
    root: Path
    progress: Callable[[str, float | None], None] = lambda message, fraction: None
    wait_for_approval: Callable[[str, str, float], str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoint: Callable[[Detail, bool], None] = lambda detail, milestone: None
    """A long step's progress, journaled as its (partial) state so `rollback` can undo it and
    `--resume` continue it; `milestone` also records a `checkpoint` step event."""
    resume_detail: Detail | None = None
    """On `--resume`: the last checkpoint this run journaled for the step, else None."""
    background: Callable[[Background], None] | None = None
    """Hands the engine work that runs on while later steps run; it checks it after each."""

    def path(self, relative: str) -> Path:
        return self.root / relative


class Step:
    """Base class of step kinds. Subclasses set `kind`, `Params` and override what they do."""

    kind: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = Params
    targets: ClassVar[tuple[str, ...]] = ("local", "supabase")
    persistent: ClassVar[bool] = True
    """True when apply leaves a lasting effect that rollback undoes (and a re-apply skips)."""
    reversible: ClassVar[bool] = True
    """False for persistent steps that rollback leaves in place (seed data of the old app)."""
    repeat_on_resume: ClassVar[bool] = False
    """True for steps whose effect a crash may have undone (the maintenance window)."""
    builds_baseline: ClassVar[bool] = False
    """True for steps that lay down what later steps expect to find (the local seed of the
    app's schema): checks of the steps after them wait until they have run."""

    def __init__(self, step_id: str, params: BaseModel) -> None:
        self.id = step_id
        self.params = params

    def describe(self) -> str:
        return self.kind

    def preflight(self, ctx: StepContext) -> None:
        """Checks that need the target but change nothing; raise UsageError to refuse the run."""

    def target_mismatch(self, db_url: str, root: Path) -> list[str]:
        """How the target differs from what this step needs to find there (for `plan`)."""
        return []

    def check_target(self, db_url: str, root: Path) -> None:
        """Refuse the run (exit 2, nothing changed) when the target is not what this step
        was written for. The engine calls it before the first change, or — when the plan lays
        the baseline itself (a local seed) — right after that baseline."""
        mismatch = self.target_mismatch(db_url, root)
        if mismatch:
            raise UsageError(
                f"step {self.id}: the target is not the database it was written for:\n  "
                + "\n  ".join(mismatch),
                hint="point the plan at the right database, or write the migration for this "
                     "one; nothing was changed")

    def apply(self, ctx: StepContext) -> Detail:
        raise NotImplementedError

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        """Raise StepFailed when what apply did is not in place."""

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        return {"undone": False, "reason": "nothing to undo"}

    def drift(self, target: Target, detail: Detail) -> str | None:
        """How the target moved away from what this applied step did (None: it did not)."""
        return None

    def later_steps(self) -> list[str]:
        """Step ids this step names, which must come after it in the plan (checked at load)."""
        return []

    def status_line(self, detail: Detail) -> str | None:
        """One line for `rollout status` about this step's journaled state (None: nothing)."""
        return None

    def fingerprint(self) -> str:
        """What identifies this step's effect; a changed fingerprint means 'apply again'."""
        return f"{self.kind}:{self.params.model_dump_json()}"

    def shipped_files(self, root: Path) -> list[Path]:
        """The project files this step ships to the target (under `root`), for the plan's
        release fingerprint: the same files ⇒ the same release, whichever plan ships them."""
        return []

