"""The embedded local stack: PostgreSQL, the API gateway and one Deno worker per deployed function.

Everything lives under `<state>/local/`: `stack.json` (ports and pids), `secrets/` (owner-only),
`routes.json` and `schedules.json` (read by the gateway), `functions/<name>/v<N>/` (deployed
copies), and the logs. Every process is started detached and stopped by the pid recorded here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import psycopg

from rollout.adapters.function_bundle import collect_bundle
from rollout.adapters.local_stack.bootstrap import apply_bootstrap
from rollout.adapters.local_stack.postgres import EmbeddedPostgres, process_alive
from rollout.adapters.local_stack.processes import (
    port_in_use,
    spawn,
    start_on_port,
    stop_pid,
    wait_for_port,
)
from rollout.errors import StackError
from rollout.paths import project_root, state_dir

DENO_NPM_FLAGS = ["--allow-net", "--allow-env", "--allow-read"]


@dataclass
class FunctionWorker:
    port: int
    pid: int
    version: int
    source: str  # the deployed copy's directory
    verify_jwt: bool = True  # the gateway answers 401 before the function without a valid JWT


@dataclass
class StackState:
    pg_port: int = 0
    api_port: int = 0
    gateway_pid: int = 0
    functions: dict[str, FunctionWorker] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StackState:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        functions = {k: FunctionWorker(**v) for k, v in raw.pop("functions", {}).items()}
        return cls(**raw, functions=functions)


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    port: int | None
    url: str
    healthy: bool
    detail: str = ""


def deno_bin() -> str:
    from deno import find_deno_bin  # the `deno` wheel's own locator

    try:
        return str(find_deno_bin())
    except FileNotFoundError as err:
        raise StackError("the deno binary is missing: run `make install` (or `uv sync`)") from err


def sign_jwt(payload: dict[str, Any], secret: str) -> str:
    """HS256 JWT, for the local anon and service-role keys."""
    import jwt

    return jwt.encode(payload, secret, algorithm="HS256")


SIGNING_KID = "rollout-local-es256"


def signing_key_pair() -> dict[str, str]:
    """A new ES256 signing key (PEM) and the public JWKS that verifies its tokens."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = {"keys": [{**public, "kid": SIGNING_KID, "alg": "ES256", "use": "sig"}]}
    return {"signing_key": pem, "jwks": json.dumps(jwks)}


def sign_user_jwt(payload: dict[str, Any], signing_key_pem: str) -> str:
    """An ES256 user JWT as a project on signing keys issues it."""
    import jwt

    return jwt.encode(payload, signing_key_pem, algorithm="ES256", headers={"kid": SIGNING_KID})


