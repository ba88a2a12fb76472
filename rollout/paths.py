"""Where things live: the project tree the CLI ships, and the state directory it writes."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout holding migrations/, functions/ and plans/ (`ROLLOUT_PROJECT_DIR` overrides)."""
    override = os.environ.get("ROLLOUT_PROJECT_DIR")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """Local state (embedded stack, run artefacts): `ROLLOUT_STATE_DIR` or `<project>/.rollout`."""
    override = os.environ.get("ROLLOUT_STATE_DIR")
    return Path(override).resolve() if override else project_root() / ".rollout"
