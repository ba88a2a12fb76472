"""A typed client for the parts of the Supabase Management API that `rollout` uses.

All outside I/O for edge functions, secrets and function logs goes through `ManagementAPI`;
steps never build URLs themselves. The shapes follow the published Management API (OpenAPI
`https://api.supabase.com/api/v1-json`, as generated into the Supabase CLI's `pkg/api`) and the
way the Supabase CLI itself calls it (`pkg/function/deploy.go`, `pkg/function/batch.go`,
`internal/functions/download/download.go`, `internal/secrets/*`). `docs/supabase-management-api.md`
lists every endpoint with its source.

Behaviour shared by every call:
- Bearer auth with the personal access token; the token is never part of a message, a log line
  or a `repr` (it is scrubbed from error text too, in case an upstream echoes it).
- Timeouts everywhere: 10 s to connect, 60 s to read/write.
- Reads (GET) are retried with exponential backoff on 5xx and transport errors.
- Writes are never retried blindly (the Terraform provider "retries transient GET failures
  only"; a second deploy upload can create a second version): after a 5xx or a timeout the
  caller's `applied` check reads the state back, and the write is sent again only when the state
  shows it did not happen (`_write`).
- A 429 means the request was refused, so any call waits and tries again: for `Retry-After`
  when present, else `X-RateLimit-Reset` (seconds until the per-minute window resets, as the
  recorded responses show), as long as the total wait stays within `max_rate_limit_wait`.
- Every error names the HTTP status and the request id the API returned (`x-request-id`,
  `sb-request-id` or `cf-ray`; real responses carry only `cf-ray`), so a support ticket can be
  filed from the one red line.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import urlparse

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from rollout.errors import TargetError, UsageError

DEFAULT_API_URL: Final = "https://api.supabase.com"
API_URL_ENV: Final = "SUPABASE_API_URL"
TOKEN_ENV: Final = "SUPABASE_ACCESS_TOKEN"

TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)
REQUEST_ID_HEADERS: Final = ("x-request-id", "sb-request-id", "cf-ray")
RETRY_STATUSES: Final = frozenset({500, 502, 503, 504})
MAX_ATTEMPTS: Final = 5
WRITE_ATTEMPTS: Final = 2
DEFAULT_RATE_LIMIT_WAIT: Final = 90.0
"""Seconds a call may wait in total for 429s to clear (the platform's window is a minute)."""

# Published constraints (OpenAPI): project refs are 20 lowercase letters; function slugs start
# with a letter; secret names must not start with SUPABASE_ (reserved by the platform), are at
# most 256 characters, and values at most 24576 characters.
PROJECT_REF_RE: Final = re.compile(r"^[a-z]{20}$")
FUNCTION_SLUG_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
RESERVED_SECRET_PREFIX: Final = "SUPABASE_"
MAX_SECRET_NAME: Final = 256
MAX_SECRET_VALUE: Final = 24576
# The logs endpoint accepts at most a 24 hour window.
MAX_LOG_WINDOW: Final = timedelta(hours=24)
T = TypeVar("T")


class EdgeFunction(BaseModel):
    """`FunctionResponse` of the Management API (list, get, deploy and bulk-update responses).

    `created_at`/`updated_at` are epoch milliseconds (int64) in the published schema.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    slug: str
    name: str
    status: str  # "ACTIVE" | "REMOVED" | "THROTTLED"
    version: int
    created_at: int | None = None
    updated_at: int | None = None
    verify_jwt: bool | None = None
    import_map: bool | None = None
    entrypoint_path: str | None = None
    import_map_path: str | None = None
    ezbr_sha256: str | None = None

    @property
    def is_active(self) -> bool:
        """Whether the platform serves this function."""
        return self.status == "ACTIVE"


@dataclass(frozen=True)
class FunctionSource:
    """The source files of a live function, as `GET …/functions/{slug}/body` returns them.

    Paths are relative (POSIX); `entrypoint_path` and `import_map_path` are keys of `files`, so
    the source can be deployed again as is (that is what rollback does).
    """

    slug: str
    entrypoint_path: str
    verify_jwt: bool
    version: int
    import_map_path: str | None = None
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def sha256(self) -> str:
        """A digest over every (path, content) pair, in path order."""
        return files_sha256(self.files)


@dataclass(frozen=True)
class FunctionStats:
    """Invocation counts of one function over a time window (from `function_edge_logs`)."""

    slug: str
    since: datetime
    until: datetime
    requests: int
    server_errors: int
    client_errors: int

    @property
    def error_rate(self) -> float:
        """Share of requests answered with a 5xx (0.0 when there were no requests)."""
        return self.server_errors / self.requests if self.requests else 0.0


def files_sha256(files: Mapping[str, bytes]) -> str:
    """A stable digest of a set of files: path and length framed, so no two sets collide."""
    digest = hashlib.sha256()
    for path in sorted(files):
        content = files[path]
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def secret_digest(value: str) -> str:
    """The digest `GET /v1/projects/{ref}/secrets` reports for a value: hex SHA-256."""
    return hashlib.sha256(value.encode()).hexdigest()


def validate_secret_names(names: Iterable[str]) -> None:
    """Refuse names the platform rejects, before anything is sent (nothing changes)."""
    for name in names:
        if not name:
            raise UsageError("a secret name is empty")
        if name.upper().startswith(RESERVED_SECRET_PREFIX):
            raise UsageError(
                f"secret {name!r} uses the reserved {RESERVED_SECRET_PREFIX} prefix",
                hint="Supabase sets SUPABASE_* secrets itself; choose another name",
            )
        if len(name) > MAX_SECRET_NAME:
            raise UsageError(f"secret name {name[:40]!r}… is longer than {MAX_SECRET_NAME}")


class _BearerAuth(httpx.Auth):
    """Adds the bearer token to each request; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(token=***)"


class UncertainWrite(TargetError):
    """A write got a 5xx or no answer: it may or may not have been applied."""


def _header_seconds(response: httpx.Response, name: str) -> float | None:
    """A header holding delta-seconds or an HTTP-date, as seconds from now (None when absent)."""
    raw = response.headers.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0)


