"""A tiny in-memory Supabase Management API and function gateway, faked at the HTTP boundary.

It answers the published request/response shapes (OpenAPI `FunctionResponse`,
`DeployFunctionResponse`, `BulkUpdateFunctionResponse`, `SecretResponse`, logs.all results) with
the headers real responses carry (`recorded/`, from supabase/cli's recorded fixtures):
`x-ratelimit-*`, `x-gotrue-id`, `cf-ray`, and no `x-request-id`. It keeps state: functions with
versions, source files and a server-side bundle hash (`ezbr_sha256`), bundles staged by
`bundleOnly` until a bulk update switches them live (the bulk update keeps the version it is
given: the spec says to "manually bump the version"), secrets (reported by SHA-256 digest only),
and function edge logs. It enforces the platform's rules: 120 requests per minute per endpoint
(429 for the rest of the minute), no `SUPABASE_*` secrets, and, on the function gateway,
401 `{"msg": "Invalid JWT"}` before a `verify_jwt` function runs unless the request carries a
JWT signed with the legacy secret or the project's ES256 signing key. Every request is recorded
so tests can assert method, path, query, headers and body.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from rollout.adapters.supabase_api import ManagementAPI

REF = "abcdefghijklmnopqrst"
TOKEN = "sbp_fake0123456789abcdef0123456789abcdef"
BASE_URL = "https://api.supabase.com"
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RATE_LIMIT = 120  # requests per minute per user, project and endpoint (docs; recorded headers)
SIGNING_KID = "fake-es256-key"


@dataclass
class StoredFunction:
    """One function as the platform keeps it."""

    id: str
    slug: str
    name: str
    version: int
    verify_jwt: bool
    entrypoint: str  # relative path as uploaded
    import_map: str | None
    files: dict[str, bytes]
    status: str = "ACTIVE"
    created_at: int = NOW_MS

    @property
    def ezbr_sha256(self) -> str:
        """The platform's bundle hash: here a digest of the uploaded paths and contents."""
        digest = hashlib.sha256()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + self.files[path] + b"\0")
        return digest.hexdigest()

    def source_root(self) -> str:
        return f"/tmp/user_fn_{REF}_{self.id}_{self.version}/source"

    def response(self) -> dict[str, Any]:
        """`FunctionResponse` JSON, entrypoint and import map as file:// URLs like the platform."""
        body: dict[str, Any] = {
            "id": self.id,
            "slug": self.slug,
            "name": self.name,
            "status": self.status,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": NOW_MS + self.version * 1000,
            "verify_jwt": self.verify_jwt,
            "import_map": self.import_map is not None,
            "entrypoint_path": f"file://{self.source_root()}/{self.entrypoint}",
            "ezbr_sha256": self.ezbr_sha256,
        }
        if self.import_map:
            body["import_map_path"] = f"file://{self.source_root()}/{self.import_map}"
        return body


