"""The plans in the repository: valid, and nothing secret printed when they are shown."""

from __future__ import annotations

import json

from tests.engine.conftest import Cli

PRODUCTION_ENV = {
    "SUPABASE_PROJECT_REF": "abcdefghijklmnopqrst",
    "DATABASE_URL": "postgresql://postgres:Pr0dDbPassw0rd@127.0.0.1:9/postgres",
    "SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co",
    "SUPABASE_ACCESS_TOKEN": "sbp_0123456789abcdef0123456789abcdef01234567",
    "SUPABASE_ANON_KEY": "eyJhbGciOiJIUzI1NiJ9.anon-key-for-tests.sig",
    "SUPABASE_SERVICE_ROLE_KEY": "eyJhbGciOiJIUzI1NiJ9.service-role-key-for-tests.sig",
    "SUPABASE_JWT_SECRET": "super-secret-jwt-token-with-at-least-32-characters",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
}
SECRETS = ["Pr0dDbPassw0rd", PRODUCTION_ENV["SUPABASE_ACCESS_TOKEN"],
           PRODUCTION_ENV["SUPABASE_SERVICE_ROLE_KEY"], PRODUCTION_ENV["SUPABASE_JWT_SECRET"],
           PRODUCTION_ENV["SLACK_WEBHOOK_URL"]]


def test_production_plan_prints_every_step_and_no_secret(cli: Cli) -> None:
    for args in (["plan", "plans/production.yaml"], ["plan", "plans/production.yaml", "--json"],
                 ["apply", "plans/production.yaml", "--dry-run"]):
        result = cli.run(*args, **PRODUCTION_ENV)
        # Every step shown, then the truth: the target cannot be read (exit 6, its cause).
        assert result.returncode == 6, result.stderr
        assert "cannot read the supabase target" in result.stderr
        assert "adoption-gate" in result.stdout
        # Nothing claims a state it could not read: every state is `unknown`.
        assert " · pending · " not in result.stdout and '"state": "pending"' not in result.stdout
        for secret in SECRETS:
            assert secret not in result.stdout + result.stderr, (args, secret)
    steps = json.loads(cli.run("plan", "plans/production.yaml", "--json",
                               **PRODUCTION_ENV).stdout)["steps"]
    ids = [s["id"] for s in steps]
    assert ids[:3] == ["backup", "maintenance-on", "migrate"]
    assert {"deploy-functions", "schedule-quota-reset", "flag-off", "adoption-gate",
            "ramp"} <= set(ids)
    assert ids.index("flag-off") < ids.index("adoption-gate") < ids.index("ramp")
    ramp = next(s for s in steps if s["id"] == "ramp")
    assert ramp["kind"] == "flags.ramp" and "5% → 25% → 50% → 100%" in ramp["description"]


def test_production_apply_without_a_terminal_needs_yes(cli: Cli) -> None:
    result = cli.run("apply", "plans/production.yaml", **PRODUCTION_ENV)
    assert result.returncode == 2
    assert "--yes" in result.stderr


def test_production_plan_names_missing_variables(cli: Cli) -> None:
    env = {k: v for k, v in cli.env.items() if not k.startswith("SUPABASE_")}
    cli.env = env
    env.pop("DATABASE_URL", None)
    result = cli.run("plan", "plans/production.yaml")
    assert result.returncode == 2
    # Every missing variable in one go, each with where the plan uses it.
    # (the legacy service-role key and JWT secret are optional: projects on signing keys)
    for name in ("SUPABASE_PROJECT_REF", "DATABASE_URL", "SUPABASE_URL", "SUPABASE_ACCESS_TOKEN",
                 "SUPABASE_ANON_KEY"):
        assert name in result.stderr, (name, result.stderr)
    assert "5 environment variable(s) not set" in result.stderr
    assert "production.yaml:" in result.stderr
    # A target's endpoints and credentials never get a default suggested.
    assert ":-" not in result.stderr


def test_transaction_pooler_is_refused(cli: Cli) -> None:
    env = {**PRODUCTION_ENV, "DATABASE_URL":
           "postgresql://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"}
    result = cli.run("apply", "plans/staging.yaml", **env)
    assert result.returncode == 2
    assert "session-mode pooler" in result.stderr
