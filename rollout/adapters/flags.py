"""Feature flags in the target database (`public.feature_flags`, audited by a trigger).

Who and why travel to the audit trigger as transaction settings (`rollout.actor`,
`rollout.reason`), so every change — from this CLI, the SQL console or the app — is audited
the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from rollout.adapters.database import connect
from rollout.errors import TargetError, UsageError


@dataclass
class Flag:
    name: str
    percentage: int
    salt: str
    updated_at: datetime | None


@dataclass
class FlagChange:
    name: str
    before: int
    after: int
    users_in: int
    users_total: int


def bucket(salt: str, user_id: str) -> int:
    """The user's bucket 0–99, identical to SQL `public.feature_bucket` (sticky, deterministic)."""
    return int(hashlib.md5(f"{salt}:{user_id}".encode()).hexdigest()[:8], 16) % 100


def is_enabled(flag: Flag, user_id: str) -> bool:
    return bucket(flag.salt, user_id) < flag.percentage


def list_flags(url: str) -> list[Flag]:
    with connect(url) as conn:
        rows = conn.execute(
            "select name, rollout_percentage, salt, updated_at from public.feature_flags "
            "order by name").fetchall()
    return [Flag(*row) for row in rows]


def get_flag(url: str, name: str) -> Flag:
    for flag in list_flags(url):
        if flag.name == name:
            return flag
    raise UsageError(f"no feature flag {name!r}",
                     hint="`rollout flag list` shows the flags this target has")


def set_flag(url: str, name: str, percentage: int, *, actor: str, reason: str | None,
             allow_decrease: bool) -> FlagChange:
    """Set a flag's percentage, atomically against concurrent changes; refuses a silent decrease."""
    if not 0 <= percentage <= 100:
        raise UsageError(f"percentage must be between 0 and 100, got {percentage}")
    with connect(url, autocommit=False) as conn:
        row = conn.execute("select rollout_percentage, salt from public.feature_flags "
                           "where name = %s for update", (name,)).fetchone()
        if row is None:
            conn.rollback()
            raise UsageError(f"no feature flag {name!r}",
                             hint="`rollout flag list` shows the flags this target has")
        before, salt = int(row[0]), str(row[1])
        if percentage < before and not allow_decrease:
            conn.rollback()
            raise UsageError(
                f"{name} is at {before}%: lowering it to {percentage}% takes users out",
                hint="pass --allow-decrease, or `rollout flag kill` in an incident")
        conn.execute("select set_config('rollout.actor', %s, true), "
                     "set_config('rollout.reason', %s, true)", (actor, reason or ""))
        if percentage != before:
            conn.execute("update public.feature_flags set rollout_percentage = %s, "
                         "updated_at = now(), updated_by = %s where name = %s",
                         (percentage, actor, name))
        counts = conn.execute(
            "select count(*) filter (where public.feature_bucket(%s, id) < %s), count(*) "
            "from public.profiles", (salt, percentage)).fetchone()
        conn.commit()
    users_in, total = (int(counts[0]), int(counts[1])) if counts else (0, 0)
    return FlagChange(name, before, percentage, users_in, total)


@dataclass
class Restore:
    """What rolling back one flag change did: restored, or left as is and why."""

    restored: bool
    now: int
    reason: str


def restore_flag(url: str, name: str, *, set_to: int, previous: int, actor: str,
                 reason: str) -> Restore:
    """Undo a change to `set_to` by giving back `previous` — only if the flag still holds
    `set_to` (anything else is a later decision, e.g. a kill, and stays) and only downwards
    (a rollback never raises a flag above its current value)."""
    with connect(url, autocommit=False) as conn:
        row = conn.execute("select rollout_percentage from public.feature_flags "
                           "where name = %s for update", (name,)).fetchone()
        if row is None:
            conn.rollback()
            return Restore(False, 0, f"{name} no longer exists: nothing to restore")
        current = int(row[0])
        if current != set_to:
            conn.rollback()
            return Restore(False, current, f"left at {current}%: it was changed after this step "
                           f"set {set_to}% ({last_change(url, name)})")
        if previous > current:
            conn.rollback()
            return Restore(False, current, f"left at {current}%: restoring {previous}% would "
                           "raise it, and a rollback never raises a flag")
        conn.execute("select set_config('rollout.actor', %s, true), "
                     "set_config('rollout.reason', %s, true)", (actor, reason))
        if previous != current:
            conn.execute("update public.feature_flags set rollout_percentage = %s, "
                         "updated_at = now(), updated_by = %s where name = %s",
                         (previous, actor, name))
        conn.commit()
    return Restore(True, previous, f"{current}% → {previous}%")


def last_change(url: str, name: str) -> str:
    """'killed by alice at 03:12' — the newest audit row, for drift and refusal messages."""
    rows = history(url, name, 1)
    if not rows:
        return "no audit row"
    row = rows[0]
    verb = "killed" if row["to_percentage"] == 0 else f"set to {row['to_percentage']}%"
    return f"{verb} by {row['changed_by']} at {row['changed_at']:%Y-%m-%d %H:%M} UTC"


def audit_table(url: str) -> str | None:
    """The flag audit's table: live in public, or archived by the messaging rollback."""
    with connect(url) as conn:
        for name in ("public.feature_flag_audit", "messaging_v2_archive.feature_flag_audit"):
            row = conn.execute("select to_regclass(%s)", (name,)).fetchone()
            if row and row[0] is not None:
                return name
    return None

def kill(url: str, name: str, *, actor: str, reason: str) -> FlagChange:
    """The kill switch: the flag to 0 % at once (always allowed, audited with the reason).
    `rollout flag kill` and a ramp's breached guard both come through here."""
    return set_flag(url, name, 0, actor=actor, reason=reason, allow_decrease=True)


def history(url: str, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The flag's audit, newest first; read from the archive after a rollback."""
    table = audit_table(url)
    if table is None:
        return []
    schema, relation = table.split(".")
    with connect(url) as conn:
        cur = conn.execute(
            sql.SQL("select changed_at, changed_by, from_percentage, to_percentage, reason "
                    "from {}.{} where flag_name = %s order by changed_at desc, id desc "
                    "limit %s").format(sql.Identifier(schema), sql.Identifier(relation)),
            (name, limit))
        columns = [c.name for c in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def require_flags_table(url: str) -> None:
    with connect(url) as conn:
        row = conn.execute("select to_regclass('public.feature_flags')").fetchone()
    if not row or row[0] is None:
        raise TargetError("this database has no public.feature_flags table yet: "
                          "apply the messaging migration first (`rollout apply PLAN`)")
