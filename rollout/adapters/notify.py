"""Notifications: Slack incoming webhooks and PagerDuty Events API v2.

A failed notification never fails a release: `send_*` return an outcome that the caller
reports. Webhook URLs and routing keys are secrets: never part of an outcome or an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass
class Outcome:
    channel: str
    ok: bool
    detail: str


def send_slack(webhook_url: str, text: str, timeout: float = 10) -> Outcome:
    """POST `{"text": …}` to a Slack incoming webhook (it answers 200 `ok`)."""
    try:
        response = httpx.post(webhook_url, json={"text": text}, timeout=timeout)
    except httpx.HTTPError as err:
        return Outcome("slack", False, f"not delivered: {type(err).__name__}")
    return Outcome("slack", response.status_code == 200, f"HTTP {response.status_code}")


def send_pagerduty(events_url: str, routing_key: str, action: str, dedup_key: str,
                   summary: str, source: str, severity: str = "error",
                   timeout: float = 10) -> Outcome:
    """An Events API v2 event: `trigger` on failure, `resolve` on recovery (same dedup_key)."""
    body: dict[str, object] = {"routing_key": routing_key, "event_action": action,
                               "dedup_key": dedup_key}
    if action == "trigger":
        body["payload"] = {"summary": summary[:1024], "source": source, "severity": severity}
    try:
        response = httpx.post(events_url, json=body, timeout=timeout)
    except httpx.HTTPError as err:
        return Outcome("pagerduty", False, f"not delivered: {type(err).__name__}")
    return Outcome("pagerduty", response.status_code == 202, f"HTTP {response.status_code}")