def rate_limit_wait(response: httpx.Response) -> float | None:
    """How long a 429 asks to wait: `Retry-After`, else `X-RateLimit-Reset`; None if neither."""
    for name in ("retry-after", "x-ratelimit-reset"):
        seconds = _header_seconds(response, name)
        if seconds is not None:
            return seconds
    return None


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter for retried reads: ~0.5 s, 1 s, 2 s … at most 8 s."""
    return float(min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))


def request_id(response: httpx.Response | None) -> str:
    """The request id the API (or its CDN) attached to a response, for error messages."""
    if response is not None:
        for header in REQUEST_ID_HEADERS:
            value = response.headers.get(header)
            if value:
                return str(value)
    return "none"


class ManagementAPI:
    """The Supabase Management API for one project.

    `client` or `transport` may be injected (tests use `httpx.MockTransport` or respx);
    `sleep` is what the retry loop waits with (tests pass a recorder, so nothing really waits).
    """

    def __init__(
        self,
        project_ref: str,
        token: str,
        *,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
        max_rate_limit_wait: float = DEFAULT_RATE_LIMIT_WAIT,
    ) -> None:
        if not PROJECT_REF_RE.match(project_ref):
            raise UsageError(
                f"invalid Supabase project ref {project_ref!r}",
                hint="a project ref is the 20 lowercase letters in the project URL",
            )
        if not token:
            raise UsageError(f"{TOKEN_ENV} is not set", hint="create a token in the dashboard")
        self.project_ref = project_ref
        self.base_url = (base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        self._token = token
        self._auth = _BearerAuth(token)
        self._owns_client = client is None
        self._client = client or httpx.Client(
            base_url=self.base_url, timeout=TIMEOUT, transport=transport
        )
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._max_rate_limit_wait = max_rate_limit_wait

    @classmethod
    def from_env(
        cls, project_ref: str, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> ManagementAPI:
        """Build from `SUPABASE_ACCESS_TOKEN` (and `SUPABASE_API_URL` when set)."""
        env = os.environ if env is None else env
        return cls(
            project_ref,
            env.get(TOKEN_ENV, ""),
            base_url=env.get(API_URL_ENV) or DEFAULT_API_URL,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"ManagementAPI(project_ref={self.project_ref!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- functions -----------------------------------------------------------------------

    def list_functions(self) -> list[EdgeFunction]:
        """`GET /v1/projects/{ref}/functions` → `FunctionResponse[]`."""
        response = self._request("GET", self._path("functions"), what="list functions")
        return self._parse_functions(response.json(), what="list functions", response=response)

    def get_function(self, slug: str) -> EdgeFunction | None:
        """`GET /v1/projects/{ref}/functions/{function_slug}` (`FunctionSlugResponse`), or None."""
        _check_slug(slug)
        response = self._request(
            "GET",
            self._path(f"functions/{slug}"),
            what=f"get function {slug}",
            allow_404=True,
        )
        if response.status_code == 404:
            return None
        return self._parse_function(response.json(), what=f"get function {slug}", response=response)

    def download_function(self, slug: str) -> FunctionSource | None:
        """The live source of a function, or None when it does not exist.

        Follows the CLI's `functions download --use-api` (server-side unbundle): metadata from
        `GET …/functions/{slug}`, then `GET …/functions/{slug}/body` with
        `Accept: multipart/form-data`, which answers one part per source file named by its
        `Content-Disposition` filename (or a `Supabase-Path` header). Without that Accept header
        the endpoint returns an eszip bundle, which cannot be redeployed through `/deploy`.
        """
        meta = self.get_function(slug)
        if meta is None:
            return None
        response = self._request(
            "GET",
            self._path(f"functions/{slug}/body"),
            what=f"download function {slug}",
            headers={"Accept": "multipart/form-data"},
            allow_404=True,
        )
        if response.status_code == 404:
            return None
        files = _parse_multipart_files(response, slug)
        return _function_source(slug, meta, files, response)

    def deploy_function(
        self,
        slug: str,
        files: Mapping[str, bytes],
        entrypoint_path: str,
        verify_jwt: bool,
        import_map_path: str | None = None,
        *,
        bundle_only: bool = False,
        name: str | None = None,
        static_patterns: Sequence[str] | None = None,
    ) -> EdgeFunction:
        """`POST /v1/projects/{ref}/functions/deploy?slug=…[&bundleOnly=true]` (multipart).

        Parts, as the CLI's `writeForm` sends them: a `metadata` field holding JSON
        (`entrypoint_path`, `import_map_path`, `name`, `static_patterns`, `verify_jwt`), then one
        `file` part per source file whose filename is its relative path. With `bundle_only` the
        platform bundles the function and returns its metadata without switching it live;
        `activate_functions` then switches a batch live together.
        Answers 201 `DeployFunctionResponse`.
        """
        _check_slug(slug)
        _check_deploy_paths(slug, files, entrypoint_path, import_map_path)
        metadata: dict[str, Any] = {
            "entrypoint_path": entrypoint_path,
            "name": name or slug,
            "verify_jwt": verify_jwt,
        }
        if import_map_path:
            metadata["import_map_path"] = import_map_path
        if static_patterns:
            metadata["static_patterns"] = list(static_patterns)
        params = {"slug": slug}
        if bundle_only:
            params["bundleOnly"] = "true"
        multipart = [
            ("file", (path, files[path], "application/octet-stream")) for path in sorted(files)
        ]
        what = f"deploy function {slug}"

        def send() -> EdgeFunction:
            response = self._request(
                "POST",
                self._path("functions/deploy"),
                what=what,
                params=params,
                data={"metadata": json.dumps(metadata, sort_keys=True)},
                files=multipart,
            )
            return self._parse_function(response.json(), what=what, response=response)

        if bundle_only:
            # A bundle-only upload changes nothing that serves: sending it again after an
            # uncertain outcome stages a second bundle at most, and only the one returned here
            # is ever activated.
            return self._write(send, lambda: None)
        before = self.get_function(slug)

        def applied() -> EdgeFunction | None:
            after = self.get_function(slug)
            return after if after is not None and _changed(before, after) else None

        return self._write(send, applied)

    def activate_functions(self, functions: Sequence[EdgeFunction]) -> list[EdgeFunction]:
        """`PUT /v1/projects/{ref}/functions` (bulk update) → `{"functions": FunctionResponse[]}`.

        The body is the array of `BulkUpdateFunctionBody` items built, as the CLI does
        (`pkg/function/deploy.go` `bulkUpload`), from the `bundleOnly` deploy responses, so
        every function of a release goes live in one call after all of them were uploaded.
        """
        if not functions:
            return []
        body = [_bulk_update_item(f) for f in functions]
        slugs = ", ".join(f.slug for f in functions)

        def send() -> list[EdgeFunction]:
            response = self._request(
                "PUT", self._path("functions"), what=f"activate functions {slugs}", json_body=body
            )
            payload = response.json()
            items = payload.get("functions", []) if isinstance(payload, dict) else payload
            return self._parse_functions(items, what="activate functions", response=response)

        def applied() -> list[EdgeFunction] | None:
            live = {f.slug: f for f in self.list_functions()}
            done = [live.get(f.slug) for f in functions]
            if all(
                d is not None and d.is_active and d.ezbr_sha256 == f.ezbr_sha256
                for d, f in zip(done, functions, strict=True)
            ):
                return [d for d in done if d is not None]
            return None

        # The spec calls the bulk update idempotent; it is still only re-sent when not applied.
        return self._write(send, applied)

    def delete_function(self, slug: str) -> bool:
        """`DELETE /v1/projects/{ref}/functions/{function_slug}`; False when it was already gone."""
        _check_slug(slug)

        def send() -> bool:
            response = self._request(
                "DELETE",
                self._path(f"functions/{slug}"),
                what=f"delete function {slug}",
                allow_404=True,
            )
            return response.status_code != 404

        return self._write(send, lambda: True if self.get_function(slug) is None else None)

    # -- secrets -------------------------------------------------------------------------

    def list_secrets(self) -> dict[str, str]:
        """`GET /v1/projects/{ref}/secrets` → name → hex SHA-256 digest of the value.

        The API never returns values: `SecretResponse.value` is the digest (the CLI prints it
        under DIGEST; the Terraform provider compares it with `sha256(value)`).
        """
        response = self._request("GET", self._path("secrets"), what="list secrets")
        payload = response.json()
        if not isinstance(payload, list):
            raise self._shape_error("list secrets", response)
        secrets: dict[str, str] = {}
        for item in payload:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise self._shape_error("list secrets", response)
            secrets[item["name"]] = str(item.get("value", ""))
        return secrets

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        """`POST /v1/projects/{ref}/secrets` with `[{"name", "value"}]` (creates or replaces)."""
        if not secrets:
            return
        validate_secret_names(secrets)
        for name, value in secrets.items():
            if len(value) > MAX_SECRET_VALUE:
                raise UsageError(f"secret {name!r} is longer than {MAX_SECRET_VALUE} characters")
        body = [{"name": name, "value": secrets[name]} for name in sorted(secrets)]

        def send() -> bool:
            self._request(
                "POST",
                self._path("secrets"),
                what=f"set secrets {', '.join(sorted(secrets))}",
                json_body=body,
                redact=secrets.values(),
            )
            return True

        def applied() -> bool | None:
            now = self.list_secrets()
            return True if all(now.get(k) == secret_digest(v) for k, v in secrets.items()) else None

        self._write(send, applied)

    def unset_secrets(self, names: Iterable[str]) -> None:
        """`DELETE /v1/projects/{ref}/secrets` with the JSON array of names."""
        wanted = sorted(set(names))
        if not wanted:
            return
        validate_secret_names(wanted)

        def send() -> bool:
            self._request(
                "DELETE",
                self._path("secrets"),
                what=f"unset secrets {', '.join(wanted)}",
                json_body=wanted,
            )
            return True

        self._write(send, lambda: None if set(wanted) & set(self.list_secrets()) else True)

    # -- logs ----------------------------------------------------------------------------

    def function_stats(
        self, slug: str, since: datetime, until: datetime | None = None
    ) -> FunctionStats:
        """Requests and error counts of one function since `since` (at most 24 hours).

        `GET /v1/projects/{ref}/analytics/endpoints/logs?sql=…&iso_timestamp_start=…&
        iso_timestamp_end=…` (OpenAPI `v1GetProjectLogs`; `logs.all` and its BigQuery SQL were
        removed on 2026-09-23, changelog 48235): ClickHouse SQL over the unified `logs` table,
        filtered by `source_name = 'function_edge_logs'`. Each edge log's `event_message` is
        `METHOD | STATUS | URL`, so the status and the function's URL path come from it. The
        endpoint has no bind parameters, so the only interpolated value (the slug) is checked
        against the platform's slug pattern first.
        """
        _check_slug(slug)
        until = until or datetime.now(UTC)
        since, until = _aware(since), _aware(until)
        if until <= since:
            raise UsageError("function stats window is empty (until <= since)")
        if until - since > MAX_LOG_WINDOW:
            raise UsageError("function stats window is longer than 24 hours (logs endpoint limit)")
        params = {
            "sql": function_stats_sql(slug),
            "iso_timestamp_start": _iso(since),
            "iso_timestamp_end": _iso(until),
        }
        response = self._request(
            "GET",
            self._path("analytics/endpoints/logs"),
            what=f"read logs of function {slug}",
            params=params,
        )
        return _parse_stats(slug, since, until, response)

    # -- plumbing ------------------------------------------------------------------------

    def _path(self, suffix: str) -> str:
        return f"/v1/projects/{self.project_ref}/{suffix}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
        headers: Mapping[str, str] | None = None,
        allow_404: bool = False,
        redact: Iterable[str] = (),
    ) -> httpx.Response:
        """Send; return a 2xx (or an allowed 404) response, else raise TargetError.

        GETs are retried on 5xx and transport errors; a write that meets either raises
        `UncertainWrite` at once (see `_write`). Any call waits out a 429 within the bound.
        """
        hidden = [self._token, *(v for v in redact if v)]
        is_read = method == "GET"
        attempt, waited = 0, 0.0
        while True:
            attempt += 1
            try:
                response = self._client.request(
                    method,
                    path,
                    params=params,
                    json=json_body,
                    data=data,
                    files=files,
                    headers=headers,
                    auth=self._auth,
                    timeout=TIMEOUT,
                )
                response.read()
            except httpx.TransportError as exc:
                message = _scrub(f"{type(exc).__name__}: {exc}", hidden)
                if not is_read:
                    raise UncertainWrite(
                        f"no answer from the Supabase Management API ({what}): {message}"
                    ) from None
                if attempt >= self._max_attempts:
                    raise TargetError(
                        f"Supabase Management API unreachable ({what}) after {attempt} "
                        f"attempts: {message} (request id none)"
                    ) from None
                self._sleep(_backoff(attempt))
                continue
            status = response.status_code
            if status == 429:
                asked = rate_limit_wait(response)
                # At least half a second, so a `reset: 0` cannot spin; the bound ends it.
                wait = max(_backoff(attempt) if asked is None else asked, 0.5)
                if waited + wait > self._max_rate_limit_wait:
                    raise TargetError(
                        f"Supabase Management API rate limit (HTTP 429) while trying to {what}: "
                        f"it asks to wait {wait:.0f}s more, beyond the bound of "
                        f"{self._max_rate_limit_wait:.0f}s (request id {request_id(response)})",
                        hint="raise the target's rate_limit_wait, or run when fewer calls compete",
                    )
                waited += wait
                self._sleep(wait)
                continue
            if status in RETRY_STATUSES:
                if not is_read:
                    raise UncertainWrite(
                        str(self._status_error(what, response, hidden, retried=False))
                    )
                if attempt < self._max_attempts:
                    self._sleep(_backoff(attempt))
                    continue
                raise self._status_error(what, response, hidden, retried=True)
            if response.is_success or (allow_404 and status == 404):
                return response
            raise self._status_error(what, response, hidden, retried=False)

    def _write(self, send: Callable[[], T], applied: Callable[[], T | None]) -> T:
        """Send a write; after an uncertain outcome read the state back (`applied`) and decide.

        `applied` returns the write's result when the state shows it happened, None when it did
        not. Only then is the write sent again, at most `WRITE_ATTEMPTS` times in all.
        """
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return send()
            except UncertainWrite as exc:
                done = applied()
                if done is not None:
                    return done
                if attempt == WRITE_ATTEMPTS:
                    raise TargetError(
                        f"{exc}; read back after {attempt} attempts: not applied"
                    ) from None
        raise AssertionError("unreachable")

    def _status_error(
        self,
        what: str,
        response: httpx.Response,
        hidden: Sequence[str],
        *,
        retried: bool,
    ) -> TargetError:
        status = response.status_code
        rid = request_id(response)
        if status == 401:
            return TargetError(
                f"Supabase access token invalid or expired (HTTP 401) while trying to {what} "
                f"(request id {rid})",
                hint=f"create a new personal access token and set {TOKEN_ENV}",
            )
        if status == 403:
            return TargetError(
                f"Supabase access token may not {what} in project {self.project_ref} "
                f"(HTTP 403, request id {rid})"
            )
        detail = _scrub(_error_detail(response), hidden)
        after = f" after {self._max_attempts} attempts" if retried else ""
        return TargetError(
            f"Supabase Management API could not {what}: HTTP {status}{after}"
            f"{': ' + detail if detail else ''} (request id {rid})"
        )

    def _shape_error(self, what: str, response: httpx.Response) -> TargetError:
        return TargetError(
            f"Supabase Management API answered {what} with an unexpected shape "
            f"(request id {request_id(response)})"
        )

    def _parse_function(self, payload: Any, *, what: str, response: httpx.Response) -> EdgeFunction:
        try:
            return EdgeFunction.model_validate(payload)
        except ValidationError:
            raise self._shape_error(what, response) from None

    def _parse_functions(
        self, payload: Any, *, what: str, response: httpx.Response
    ) -> list[EdgeFunction]:
        if not isinstance(payload, list):
            raise self._shape_error(what, response)
        return [self._parse_function(item, what=what, response=response) for item in payload]


# -- helpers (module level: pure, small, testable) ----------------------------------------


def function_stats_sql(slug: str) -> str:
    """ClickHouse SQL counting one function's invocations by response class."""
    if not FUNCTION_SLUG_RE.match(slug):
        raise UsageError(f"invalid function slug {slug!r}")
    status = "toUInt16OrZero(trimBoth(splitByString('|', event_message)[2]))"
    return (
        "select count() as requests, "
        f"countIf({status} >= 500) as server_errors, "
        f"countIf({status} between 400 and 499) as client_errors "
        "from logs "
        "where source_name = 'function_edge_logs' "
        f"and match(event_message, '/functions/v1/{slug}([/?# ]|$)')"
    )


