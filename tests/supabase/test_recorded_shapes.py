"""The fake Management API answers like the recorded real one.

`recorded/management_api.json` holds a few real responses recorded by supabase/cli
(`apps/cli-e2e/fixtures/recorded/`, commit named in the file) and the OpenAPI `FunctionResponse`
schema. Each recorded request is replayed against the fake (after seeding what the recording's
project held); status, header names (minus those the recorder strips), rate-limit header
values and body shape must agree, so the fake cannot drift from the platform unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.supabase.conftest import BASE_URL, REF, TOKEN, FakeSupabase

RECORDED = json.loads((Path(__file__).parent / "recorded" / "management_api.json").read_text())
STRIPPED = set(RECORDED["stripped_headers"])


def shape(value: Any) -> Any:
    """A body's structure: types, keys and element shapes; values left out."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def replay(fake: FakeSupabase, recorded: dict[str, Any]) -> httpx.Response:
    path = recorded["path"].replace("__PROJECT_REF__", REF)
    body = recorded["body"]
    request = httpx.Request(
        recorded["method"],
        f"{BASE_URL}{path}",
        headers={"authorization": f"Bearer {TOKEN}"},
        content=None if body is None else json.dumps(body).encode(),
    )
    return fake.handle(request)


@pytest.mark.parametrize("sample", RECORDED["samples"], ids=lambda s: s["source"].split("/")[-2])
def test_fake_answers_like_the_recording(sample: dict[str, Any]) -> None:
    fake = FakeSupabase()
    if "functions_hello_world" in sample["source"]:
        fake.seed("hello-world", {"index.ts": b"Deno.serve(() => new Response());"}, "index.ts")
    if sample["request"]["method"] == "DELETE" and sample["source"].endswith("secrets/default"):
        fake.secrets["FOO"] = "bar"
    response = replay(fake, sample["request"])
    real = sample["response"]
    assert response.status_code == real["status"]
    ours = {k.lower(): v for k, v in response.headers.items() if k.lower() not in STRIPPED}
    assert set(ours) == {k.lower() for k in real["headers"]}
    assert "x-request-id" not in response.headers and "sb-request-id" not in response.headers
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert ours[name].isdigit()
    assert ours["x-ratelimit-limit"] == real["headers"]["x-ratelimit-limit"]
    assert ours.get("content-type") == real["headers"].get("content-type")
    if real["body"] is None:
        assert response.content == b""
    else:
        assert shape(response.json()) == shape(real["body"])


def test_function_records_follow_the_published_schema() -> None:
    schema = RECORDED["FunctionResponse"]
    fake = FakeSupabase()
    fake.seed("hello-world", {"index.ts": b"Deno.serve(() => new Response());"}, "index.ts")
    (record,) = replay(fake, {"method": "GET", "path": f"/v1/projects/{REF}/functions",
                              "body": None}).json()
    assert set(schema["required"]) <= set(record) <= set(schema["properties"])
    types = {"string": str, "integer": int, "boolean": bool}
    for key, value in record.items():
        assert isinstance(value, types[schema["properties"][key]["type"]]), key
    assert record["status"] in schema["properties"]["status"]["enum"]
    assert len(record["ezbr_sha256"]) == 64


def test_the_fake_refuses_platform_reserved_secret_names() -> None:
    fake = FakeSupabase()
    response = replay(fake, {"method": "POST", "path": f"/v1/projects/{REF}/secrets",
                             "body": [{"name": "SUPABASE_JWKS", "value": "{}"}]})
    assert response.status_code == 400 and fake.secrets == {}
