"""Edge-function steps: deploy (with a way back) and function secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from rollout.adapters.function_bundle import collect_bundle
from rollout.adapters.targets import probe_headers, sha256_text, wait_healthy
from rollout.errors import RolloutError, StepFailed, UsageError
from rollout.steps.base import Detail, Params, Step, StepContext


class FunctionSpec(Params):
    """One function of a deploy: what the platform checks before it runs, and how to probe it."""

    name: str
    verify_jwt: bool = Field(
        True, description="The platform answers 401 before the function runs unless the request "
        "carries a valid JWT (the platform's default). Set false for functions that "
        "authenticate callers themselves (JWKS, secret key in apikey).")
    health_path: str | None = Field(None, description="Path answering 200 when healthy.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not name.replace("-", "").replace("_", "").isalnum() or name.startswith("_"):
            raise ValueError(f"{name!r} is not a function name")
        return name


class DeployParams(Params):
    functions: list[FunctionSpec] = Field(
        min_length=1, description="Folders under functions/: a name, or {name, verify_jwt, "
        "health_path}.")
    functions_dir: str = "functions"

    @field_validator("functions", mode="before")
    @classmethod
    def _names(cls, items: Any) -> Any:
        if isinstance(items, list):
            return [{"name": i} if isinstance(i, str) else i for i in items]
        return items


class EdgeDeploy(Step):
    """Upload every function, switch them live, check them; rollback restores what was live."""

    kind: ClassVar[str] = "edge.deploy"
    Params = DeployParams
    params: DeployParams

    def describe(self) -> str:
        return "deploy " + ", ".join(
            f.name + ("" if f.verify_jwt else " (verify_jwt off)") for f in self.params.functions)

    def shipped_files(self, root: Path) -> list[Path]:
        """Exactly what is uploaded: each function's bundle (its sources, the shared modules
        it imports, the Deno config and lock), as `collect_bundle` gathers it."""
        repo = (root / self.params.functions_dir).parent
        return sorted({repo / path for f in self.params.functions
                       for path in collect_bundle(repo, f.name).files})

    def preflight(self, ctx: StepContext) -> None:
        root = ctx.path(self.params.functions_dir)
        for function in self.params.functions:
            if not (root / function.name / "index.ts").is_file():
                raise UsageError(f"function {function.name}: "
                                 f"{root / function.name / 'index.ts'} does not exist")
            if function.health_path and function.verify_jwt and not self._can_sign(ctx):
                raise UsageError(
                    f"function {function.name} has verify_jwt on: the platform answers its "
                    "health probe 401 unless it carries a JWT, and the target has none",
                    hint="set verify_jwt: false for a function that authenticates callers "
                         "itself, or give the target the legacy anon key / jwt_secret")

    def apply(self, ctx: StepContext) -> Detail:
        keep = ctx.artifacts / "previous-functions"
        settings = {f.name: f.verify_jwt for f in self.params.functions}
        return ctx.target.functions.deploy(settings, ctx.path(self.params.functions_dir), keep)

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        live = ctx.target.functions.live()
        paths = {f.name: f.health_path for f in self.params.functions}
        for name, entry in detail["functions"].items():
            if live.get(name) != entry["version"]:
                raise StepFailed(f"function {name}: version {entry['version']} is not live "
                                 f"(live: {live.get(name)})")
            path = paths.get(name)
            if path:
                latency = wait_healthy(f"{ctx.target.api_url}/functions/v1/{name}{path}",
                                       headers=self._probe_headers(ctx))
                entry["health_ms"] = round(latency, 1)

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        return {"undone": True, **ctx.target.functions.rollback(detail)}

    @staticmethod
    def _probe_headers(ctx: StepContext) -> dict[str, str]:
        return probe_headers(ctx.target.anon_key, ctx.target.jwt_secret)

    def _can_sign(self, ctx: StepContext) -> bool:
        """Whether the probe can carry a JWT (unknown before a local stack exists: assume so,
        it always has its legacy anon key)."""
        try:
            return "authorization" in self._probe_headers(ctx)
        except RolloutError:
            return True


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

    def preflight(self, ctx: StepContext) -> None:
        empty = sorted(name for name, value in self.params.set.items() if not value)
        if empty:
            raise UsageError(f"secret {', '.join(empty)} has no value (is its variable set?)")

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
