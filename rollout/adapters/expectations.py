"""What a migration expects of the database it runs on, and how the target differs from it.

A migration written for one shape of database must not run on another. Its expectations live
beside it as data (`<migration>.expect.yaml`): tables with the columns and types it reads,
writes or converts, constraints and triggers it relies on or replaces, functions it alters,
and relations that must not exist yet. `differences` compares them with the target's catalog
and says, object by object, what was expected and what was found.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollout.adapters.database import connect, describe_pg_error
from rollout.errors import TargetError, UsageError


class TableExpectation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: dict[str, str] = Field(default_factory=dict)
    constraints: dict[str, str] = Field(default_factory=dict)
    triggers: list[str] = Field(default_factory=list)


class Expectations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tables: dict[str, TableExpectation] = Field(default_factory=dict)
    functions: list[str] = Field(default_factory=list)
    absent: list[str] = Field(default_factory=list)


def load(path: Path) -> Expectations:
    """Parse an expectation file; a malformed one is the plan author's error (exit 2)."""
    try:
        return Expectations.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as err:
        raise UsageError(f"{path.name}: not a valid expectation file: "
                         f"{str(err).splitlines()[0]}") from err


def differences(url: str, expected: Expectations) -> list[str]:
    """`object: expected X, found Y` for everything the target does not match; [] if it does."""
    try:
        with connect(url) as conn:
            return _differences(conn, expected)
    except psycopg.Error as err:
        raise TargetError(f"reading the target's catalog failed: {describe_pg_error(err)}") from err


def _differences(conn: psycopg.Connection, expected: Expectations) -> list[str]:
    found: list[str] = []
    for table, want in expected.tables.items():
        if conn.execute("select to_regclass(%s)", (table,)).fetchone() == (None,):
            found.append(f"{table}: expected a table, found none")
            continue
        columns: dict[str, str] = dict(conn.execute(
            "select attname, format_type(atttypid, atttypmod) from pg_attribute "
            "where attrelid = %s::regclass and attnum > 0 and not attisdropped",
            (table,)).fetchall())
        for column, type_ in want.columns.items():
            have = columns.get(column)
            if have != type_:
                found.append(f"{table}.{column}: expected {type_}, found {have or 'no column'}")
        constraints: dict[str, str] = dict(conn.execute(
            "select conname, pg_get_constraintdef(oid) from pg_constraint "
            "where conrelid = %s::regclass", (table,)).fetchall())
        for name, definition in want.constraints.items():
            have = constraints.get(name)
            if have != definition:
                found.append(f"{table} constraint {name}: expected {definition}, "
                             f"found {have or 'no such constraint'}")
        triggers = {row[0] for row in conn.execute(
            "select tgname from pg_trigger where tgrelid = %s::regclass and not tgisinternal",
            (table,)).fetchall()}
        found += [f"{table} trigger {name}: expected, found none"
                  for name in want.triggers if name not in triggers]
    for function in expected.functions:
        if conn.execute("select to_regprocedure(%s)", (function,)).fetchone() == (None,):
            found.append(f"{function}: expected a function, found none")
    for relation in expected.absent:
        if conn.execute("select to_regclass(%s)", (relation,)).fetchone() != (None,):
            found.append(f"{relation}: expected absent, found it (does the target already "
                         "hold this migration?)")
    return found
