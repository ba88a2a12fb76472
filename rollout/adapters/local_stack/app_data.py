"""Production-like data for the production baseline (`migrations/local/app_data.sql`).

The file is `../shared/production/app_data.sql` as the team that owns production wrote it: a psql
script whose sizes are psql variables. This renders it for any client (psycopg included) by
substituting the variables, so tests and benchmarks measure on production-shaped data without
needing psql. Default sizes are production's (about a tenth of a busy season).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import psycopg

from rollout.paths import project_root

APP_DATA = "migrations/local/app_data.sql"


@dataclass(frozen=True)
class Sizes:
    users: int = 20_000
    shows: int = 300
    conversations: int = 40_000
    messages: int = 400_000
    user_offset: int = 0


def render(sizes: Sizes) -> str:
    """The script with its psql variables replaced and its `\\if` defaults dropped."""
    text = (project_root() / APP_DATA).read_text()
    values = asdict(sizes)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("\\")]
    pattern = re.compile(r"(?<![:\w]):(" + "|".join(values) + r")\b")
    return pattern.sub(lambda m: str(values[m.group(1)]), "\n".join(lines))


def load(url: str, sizes: Sizes) -> None:
    """Load the data as the table owner (the baseline must be applied)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(render(sizes).encode())
