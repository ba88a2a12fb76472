"""Edge-function steps: deploy (with a way back) and function secrets."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from rollout.adapters.targets import sha256_text, wait_healthy
from rollout.errors import StepFailed, UsageError
from rollout.steps.base import Detail, Params, Step, StepContext

DENO_CONFIG = ("deno.json", "deno.lock")
"""Beside `functions_dir`: the import map and lock deployed with every function's bundle."""


class DeployParams(Params):
    functions: list[str] = Field(min_length=1, description="Folders under functions/.")
    functions_dir: str = "functions"
    health_paths: dict[str, str] = Field(
        default_factory=dict, description="function → path answering 200 when healthy")

    @field_validator("functions")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name.replace("-", "").replace("_", "").isalnum() or name.startswith("_"):
                raise ValueError(f"{name!r} is not a function name")
        return names


class EdgeDeploy(Step):
    """Upload every function, switch them live, check them; rollback restores what was live."""

    kind: ClassVar[str] = "edge.deploy"
    Params = DeployParams
    params: DeployParams

    def describe(self) -> str:
        return f"deploy {', '.join(self.params.functions)}"

    def shipped_files(self, root: Path) -> list[Path]:
        """Each function's bundle: its folder and `_shared` (as `bundle_digest` hashes them),
        plus the Deno config and lock deployed with them (they pin the npm modules)."""
        functions = root / self.params.functions_dir
        folders = [functions / name for name in self.params.functions] + [functions / "_shared"]
        files = {path for folder in folders for path in folder.rglob("*") if path.is_file()}
        files.update(path for name in DENO_CONFIG if (path := functions.parent / name).is_file())
        return sorted(files)

    def preflight(self, ctx: StepContext) -> None:
        root = ctx.path(self.params.functions_dir)
        for name in self.params.functions:
            if not (root / name / "index.ts").is_file():
                raise UsageError(f"function {name}: {root / name / 'index.ts'} does not exist")

    def apply(self, ctx: StepContext) -> Detail:
        keep = ctx.artifacts / "previous-functions"
        return ctx.target.functions.deploy(self.params.functions,
                                           ctx.path(self.params.functions_dir), keep)

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        live = ctx.target.functions.live()
        for name, entry in detail["functions"].items():
            if live.get(name) != entry["version"]:
                raise StepFailed(f"function {name}: version {entry['version']} is not live "
                                 f"(live: {live.get(name)})")
            path = self.params.health_paths.get(name)
            if path:
                latency = wait_healthy(f"{ctx.target.api_url}/functions/v1/{name}{path}")
                entry["health_ms"] = round(latency, 1)

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        return {"undone": True, **ctx.target.functions.rollback(detail)}


class SecretsParams(Params):
    set: dict[str, str] = Field(default_factory=dict, description="NAME: value (use !secret)")
    unset: list[str] = Field(default_factory=list)

    @field_validator("set")
    @classmethod
    def _reserved(cls, values: dict[str, str]) -> dict[str, str]:
        for name in values:
            if name.upper().startswith("SUPABASE_"):
                raise ValueError(f"{name}: SUPABASE_* names are reserved by the platform")
        return values


class EdgeSecrets(Step):
    """Function secrets, compared by digest so unchanged ones are not rewritten."""

    kind: ClassVar[str] = "edge.secrets"
    Params = SecretsParams
    params: SecretsParams

    def describe(self) -> str:
        parts = []
        if self.params.set:
            parts.append("set " + ", ".join(sorted(self.params.set)))
        if self.params.unset:
            parts.append("unset " + ", ".join(sorted(self.params.unset)))
        return "; ".join(parts) or "no change"

    def fingerprint(self) -> str:
        digests = {k: sha256_text(v) for k, v in sorted(self.params.set.items())}
        return f"{self.kind}:{digests}:{sorted(self.params.unset)}"

    def apply(self, ctx: StepContext) -> Detail:
        before = ctx.target.secrets.digests()
        changed = {k: v for k, v in self.params.set.items() if before.get(k) != sha256_text(v)}
        if changed:
            ctx.target.secrets.set(changed)
        removed = [name for name in self.params.unset if name in before]
        if removed:
            ctx.target.secrets.unset(removed)
        return {"written": sorted(changed),
                "unchanged": sorted(set(self.params.set) - set(changed)),
                "created": sorted(k for k in changed if k not in before), "unset": removed}

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        now = ctx.target.secrets.digests()
        for name, value in self.params.set.items():
            if now.get(name) != sha256_text(value):
                raise StepFailed(f"secret {name} does not hold the planned value")

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        # Values are never kept (not even in the journal), so only what this step created can
        # be undone; changed values stay and are named for a person to restore.
        created = detail.get("created", [])
        if created:
            ctx.target.secrets.unset(created)
        kept = sorted(set(detail.get("written", [])) - set(created))
        return {"undone": True, "unset": created, "left_changed": kept}
