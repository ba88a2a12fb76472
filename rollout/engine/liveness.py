"""A dead run: journaled as running, but no process holds its environment's lock any more
and its heartbeat session is gone (or silent for ALIVE_SECONDS).

A run's life is its lock session (journal.EnvironmentLock): SIGKILL, a closed terminal or a
lost machine end it, and the journal row stays `running`. `status`, `plan` and `check health`
ask `dead_run` so such a run never looks "running": they say what it left (the window, the
steps it did not finish) and the exact commands to finish or undo it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollout.adapters import database as db
from rollout.engine.journal import Journal, RunInfo
from rollout.engine.plan import Plan


@dataclass
class DeadRun:
    run: RunInfo
    window: db.WindowState
    unfinished: list[str]
    plan_path: Path

    def headline(self) -> str:
        return (f"run {self.run.id[:8]} ({self.run.command} by {self.run.operator}@"
                f"{self.run.host}, started {self.run.started_at:%Y-%m-%d %H:%M} UTC) is dead: "
                "its process is gone and nothing holds the lock")

    def lines(self) -> list[str]:
        """What it left and what to do, one item per line."""
        out = [self.headline()]
        window = self.window
        if window.enforced and window.lease:
            out.append(f"maintenance window: API writes are REFUSED on {window.tables} table(s) "
                       f"until {window.lease['expires_at']:%H:%M:%S} UTC at the latest (its "
                       "lease), then they come back by themselves")
        elif window.present:
            out.append(f"maintenance window: ended by itself, writes are allowed (inert guards "
                       f"left on {window.tables} table(s), removed by the commands below)")
        if self.unfinished:
            out.append(f"not finished: {', '.join(self.unfinished)}")
        verb = "apply" if self.run.command == "apply" else "rollback"
        if verb == "apply":
            out.append(f"finish it: rollout apply {self.plan_path} --resume")
        out.append(f"undo it: rollout rollback {self.plan_path}")
        return out


def dead_run(journal: Journal, plan: Plan) -> DeadRun | None:
    """The environment's newest run if it is journaled `running` and its session is gone."""
    runs = journal.runs(plan.environment, limit=1)
    if not runs or runs[0].status not in ("running", "stopping"):
        return None
    run = runs[0]
    holder = journal.lock_holder(plan.environment)
    if (holder and str(holder["run_id"]) == run.id) or journal.alive(run.id):
        return None
    done = journal.completed_in_run(run.id)
    unfinished = [p.spec.id for p in plan.steps if p.enabled and p.spec.id not in done]
    if run.command != "apply":
        unfinished = []
    return DeadRun(run, db.maintenance_state(journal.url), unfinished, plan.path)


def dead_run_at(plan: Plan, url: str) -> DeadRun | None:
    """`dead_run` on a journal opened (and closed) here; None when nothing ran there yet."""
    journal = Journal(url)
    try:
        return dead_run(journal, plan) if journal.exists() else None
    finally:
        journal.close()