class LocalStack:
    """The embedded default target. `up` is idempotent; `down` leaves no process behind."""

    def __init__(self, root: Path | None = None) -> None:
        self.dir = (root or state_dir()) / "local"
        self.state_file = self.dir / "stack.json"
        self.secrets_dir = self.dir / "secrets"
        self.state = StackState.load(self.state_file)
        # Functions deploy in parallel (one thread each): their entries in the state and the
        # files written from it change under this lock.
        self._state_lock = threading.RLock()

    # ---- secrets ---------------------------------------------------------------------------

    def _ensure_secrets(self) -> None:
        """The local project's keys, as a hosted project has them during the key migration:
        the legacy JWT secret with its anon and service-role JWTs, an ES256 signing key whose
        public JWKS verifies user tokens, and new API keys (publishable, secret). Each missing
        one is created (an older stack gains the new ones on its next `up`)."""
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.chmod(0o700)
        have = {p.name for p in self.secrets_dir.iterdir()}
        values: dict[str, str] = {}
        if "service_role_key" not in have:
            jwt_secret = secrets.token_urlsafe(48)
            now = int(time.time())
            ten_years = now + 10 * 365 * 24 * 3600
            values |= {
                "jwt_secret": jwt_secret,
                "anon_key": sign_jwt({"role": "anon", "iss": "rollout-local", "iat": now,
                                      "exp": ten_years}, jwt_secret),
                "service_role_key": sign_jwt({"role": "service_role", "iss": "rollout-local",
                                              "iat": now, "exp": ten_years}, jwt_secret),
            }
        if "signing_key" not in have:
            values |= signing_key_pair()
        if "secret_key" not in have:
            values |= {"publishable_key": f"sb_publishable_{secrets.token_urlsafe(24)}",
                       "secret_key": f"sb_secret_{secrets.token_urlsafe(24)}"}
        for name, value in values.items():
            path = self.secrets_dir / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(value)

    def secret(self, name: str) -> str:
        try:
            return (self.secrets_dir / name).read_text().strip()
        except OSError as err:
            raise StackError("the local stack has no secrets yet: run `rollout local up`") from err

    # ---- derived facts ---------------------------------------------------------------------

    @property
    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres.for_state_dir(self.dir, self.state.pg_port)

    @property
    def db_url(self) -> str:
        return self.postgres.url("postgres")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.state.api_port}"

    def env(self) -> dict[str, str]:
        """What a script needs to talk to the stack, as Supabase names it."""
        return {
            "SUPABASE_URL": self.api_url,
            "SUPABASE_DB_URL": self.db_url,
            "DATABASE_URL": self.db_url,
            "SUPABASE_ANON_KEY": self.secret("anon_key"),
            "SUPABASE_SERVICE_ROLE_KEY": self.secret("service_role_key"),
            "SUPABASE_JWT_SECRET": self.secret("jwt_secret"),
        }

    def _save(self) -> None:
        with self._state_lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(self.state), indent=2))
            tmp.replace(self.state_file)
            self._write_routes()

    def _write_routes(self) -> None:
        routes = {name: {"port": w.port, "version": w.version, "verify_jwt": w.verify_jwt}
                  for name, w in self.state.functions.items()}
        tmp = self.dir / "routes.json.tmp"
        tmp.write_text(json.dumps(routes))
        tmp.replace(self.dir / "routes.json")

    def _start_on_port(self, start: Callable[[int], None], current: int, env_name: str) -> None:
        """`start(port)` on the port the user configured in `env_name`, else on the one used
        before (URLs stay the same across restarts) if it is still free, else on a free one."""
        configured = os.environ.get(env_name)
        if configured:
            port = int(configured)
            if port_in_use(port):
                raise StackError(f"port {port} ({env_name}) is already in use on 127.0.0.1: "
                                 f"free it or choose another")
            start_on_port(start, port, fixed=True)
        else:
            start_on_port(start, current if current and not port_in_use(current) else None)

    # ---- lifecycle -------------------------------------------------------------------------

    def is_up(self) -> bool:
        return self.postgres.pid() is not None and process_alive(self.state.gateway_pid)

    def up(self) -> bool:
        """Start whatever is not running. Returns False when everything already ran."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ensure_secrets()
        started = False
        server = self.postgres
        if server.pid() is None:
            server.init()
            self._start_on_port(self._start_postgres, self.state.pg_port, "ROLLOUT_LOCAL_PG_PORT")
            started = True
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            apply_bootstrap(conn)
        self._save()
        if not process_alive(self.state.gateway_pid):
            self._start_gateway()
            started = True
        for name, worker in list(self.state.functions.items()):
            if not process_alive(worker.pid):
                self._start_worker(name, Path(worker.source), worker.version)
                started = True
        self._save()
        return started

    def down(self) -> list[str]:
        """Stop every process this stack started; returns what was stopped."""
        stopped: list[str] = []
        for name, worker in self.state.functions.items():
            if process_alive(worker.pid):
                stop_pid(worker.pid)
                stopped.append(f"function {name}")
        if process_alive(self.state.gateway_pid):
            stop_pid(self.state.gateway_pid)
            stopped.append("gateway")
        if self.state.pg_port and self.postgres.pid() is not None:
            self.postgres.stop()
            stopped.append("postgres")
        self.state.gateway_pid = 0
        for worker in self.state.functions.values():
            worker.pid = 0
        if self.dir.exists():
            self._save()
        return stopped

    def _start_postgres(self, port: int) -> None:
        self.state.pg_port = port
        server = self.postgres
        server.start()
        server.wait_ready()

    def _start_gateway(self) -> None:
        self._start_on_port(self._spawn_gateway, self.state.api_port, "ROLLOUT_LOCAL_API_PORT")

    def _spawn_gateway(self, port: int) -> None:
        self.state.api_port = port
        gateway = Path(str(resources.files(__package__).joinpath("gateway.ts")))
        env = {
            **_base_env(),
            "GATEWAY_ADDRESS": f"127.0.0.1:{self.state.api_port}",
            "GATEWAY_DB_URL": self.postgres.url("postgres", user="authenticator"),
            # SQL cron jobs run as the owner, as pg_cron runs a job as the role that scheduled it
            "GATEWAY_CRON_DB_URL": self.postgres.url("postgres"),
            "GATEWAY_JWT_SECRET": self.secret("jwt_secret"),
            "GATEWAY_JWKS": self.secret("jwks"),
            "GATEWAY_PUBLISHABLE_KEY": self.secret("publishable_key"),
            "GATEWAY_SECRET_KEY": self.secret("secret_key"),
            "GATEWAY_STATE_DIR": str(self.dir),
        }
        config = ["--config", str(gateway.parent / "deno.json"), "--frozen"]
        log = self.dir / "gateway.log"
        pid = spawn([deno_bin(), "run", *DENO_NPM_FLAGS, f"--allow-write={self.dir}", *config,
                     str(gateway)], env, log, cwd=gateway.parent)
        self.state.gateway_pid = pid
        self._save()
        wait_for_port(self.state.api_port, pid, "the API gateway", log)

    # ---- edge functions --------------------------------------------------------------------

    def deployed(self) -> dict[str, FunctionWorker]:
        return dict(self.state.functions)

    def deploy_function(self, name: str, functions_dir: Path | None = None, *,
                        verify_jwt: bool = True) -> FunctionWorker:
        """Copy the function's bundle to a new version, start it, switch the route, stop the old."""
        source_root = functions_dir or project_root() / "functions"
        if not (source_root / name / "index.ts").exists():
            raise StackError(f"no function {name!r}: {source_root / name / 'index.ts'} is missing")
        previous = self.state.functions.get(name)
        version = (previous.version if previous else self._last_version(name)) + 1
        target = self.dir / "functions" / name / f"v{version}"
        shutil.rmtree(target, ignore_errors=True)
        copy_bundle(source_root, name, target)
        (target / "settings.json").write_text(json.dumps({"verify_jwt": verify_jwt}))
        worker = self._start_worker(name, target, version)
        if previous and process_alive(previous.pid):
            stop_pid(previous.pid)
        return worker

    def activate_version(self, name: str, version: int) -> FunctionWorker:
        """Serve an already deployed copy again (rollback to a previous version)."""
        target = self.dir / "functions" / name / f"v{version}"
        if not target.exists():
            raise StackError(f"function {name} has no deployed version {version} to return to")
        previous = self.state.functions.get(name)
        worker = self._start_worker(name, target, version)
        if previous and previous.pid != worker.pid:
            stop_pid(previous.pid)
        return worker

    def remove_function(self, name: str) -> bool:
        with self._state_lock:
            worker = self.state.functions.pop(name, None)
            self._save()
        if worker:
            stop_pid(worker.pid)
        return worker is not None

    def _last_version(self, name: str) -> int:
        versions = [int(p.name[1:]) for p in (self.dir / "functions" / name).glob("v*")
                    if p.name[1:].isdigit()]
        return max(versions, default=0)

    def function_secrets(self) -> dict[str, str]:
        path = self.secrets_dir / "function_secrets.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def set_function_secrets(self, values: dict[str, str]) -> None:
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        path = self.secrets_dir / "function_secrets.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle)

    def platform_env(self) -> dict[str, str]:
        """What the hosted platform gives every function: keys, the JWKS, and (while the
        project uses it, as this local project does) the legacy secret as `JWT_SECRET`."""
        return {
            "SUPABASE_ANON_KEY": self.secret("anon_key"),
            "SUPABASE_SERVICE_ROLE_KEY": self.secret("service_role_key"),
            "SUPABASE_JWKS": self.secret("jwks"),
            "SUPABASE_PUBLISHABLE_KEYS": json.dumps({"default": self.secret("publishable_key")}),
            "SUPABASE_SECRET_KEYS": json.dumps({"default": self.secret("secret_key")}),
            "JWT_SECRET": self.secret("jwt_secret"),
        }

    def _start_worker(self, name: str, bundle: Path, version: int) -> FunctionWorker:
        return start_on_port(lambda port: self._spawn_worker(name, bundle, version, port))

    def _spawn_worker(self, name: str, bundle: Path, version: int, port: int) -> FunctionWorker:
        env = {
            **_base_env(),
            **self.function_secrets(),
            "DENO_SERVE_ADDRESS": f"tcp:127.0.0.1:{port}",
            "SUPABASE_URL": self.api_url,
            "SUPABASE_DB_URL": self.db_url,
            **self.platform_env(),
        }
        config: list[str] = []
        if (bundle / "deno.json").exists():
            config = ["--config", str(bundle / "deno.json")]
            if (bundle / "deno.lock").exists():
                config += ["--lock", str(bundle / "deno.lock"), "--frozen"]
        log = self.dir / f"function-{name}.log"
        pid = spawn([deno_bin(), "run", *DENO_NPM_FLAGS, *config,
                     str(bundle / "functions" / name / "index.ts")], env, log, cwd=bundle)
        try:
            wait_for_port(port, pid, f"function {name}", log)
        except StackError:
            stop_pid(pid)
            raise
        try:
            settings = json.loads((bundle / "settings.json").read_text())
        except (OSError, ValueError):
            settings = {}
        worker = FunctionWorker(port=port, pid=pid, version=version, source=str(bundle),
                                verify_jwt=bool(settings.get("verify_jwt", True)))
        with self._state_lock:
            self.state.functions[name] = worker
            self._save()
        return worker

    # ---- cron ------------------------------------------------------------------------------

    def schedules(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.dir / "schedules.json").read_text()))
        except (OSError, ValueError):
            return []

    def set_schedules(self, jobs: list[dict[str, Any]]) -> None:
        tmp = self.dir / "schedules.json.tmp"
        tmp.write_text(json.dumps(jobs, indent=2))
        tmp.replace(self.dir / "schedules.json")

    def cron_runs(self, job: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = (self.dir / "cron.log").read_text().splitlines()
        except OSError:
            return []
        runs = [json.loads(line) for line in lines if line.strip()]
        return [r for r in runs if job is None or r.get("job") == job]

    # ---- status ----------------------------------------------------------------------------

    def status(self) -> list[ComponentStatus]:
        server = self.postgres
        pg_pid = server.pid() if self.state.pg_port else None
        rows = [ComponentStatus("postgres", pg_pid, self.state.pg_port or None,
                                f"postgresql://127.0.0.1:{self.state.pg_port}/postgres",
                                pg_pid is not None, str(server.data_dir))]
        gateway_ok = False
        detail = "not running"
        if process_alive(self.state.gateway_pid):
            try:
                response = httpx.get(f"{self.api_url}/health", timeout=2)
                gateway_ok = response.status_code == 200
                detail = f"db {response.json().get('db')}"
            except (httpx.HTTPError, ValueError) as err:
                detail = f"not answering: {type(err).__name__}"
        rows.append(ComponentStatus("gateway", self.state.gateway_pid or None,
                                    self.state.api_port or None, self.api_url, gateway_ok, detail))
        for name, worker in sorted(self.state.functions.items()):
            alive = process_alive(worker.pid) and port_in_use(worker.port)
            rows.append(ComponentStatus(f"function {name}", worker.pid or None, worker.port,
                                        f"{self.api_url}/functions/v1/{name}", alive,
                                        f"version {worker.version}"))
        return rows


def copy_bundle(functions_dir: Path, name: str, target: Path) -> None:
    """A deployable copy: exactly the files the hosted deploy uploads (`collect_bundle`)."""
    bundle = collect_bundle(functions_dir.parent, name)
    for rel, content in bundle.files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def bundle_digest(functions_dir: Path, name: str) -> str:
    """The digest of what `copy_bundle` deploys (path and content of every file)."""
    return collect_bundle(functions_dir.parent, name).sha256


def _base_env() -> dict[str, str]:
    """A child's environment: PATH, HOME and Deno's cache, never the caller's secrets."""
    keep = ("PATH", "HOME", "DENO_DIR", "TZ", "LANG", "SSL_CERT_FILE", "NPM_CONFIG_REGISTRY")
    return {k: v for k, v in os.environ.items() if k in keep}

