"""Database steps: backup, maintenance window, migration, verification, local seed data."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import psycopg
from pydantic import AfterValidator, Field

from rollout.adapters import database as db
from rollout.adapters import expectations
from rollout.errors import RolloutError, StepFailed, TargetError, UsageError
from rollout.paths import project_root
from rollout.steps.base import Detail, Params, Step, StepContext, project_file

ProjectFile = Annotated[str, AfterValidator(project_file)]
JOURNAL_SCHEMA = "rollout"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- db.backup -------------------------------------------------------------------------------


def _client_too_old(tool: str, server_major: int) -> str | None:
    tool_major = db.tool_major(tool)
    if tool_major < server_major:
        return f"pg_dump {tool_major} cannot dump a PostgreSQL {server_major} server"
    return None


def _client_fix(server_major: int) -> str:
    return (f"install postgresql-client-{server_major} (Debian/Ubuntu: from apt.postgresql.org, "
            f"`sudo apt-get install -y postgresql-client-{server_major}`)")


class BackupParams(Params):
    dir: str = Field("backups", description="Where dumps go (relative to the state directory).")
    exclude_schemas: list[str] = Field(default_factory=list)


class DbBackup(Step):
    """pg_dump (custom format) of the whole database but the journal; checked and hashed."""

    kind: ClassVar[str] = "db.backup"
    Params = BackupParams
    persistent = False
    params: BackupParams

    def describe(self) -> str:
        return f"pg_dump the database to {self.params.dir}/ (custom format, verified, sha256)"

    def preflight(self, ctx: StepContext) -> None:
        tool = ctx.target.pg_tool("pg_dump")
        if not Path(tool).exists() and not shutil.which(tool):
            raise UsageError(f"pg_dump not found ({tool})",
                             hint="install the PostgreSQL client matching the server's version")
        try:
            server_major = db.server_version(ctx.target.db_url) // 10000
        except (RolloutError, OSError, psycopg.Error):
            return  # not reachable yet (a local stack not up): apply checks again
        problem = _client_too_old(tool, server_major)
        if problem:  # before anything changes, with the fix
            raise UsageError(problem, hint=_client_fix(server_major))

    def apply(self, ctx: StepContext) -> Detail:
        tool = ctx.target.pg_tool("pg_dump")
        server_major = db.server_version(ctx.target.db_url) // 10000
        problem = _client_too_old(tool, server_major)
        if problem:
            raise StepFailed(f"{problem}: {_client_fix(server_major)}")
        folder = ctx.artifacts.parent.parent / self.params.dir
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = folder / f"{ctx.environment}-{stamp}-{ctx.run_id[:8]}.dump"
        expected = max(db.database_size(ctx.target.db_url), 1)
        ctx.progress(f"dumping to {out.name}", 0.0)
        began = time.monotonic()
        try:
            db.pg_dump(tool, ctx.target.db_url, out,
                       [JOURNAL_SCHEMA, *self.params.exclude_schemas],
                       lambda size: ctx.progress(f"{size / 1e6:.1f} MB written",
                                                 min(size / expected, 0.99)))
        except OSError as err:  # e.g. ENOSPC while writing
            out.unlink(missing_ok=True)
            raise StepFailed(f"backup failed writing {out}: {err.strerror}") from err
        entries = db.pg_restore_list(ctx.target.pg_tool("pg_restore"), out)
        return {"file": str(out), "bytes": out.stat().st_size, "sha256": sha256_file(out),
                "entries": entries, "seconds": round(time.monotonic() - began, 2)}

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        if sha256_file(Path(detail["file"])) != detail["sha256"]:
            raise StepFailed(f"backup {detail['file']} changed after it was written")


# ---- db.maintenance --------------------------------------------------------------------------


class MaintenanceParams(Params):
    mode: Literal["on", "off"] = Field(description="on: refuse API writes; off: allow them again.")
    schemas: list[str] = Field(default_factory=lambda: ["public"])
    lease: int = Field(60, ge=3, le=86400, description=(
        "Seconds: if the run dies (any signal, a lost machine), writes come back by themselves "
        "at the latest this long after its last renewal (at once when its session is gone)."))


class DbMaintenance(Step):
    """The read-only window for the API roles (`anon`, `authenticated`): a lease the live run
    renews, enforced in the database; lifted on any failure, and ends by itself if the run dies."""

    kind: ClassVar[str] = "db.maintenance"
    Params = MaintenanceParams
    persistent = False  # idempotent, and re-entered on resume: a crash's clean-up lifts it
    repeat_on_resume = True
    params: MaintenanceParams

    def describe(self) -> str:
        if self.params.mode == "on":
            schemas = ", ".join(self.params.schemas)
            return (f"read-only window ON for anon/authenticated on {schemas} "
                    f"(ends by itself {self.params.lease}s after the run dies)")
        return "read-only window OFF: writes allowed again"

    def apply(self, ctx: StepContext) -> Detail:
        if self.params.mode == "on":
            session = ctx.extra.get("session_pid")
            if not session:
                raise StepFailed("the maintenance window needs the run's database session")
            lease = db.Lease(ctx.run_id, int(session), self.params.lease)
            detail = db.maintenance_on(ctx.target.db_url, self.params.schemas, lease)
            return {**detail, "since": datetime.now(UTC).isoformat()}
        lifted = db.maintenance_off(ctx.target.db_url, f"lifted by step {self.id}")
        since = ctx.extra.get("maintenance_since")
        duration = None
        if since:
            duration = round((datetime.now(UTC) - datetime.fromisoformat(since)).total_seconds(), 3)
        return {"lifted": lifted, "window_seconds": duration}

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        state = db.maintenance_state(ctx.target.db_url)
        if self.params.mode == "on" and detail.get("protected") and not state.enforced:
            raise StepFailed("the maintenance window is not in place")
        if self.params.mode == "off" and state.present:
            raise StepFailed("maintenance guards are still present")

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        if self.params.mode == "on":
            return {"undone": True, "lifted": db.maintenance_off(
                ctx.target.db_url, f"lifted by the rollback of step {self.id}")}
        return {"undone": False, "reason": "a rollback never re-enters the window"}


# ---- db.migrate --------------------------------------------------------------------------------


PG_DURATION = re.compile(r"^\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)?\s*$")


def pg_duration(value: str) -> str:
    """A PostgreSQL time setting as `set lock_timeout` takes it (5s, 250ms, 2min, 1h): checked
    with the plan, not when the migration is about to run inside the window."""
    if not PG_DURATION.match(value):
        raise ValueError(f"{value!r} is not a PostgreSQL duration (e.g. 5s, 250ms, 2min, 1h)")
    return value


PgDuration = Annotated[str, AfterValidator(pg_duration)]


class MigrateParams(Params):
    file: ProjectFile
    rollback_file: ProjectFile | None = Field(None, description="Undoes `file`; run by rollback.")
    expect: ProjectFile | None = Field(
        None, description="What `file` expects of the target (tables, columns, types, "
                          "constraints, triggers, what must be absent), as data: checked by "
                          "`rollout plan` and before apply changes anything.")
    lock_timeout: PgDuration = "5s"
    statement_timeout: PgDuration = "120s"
    lint: Literal["error", "warn", "off"] = Field(
        "error",
        description="squawk findings fail the step (error), are reported (warn), or not run.")


class DbMigrate(Step):
    """A migration file applied once, in one transaction, its checksum recorded with it."""

    kind: ClassVar[str] = "db.migrate"
    Params = MigrateParams
    params: MigrateParams

    def describe(self) -> str:
        undo = f"; rollback runs {self.params.rollback_file}" if self.params.rollback_file else ""
        return (f"apply {self.params.file} (lock_timeout {self.params.lock_timeout}, "
                f"statement_timeout {self.params.statement_timeout}){undo}")

    def shipped_files(self, root: Path) -> list[Path]:
        """The migration and its rollback: a rehearsal proves this pair, whatever the plan."""
        files = [self.params.file, self.params.rollback_file]
        return [root / name for name in files if name]

    def preflight(self, ctx: StepContext) -> None:
        applied = db.applied_migration(ctx.target.db_url, self.params.file)
        checksum = sha256_file(ctx.path(self.params.file))
        if applied and applied.checksum != checksum:
            raise UsageError(
                f"{self.params.file} changed since it was applied on "
                f"{applied.applied_at:%Y-%m-%d %H:%M} UTC "
                f"(checksum {applied.checksum[:12]} → {checksum[:12]})",
                hint="restore the applied file, or roll back first, or write a new migration")
        if not applied and not ctx.extra.get("baseline_pending"):
            self.check_target(ctx.target.db_url, ctx.root)

    def target_mismatch(self, db_url: str, root: Path) -> list[str]:
        """How the target differs from what the migration expects ([] when it matches or the
        migration states no expectation)."""
        if not self.params.expect:
            return []
        return expectations.differences(db_url, expectations.load(root / self.params.expect))

    def apply(self, ctx: StepContext) -> Detail:
        path = ctx.path(self.params.file)
        checksum = sha256_file(path)
        applied = db.applied_migration(ctx.target.db_url, self.params.file)
        if applied and applied.checksum == checksum:
            return {"file": self.params.file, "checksum": checksum, "already_applied": True}
        lint = self._lint(path) if self.params.lint != "off" else []
        if lint and self.params.lint == "error":
            raise StepFailed(f"squawk found {len(lint)} problem(s) in {self.params.file}: "
                             + "; ".join(lint[:3]))
        ctx.progress(f"applying {self.params.file}", None)
        began = time.monotonic()
        try:
            db.run_sql_file(ctx.target.db_url, path.read_text(),
                            record=(self.params.file, checksum, ctx.run_id),
                            lock_timeout=self.params.lock_timeout,
                            statement_timeout=self.params.statement_timeout)
        except TargetError as err:
            raise StepFailed(f"{self.params.file}: {err}") from err
        return {"file": self.params.file, "checksum": checksum, "lint_warnings": lint,
                "seconds": round(time.monotonic() - began, 3)}

    def verify(self, ctx: StepContext, detail: Detail) -> None:
        applied = db.applied_migration(ctx.target.db_url, self.params.file)
        if not applied or applied.checksum != detail["checksum"]:
            raise StepFailed(f"{self.params.file} is not recorded as applied")

    def rollback(self, ctx: StepContext, detail: Detail) -> Detail:
        if not self.params.rollback_file:
            raise StepFailed(f"{self.params.file} has no rollback_file: undo it by hand or "
                             "restore the backup (`rollout db restore`)")
        path = ctx.path(self.params.rollback_file)
        if db.applied_migration(ctx.target.db_url, self.params.file) is None:
            return {"undone": False, "reason": f"{self.params.file} is not applied"}
        db.run_sql_file(ctx.target.db_url, path.read_text(), forget=self.params.file,
                        lock_timeout=self.params.lock_timeout,
                        statement_timeout=self.params.statement_timeout)
        return {"undone": True, "ran": self.params.rollback_file}

    def _lint(self, path: Path) -> list[str]:
        squawk = shutil.which("squawk") or str(Path(__import__("sys").executable).parent / "squawk")
        if not Path(squawk).exists():
            return []
        result = subprocess.run([squawk, "--reporter", "gcc", str(path)], capture_output=True,
                                text=True, check=False)
        return [line.strip() for line in result.stdout.splitlines()
                if line.strip() and ": " in line and "Found" not in line]


# ---- db.verify ---------------------------------------------------------------------------------


class VerifyParams(Params):
    tables: list[str] = Field(default_factory=list)
    rls_enabled: list[str] = Field(default_factory=list)
    functions: list[str] = Field(default_factory=list)


class DbVerify(Step):
    """The seed's §3.1.4: the new tables exist, RLS is on, the functions are there."""

    kind: ClassVar[str] = "db.verify"
    Params = VerifyParams
    persistent = False
    params: VerifyParams

    def describe(self) -> str:
        p = self.params
        return (f"check {len(p.tables)} tables, RLS on {len(p.rls_enabled)}, "
                f"{len(p.functions)} functions")

    def apply(self, ctx: StepContext) -> Detail:
        p = self.params
        problems = db.missing_objects(ctx.target.db_url, p.tables, p.rls_enabled, p.functions)
        if problems:
            raise StepFailed("; ".join(problems))
        return {"checked": len(p.tables) + len(p.rls_enabled) + len(p.functions)}