def _check_slug(slug: str) -> None:
    if not FUNCTION_SLUG_RE.match(slug):
        raise UsageError(
            f"invalid function slug {slug!r}",
            hint="a slug starts with a letter and has only letters, digits, '-' and '_'",
        )


def _check_deploy_paths(
    slug: str,
    files: Mapping[str, bytes],
    entrypoint_path: str,
    import_map_path: str | None,
) -> None:
    if not files:
        raise UsageError(f"function {slug} has no files to deploy")
    for path in files:
        if path.startswith("/") or ".." in path.split("/") or "\\" in path:
            raise UsageError(f"function {slug}: file path {path!r} must be relative (POSIX)")
    if entrypoint_path not in files:
        raise UsageError(f"function {slug}: entrypoint {entrypoint_path} is not among its files")
    if import_map_path and import_map_path not in files:
        raise UsageError(f"function {slug}: import map {import_map_path} is not among its files")


def _bulk_update_item(function: EdgeFunction) -> dict[str, Any]:
    """A `BulkUpdateFunctionBody` item: the bundle response fields, optional ones only if set."""
    item = function.model_dump(
        include={
            "id",
            "slug",
            "name",
            "status",
            "version",
            "created_at",
            "verify_jwt",
            "import_map",
            "entrypoint_path",
            "import_map_path",
            "ezbr_sha256",
        },
        exclude_none=True,
    )
    return item


