"""Run notifications: Slack messages and PagerDuty Events API v2, checked at the HTTP boundary.

A real HTTP server on 127.0.0.1 stands in for Slack and PagerDuty (their request shapes are
asserted); a dead port stands in for an outage, which must never fail a release.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rollout.adapters.local_stack.processes import free_port
from rollout.engine.events import Event, Notice, RunFinished, RunStarted, StepFinished
from rollout.engine.notifications import Notifier, compose, dedup_key
from rollout.engine.plan import Notifications
from tests.engine.conftest import LOCAL_HEADER, Cli, write_plan

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"


@dataclass
class Receiver:
    """Records every POST: (path, JSON body). Answers like Slack (200 `ok`) on /slack and like
    PagerDuty's Events API (202) on /pd."""

    server: ThreadingHTTPServer
    posts: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str) -> list[Any]:
        return [body for p, body in self.posts if p == path]

    def slack_texts(self) -> list[str]:
        return [str(b["text"]) for b in self.bodies("/slack")]


@contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A Slack/PagerDuty stand-in on a free 127.0.0.1 port, for the block."""
    posts: list[tuple[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            posts.append((self.path, json.loads(raw or b"null")))
            if self.path == "/pd":
                self._answer(202, b'{"status":"success","message":"Event processed"}')
            else:
                self._answer(200, b"ok")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Receiver(server, posts)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as running:
        yield running


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def config(url: str) -> Notifications:
    return Notifications(slack_webhook_url=f"{url}/slack", pagerduty_routing_key=ROUTING_KEY,
                         pagerduty_events_url=f"{url}/pd")


def started(run_id: str = "11111111-aaaa", env: str = "staging") -> RunStarted:
    return RunStarted(run_id, "apply", "messaging-v2", env, "local", ["migrate", "deploy"])


def failed_step() -> StepFinished:
    return StepFinished("migrate", "db.migrate", "apply", "failed", 0.5,
                        error="relation public.x does not exist")


def finished(status: str, run_id: str = "11111111-aaaa", code: int = 0) -> RunFinished:
    return RunFinished(run_id, "apply", status, code, 3.0, "" if status == "succeeded" else "boom")


# ---- the sink, in process --------------------------------------------------------------------


def test_failed_run_posts_slack_messages_and_a_pagerduty_trigger(receiver: Receiver) -> None:
    notices: list[Event] = []
    notifier = Notifier(config(receiver.url), emit=notices.append, source="ci-runner")
    for event in (started(), failed_step(), finished("rolled-back", code=1)):
        notifier(event)
    texts = receiver.slack_texts()
    assert len(texts) == 3
    assert "[staging]" in texts[0] and "apply started" in texts[0] and "11111111" in texts[0]
    assert "step migrate (db.migrate) failed: relation public.x does not exist" in texts[1]
    assert "rolled back: boom" in texts[2]
    assert all(set(b) == {"text"} for b in receiver.bodies("/slack"))
    [page] = receiver.bodies("/pd")
    assert page == {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "rollout:staging",
        "payload": {"summary": page["payload"]["summary"], "source": "rollout@ci-runner",
                    "severity": "warning"},
    }
    assert "rolled-back" in page["payload"]["summary"] and "11111111" in page["payload"]["summary"]
    assert notices == []


def test_rollback_failure_pages_critical_and_a_later_success_resolves(receiver: Receiver) -> None:
    notifier = Notifier(config(receiver.url))
    for event in (started("run-1"), finished("rollback-failed", "run-1", 3)):
        notifier(event)
    for event in (started("run-2"), finished("succeeded", "run-2")):
        notifier(event)
    trigger, resolve = receiver.bodies("/pd")
    assert trigger["event_action"] == "trigger" and trigger["payload"]["severity"] == "critical"
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve",
                       "dedup_key": trigger["dedup_key"]}
    assert trigger["dedup_key"] == dedup_key("staging")
    texts = receiver.slack_texts()
    assert any("ROLLBACK FAILED" in t for t in texts)
    assert "completed" in texts[-1]


def test_other_environments_have_their_own_incident(receiver: Receiver) -> None:
    notifier = Notifier(config(receiver.url))
    for env in ("staging", "production"):
        notifier(started(env=env))
        notifier(finished("failed", code=1))
    assert [b["dedup_key"] for b in receiver.bodies("/pd")] == ["rollout:staging",
                                                                "rollout:production"]


def test_dead_receiver_is_a_notice_without_the_secrets() -> None:
    url = dead_url()
    notices: list[Event] = []
    notifier = Notifier(config(url), emit=notices.append)
    for event in (started(), failed_step(), finished("failed", code=1)):
        notifier(event)  # never raises
    messages = [n.message for n in notices if isinstance(n, Notice)]
    assert len(messages) == 4  # three Slack messages and the page
    assert any("PagerDuty trigger notification not delivered" in m for m in messages)
    for message in messages:
        assert url not in message and ROUTING_KEY not in message and "127.0.0.1" not in message


def test_nothing_configured_sends_nothing(receiver: Receiver) -> None:
    notifier = Notifier(Notifications())
    assert not notifier.enabled
    notifier(started())
    notifier(finished("failed", code=1))
    assert receiver.posts == []


def test_compose_feeds_every_sink_in_order() -> None:
    seen: list[str] = []
    sink = compose(lambda e: seen.append("renderer"), lambda e: seen.append("notifier"))
    sink(started())
    assert seen == ["renderer", "notifier"]


# ---- through the CLI, against the local stack -------------------------------------------------

PLAN = LOCAL_HEADER.replace("steps:\n", """notifications:
  slack_webhook_url: !secret ${TEST_SLACK_WEBHOOK}
  pagerduty_routing_key: ${TEST_PAGERDUTY_KEY}
  pagerduty_events_url: ${TEST_PAGERDUTY_URL}
