"""Measurements for analysis gates and monitors: one number from SQL or from HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from rollout.adapters.database import connect
from rollout.errors import TargetError


def sql_number(url: str, query: str) -> float:
    """Run a read-only query that returns one number."""
    with connect(url) as conn:
        conn.execute("set default_transaction_read_only = on")
        row = conn.execute(query.encode()).fetchone()
    if not row or row[0] is None:
        raise TargetError("the query returned no number")
    return float(row[0])


def http_number(url: str, json_field: str | None = None, timeout: float = 10) -> float:
    """The status code of a GET, or a (dotted) numeric field of its JSON body."""
    response = httpx.get(url, timeout=timeout)
    if json_field is None:
        return float(response.status_code)
    value: Any = response.json()
    for part in json_field.split("."):
        value = value[part]
    return float(value)