@dataclass
class FakeSupabase:
    """The fake API; `transport` plugs it into `ManagementAPI`."""

    token: str = TOKEN
    functions: dict[str, StoredFunction] = field(default_factory=dict)
    staged: dict[tuple[str, str], StoredFunction] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    edge_logs: dict[str, list[int]] = field(default_factory=dict)  # function slug → statuses
    requests: list[httpx.Request] = field(default_factory=list)
    faults: list[Callable[[httpx.Request], httpx.Response | None]] = field(default_factory=list)
    body_as_eszip: bool = False
    ignore_activation: bool = False  # a cheat: the bulk update answers 200 and changes nothing
    jwt_secret: str | None = None  # the legacy HS256 secret, while the project still has it
    signing_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    clock: float = 0.0  # seconds; the API's sleep advances it, so rate-limit windows pass
    realtime: bool = False  # use the wall clock instead (a fake served to a subprocess)
    rate_limit: int = RATE_LIMIT
    window: float = 60.0  # seconds per rate-limit window (the platform's: a minute)
    rate_limited: int = 0  # how many requests were answered 429
    _windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    _counter: int = 0

    # -- wiring ----------------------------------------------------------------------------

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def api(self, sleeps: list[float] | None = None, **kwargs: Any) -> ManagementAPI:
        record = sleeps if sleeps is not None else []

        def sleep(seconds: float) -> None:
            record.append(seconds)
            self.clock += seconds

        return ManagementAPI(
            REF, self.token, base_url=BASE_URL, transport=self.transport, sleep=sleep, **kwargs
        )

    def user_token(self, sub: str, *, legacy: bool = False, ttl: int = 600) -> str:
        """A user JWT as Auth issues it: ES256 with the signing key, or legacy HS256."""
        now = int(time.time())
        claims = {"sub": sub, "role": "authenticated", "aud": "authenticated",
                  "iat": now, "exp": now + ttl}
        if legacy:
            assert self.jwt_secret, "the project has no legacy JWT secret"
            return jwt.encode(claims, self.jwt_secret, algorithm="HS256")
        return jwt.encode(claims, self.signing_key, algorithm="ES256",
                          headers={"kid": SIGNING_KID})

    def jwks(self) -> dict[str, Any]:
        """The project's public JWKS (what functions get as `SUPABASE_JWKS`)."""
        key = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.signing_key.public_key()))
        return {"keys": [{**key, "kid": SIGNING_KID, "alg": "ES256", "use": "sig"}]}

    def seed(self, slug: str, files: dict[str, bytes], entrypoint: str, version: int = 1) -> None:
        self.functions[slug] = StoredFunction(
            id=str(uuid.uuid4()),
            slug=slug,
            name=slug,
            version=version,
            verify_jwt=True,
            entrypoint=entrypoint,
            import_map="deno.json" if "deno.json" in files else None,
            files=dict(files),
        )

    def calls(self, method: str, suffix: str) -> list[httpx.Request]:
        path = f"/v1/projects/{REF}/{suffix}"
        return [r for r in self.requests if r.method == method and r.url.path == path]

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self._counter += 1
        response = self._dispatch(request)
        for name, value in self._headers(request, response).items():
            response.headers.setdefault(name, value)
        return response

    def _dispatch(self, request: httpx.Request) -> httpx.Response:
        for fault in list(self.faults):
            try:
                injected = fault(request)
            except httpx.TransportError:
                self.faults.remove(fault)
                raise
            if injected is not None:
                self.faults.remove(fault)
                return injected
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"message": "Unauthorized"})
        limited = self._rate_limited(request)
        if limited is not None:
            return limited
        prefix = f"/v1/projects/{REF}/"
        if not request.url.path.startswith(prefix):
            return httpx.Response(404, json={"message": "Project not found"})
        return self._route(request, request.url.path[len(prefix) :])

    def _endpoint(self, request: httpx.Request) -> str:
        path = re.sub(r"/functions/(?!deploy$)[A-Za-z][A-Za-z0-9_-]*", "/functions/{slug}",
                      request.url.path)
        return f"{request.method} {path}"

    def now(self) -> float:
        return time.monotonic() if self.realtime else self.clock

    def _rate_limited(self, request: httpx.Request) -> httpx.Response | None:
        """`rate_limit` per window per endpoint; over it, 429 for the rest of the window."""
        window = int(self.now() // self.window)
        key = self._endpoint(request)
        start, count = self._windows.get(key, (window, 0))
        count = count + 1 if start == window else 1
        self._windows[key] = (window, count)
        if count > self.rate_limit:
            self.rate_limited += 1
            return httpx.Response(429, json={"message": "Too many requests"})
        return None

    def _headers(self, request: httpx.Request, response: httpx.Response) -> dict[str, str]:
        """What real responses carry (recorded): rate-limit counters, cf-ray, no request id."""
        now = self.now()
        window, count = self._windows.get(self._endpoint(request), (int(now // self.window), 0))
        reset = math.ceil((window + 1) * self.window - now)
        headers = {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(self.rate_limit - count, 0)),
            "x-ratelimit-reset": str(reset),
            "x-gotrue-id": "00000000-0000-4000-8000-00000000abcd",
            "cf-ray": cf_ray(self._counter),
        }
        if response.headers.get("content-type") == "application/json":
            response.headers["content-type"] = "application/json; charset=utf-8"
        return headers

    # -- the function gateway (https://<ref>.supabase.co/functions/v1/<slug>/…) --------------

    def invoke(
        self,
        request: httpx.Request,
        run: Callable[[StoredFunction, httpx.Request], httpx.Response] | None = None,
    ) -> httpx.Response:
        """The hosted gateway: 404 for no such function, 401 before a verify_jwt function runs
        without a valid JWT (legacy HS256 or the signing key's ES256), else the function: `run`
        (a real runtime for the deployed files), or a stand-in whose `/health` answers 200 and
        names the bundle hash serving it."""
        self.requests.append(request)
        slug = request.url.path.split("/")[3]
        stored = self.functions.get(slug)
        if stored is None or stored.status != "ACTIVE":
            return httpx.Response(404, json={"code": "NOT_FOUND",
                                             "message": "Requested function was not found"})
        if request.method != "OPTIONS" and stored.verify_jwt and not self._valid_jwt(request):
            return httpx.Response(401, json={"msg": "Invalid JWT"})
        if run is not None:
            return run(stored, request)
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"status": "ok", "db": "ok",
                                             "bundle": stored.ezbr_sha256})
        return httpx.Response(404, json={"error": "not found"})

    def _valid_jwt(self, request: httpx.Request) -> bool:
        header = request.headers.get("authorization", "")
        bearer, _, token = header.partition(" ")
        if bearer != "Bearer" or not token:
            return False
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            if alg == "HS256" and self.jwt_secret:
                jwt.decode(token, self.jwt_secret, algorithms=["HS256"],
                           options={"verify_aud": False})
            elif alg == "ES256":
                jwt.decode(token, self.signing_key.public_key(), algorithms=["ES256"],
                           options={"verify_aud": False})
            else:
                return False
        except jwt.PyJWTError:
            return False
        return True

    def _route(self, request: httpx.Request, route: str) -> httpx.Response:
        method = request.method
        if route == "functions" and method == "GET":
            return httpx.Response(200, json=[f.response() for f in self.functions.values()])
        if route == "functions" and method == "PUT":
            return self._bulk_update(request)
        if route == "functions/deploy" and method == "POST":
            return self._deploy(request)
        if route == "secrets":
            return self._secrets(request)
        if route == "analytics/endpoints/logs" and method == "GET":
            return self._logs(request)
        match = re.fullmatch(r"functions/([A-Za-z][A-Za-z0-9_-]*)(/body)?", route)
        if match:
            return self._function(request, match.group(1), bool(match.group(2)))
        return httpx.Response(404, json={"message": "Not found"})

    # -- functions -------------------------------------------------------------------------

    def _function(self, request: httpx.Request, slug: str, body: bool) -> httpx.Response:
        stored = self.functions.get(slug)
        if stored is None:
            return httpx.Response(404, json={"message": f"Function {slug} not found"})
        if request.method == "DELETE" and not body:
            del self.functions[slug]
            return httpx.Response(200, json={"message": "ok"})
        if request.method != "GET":
            return httpx.Response(405)
        if not body:
            return httpx.Response(200, json=stored.response())
        if self.body_as_eszip or "multipart/form-data" not in request.headers.get("accept", ""):
            return httpx.Response(
                200,
                content=b"EZBR\x00fake-eszip",
                headers={"content-type": "application/octet-stream"},
            )
        return _multipart_response(stored.files)

    def _deploy(self, request: httpx.Request) -> httpx.Response:
        slug = request.url.params.get("slug", "")
        bundle_only = request.url.params.get("bundleOnly") in ("true", "1")
        metadata, files = parse_deploy_form(request)
        entry = metadata.get("entrypoint_path")
        if not isinstance(entry, str) or entry not in files:
            return httpx.Response(400, json={"message": "Entrypoint not found in files"})
        existing = self.functions.get(slug)
        stored = StoredFunction(
            id=existing.id if existing else str(uuid.uuid4()),
            slug=slug,
            name=str(metadata.get("name", slug)),
            # A direct deploy makes a new version; a bundle-only upload is not a version yet
            # (the bulk update keeps whatever version it is sent).
            version=(existing.version if existing else 0) + (0 if bundle_only and existing else 1),
            verify_jwt=bool(metadata.get("verify_jwt", True)),
            entrypoint=entry,
            import_map=metadata.get("import_map_path"),
            files=files,
            created_at=existing.created_at if existing else NOW_MS,
        )
        if bundle_only:
            self.staged[(stored.id, slug)] = stored  # the latest upload of that function
        else:
            self.functions[slug] = stored
        return httpx.Response(201, json=stored.response())

    def _bulk_update(self, request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)
        assert isinstance(items, list)
        activated = []
        for item in items:
            for key in ("id", "slug", "name", "status", "version"):
                assert key in item, f"BulkUpdateFunctionBody item lacks {key}"
            stored = self.staged.pop((item["id"], item["slug"]), None)
            if stored is None:
                return httpx.Response(400, json={"message": f"no bundle for {item['slug']}"})
            stored.version = int(item["version"])  # "you will need to manually bump the version"
            stored.verify_jwt = bool(item.get("verify_jwt", stored.verify_jwt))
            if not self.ignore_activation:
                self.functions[stored.slug] = stored
            activated.append(stored.response())
        return httpx.Response(200, json={"functions": activated})

    # -- secrets and logs ------------------------------------------------------------------

    def _secrets(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(
                200,
                json=[
                    {
                        "name": name,
                        "value": hashlib.sha256(value.encode()).hexdigest(),
                        "updated_at": "2026-01-01T00:00:00.000Z",
                    }
                    for name, value in sorted(self.secrets.items())
                ],
            )
        body = json.loads(request.content)
        if request.method == "POST":
            for item in body:
                if item["name"].startswith("SUPABASE_"):
                    return httpx.Response(400, json={"message": "reserved name"})
            for item in body:
                self.secrets[item["name"]] = item["value"]
            return httpx.Response(201)  # recorded: 201, empty body, no content-type
        if request.method == "DELETE":
            for name in body:
                self.secrets.pop(name, None)
            return httpx.Response(200)  # recorded: 200, empty body
        return httpx.Response(405)

    def _logs(self, request: httpx.Request) -> httpx.Response:
        """The ClickHouse logs endpoint: one `logs` table, sources told apart by `source_name`;
        edge-log rows are `METHOD | STATUS | URL`. Only the query shape used here is understood,
        anything else answers the endpoint's error shape (`logs.all` itself is gone: 404)."""
        sql = request.url.params.get("sql", "")
        slug = re.search(r"match\(event_message, '/functions/v1/([A-Za-z][A-Za-z0-9_-]*)\(", sql)
        if "from logs " not in sql or "source_name = 'function_edge_logs'" not in sql or not slug:
            return httpx.Response(200, json={"result": [], "error": {"message": "bad query"}})
        rows = [f"POST | {s} | https://{REF}.supabase.co/functions/v1/{slug.group(1)}"
                for s in self.edge_logs.get(slug.group(1), [])]
        statuses = [int(r.split("|")[1]) for r in rows]
        row = {
            "requests": len(statuses),
            "server_errors": sum(1 for s in statuses if s >= 500),
            "client_errors": sum(1 for s in statuses if 400 <= s < 500),
        }
        return httpx.Response(200, json={"result": [row]})


def cf_ray(n: int) -> str:
    """The Cloudflare ray id of the n-th response (the only request id real responses carry)."""
    return f"8f{n:014x}-AMS"


def parse_deploy_form(request: httpx.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The `metadata` JSON and `file` parts of a deploy request (multipart/form-data)."""
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary="), content_type
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + request.content
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    metadata: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        disposition = part.get("content-disposition", "")
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if name == "metadata":
            metadata = json.loads(payload)
        elif name == "file":
            filename = part.get_filename()
            assert filename, disposition
            files[filename] = payload
        else:
            raise AssertionError(f"unexpected form part {name!r}")
    return metadata, files


def _multipart_response(files: dict[str, bytes]) -> httpx.Response:
    """The body endpoint's multipart answer: one `file` part per source file."""
    boundary = "fakeboundary7MA4YWxkTrZu0gW"
    chunks: list[bytes] = []
    for path in sorted(files):
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + files[path]
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return httpx.Response(
        200,
        content=b"".join(chunks),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )


@pytest.fixture
def fake() -> Iterator[FakeSupabase]:
    yield FakeSupabase()