steps:
""") + """
  - id: measure
    kind: gate.analysis
    with: {query: "select ${TEST_VALUE}", success: ">= 1", failure: "< 1", interval: 0.1s,
           timeout: 5s, inconclusive: fail}
"""


def test_cli_run_notifies_and_a_dead_receiver_never_fails_it(cli: Cli,
                                                             receiver: Receiver) -> None:
    plan = str(write_plan(cli.state, PLAN))
    env = {"TEST_SLACK_WEBHOOK": f"{receiver.url}/slack", "TEST_PAGERDUTY_KEY": ROUTING_KEY,
           "TEST_PAGERDUTY_URL": f"{receiver.url}/pd"}

    failing = cli.run("apply", plan, "--json", TEST_VALUE="0", **env)
    assert failing.returncode == 1, failing.stderr
    texts = receiver.slack_texts()
    assert "[local] apply started" in texts[0]
    assert any("step measure (gate.analysis) failed" in t for t in texts)
    assert "apply failed" in texts[-1]
    [trigger] = receiver.bodies("/pd")
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "rollout:local"
    assert set(trigger["payload"]) == {"summary", "source", "severity"}

    passing = cli.run("apply", plan, "--json", TEST_VALUE="1", **env)
    assert passing.returncode == 0, passing.stderr
    resolve = receiver.bodies("/pd")[-1]
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == "rollout:local"
    assert "completed" in receiver.slack_texts()[-1]

    dead = dead_url()
    outage = cli.run("apply", plan, "--json", TEST_VALUE="1", TEST_SLACK_WEBHOOK=f"{dead}/hook",
                     TEST_PAGERDUTY_KEY=ROUTING_KEY, TEST_PAGERDUTY_URL=f"{dead}/pd")
    assert outage.returncode == 0, outage.stderr
    doc = json.loads(outage.stdout)
    assert doc["run"]["status"] == "succeeded"
    assert any("Slack notification not delivered" in n for n in doc["notices"])
    assert any("PagerDuty resolve notification not delivered" in n for n in doc["notices"])
    journal = json.dumps(cli.sql("select r.message, e.detail, e.error from rollout.runs r "
                                 "left join rollout.step_events e on e.run_id = r.id"),
                         default=str)
    for output in (failing.stdout + failing.stderr, passing.stdout, outage.stdout + outage.stderr,
                   journal):
        assert ROUTING_KEY not in output
        assert receiver.url not in output and dead not in output
