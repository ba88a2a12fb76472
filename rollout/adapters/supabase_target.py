"""A hosted Supabase project as a target: SQL over DATABASE_URL, functions and secrets over the
Management API, the nightly schedule with pg_cron + pg_net reading Vault.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg

from rollout.adapters import pg_cron
from rollout.adapters.database import connect, server_version
from rollout.adapters.function_bundle import collect_bundles
from rollout.adapters.supabase_api import ManagementAPI
from rollout.adapters.supabase_deploy import DeployError, DeployRecord, deploy_all, rollback
from rollout.adapters.supabase_secrets import sync_secrets
from rollout.errors import TargetError, UsageError

TRANSACTION_POOLER_PORT = 6543


def check_database_url(url: str) -> None:
    """Refuse Supavisor's transaction mode: session advisory locks and pg_dump need a session."""
    parsed = urlparse(url)
    if parsed.port == TRANSACTION_POOLER_PORT and "pooler" in (parsed.hostname or ""):
        raise UsageError(
            "DATABASE_URL points at the transaction-mode pooler (port 6543): the run's lock "
            "and pg_dump need a session",
            hint="use the session-mode pooler (port 5432) or the direct connection string")


class SupabaseFunctions:
    def __init__(self, api: ManagementAPI) -> None:
        self.api = api

    def deploy(self, functions: dict[str, bool], functions_dir: Path,
               keep_dir: Path) -> dict[str, Any]:
        bundles = collect_bundles(functions_dir.parent, functions)
        try:
            record = deploy_all(self.api, bundles, keep_dir)
        except DeployError as err:
            # Put back what was live before raising: a half-deployed set is never left behind.
            rollback(self.api, err.record)
            raise TargetError(f"{err} (the previous functions were restored)") from err
        previous = {p.slug: p.version for p in record.previous}
        return {
            "functions": {d.slug: {"previous_version": previous.get(d.slug),
                                   "version": d.version, "digest": d.bundle_sha256,
                                   "ezbr_sha256": d.ezbr_sha256, "verify_jwt": d.verify_jwt}
                          for d in record.deployed},
            "record": record.to_dict(),
        }

    def rollback(self, detail: dict[str, Any]) -> dict[str, Any]:
        report = rollback(self.api, DeployRecord.from_dict(detail["record"]))
        return {"restored": list(report.restored), "deleted": list(report.deleted),
                "unchanged": list(report.unchanged)}

    def live(self) -> dict[str, int]:
        return {f.slug: f.version for f in self.api.list_functions() if f.status == "ACTIVE"}


class SupabaseSecrets:
    def __init__(self, api: ManagementAPI) -> None:
        self.api = api

    def digests(self) -> dict[str, str]:
        return self.api.list_secrets()

    def set(self, values: dict[str, str]) -> None:
        sync_secrets(self.api, values)

    def unset(self, names: list[str]) -> None:
        self.api.unset_secrets(names)


class SupabaseScheduler:
    """pg_cron + pg_net with the project URL and the function's key read from Vault; status
    pairs pg_cron's runs with pg_net's HTTP answers."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def schedule(self, job: str, cron: str, function: str, body: dict[str, Any], *,
                 key_secret: str = "service_role_key") -> str:
        with connect(self.db_url) as conn:
            result = pg_cron.schedule_function(conn, job, cron, function, body=body,
                                               key_secret=key_secret)
        return str(result.action.value)

    def schedule_sql(self, job: str, cron: str, command: str) -> str:
        with connect(self.db_url) as conn:
            result = pg_cron.schedule_sql(conn, job, cron, command)
        return str(result.action.value)

    def unschedule(self, job: str) -> bool:
        with connect(self.db_url) as conn:
            return pg_cron.unschedule(conn, job)

    def status(self, job: str) -> dict[str, Any]:
        with connect(self.db_url) as conn:
            found = pg_cron.find_job(conn, job)
            if found is None:
                return {"job": None, "runs": []}
            status = pg_cron.job_status(conn, job)
        return {"job": {"name": job, "schedule": found.schedule, "active": found.active},
                "runs": [run.__dict__ for run in status.runs]}


class SupabaseTarget:
    kind = "supabase"

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name = spec["project_ref"]
        self.api = ManagementAPI(spec["project_ref"], spec["access_token"],
                                 base_url=spec.get("api_url"),
                                 max_rate_limit_wait=float(spec.get("rate_limit_wait", 90)))
        self.functions = SupabaseFunctions(self.api)
        self.secrets = SupabaseSecrets(self.api)
        self.scheduler = SupabaseScheduler(spec["database_url"])

    def prepare(self) -> None:
        check_database_url(self.db_url)

    def reachable(self) -> bool:
        try:
            with psycopg.connect(self.db_url, connect_timeout=5):
                return True
        except psycopg.Error:
            return False

    @property
    def db_url(self) -> str:
        return str(self.spec["database_url"])

    @property
    def api_url(self) -> str:
        return str(self.spec["supabase_url"]).rstrip("/")

    @property
    def anon_key(self) -> str:
        return str(self.spec.get("anon_key", ""))

    @property
    def service_role_key(self) -> str:
        return str(self.spec.get("service_role_key", ""))

    @property
    def jwt_secret(self) -> str:
        return str(self.spec.get("jwt_secret", ""))

    def pg_tool(self, name: str) -> str:
        """The client tool matching the server's major version (Debian's layout), else PATH."""
        major = server_version(self.db_url) // 10000
        versioned = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
        if versioned.exists():
            return str(versioned)
        found = shutil.which(name)
        if found is None:
            raise TargetError(f"{name} not found: install postgresql-client-{major}")
        return found

    def secret_values(self) -> set[str]:
        values = {self.spec.get(k, "") for k in ("access_token", "service_role_key",
                                                 "jwt_secret", "database_url")}
        password = urlparse(self.db_url).password
        return {v for v in values | {password or ""} if v}
