"""A tiny in-memory Supabase Management API, faked at the HTTP boundary.

It answers the published request/response shapes (OpenAPI `FunctionResponse`,
`DeployFunctionResponse`, `BulkUpdateFunctionResponse`, `SecretResponse`, logs.all results) and
keeps state: functions with versions and source files, bundles staged by `bundleOnly` until a
bulk update switches them live, secrets (reported by SHA-256 digest only), and function edge
logs. Every request is recorded so tests can assert method, path, query, headers and body.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from rollout.adapters.supabase_api import ManagementAPI

REF = "abcdefghijklmnopqrst"
TOKEN = "sbp_fake0123456789abcdef0123456789abcdef"
BASE_URL = "https://api.supabase.com"
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


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
            "ezbr_sha256": hashlib.sha256(
                b"".join(self.files[k] for k in sorted(self.files))
            ).hexdigest(),
        }
        if self.import_map:
            body["import_map_path"] = f"file://{self.source_root()}/{self.import_map}"
        return body


@dataclass
class FakeSupabase:
    """The fake API; `transport` plugs it into `ManagementAPI`."""

    token: str = TOKEN
    functions: dict[str, StoredFunction] = field(default_factory=dict)
    staged: dict[tuple[str, str, int], StoredFunction] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    edge_logs: dict[str, list[int]] = field(default_factory=dict)  # function id → statuses
    requests: list[httpx.Request] = field(default_factory=list)
    faults: list[Callable[[httpx.Request], httpx.Response | None]] = field(default_factory=list)
    body_as_eszip: bool = False
    activation_bumps_version: bool = True
    _counter: int = 0

    # -- wiring ----------------------------------------------------------------------------

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def api(self, sleeps: list[float] | None = None, **kwargs: Any) -> ManagementAPI:
        record = sleeps if sleeps is not None else []
        return ManagementAPI(
            REF,
            self.token,
            base_url=BASE_URL,
            transport=self.transport,
            sleep=record.append,
            **kwargs,
        )

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
        rid = {"x-request-id": f"req-{self._counter:04d}"}
        for fault in list(self.faults):
            try:
                injected = fault(request)
            except httpx.TransportError:
                self.faults.remove(fault)
                raise
            if injected is not None:
                self.faults.remove(fault)
                injected.headers.update(rid)
                return injected
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"message": "Unauthorized"}, headers=rid)
        prefix = f"/v1/projects/{REF}/"
        if not request.url.path.startswith(prefix):
            return httpx.Response(404, json={"message": "Project not found"}, headers=rid)
        route = request.url.path[len(prefix) :]
        response = self._route(request, route)
        response.headers.update(rid)
        return response

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
        if route == "analytics/endpoints/logs.all" and method == "GET":
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
            return httpx.Response(200)
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
            version=(existing.version if existing else 0) + 1,
            verify_jwt=bool(metadata.get("verify_jwt", True)),
            entrypoint=entry,
            import_map=metadata.get("import_map_path"),
            files=files,
            created_at=existing.created_at if existing else NOW_MS,
        )
        if bundle_only:
            self.staged[(stored.id, slug, stored.version)] = stored
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
            stored = self.staged.pop((item["id"], item["slug"], item["version"]), None)
            if stored is None:
                return httpx.Response(400, json={"message": f"no bundle for {item['slug']}"})
            if not self.activation_bumps_version and item["slug"] in self.functions:
                stored.version = self.functions[item["slug"]].version
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
            return httpx.Response(201)
        if request.method == "DELETE":
            for name in body:
                self.secrets.pop(name, None)
            return httpx.Response(200, json={})
        return httpx.Response(405)

    def _logs(self, request: httpx.Request) -> httpx.Response:
        sql = request.url.params.get("sql", "")
        match = re.search(r"function_id = '([A-Za-z0-9_-]+)'", sql)
        if "function_edge_logs" not in sql or match is None:
            return httpx.Response(200, json={"result": [], "error": {"message": "bad query"}})
        statuses = self.edge_logs.get(match.group(1), [])
        row = {
            "requests": len(statuses),
            "server_errors": sum(1 for s in statuses if s >= 500),
            "client_errors": sum(1 for s in statuses if 400 <= s < 500),
        }
        return httpx.Response(200, json={"result": [row]})


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
