"""No secret leaks: the whole local runbook with known secret values, then a scan of everything
the tool wrote — stdout/stderr of every command, every table of the journal, run artifacts and
reports under the state directory, and the stack's logs — for those values. Zero occurrences.

Secrets: a function secret given as `!secret ${MY_SECRET}`, a Slack webhook URL carrying a
password (pointed at a local receiver) for the plan's notifications and a notify step, and
the local stack's own JWT secret, anon and service-role keys. `rollout local env` exists to
print the stack's keys, and the `secrets/` folder and the database files hold them by design:
those are the only places not scanned.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.engine.conftest import Cli
from tests.reliability.conftest import PLAN


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []  # noqa: RUF012 — one receiver per test

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        Receiver.received.append((self.path, self.headers.get("authorization") or "", body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    """A Slack-webhook stand-in on 127.0.0.1 (any port)."""
    Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def secret_plan(folder: Path) -> Path:
    """plans/local.yaml plus plan-level notifications, a secret function value and a notify
    step with its own credential-bearing webhook."""
    text = Path(PLAN).read_text()
    text = text.replace("on_failure: stop\n", "on_failure: stop\nnotifications:\n"
                        "  slack_webhook_url: !secret ${MY_SLACK_WEBHOOK}\n", 1)
    text += """
  - id: my-secrets
    kind: edge.secrets
    with:
      set:
        PARTNER_API_TOKEN: !secret ${MY_SECRET}
  - id: announce-hook
    kind: notify
    with:
      message: release done
      webhook_url: http://release-bot:${MY_WEBHOOK_PASSWORD}@127.0.0.1:${MY_HOOK_PORT}/hook
"""
    path = folder / "secret-plan.yaml"
    path.write_text(text)
    return path


def scan(text: str, values: dict[str, str]) -> list[str]:
    return [name for name, value in values.items() if value in text]


def test_no_secret_appears_in_output_journal_artifacts_or_logs(
        cli: Cli, tmp_path: Path, receiver: int) -> None:
    known = {
        "MY_SECRET": "fn-secret-" + secrets.token_hex(12),
        "MY_WEBHOOK_PASSWORD": "hook-pw-" + secrets.token_hex(12),
    }
    slack = f"http://bot:{secrets.token_hex(10)}@127.0.0.1:{receiver}/slack/T000/B000"
    env = {**known, "MY_SLACK_WEBHOOK": slack, "MY_HOOK_PORT": str(receiver)}
    plan = str(secret_plan(tmp_path))
    leaks: list[str] = []

    def run(*args: str) -> None:
        result = cli.run(*args, timeout=300, **env)
        where = f"`rollout {' '.join(a if a != plan else 'PLAN' for a in args)}`"
        # (signoff exits 1 while people still have items to confirm)
        allowed = (0, 1) if args[0] == "signoff" else (0,)
        assert result.returncode in allowed, f"{where}: {result.stdout}\n{result.stderr}"
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            leaks.extend(f"{name} in {where} {stream}" for name in scan(text, values))

    values = {**known, "slack webhook URL": slack,
              "slack webhook password": slack.split(":")[2].split("@")[0]}
    run("apply", plan)
    stack = cli.stack
    assert stack.function_secrets()["PARTNER_API_TOKEN"] == known["MY_SECRET"]
    # Control: the value is on disk where it belongs, so a byte scan does find it there.
    assert known["MY_SECRET"].encode() in (stack.secrets_dir / "function_secrets.json").read_bytes()
    values |= {"jwt_secret": stack.secret("jwt_secret"), "anon_key": stack.secret("anon_key"),
               "service_role_key": stack.secret("service_role_key"),
               "secret API key": stack.secret("secret_key"),
               "signing key": stack.secret("signing_key")}
    # The local stack's own keys exist before the first command that could print them.
    for args in (("apply", plan), ("apply", plan, "--json"), ("plan", plan),
                 ("plan", plan, "--json"), ("status", plan), ("status", plan, "--json"),
                 ("history", plan), ("smoke", plan), ("smoke", plan, "--json"),
                 ("cron", "status", plan), ("signoff", plan), ("local", "status"),
                 ("local", "status", "--json"), ("rollback", plan), ("rollback", plan, "--json"),
                 ("apply", plan, "--json"), ("rollback", plan)):
        run(*args)
    # The webhooks really were called (with their credentials, to the receiver only).
    assert any(path == "/hook" for path, _, _ in Receiver.received)
    assert any(path.startswith("/slack/") for path, _, _ in Receiver.received)

    # The journal: every table of schema `rollout`, as text.
    for (table,) in cli.sql("select tablename from pg_tables where schemaname = 'rollout'"):
        rows = cli.sql(f'select t::text from rollout."{table}" t')  # names from the catalog
        text = "\n".join(r[0] for r in rows)
        leaks.extend(f"{name} in journal table rollout.{table}" for name in scan(text, values))

    # Files under the state directory: run artifacts, reports, backups, logs.
    secrets_dir, pgdata = stack.secrets_dir.resolve(), stack.postgres.data_dir.resolve()
    scanned = 0
    for path in sorted(cli.state.rglob("*")):
        resolved = path.resolve()
        if not path.is_file() or resolved.is_relative_to(secrets_dir) \
                or resolved.is_relative_to(pgdata):
            continue
        data = path.read_bytes()
        scanned += 1
        leaks.extend(f"{name} in {path.relative_to(cli.state)}" for name, value in values.items()
                     if value.encode() in data)
    logs = [p.name for p in (cli.state / "local").glob("*.log")]
    assert {"gateway.log", "postgres.log"} <= set(logs) and scanned > 10
    assert any(re.match(r"function-.+\.log", name) for name in logs)
    assert leaks == []
