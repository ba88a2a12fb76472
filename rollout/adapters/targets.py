"""Targets: where a plan goes. One interface, two kinds (the embedded local stack, Supabase).

Steps only ever talk to a `Target`: the database URL for SQL, and three services —
functions (deploy / rollback), function secrets, and the scheduler — plus the URLs and keys
that smoke and load checks use as the app would.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx

from rollout.adapters.local_stack.postgres import process_alive
from rollout.adapters.local_stack.stack import LocalStack, bundle_digest
from rollout.errors import StackError, TargetError


class Functions(Protocol):
    def deploy(self, functions: dict[str, bool], functions_dir: Path,
               keep_dir: Path) -> dict[str, Any]:
        """Deploy each function (name → verify_jwt) and switch them live."""
        ...

    def rollback(self, record: dict[str, Any]) -> dict[str, Any]: ...
    def live(self) -> dict[str, int]: ...


class FunctionSecrets(Protocol):
    def digests(self) -> dict[str, str]: ...
    def set(self, values: dict[str, str]) -> None: ...
    def unset(self, names: list[str]) -> None: ...


class Scheduler(Protocol):
    def schedule(self, job: str, cron: str, function: str, body: dict[str, Any], *,
                 key_secret: str = "service_role_key") -> str: ...
    def schedule_sql(self, job: str, cron: str, command: str) -> str:
        """A SQL command run in the database as the scheduling (owner) role."""
        ...
    def unschedule(self, job: str) -> bool: ...
    def status(self, job: str) -> dict[str, Any]:
        """{"job": …, "runs": [newest first, each with `http_status`/`http_error`]}"""
        ...


class Target(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def functions(self) -> Functions: ...
    @property
    def secrets(self) -> FunctionSecrets: ...
    @property
    def scheduler(self) -> Scheduler: ...

    def prepare(self) -> None: ...
    def reachable(self) -> bool: ...
    @property
    def db_url(self) -> str: ...
    @property
    def api_url(self) -> str: ...
    @property
    def anon_key(self) -> str: ...
    @property
    def service_role_key(self) -> str: ...
    @property
    def jwt_secret(self) -> str: ...
    def pg_tool(self, name: str) -> str: ...
    def secret_values(self) -> set[str]: ...


def failed_call(run: dict[str, Any]) -> str | None:
    """Why a cron run failed (the function's non-2xx answer, a pg_net error, the job's SQL
    failing), else None.

    pg_cron's "succeeded" only says the request was queued; the answer is what counts."""
    code = run.get("http_status")
    if code is not None:
        return None if 200 <= int(code) < 300 else f"HTTP {code}"
    if run.get("http_error"):
        return str(run["http_error"])
    if run.get("status") == "failed":  # the job's SQL itself failed
        return str(run.get("detail") or run.get("return_message") or "the job failed")
    return None


