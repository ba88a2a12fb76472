"""Plans: YAML validated into typed models, each error naming file, line and column."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rollout.engine import yamlsource
from rollout.errors import PlanError
from rollout.paths import project_root
from rollout.steps import KINDS, Step

STEP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0", ""}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalTarget(Strict):
    """The embedded default: PostgreSQL + Deno started by the CLI, no account needed."""

    kind: Literal["local"]


class SupabaseTarget(Strict):
    """A hosted Supabase project."""

    kind: Literal["supabase"]
    project_ref: str = Field(pattern=r"^[a-z0-9]{20}$", description="The project's 20-letter ref.")
    database_url: str = Field(description="Postgres URL (direct or session-mode pooler).")
    supabase_url: str = Field(pattern=r"^https?://", description="https://<ref>.supabase.co")
    access_token: str = Field(description="Management API token (SUPABASE_ACCESS_TOKEN).")
    anon_key: str = ""
    service_role_key: str = ""
    jwt_secret: str = Field("", description="The project's JWT secret, to mint smoke-test tokens.")
    api_url: str | None = Field(None, description="Management API base URL (default: "
                                 "SUPABASE_API_URL or https://api.supabase.com).")
    rate_limit_wait: float = Field(90, ge=0, le=900, description="Seconds a Management API call "
                                   "may wait in total for rate limits (429) to clear.")


class Notifications(Strict):
    slack_webhook_url: str | None = None
    pagerduty_routing_key: str | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"


class StepSpec(Strict):
    id: str = Field(description="Unique id: used by --from/--to and the journal.")
    kind: str = Field(description="One of the step kinds (`rollout plan kinds`).")
    params: dict[str, Any] = Field(default_factory=dict, alias="with")
    description: str | None = None
    when: bool | str | None = Field(
        None, description="Run only when true (after ${VAR} interpolation); `not <value>` "
        "inverts.")
    on_failure: Literal["rollback", "stop", "continue"] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not STEP_ID.match(value):
            raise ValueError("step ids are lowercase letters, digits, '-' and '_' (max 63)")
        return value


class PlanModel(Strict):
    """A release plan: where it goes and the ordered steps."""

    name: str
    environment: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$",
                             description="Lock and journal scope, e.g. local, staging, production.")
    production: bool = Field(False, description="Ask for the environment name before applying.")
    target: Annotated[LocalTarget | SupabaseTarget, Field(discriminator="kind")]
    on_failure: Literal["rollback", "stop", "continue"] = "stop"
    notifications: Notifications = Notifications()
    steps: list[StepSpec] = Field(min_length=1)


@dataclass
class PlannedStep:
    spec: StepSpec
    step: Step
    enabled: bool
    on_failure: str


@dataclass
class Plan:
    model: PlanModel
    path: Path
    checksum: str
    secrets: set[str]
    steps: list[PlannedStep]
    root: Path = field(default_factory=project_root)
    """The project the plan's file parameters are relative to (as validated at load)."""

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def release_fingerprint(self) -> str | None:
        """sha256 over what the plan ships — the project-relative path and content of every file
        its enabled steps ship (migrations and their rollbacks, function bundles), sorted — and
        nothing else: not the target, environment, gates or flags. Staging's plan and
        production's ship the same files, so a rehearsal of one vouches for the other while the
        code is the same. None when the plan ships no file (nothing to match a rehearsal by).
        """
        files: dict[str, Path] = {}
        for planned in self.steps:
            if planned.enabled:
                for path in planned.step.shipped_files(self.root):
                    files[_relative(path, self.root)] = path
        if not files:
            return None
        digest = hashlib.sha256(b"rollout-release-fingerprint-v1\0")
        for relative in sorted(files):
            data = files[relative].read_bytes()
            digest.update(f"{relative}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()

    @property
    def environment(self) -> str:
        return self.model.environment

    def index(self, step_id: str) -> int:
        for i, planned in enumerate(self.steps):
            if planned.spec.id == step_id:
                return i
        raise PlanError(f"{self.path}: no step with id {step_id!r}; steps are: "
                        + ", ".join(p.spec.id for p in self.steps))


def load_plan(path: Path, environ: Mapping[str, str] | None = None,
              database_only: bool = False) -> Plan:
    """Parse, interpolate and validate a plan file; PlanError (exit 2) names file:line:col.

    `database_only`: for commands that only read or write the target's database (status,
    flags, unlock…), the variables the plan uses elsewhere need not be set.
    """
    needs = (lambda loc: loc[:2] == ("target", "database_url")) if database_only else None
    source = yamlsource.load(path, environ, needs)
    try:
        model = PlanModel.model_validate(source.data)
    except ValidationError as err:
        raise PlanError(_explain(err, source)) from err
    seen: dict[str, int] = {}
    steps: list[PlannedStep] = []
    root = project_root()
    for i, spec in enumerate(model.steps):
        loc: tuple[str | int, ...] = ("steps", i)
        if spec.id in seen:
            raise PlanError(f"{source.where((*loc, 'id'))}: duplicate step id {spec.id!r} "
                            f"(also step {seen[spec.id] + 1})")
        seen[spec.id] = i
        kind = KINDS.get(spec.kind)
        if kind is None:
            raise PlanError(f"{source.where((*loc, 'kind'))}: unknown step kind {spec.kind!r}",
                            hint="step kinds are: " + ", ".join(sorted(KINDS)))
        try:
            params = kind.Params.model_validate(spec.params, context={"root": root})
        except ValidationError as err:
            raise PlanError(_explain(err, source, prefix=(*loc, "with"))) from err
        if model.target.kind not in kind.targets:
            raise PlanError(f"{source.where((*loc, 'kind'))}: step kind {spec.kind} does not run "
                            f"on a {model.target.kind} target")
        steps.append(PlannedStep(spec=spec, step=kind(spec.id, params),
                                 enabled=_truthy(spec.when, source, (*loc, "when")),
                                 on_failure=spec.on_failure or model.on_failure))
    ids = [p.spec.id for p in steps]
    for i, planned in enumerate(steps):
        for later in planned.step.later_steps():
            if later not in ids[i + 1:]:
                raise PlanError(f"{source.where(('steps', i, 'with'))}: step {planned.spec.id} "
                                f"names {later!r}, which is not a later step of this plan")
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    return Plan(model=model, path=path, checksum=checksum, secrets=source.secrets, steps=steps,
                root=root)


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the project, `/`-separated, so the fingerprint is the same anywhere."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def step_kinds() -> dict[str, str]:
    """Each step kind and the first line of what it does (`rollout plan kinds`)."""
    return {name: (kind.__doc__ or "").strip().split("\n")[0]
            for name, kind in sorted(KINDS.items())}


def plan_json_schema() -> dict[str, Any]:
    """JSON Schema of plan files, with each step kind's `with` parameters, for editors."""
    schema = PlanModel.model_json_schema(by_alias=True)
    variants = []
    for name, kind in sorted(KINDS.items()):
        params = kind.Params.model_json_schema(by_alias=True)
        variants.append({
            "if": {"properties": {"kind": {"const": name}}},
            "then": {"properties": {"with": params}},
        })
    step = schema["$defs"]["StepSpec"]
    step["properties"]["kind"]["enum"] = sorted(KINDS)
    step["allOf"] = variants
    return schema


def _truthy(value: bool | str | None, source: yamlsource.Source,
            loc: tuple[str | int, ...]) -> bool:
    if value is None or isinstance(value, bool):
        return value is not False
    word = value.strip().lower()
    if word.startswith("not "):  # `when: not ${FLAG}`: the other branch of the same flag
        return not _truthy(word[4:], source, loc)
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise PlanError(f"{source.where(loc)}: `when` must be true or false after interpolation, "
                    f"got {value!r}")


def _explain(err: ValidationError, source: yamlsource.Source,
             prefix: tuple[str | int, ...] = ()) -> str:
    """Pydantic's errors as `file:line:col: field: what is wrong` lines."""
    lines = []
    for problem in err.errors(include_url=False):
        loc = (*prefix, *(part for part in problem["loc"] if not str(part).startswith("function")))
        loc = tuple(p for p in loc if p not in ("local", "supabase") or p == loc[0])
        field = ".".join(str(p) for p in loc) or "plan"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check its spelling)"
        elif problem["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{source.where(loc)}: {field}: {message}")
    return "\n".join(lines[:10]) + (f"\n… and {len(lines) - 10} more" if len(lines) > 10 else "")
