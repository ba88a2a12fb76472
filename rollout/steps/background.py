"""A gate.analysis in the background: measured on a thread while later steps run.

Argo Rollouts runs analysis in the background of a canary; here a `gate.analysis` with
`background: true` starts watching and returns at once. Each measurement fails when its
`failure` condition holds or its `success` condition does not (an error fails it too, as in
the foreground); more than `failure_limit` failures end the watch failed, and the engine stops
the run after the step that is running then. The watch ends at its `until` step (or the end
of the run); the engine journals its verdict as a `watch` event of the analysis step.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rollout.steps.base import Detail
from rollout.steps.gates import holds, measure, seconds

if TYPE_CHECKING:
    from rollout.steps.gates import AnalysisParams

KEEP = 20  # measurements the journal keeps


class Watch:
    """One background analysis: a daemon thread measuring every `interval` until stopped."""

    kind: str = "gate.analysis"

    def __init__(self, step_id: str, params: AnalysisParams, db_url: str) -> None:
        self.step_id = step_id
        self.until = params.until
        self.params = params
        self.db_url = db_url
        self.measurements: list[float | str] = []
        self.failures = 0
        self._failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{step_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def failed(self, value: float | str) -> bool:
        p = self.params
        return isinstance(value, str) or bool(p.failure and holds(p.failure, value)) \
            or not holds(p.success, value)

    def _run(self) -> None:
        while True:
            try:
                value: float | str = measure(self.params, self.db_url)
            except Exception as err:  # noqa: BLE001 — an error is a failed measurement
                value = f"error: {err}"
            self.measurements = [*self.measurements, value][-KEEP:]
            if self.failed(value):
                self.failures += 1
                if self.failures > self.params.failure_limit:
                    self._failure = (f"{self.step_id}: {self.failures} failed measurement(s), "
                                     f"last {value}")
                    return
            if self._stop.wait(seconds(self.params.interval)):
                return

    def failure(self) -> str | None:
        """Why the watch failed, once it has; None while it holds."""
        return self._failure

    def stop(self) -> Detail:
        self._stop.set()
        self._thread.join(timeout=60)
        return {"verdict": "failed" if self._failure else "successful",
                "failures": self.failures, "measurements": list(self.measurements)}