def sha256_text(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# ---- local ---------------------------------------------------------------------------------


class LocalFunctions:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def deploy(self, functions: dict[str, bool], functions_dir: Path,
               keep_dir: Path) -> dict[str, Any]:
        # Locally every version stays on disk (`.rollout/local/functions/<name>/v<N>`), so the
        # record only names versions; `keep_dir` is for targets that must download the source.
        # Each function's worker starts in its own thread: most of a deploy is waiting for a
        # Deno process to listen (~140 ms each, one after another before).
        def deploy_one(name: str, verify_jwt: bool) -> dict[str, Any]:
            previous = self.stack.deployed().get(name)
            worker = self.stack.deploy_function(name, functions_dir, verify_jwt=verify_jwt)
            return {"previous_version": previous.version if previous else None,
                    "version": worker.version, "digest": bundle_digest(functions_dir, name)}

        with ThreadPoolExecutor(max_workers=max(1, len(functions))) as pool:
            futures = {name: pool.submit(deploy_one, name, verify_jwt)
                       for name, verify_jwt in functions.items()}
        record: dict[str, Any] = {}
        failures: list[tuple[str, BaseException]] = []
        for name, future in futures.items():
            error = future.exception()
            if error is None:
                record[name] = future.result()
            else:
                failures.append((name, error))
        if failures:  # the ones that went live are in the record, for the rollback
            name, error = failures[0]
            raise TargetError(f"deploying {name} failed: {error}",
                              partial={"functions": record}) from error
        return {"functions": record}

    def rollback(self, detail: dict[str, Any]) -> dict[str, Any]:
        done: dict[str, Any] = {}
        for name, entry in detail["functions"].items():
            previous = entry.get("previous_version")
            if previous:
                self.stack.activate_version(name, int(previous))
                done[name] = f"version {previous} live again"
            else:
                self.stack.remove_function(name)
                done[name] = "deleted (it did not exist before)"
        return done

    def live(self) -> dict[str, int]:
        """Versions actually serving: a worker whose process died is not live."""
        return {name: worker.version for name, worker in self.stack.deployed().items()
                if process_alive(worker.pid)}


class LocalSecrets:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def digests(self) -> dict[str, str]:
        return {k: sha256_text(v) for k, v in self.stack.function_secrets().items()}

    def set(self, values: dict[str, str]) -> None:
        self.stack.set_function_secrets({**self.stack.function_secrets(), **values})
        self._restart_workers()

    def unset(self, names: list[str]) -> None:
        current = self.stack.function_secrets()
        self.stack.set_function_secrets({k: v for k, v in current.items() if k not in names})
        self._restart_workers()

    def _restart_workers(self) -> None:
        # Functions read their secrets at start, as on the hosted runtime's next cold start.
        for name, worker in self.stack.deployed().items():
            self.stack.activate_version(name, worker.version)


class LocalScheduler:
    """Cron jobs run by the local gateway: a function job POSTs to the function with the secret
    key in `apikey` and logs the HTTP status it got; a SQL job runs its command in the
    database, as pg_cron does."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def schedule(self, job: str, cron: str, function: str, body: dict[str, Any], *,
                 key_secret: str = "service_role_key") -> str:
        # The local cron always sends the local project's secret API key (`key_secret` names a
        # Vault secret, which only hosted projects have).
        return self._put({"name": job, "schedule": cron, "function": function, "body": body})

    def schedule_sql(self, job: str, cron: str, command: str) -> str:
        return self._put({"name": job, "schedule": cron, "sql": command})

    def _put(self, wanted: dict[str, Any]) -> str:
        job = wanted["name"]
        jobs = self.stack.schedules()
        existing = next((j for j in jobs if j["name"] == job), None)
        if existing == wanted:
            return "unchanged"
        jobs = [j for j in jobs if j["name"] != job] + [wanted]
        self.stack.set_schedules(jobs)
        return "updated" if existing else "created"

    def unschedule(self, job: str) -> bool:
        jobs = self.stack.schedules()
        kept = [j for j in jobs if j["name"] != job]
        self.stack.set_schedules(kept)
        return len(kept) != len(jobs)

    def status(self, job: str) -> dict[str, Any]:
        found = next((j for j in self.stack.schedules() if j["name"] == job), None)
        return {"job": found, "runs": self.stack.cron_runs(job)[-10:][::-1]}  # newest first


class LocalTarget:
    kind = "local"

    def __init__(self, stack: LocalStack | None = None) -> None:
        self.stack = stack or LocalStack()
        self.functions = LocalFunctions(self.stack)
        self.secrets = LocalSecrets(self.stack)
        self.scheduler = LocalScheduler(self.stack)

    def prepare(self) -> None:
        self.stack.up()

    def reachable(self) -> bool:
        return self.stack.is_up()

    @property
    def db_url(self) -> str:
        return self.stack.db_url

    @property
    def api_url(self) -> str:
        return self.stack.api_url

    @property
    def anon_key(self) -> str:
        return self.stack.secret("anon_key")

    @property
    def service_role_key(self) -> str:
        return self.stack.secret("service_role_key")

    @property
    def jwt_secret(self) -> str:
        return self.stack.secret("jwt_secret")

    def pg_tool(self, name: str) -> str:
        return str(self.stack.postgres.bin_dir / name)

    def secret_values(self) -> set[str]:
        try:
            values = {self.anon_key, self.service_role_key, self.jwt_secret,
                      self.stack.secret("secret_key"), self.stack.secret("signing_key")}
        except StackError:
            return set()
        return values | set(self.stack.function_secrets().values())


def probe_headers(anon_key: str, jwt_secret: str) -> dict[str, str]:
    """Headers for probing a function as the platform's gateway expects them.

    `apikey` carries the project's public key (legacy anon JWT or `sb_publishable_…`). A
    function with `verify_jwt` on is answered 401 before it runs unless `Authorization` holds a
    JWT: the legacy anon key is one; a publishable key is not (the gateway refuses API keys
    there), so then a short-lived anon token is signed with the legacy JWT secret when the plan
    has it. Without either, no `Authorization` is sent (fine for `verify_jwt: false`).
    """
    headers = {"apikey": anon_key} if anon_key else {}
    if anon_key.startswith("eyJ") and anon_key.count(".") == 2:
        headers["authorization"] = f"Bearer {anon_key}"
    elif jwt_secret:
        import jwt

        now = int(time.time())
        token = jwt.encode({"role": "anon", "iat": now, "exp": now + 300}, jwt_secret,
                           algorithm="HS256")
        headers["authorization"] = f"Bearer {token}"
    return headers


def wait_healthy(url: str, timeout: float = 15, headers: dict[str, str] | None = None) -> float:
    """GET `url` until it answers 200; returns the latency of the good answer in ms.

    A 401 ends the wait at once: the gateway refused the credentials, waiting will not help.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            response = httpx.get(url, timeout=5, headers=headers)
            if response.status_code == 200:
                return (time.monotonic() - began) * 1000
            last = f"HTTP {response.status_code}"
            if response.status_code == 401:
                raise TargetError(f"{url} refused the probe's credentials (HTTP 401)",
                                  hint="a verify_jwt function needs a JWT: the legacy anon key "
                                       "or jwt_secret in the target, or verify_jwt: false")
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(0.2)
    raise TargetError(f"{url} is not healthy after {timeout:.0f}s ({last})")