# ---- db.seed -------------------------------------------------------------------------------------


class SeedParams(Params):
    file: ProjectFile
    unless_exists: str | None = Field(
        None, description="Skip the file when this relation already exists (e.g. "
                          "public.profiles: the app's schema is there), for files that are not "
                          "idempotent, such as production's schema dump.")


class DbSeed(Step):
    """An idempotent SQL file for local stacks (the legacy app's schema, demo data)."""

    kind: ClassVar[str] = "db.seed"
    Params = SeedParams
    targets = ("local",)
    reversible = False  # the old app's schema and data are what a rollback returns to
    builds_baseline = True
    params: SeedParams

    def describe(self) -> str:
        guard = f", unless {self.params.unless_exists} exists" if self.params.unless_exists else ""
        return f"run {self.params.file} (local only{guard})"

    def fingerprint(self) -> str:
        return f"{self.kind}:{self.params.file}:{sha256_file(project_root() / self.params.file)}"

    def apply(self, ctx: StepContext) -> Detail:
        guard = self.params.unless_exists
        try:
            if guard and db.relation_exists(ctx.target.db_url, guard):
                return {"file": self.params.file, "skipped": f"{guard} exists"}
            db.run_sql(ctx.target.db_url, ctx.path(self.params.file).read_text())
        except TargetError as err:
            raise StepFailed(f"{self.params.file}: {err}") from err
        return {"file": self.params.file}
