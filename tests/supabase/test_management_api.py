"""Contract tests: `ManagementAPI`, `deploy_all`/`rollback` and `sync_secrets` against a fake
Supabase Management API that follows the published request/response shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
import respx

from rollout.adapters.function_bundle import FunctionBundle
from rollout.adapters.supabase_api import ManagementAPI, secret_digest
from rollout.adapters.supabase_deploy import (
    DeployError,
    DeployRecord,
    deploy_all,
    rollback,
    snapshot,
)
from rollout.adapters.supabase_secrets import plan_secrets, sync_secrets
from rollout.errors import TargetError, UsageError
from tests.supabase.conftest import BASE_URL, REF, TOKEN, FakeSupabase, parse_deploy_form

ENTRY = b'import { h } from "../_shared/http.ts";\nDeno.serve(h);\n'
OLD_FILES = {
    "functions/send-broadcast/index.ts": ENTRY,
    "functions/_shared/http.ts": b"export const h = () => new Response('v-old');\n",
    "deno.json": b'{"imports": {}}\n',
}
NEW_FILES = {
    "functions/send-broadcast/index.ts": ENTRY,
    "functions/_shared/http.ts": b"export const h = () => new Response('v-new');\n",
    "deno.json": b'{"imports": {}}\n',
}
QUOTA_FILES = {
    "functions/reset-broadcast-quotas/index.ts": b"Deno.serve(() => new Response('ok'));\n",
    "deno.json": b'{"imports": {}}\n',
}


def bundle(slug: str, files: dict[str, bytes], verify_jwt: bool = True) -> FunctionBundle:
    return FunctionBundle(
        slug=slug,
        entrypoint_path=f"functions/{slug}/index.ts",
        verify_jwt=verify_jwt,
        import_map_path="deno.json",
        files=files,
    )


def assert_common_headers(request: httpx.Request) -> None:
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.url.host == "api.supabase.com"


# -- functions: requests as published ------------------------------------------------------


def test_list_functions_follows_function_response(fake: FakeSupabase) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    functions = fake.api().list_functions()
    (request,) = fake.requests
    assert request.method == "GET"
    assert request.url.path == f"/v1/projects/{REF}/functions"
    assert_common_headers(request)
    (fn,) = functions
    assert (fn.slug, fn.version, fn.status, fn.verify_jwt, fn.is_active) == (
        "send-broadcast",
        3,
        "ACTIVE",
        True,
        True,
    )
    assert fn.entrypoint_path and fn.entrypoint_path.startswith("file:///tmp/user_fn_")
    assert isinstance(fn.created_at, int)


def test_get_function_returns_none_on_404(fake: FakeSupabase) -> None:
    assert fake.api().get_function("missing-fn") is None
    assert fake.requests[0].url.path == f"/v1/projects/{REF}/functions/missing-fn"


def test_deploy_sends_metadata_and_file_parts(fake: FakeSupabase) -> None:
    result = fake.api().deploy_function(
        "send-broadcast",
        NEW_FILES,
        "functions/send-broadcast/index.ts",
        verify_jwt=False,
        import_map_path="deno.json",
    )
    (request,) = fake.calls("POST", "functions/deploy")
    assert request.method == "POST"
    assert request.url.path == f"/v1/projects/{REF}/functions/deploy"
    assert dict(request.url.params) == {"slug": "send-broadcast"}
    assert_common_headers(request)
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    metadata, files = parse_deploy_form(request)
    assert metadata == {
        "entrypoint_path": "functions/send-broadcast/index.ts",
        "import_map_path": "deno.json",
        "name": "send-broadcast",
        "verify_jwt": False,
    }
    assert files == NEW_FILES
    # The metadata field comes first, then one `file` part per file named by its path.
    body = request.content
    assert body.index(b'name="metadata"') < body.index(b'name="file"')
    assert b'name="file"; filename="functions/_shared/http.ts"' in body
    assert (result.slug, result.version, result.status) == ("send-broadcast", 1, "ACTIVE")


def test_deploy_bundle_only_sets_query_and_does_not_go_live(fake: FakeSupabase) -> None:
    staged = fake.api().deploy_function(
        "send-broadcast", NEW_FILES, "functions/send-broadcast/index.ts", True, bundle_only=True
    )
    assert dict(fake.requests[0].url.params) == {"slug": "send-broadcast", "bundleOnly": "true"}
    assert staged.version == 1
    assert fake.functions == {}


def test_deploy_refuses_entrypoint_outside_files(fake: FakeSupabase) -> None:
    with pytest.raises(UsageError, match="entrypoint"):
        fake.api().deploy_function("send-broadcast", NEW_FILES, "functions/x/index.ts", True)
    assert fake.requests == []


def test_download_asks_for_multipart_and_maps_entrypoint(fake: FakeSupabase) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    source = fake.api().download_function("send-broadcast")
    assert source is not None
    body_request = fake.requests[-1]
    assert body_request.url.path == f"/v1/projects/{REF}/functions/send-broadcast/body"
    assert body_request.headers["accept"] == "multipart/form-data"
    assert dict(source.files) == OLD_FILES
    assert source.entrypoint_path == "functions/send-broadcast/index.ts"
    assert source.import_map_path == "deno.json"
    assert (source.version, source.verify_jwt) == (3, True)


def test_download_of_missing_function_is_none(fake: FakeSupabase) -> None:
    assert fake.api().download_function("nope") is None


def test_download_refuses_an_eszip_body(fake: FakeSupabase) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts")
    fake.body_as_eszip = True
    with pytest.raises(TargetError, match=r"not multipart.*request id 8f"):
        fake.api().download_function("send-broadcast")


def test_delete_function_and_404_is_false(fake: FakeSupabase) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts")
    api = fake.api()
    assert api.delete_function("send-broadcast") is True
    assert api.delete_function("send-broadcast") is False
    assert [r.method for r in fake.requests] == ["DELETE", "DELETE"]
    assert fake.requests[0].url.path == f"/v1/projects/{REF}/functions/send-broadcast"


def test_activate_sends_bulk_update_body(fake: FakeSupabase) -> None:
    api = fake.api()
    staged = api.deploy_function(
        "send-broadcast", NEW_FILES, "functions/send-broadcast/index.ts", True, bundle_only=True
    )
    live = api.activate_functions([staged])
    put = fake.calls("PUT", "functions")[0]
    assert put.headers["content-type"] == "application/json"
    (item,) = json.loads(put.content)
    assert {"id", "slug", "name", "status", "version", "entrypoint_path"} <= set(item)
    assert item["slug"] == "send-broadcast" and item["version"] == 1
    assert None not in item.values()
    assert [f.slug for f in live] == ["send-broadcast"]


def test_delete_contract_with_respx() -> None:
    with respx.mock(base_url=BASE_URL, assert_all_called=True) as router:
        route = router.delete(f"/v1/projects/{REF}/functions/send-broadcast").respond(200)
        with ManagementAPI(REF, TOKEN, base_url=BASE_URL, sleep=lambda _: None) as api:
            assert api.delete_function("send-broadcast") is True
        assert route.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"


# -- deploy_all and rollback ---------------------------------------------------------------


def test_deploy_all_uploads_all_then_activates_together(fake: FakeSupabase, tmp_path: Path) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    record = deploy_all(
        fake.api(),
        [bundle("send-broadcast", NEW_FILES), bundle("reset-broadcast-quotas", QUOTA_FILES)],
        tmp_path / "previous",
    )
    order = [(r.method, r.url.path.rsplit("/", 1)[-1]) for r in fake.requests]
    deploys = [i for i, (m, p) in enumerate(order) if (m, p) == ("POST", "deploy")]
    (put,) = [i for i, (m, _) in enumerate(order) if m == "PUT"]
    assert len(deploys) == 2 and max(deploys) < put
    assert all(r.url.params["bundleOnly"] == "true" for r in fake.calls("POST", "functions/deploy"))
    live = {f.slug: f for f in fake.api().list_functions()}
    assert live["send-broadcast"].version == 4 and live["send-broadcast"].is_active
    assert live["reset-broadcast-quotas"].version == 1
    assert fake.functions["send-broadcast"].files == NEW_FILES
    assert {d.slug: d.version for d in record.deployed} == {
        "send-broadcast": 4,
        "reset-broadcast-quotas": 1,
    }
    kept = tmp_path / "previous" / "send-broadcast" / "functions/_shared/http.ts"
    assert kept.read_bytes() == OLD_FILES["functions/_shared/http.ts"]


def test_record_is_json_and_free_of_secrets(fake: FakeSupabase, tmp_path: Path) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    fake.secrets["SMTP_PASSWORD"] = "hunter2-very-secret"
    record = deploy_all(fake.api(), [bundle("send-broadcast", NEW_FILES)], tmp_path)
    text = json.dumps(record.to_dict())
    assert TOKEN not in text and "hunter2" not in text and "v-old" not in text
    again = DeployRecord.from_dict(json.loads(text))
    assert again == record
    (prev,) = again.previous
    assert prev.existed and prev.version == 3 and set(prev.files) == set(OLD_FILES)


def test_rollback_redeploys_previous_and_deletes_new(fake: FakeSupabase, tmp_path: Path) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    api = fake.api()
    record = deploy_all(
        api,
        [bundle("send-broadcast", NEW_FILES), bundle("reset-broadcast-quotas", QUOTA_FILES)],
        tmp_path,
    )
    journal = json.loads(json.dumps(record.to_dict()))
    report = rollback(api, DeployRecord.from_dict(journal))
    assert report.restored == ("send-broadcast",)
    assert report.deleted == ("reset-broadcast-quotas",)
    assert set(fake.functions) == {"send-broadcast"}
    restored = fake.functions["send-broadcast"]
    assert restored.files == OLD_FILES
    assert restored.version == 5 and restored.status == "ACTIVE"
    assert restored.entrypoint == "functions/send-broadcast/index.ts"
    assert fake.calls("DELETE", "functions/reset-broadcast-quotas")
    # A second (resumed) rollback finds everything back and changes nothing.
    before = len(fake.requests)
    again = rollback(api, DeployRecord.from_dict(journal))
    assert (again.restored, again.deleted) == ((), ())
    assert set(again.unchanged) == {"send-broadcast", "reset-broadcast-quotas"}
    assert {r.method for r in fake.requests[before:]} == {"GET"}


def test_rollback_refuses_a_modified_kept_source(fake: FakeSupabase, tmp_path: Path) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    api = fake.api()
    record = deploy_all(api, [bundle("send-broadcast", NEW_FILES)], tmp_path)
    (tmp_path / "send-broadcast" / "functions/_shared/http.ts").write_text("tampered")
    with pytest.raises(TargetError, match=r"send-broadcast.*was modified"):
        rollback(api, record)
    assert fake.functions["send-broadcast"].files == NEW_FILES


def test_bulk_deploy_bumps_versions_and_is_verified_by_bundle_hash(
    fake: FakeSupabase, tmp_path: Path
) -> None:
    # The bulk update keeps the version it is sent (the spec: "manually bump the version").
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    fake.seed("reset-broadcast-quotas", QUOTA_FILES, "functions/reset-broadcast-quotas/index.ts")
    old_hash = fake.functions["send-broadcast"].ezbr_sha256
    record = deploy_all(
        fake.api(),
        [bundle("send-broadcast", NEW_FILES), bundle("reset-broadcast-quotas", QUOTA_FILES)],
        tmp_path,
    )
    (item, _) = json.loads(fake.calls("PUT", "functions")[0].content)
    assert item["slug"] == "send-broadcast" and item["version"] == 4
    live = fake.functions["send-broadcast"]
    deployed = {d.slug: d for d in record.deployed}
    assert deployed["send-broadcast"].ezbr_sha256 == live.ezbr_sha256 != old_hash
    assert {p.slug: p.ezbr_sha256 for p in record.previous}["send-broadcast"] == old_hash


def test_deploy_fails_when_the_activation_leaves_the_old_bundle_live(
    fake: FakeSupabase, tmp_path: Path
) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    fake.seed("reset-broadcast-quotas", QUOTA_FILES, "functions/reset-broadcast-quotas/index.ts")
    fake.ignore_activation = True  # answers 200 with the new records, changes nothing
    with pytest.raises(DeployError, match=r"send-broadcast serves bundle \w+ after deploy") as info:
        deploy_all(
            fake.api(),
            [bundle("send-broadcast", NEW_FILES), bundle("reset-broadcast-quotas", QUOTA_FILES)],
            tmp_path,
        )
    assert {p.slug for p in info.value.record.previous} == {
        "send-broadcast",
        "reset-broadcast-quotas",
    }
    assert info.value.exit_code == 1


def test_rollback_that_leaves_the_new_bundle_live_fails(fake: FakeSupabase, tmp_path: Path) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    fake.seed("reset-broadcast-quotas", QUOTA_FILES, "functions/reset-broadcast-quotas/index.ts")
    api = fake.api()
    new = {**QUOTA_FILES, "functions/reset-broadcast-quotas/index.ts": b"// v-new\n"}
    record = deploy_all(
        api, [bundle("send-broadcast", NEW_FILES), bundle("reset-broadcast-quotas", new)], tmp_path
    )
    fake.ignore_activation = True
    with pytest.raises(
        TargetError, match=r"rollback incomplete.*the release's bundle is still live"
    ):
        rollback(api, record)
    assert fake.functions["send-broadcast"].files == NEW_FILES
    fake.ignore_activation = False
    report = rollback(api, record)  # once the platform switches, the same record succeeds
    assert set(report.restored) == {"send-broadcast", "reset-broadcast-quotas"}
    assert fake.functions["send-broadcast"].files == OLD_FILES


def test_rollback_is_verified_by_hash_not_version(fake: FakeSupabase, tmp_path: Path) -> None:
    # Same version number, different code: only the bundle hash tells them apart.
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    api = fake.api()
    record = deploy_all(api, [bundle("send-broadcast", NEW_FILES)], tmp_path)
    fake.functions["send-broadcast"].version = 3
    report = rollback(api, record)
    assert report.restored == ("send-broadcast",)
    assert fake.functions["send-broadcast"].files == OLD_FILES


def test_deploy_error_carries_record_when_upload_fails(fake: FakeSupabase, tmp_path: Path) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    fake.faults.append(
        lambda r: (
            httpx.Response(400, json={"message": "Failed to bundle"})
            if r.url.path.endswith("/deploy")
            else None
        )
    )
    with pytest.raises(DeployError, match=r"HTTP 400: Failed to bundle \(request id 8f") as info:
        deploy_all(fake.api(), [bundle("send-broadcast", NEW_FILES)], tmp_path)
    assert info.value.record.previous[0].version == 3
    rollback(fake.api(), info.value.record)  # nothing changed: a no-op
    assert fake.functions["send-broadcast"].version == 3


# -- secrets -------------------------------------------------------------------------------


def test_secrets_list_set_unset_contract(fake: FakeSupabase) -> None:
    api = fake.api()
    api.set_secrets({"SMTP_PASSWORD": "s3cret", "WEBHOOK_URL": "https://hooks.example/x"})
    post = fake.calls("POST", "secrets")[0]
    assert post.headers["content-type"] == "application/json"
    assert json.loads(post.content) == [
        {"name": "SMTP_PASSWORD", "value": "s3cret"},
        {"name": "WEBHOOK_URL", "value": "https://hooks.example/x"},
    ]
    assert api.list_secrets() == {
        "SMTP_PASSWORD": secret_digest("s3cret"),
        "WEBHOOK_URL": secret_digest("https://hooks.example/x"),
    }
    api.unset_secrets(["WEBHOOK_URL"])
    delete = fake.calls("DELETE", "secrets")[0]
    assert json.loads(delete.content) == ["WEBHOOK_URL"]
    assert set(fake.secrets) == {"SMTP_PASSWORD"}


@pytest.mark.parametrize("name", ["SUPABASE_URL", "supabase_service_role_key"])
def test_reserved_secret_names_are_refused_before_any_request(
    fake: FakeSupabase, name: str
) -> None:
    with pytest.raises(UsageError, match="reserved SUPABASE_"):
        fake.api().set_secrets({name: "x"})
    with pytest.raises(UsageError, match="reserved SUPABASE_"):
        sync_secrets(fake.api(), {name: "x"})
    assert fake.requests == []


def test_sync_secrets_writes_only_changes_and_names_only(fake: FakeSupabase) -> None:
    fake.secrets.update({"KEEP": "same", "ROTATE": "old-value", "DROP": "bye"})
    change = sync_secrets(
        fake.api(), {"KEEP": "same", "ROTATE": "new-value", "ADD": "fresh"}, unset=["DROP", "GONE"]
    )
    assert change.created == ("ADD",)
    assert change.updated == ("ROTATE",)
    assert change.unchanged == ("KEEP",)
    assert change.removed == ("DROP",)
    (post,) = fake.calls("POST", "secrets")
    assert {i["name"] for i in json.loads(post.content)} == {"ADD", "ROTATE"}
    assert fake.secrets == {"KEEP": "same", "ROTATE": "new-value", "ADD": "fresh"}
    shown = repr(change) + json.dumps(change.to_dict())
    assert "new-value" not in shown and "fresh" not in shown
    assert not plan_secrets(fake.api(), {"KEEP": "same"}).changed


def test_secret_values_are_scrubbed_from_errors(fake: FakeSupabase) -> None:
    fake.faults.append(
        lambda r: (
            httpx.Response(400, json={"message": "invalid value s3cret-xyz"})
            if r.method == "POST"
            else None
        )
    )
    with pytest.raises(TargetError) as info:
        fake.api().set_secrets({"SMTP_PASSWORD": "s3cret-xyz"})
    assert "s3cret-xyz" not in str(info.value)
    assert "SMTP_PASSWORD" in str(info.value)


# -- retries, auth errors, no token leaks --------------------------------------------------


def test_retries_503_then_succeeds(fake: FakeSupabase) -> None:
    for _ in range(2):
        fake.faults.append(lambda r: httpx.Response(503, text="upstream unavailable"))
    sleeps: list[float] = []
    assert fake.api(sleeps).list_functions() == []
    assert len(fake.calls("GET", "functions")) == 3
    assert len(sleeps) == 2 and all(0 < s <= 8 for s in sleeps)


def test_429_honours_retry_after_seconds_and_date(fake: FakeSupabase) -> None:
    fake.faults.append(lambda r: httpx.Response(429, headers={"retry-after": "7"}))
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    fake.faults.append(lambda r: httpx.Response(429, headers={"retry-after": later}))
    sleeps: list[float] = []
    assert fake.api(sleeps).list_secrets() == {}
    assert sleeps[0] == 7.0
    assert 25 <= sleeps[1] <= 30
    assert len(fake.requests) == 3


def test_gives_up_after_max_attempts_with_request_id(fake: FakeSupabase) -> None:
    fake.faults.extend(lambda r: httpx.Response(502, text="bad gateway") for _ in range(5))
    sleeps: list[float] = []
    with pytest.raises(TargetError, match=r"HTTP 502 after 5 attempts.*\(request id 8f0+5-AMS\)"):
        fake.api(sleeps).list_functions()
    assert len(fake.requests) == 5 and len(sleeps) == 4


def test_transport_errors_are_retried(fake: FakeSupabase) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake.faults.append(refuse)
    assert fake.api().list_functions() == []
    assert len(fake.requests) == 2


def test_transport_errors_exhausted_give_target_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    api = ManagementAPI(
        REF, TOKEN, transport=httpx.MockTransport(refuse), sleep=lambda _: None, max_attempts=3
    )
    with pytest.raises(TargetError, match=r"unreachable \(list functions\) after 3 attempts"):
        api.list_functions()


# -- writes are not retried blindly; rate limits are waited out ---------------------------------


def applied_then(fake: FakeSupabase, method: str, status: int | None) -> None:
    """A fault: the platform applies the next `method` write, then answers `status` (None: the
    connection drops before the answer arrives)."""
    prefix = f"/v1/projects/{REF}/"

    def fault(request: httpx.Request) -> httpx.Response | None:
        if request.method != method:
            return None
        fake._route(request, request.url.path[len(prefix) :])
        if status is None:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(status, text="upstream error")

    fake.faults.append(fault)


def failed_before_applying(fake: FakeSupabase, method: str) -> None:
    fake.faults.append(lambda r: httpx.Response(502) if r.method == method else None)


@pytest.mark.parametrize("status", [502, None])
def test_deploy_answered_5xx_or_timeout_after_applying_is_not_sent_again(
    fake: FakeSupabase, status: int | None
) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    applied_then(fake, "POST", status)
    result = fake.api().deploy_function(
        "send-broadcast", NEW_FILES, "functions/send-broadcast/index.ts", True
    )
    assert len(fake.calls("POST", "functions/deploy")) == 1  # read back, not re-sent
    assert result.version == 4 == fake.functions["send-broadcast"].version
    assert fake.functions["send-broadcast"].files == NEW_FILES


def test_deploy_that_did_not_apply_is_sent_once_more(fake: FakeSupabase) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    failed_before_applying(fake, "POST")
    result = fake.api().deploy_function(
        "send-broadcast", NEW_FILES, "functions/send-broadcast/index.ts", True
    )
    assert len(fake.calls("POST", "functions/deploy")) == 2
    assert result.version == 4  # one new version, not two


def test_write_that_keeps_failing_is_not_sent_a_third_time(fake: FakeSupabase) -> None:
    failed_before_applying(fake, "POST")
    failed_before_applying(fake, "POST")
    failed_before_applying(fake, "POST")
    with pytest.raises(TargetError, match=r"HTTP 502.*read back after 2 attempts: not applied"):
        fake.api().set_secrets({"SMTP_PASSWORD": "hunter2-very-secret"})
    assert len(fake.calls("POST", "secrets")) == 2
    assert len(fake.calls("GET", "secrets")) == 2


def test_bulk_update_and_secret_writes_read_back_after_5xx(fake: FakeSupabase) -> None:
    api = fake.api()
    applied_then(fake, "POST", 500)
    api.set_secrets({"SMTP_PASSWORD": "hunter2-very-secret"})
    assert len(fake.calls("POST", "secrets")) == 1 and "SMTP_PASSWORD" in fake.secrets
    staged = [
        api.deploy_function(slug, files, f"functions/{slug}/index.ts", True, bundle_only=True)
        for slug, files in (("send-broadcast", NEW_FILES), ("reset-broadcast-quotas", QUOTA_FILES))
    ]
    applied_then(fake, "PUT", 503)
    live = api.activate_functions(staged)
    assert len(fake.calls("PUT", "functions")) == 1
    assert (
        {f.slug for f in live}
        == set(fake.functions)
        == {"send-broadcast", "reset-broadcast-quotas"}
    )
    applied_then(fake, "DELETE", None)
    assert api.delete_function("send-broadcast") is True
    assert len(fake.calls("DELETE", "functions/send-broadcast")) == 1


def test_429_waits_for_the_rate_limit_window_to_reset(fake: FakeSupabase) -> None:
    sleeps: list[float] = []
    api = fake.api(sleeps)
    fake.clock = 45.0  # 15 s left in this minute
    for _ in range(121):  # the 121st request of the minute is refused …
        api.list_secrets()
    assert sleeps == [15.0]  # … and waited out with x-ratelimit-reset, then answered
    assert len(fake.calls("GET", "secrets")) == 122


def test_429_beyond_the_bound_fails_without_waiting(fake: FakeSupabase) -> None:
    fake.faults.append(lambda r: httpx.Response(429, headers={"x-ratelimit-reset": "55"}))
    sleeps: list[float] = []
    with pytest.raises(TargetError, match=r"rate limit \(HTTP 429\).*55s more.*bound of 30s"):
        fake.api(sleeps, max_rate_limit_wait=30).list_functions()
    assert sleeps == [] and len(fake.requests) == 1


def test_401_says_token_invalid_with_request_id_and_no_token(fake: FakeSupabase) -> None:
    fake.token = "sbp_other_token_the_server_expects_000000000"
    api = ManagementAPI(REF, TOKEN, base_url=BASE_URL, transport=fake.transport)
    with pytest.raises(TargetError) as info:
        api.list_functions()
    message = str(info.value)
    assert message.startswith("Supabase access token invalid or expired (HTTP 401)")
    assert "request id 8f00000000000001-AMS" in message
    assert len(fake.requests) == 1  # a 401 is not retried
    for text in (message, str(info.value.hint), repr(api), repr(info.value)):
        assert TOKEN not in text


def test_token_echoed_by_server_is_scrubbed(fake: FakeSupabase) -> None:
    fake.faults.append(lambda r: httpx.Response(400, json={"message": f"bad token {TOKEN}"}))
    with pytest.raises(TargetError) as info:
        fake.api().list_functions()
    assert TOKEN not in str(info.value) and "***" in str(info.value)


def test_request_id_falls_back_to_sb_request_id_and_cf_ray() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, headers={"cf-ray": "8f1c2d-AMS"}, json={"message": "nope"})

    api = ManagementAPI(REF, TOKEN, transport=httpx.MockTransport(answer))
    with pytest.raises(TargetError, match=r"request id 8f1c2d-AMS"):
        api.list_functions()


# -- construction and logs -----------------------------------------------------------------


def test_base_url_from_env_and_bad_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_API_URL", "http://127.0.0.1:54321/")
    api = ManagementAPI.from_env(REF, {"SUPABASE_ACCESS_TOKEN": TOKEN})
    assert api.base_url == "https://api.supabase.com"  # env mapping given explicitly wins
    api = ManagementAPI(REF, TOKEN)
    assert api.base_url == "http://127.0.0.1:54321"
    with pytest.raises(UsageError, match="project ref"):
        ManagementAPI("Not-A-Ref", TOKEN)
    with pytest.raises(UsageError, match="SUPABASE_ACCESS_TOKEN is not set"):
        ManagementAPI.from_env(REF, {})


def test_function_stats_queries_function_edge_logs(fake: FakeSupabase) -> None:
    fake.edge_logs["send-broadcast"] = [200] * 95 + [401] * 2 + [500] * 3
    fake.edge_logs["send-broadcast-v2"] = [500] * 50  # a longer slug must not be counted
    since = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    stats = fake.api().function_stats("send-broadcast", since, since + timedelta(minutes=30))
    assert fake.calls("GET", "analytics/endpoints/logs.all") == []  # removed 2026-09-23
    logs = fake.calls("GET", "analytics/endpoints/logs")[0]
    assert logs.url.params["iso_timestamp_start"] == "2026-01-01T10:00:00Z"
    assert logs.url.params["iso_timestamp_end"] == "2026-01-01T10:30:00Z"
    sql = logs.url.params["sql"]
    assert "from logs where source_name = 'function_edge_logs'" in sql
    assert "countIf(" in sql and "unnest" not in sql  # ClickHouse, not BigQuery
    assert (stats.requests, stats.server_errors, stats.client_errors) == (100, 3, 2)
    assert stats.error_rate == pytest.approx(0.03)
    with pytest.raises(UsageError, match="24 hours"):
        fake.api().function_stats("send-broadcast", since, since + timedelta(hours=25))


def test_function_stats_reports_query_errors(fake: FakeSupabase) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts")
    fake.faults.append(
        lambda r: (
            httpx.Response(200, json={"error": {"message": "query timed out"}})
            if r.url.path.endswith("/analytics/endpoints/logs")
            else None
        )
    )
    with pytest.raises(TargetError, match="query timed out"):
        fake.api().function_stats("send-broadcast", datetime.now(UTC) - timedelta(minutes=5))


def test_deploy_all_snapshots_slugs_missing_from_a_given_record(
    fake: FakeSupabase, tmp_path: Path
) -> None:
    fake.seed("send-broadcast", OLD_FILES, "functions/send-broadcast/index.ts", version=3)
    api = fake.api()
    record = snapshot(api, [], tmp_path)
    deploy_all(api, [bundle("send-broadcast", NEW_FILES)], tmp_path, record=record)
    assert [(p.slug, p.version) for p in record.previous] == [("send-broadcast", 3)]
    rollback(api, record)
    assert fake.functions["send-broadcast"].files == OLD_FILES


def test_429_without_a_usable_wait_ends_at_the_bound(fake: FakeSupabase) -> None:
    fake.faults.extend(
        (lambda r: httpx.Response(429, headers={"x-ratelimit-reset": "0"})) for _ in range(100)
    )
    sleeps: list[float] = []
    with pytest.raises(TargetError, match="rate limit"):
        fake.api(sleeps, max_rate_limit_wait=5).list_functions()
    assert 0 < len(sleeps) <= 10 and sum(sleeps) <= 5
