"""The cost of the maintenance lease check on writes (issue 13): a ratio, in seconds of work.

    .venv/bin/python -m bench.lease            # ~20 s: a throw-away local stack, torn down

One statement per transaction, as the API runs them (`set local role authenticated`, one
`update` of the user's own profile row, commit), N times each, on the same server:

- **none**: no window (the everyday case: the guard triggers exist only during a window);
- **lapsed**: the guard triggers a dead run left behind, its lease gone: every API write pays
  the lease check (`rollout.maintenance_enforced()`) and is allowed;
- **owner**: the migration's own writes during a live window (the owner is never refused:
  the guard checks the role only).

Prints the write rates and the ratios lapsed/none and owner/none (1.00 = free).
"""

from __future__ import annotations

import statistics
import time
import uuid

import psycopg

from bench.run import bench_id, log, seed_users, stack
from rollout.adapters import database as db

N = 1000
ROUNDS = 7


def rate(url: str, role: str | None, user: str) -> float:
    """Writes per second: N one-statement transactions as `role` (None: the owner)."""
    with psycopg.connect(url) as conn:
        began = time.perf_counter()
        for i in range(N):
            with conn.transaction():
                if role:
                    conn.execute(f"set local role {role}")
                    conn.execute("select set_config('request.jwt.claims', %s, true)",
                                 (f'{{"sub": "{user}", "role": "{role}"}}',))
                conn.execute("update public.profiles set display_name = %s where id = %s",
                             (f"bench {i}", user))
        return N / (time.perf_counter() - began)


def window(url: str, live: bool) -> psycopg.Connection | None:
    """Open a window held by a fresh session; close that session at once unless `live`."""
    session = psycopg.connect(url, autocommit=True)
    db.maintenance_on(url, ["public"], db.Lease(str(uuid.uuid4()), session.info.backend_pid,
                                                600))
    if live:
        return session
    session.close()
    return None


def ratios(url: str, user: str, role: str | None, live: bool) -> tuple[float, float, float]:
    """Rounds alternating without and with the window (the machine is shared: its load
    drifts); the median rate of each and the median of the per-round ratios."""
    without, with_, ratio = [], [], []
    for _ in range(ROUNDS):
        plain = rate(url, role, user)
        session = window(url, live)
        guarded = rate(url, role, user)
        if session is not None:
            session.close()
        db.maintenance_off(url)
        without.append(plain)
        with_.append(guarded)
        ratio.append(guarded / plain)
    return statistics.median(without), statistics.median(with_), statistics.median(ratio)


def main() -> int:
    with stack("plans/local.yaml", "demo-data") as (s, _env):
        url = s.db_url
        seed_users(url, "0001", 1, "attendee")
        user = bench_id("0001", 1)
        log("API writes: no window vs a lapsed window (its session gone)")
        api = ratios(url, user, "authenticated", live=False)
        log("the owner's writes: no window vs a live window")
        owner = ratios(url, user, None, live=True)
    for name, (plain, guarded, ratio) in (("API writes, lapsed window", api),
                                          ("owner writes, live window", owner)):
        print(f"{name}: {plain:.0f}/s without, {guarded:.0f}/s with; median ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