def _changed(before: EdgeFunction | None, after: EdgeFunction) -> bool:
    """Whether a function record differs from the one read before a write."""
    if before is None:
        return True
    keys = ("version", "updated_at", "ezbr_sha256", "verify_jwt", "entrypoint_path")
    return any(getattr(before, k) != getattr(after, k) for k in keys)


def _error_detail(response: httpx.Response) -> str:
    """The API's `message` (or a short body excerpt) for an error line."""
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict):
        for key in ("message", "error", "msg"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value[:300]
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])[:300]
    text = response.text.strip().replace("\n", " ")
    return text[:300]


def _scrub(text: str, hidden: Iterable[str]) -> str:
    """Replace every hidden string (token, secret values) with ***."""
    for value in hidden:
        if value:
            text = text.replace(value, "***")
    return text


def _parse_multipart_files(response: httpx.Response, slug: str) -> dict[str, bytes]:
    """Files of a multipart/form-data body: path (Supabase-Path or filename) → content."""
    content_type = response.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/"):
        raise TargetError(
            f"Supabase answered the source of function {slug} as {content_type or 'unknown'}, "
            f"not multipart; cannot keep it for rollback (request id {request_id(response)})"
        )
    raw = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + response.content
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        path = _part_path(part)
        if not path:
            continue
        payload = part.get_payload(decode=True)
        files[path] = payload if isinstance(payload, bytes) else b""
    if not files:
        raise TargetError(
            f"the source of function {slug} came back empty (request id {request_id(response)})"
        )
    return files


