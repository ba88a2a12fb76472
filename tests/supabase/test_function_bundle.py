"""`collect_bundle`: what of the `functions/` tree is uploaded for one function."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.adapters.function_bundle import collect_bundle
from rollout.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path, "deno.json", '{"imports": {"@shared/": "./functions/_shared/"}}')
    write(
        tmp_path,
        "functions/hello/index.ts",
        'import { cors } from "../_shared/cors.ts";\n'
        'import { db } from "@shared/db.ts";\n'
        'import postgres from "npm:postgres@3";\n'
        "Deno.serve(() => new Response(cors + db));\n",
    )
    write(tmp_path, "functions/hello/util.ts", "export const u = 1;\n")
    write(tmp_path, "functions/hello/index_test.ts", "Deno.test('x', () => {});\n")
    write(tmp_path, "functions/hello/.env", "SECRET=1\n")
    write(tmp_path, "functions/_shared/cors.ts", 'export * from "./headers.ts";\n')
    write(tmp_path, "functions/_shared/headers.ts", "export const cors = 'c';\n")
    write(tmp_path, "functions/_shared/db.ts", "export const db = 'd';\n")
    write(tmp_path, "functions/_shared/unused.ts", "export const no = 0;\n")
    write(tmp_path, "functions/other/index.ts", "Deno.serve(() => new Response());\n")
    return tmp_path


def test_collects_function_shared_imports_and_import_map(tree: Path) -> None:
    bundle = collect_bundle(tree, "hello", verify_jwt=False)
    assert list(bundle.files) == [
        "deno.json",
        "functions/_shared/cors.ts",
        "functions/_shared/db.ts",
        "functions/_shared/headers.ts",
        "functions/hello/index.ts",
        "functions/hello/util.ts",
    ]
    assert bundle.entrypoint_path == "functions/hello/index.ts"
    assert bundle.import_map_path == "deno.json"
    assert bundle.verify_jwt is False
    assert set(bundle.manifest()) == set(bundle.files)


def test_bundle_digest_is_deterministic_and_content_sensitive(tree: Path) -> None:
    first = collect_bundle(tree, "hello").sha256
    assert collect_bundle(tree, "hello").sha256 == first
    write(tree, "functions/_shared/headers.ts", "export const cors = 'changed';\n")
    assert collect_bundle(tree, "hello").sha256 != first


def test_missing_import_and_escape_are_usage_errors(tree: Path) -> None:
    write(tree, "functions/hello/util.ts", 'import "../_shared/nope.ts";\n')
    with pytest.raises(UsageError, match=r"nope\.ts is imported but does not exist"):
        collect_bundle(tree, "hello")
    write(tree, "functions/hello/util.ts", 'import "../../outside.ts";\n')
    with pytest.raises(UsageError, match="outside functions/"):
        collect_bundle(tree, "hello")


def test_missing_entrypoint_and_bad_name(tree: Path) -> None:
    with pytest.raises(UsageError, match="entrypoint"):
        collect_bundle(tree, "absent")
    with pytest.raises(UsageError, match="invalid function name"):
        collect_bundle(tree, "../etc")


@pytest.mark.skipif(not (REPO / "functions/send-broadcast").is_dir(), reason="no functions yet")
def test_repository_functions_bundle_with_shared_code() -> None:
    bundle = collect_bundle(REPO, "send-broadcast")
    assert "functions/send-broadcast/index.ts" in bundle.files
    assert any(p.startswith("functions/_shared/") for p in bundle.files)
    assert not any(p.endswith("_test.ts") for p in bundle.files)


def test_the_lock_beside_the_import_map_ships_with_the_bundle(tree: Path) -> None:
    write(tree, "deno.lock", '{"version": "5"}\n')
    bundle = collect_bundle(tree, "hello")
    assert bundle.files["deno.lock"] == b'{"version": "5"}\n'
    first = bundle.sha256
    write(tree, "deno.lock", '{"version": "5", "npm": {}}\n')
    assert collect_bundle(tree, "hello").sha256 != first


def test_edge_deploy_ships_exactly_what_is_uploaded() -> None:
    from rollout.steps.edge import DeployParams, EdgeDeploy

    params = DeployParams.model_validate(
        {"functions": ["reset-broadcast-quotas",
                       {"name": "send-broadcast", "verify_jwt": False, "health_path": "/health"}]})
    assert [(f.name, f.verify_jwt) for f in params.functions] == [
        ("reset-broadcast-quotas", True), ("send-broadcast", False)]
    shipped = {p.relative_to(REPO).as_posix()
               for p in EdgeDeploy("deploy", params).shipped_files(REPO)}
    uploaded = {path for name in ("send-broadcast", "reset-broadcast-quotas")
                for path in collect_bundle(REPO, name).files}
    assert shipped == uploaded and {"deno.json", "deno.lock"} <= shipped


def test_the_plan_says_whether_the_legacy_jwt_secret_is_shipped() -> None:
    from rollout.engine.plan import load_plan
    from rollout.errors import PlanError

    env = {"SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst", "DATABASE_URL": "postgresql://db/p",
           "SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co",
           "SUPABASE_ACCESS_TOKEN": "t", "SUPABASE_ANON_KEY": "sb_publishable_x",
           "SUPABASE_SERVICE_ROLE_KEY": "", "SUPABASE_JWT_SECRET": "legacy-secret"}
    for legacy, expected in ((None, (True, False)), ("true", (True, False)),
                             ("false", (False, True))):
        extra = {} if legacy is None else {"SUPABASE_LEGACY_JWT": legacy}
        plan = load_plan(REPO / "plans" / "production.yaml", {**env, **extra})
        enabled = {p.spec.id: p.enabled for p in plan.steps}
        assert (enabled["function-secrets"], enabled["no-legacy-jwt-secret"]) == expected
    with pytest.raises(PlanError, match="`when` must be true or false"):
        load_plan(REPO / "plans" / "production.yaml", {**env, "SUPABASE_LEGACY_JWT": "maybe"})
