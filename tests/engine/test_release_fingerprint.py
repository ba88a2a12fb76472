"""The release fingerprint: what a plan ships (migrations, rollbacks, function bundles), not
where or how — so staging's rehearsal can vouch for production while the code is the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rollout.engine.plan import Plan, load_plan
from tests.engine.conftest import ROOT

SUPABASE_ENV = {
    "SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst", "DATABASE_URL": "postgresql://db/postgres",
    "SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co", "SUPABASE_ACCESS_TOKEN": "t",
    "SUPABASE_ANON_KEY": "a", "SUPABASE_SERVICE_ROLE_KEY": "s", "SUPABASE_JWT_SECRET": "j",
}


def load(path: Path) -> Plan:
    return load_plan(path, SUPABASE_ENV)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of what the plans ship (and the plans), made the project by ROLLOUT_PROJECT_DIR."""
    copy = tmp_path / "project"
    for folder in ("migrations", "functions", "plans"):
        shutil.copytree(ROOT / folder, copy / folder)
    for name in ("deno.json", "deno.lock"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, copy / name)
    monkeypatch.setenv("ROLLOUT_PROJECT_DIR", str(copy))
    return copy


def test_staging_and_production_ship_the_same_release() -> None:
    staging, production = (load(ROOT / "plans" / f"{env}.yaml")
                           for env in ("staging", "production"))
    assert staging.checksum != production.checksum  # different plans: gates, flags, env
    assert staging.release_fingerprint is not None
    assert len(staging.release_fingerprint) == 64
    assert staging.release_fingerprint == production.release_fingerprint

    shipped = {p.relative_to(ROOT).as_posix() for planned in production.steps
               for p in planned.step.shipped_files(ROOT)}
    assert {"migrations/production_messaging_system.sql",
            "migrations/rollback_production_messaging.sql",
            "functions/send-broadcast/index.ts", "functions/reset-broadcast-quotas/index.ts",
            } <= shipped
    assert any(p.startswith("functions/_shared/") for p in shipped)
    assert not any(p.startswith("plans/") for p in shipped)


def test_the_fingerprint_follows_the_shipped_files_only(project: Path) -> None:
    real = load(ROOT / "plans" / "production.yaml").release_fingerprint
    production = project / "plans" / "production.yaml"
    assert load(production).root == project
    assert load(production).release_fingerprint == real  # paths are project-relative

    # Another target, environment, gates: another checksum, the same release.
    text = production.read_text()
    edited = text.replace("environment: production", "environment: elsewhere") \
        + "\n# the gates were retuned\n"
    production.write_text(edited)
    assert load(production).release_fingerprint == real

    # The migration changes: another release.
    migration = project / "migrations" / "production_messaging_system.sql"
    original = migration.read_bytes()
    migration.write_bytes(original + b"\n-- one more comment\n")
    changed = load(production).release_fingerprint
    assert changed not in (None, real)
    migration.write_bytes(original)
    assert load(production).release_fingerprint == real

    # So does its rollback, a function's code, or the shared code every function bundles.
    for relative in ("migrations/rollback_production_messaging.sql",
                     "functions/send-broadcast/index.ts", "functions/_shared/cors.ts"):
        path = project / relative
        before = path.read_bytes()
        path.write_bytes(before + b"\n")
        assert load(production).release_fingerprint != real, relative
        path.write_bytes(before)

    # A file added to a shipped function's folder is part of its bundle.
    extra = project / "functions" / "send-broadcast" / "extra.ts"
    extra.write_text("export const x = 1;\n")
    assert load(production).release_fingerprint != real


def test_a_disabled_step_ships_nothing_and_a_plan_shipping_nothing_has_no_fingerprint(
        tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("""
name: t
environment: local
target: {kind: local}
steps:
  - id: migrate
    kind: db.migrate
    when: ${RUN_MIGRATION:-true}
    with:
      file: migrations/production_messaging_system.sql
      rollback_file: migrations/rollback_production_messaging.sql
  - id: flag
    kind: flags.set
    with: {flag: messaging_v2_enabled, percentage: 0}
""")
    enabled = load_plan(plan, {}).release_fingerprint
    assert enabled is not None
    assert load_plan(plan, {"RUN_MIGRATION": "false"}).release_fingerprint is None