def _part_path(part: Message) -> str | None:
    """A part's file path: the `Supabase-Path` header, else the Content-Disposition filename."""
    path = part.get("Supabase-Path") or part.get_filename()
    if not path:
        return None
    return _normalise_path(str(path))


def _normalise_path(path: str) -> str:
    """Relative POSIX path: drop `file://`, leading slashes and `.` segments; refuse `..`."""
    if path.startswith("file://"):
        path = urlparse(path).path
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TargetError(f"refusing source path outside the function: {path!r}")
    return "/".join(parts)


def _match_file(url_or_path: str, files: Mapping[str, bytes]) -> str | None:
    """The file key an entrypoint/import-map URL points at (longest suffix match, as the CLI)."""
    wanted = _normalise_path(url_or_path)
    if wanted in files:
        return wanted
    candidates = [k for k in files if wanted.endswith("/" + k) or k.endswith("/" + wanted)]
    return max(candidates, key=len) if candidates else None


def _function_source(
    slug: str, meta: EdgeFunction, files: dict[str, bytes], response: httpx.Response
) -> FunctionSource:
    entry = _match_file(meta.entrypoint_path or "index.ts", files)
    if entry is None:
        raise TargetError(
            f"the downloaded source of function {slug} has no entrypoint "
            f"{meta.entrypoint_path} (request id {request_id(response)})"
        )
    import_map = _match_file(meta.import_map_path, files) if meta.import_map_path else None
    return FunctionSource(
        slug=slug,
        entrypoint_path=entry,
        verify_jwt=True if meta.verify_jwt is None else meta.verify_jwt,
        version=meta.version,
        import_map_path=import_map,
        files=dict(sorted(files.items())),
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_stats(
    slug: str, since: datetime, until: datetime, response: httpx.Response
) -> FunctionStats:
    payload = response.json()
    if not isinstance(payload, dict):
        raise TargetError(
            "the logs endpoint answered with an unexpected shape "
            f"(request id {request_id(response)})"
        )
    error = payload.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise TargetError(
            f"logs query for function {slug} failed: {str(message)[:300]} "
            f"(request id {request_id(response)})"
        )
    rows = payload.get("result") or []
    row = rows[0] if rows and isinstance(rows[0], dict) else {}
    return FunctionStats(
        slug=slug,
        since=since,
        until=until,
        requests=int(row.get("requests") or 0),
        server_errors=int(row.get("server_errors") or 0),
        client_errors=int(row.get("client_errors") or 0),
    )
