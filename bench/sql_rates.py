"""DM send rate against the physical limit of its call shape (pgbench, alternated in one run).

Five pgbench runs of 10 s, 8 clients, in turn `rounds` times on the same server (5 s runs moved
the ratio by ±0.1 from round to round on a shared two-core machine):

- raw: one single-statement insert into `bench_messages`, a table shaped like `messages`
  (same columns, defaults, indexes and rows, copied from it; no trigger, foreign key or RLS —
  an empty copy would flatter the ceiling: its inserts descend shallower indexes);
- ceiling: PostgREST's transaction shape (`begin; set local role authenticated;
  set_config('request.jwt.claims', …, true); select fn(…); commit`) around a function that only
  inserts one row into `bench_messages` — the most any RPC of that shape can do;
- floor: the same shape around the least a DM can do while it keeps production's foreign key
  (`sender_id → auth.users`) and the insert trigger today's builds rely on
  (`messages_before_insert_v2`): one index probe for the pair's conversation, then one row into
  `bench_floor_messages` (another copy of `messages`, with that key and that trigger); no
  permission check at all. However a send is designed, it cannot beat this without giving up
  the key or the trigger;
- dm: the same shape around `send_direct_message`, attendee → MVP dealer pairs whose direct
  conversation already exists (steady state) — the send alone;
- dm_sync: the same, while the legacy sync job runs every SYNC_SECONDS as the plan schedules it
  (`sync_legacy_message_columns()`: production's columns for today's builds), so its cost is in
  the figure;
- first: the same shape, pairs that have no conversation yet (each used once: first messages).

The caller pauses the scheduled job for the whole measurement (dm_sync runs it itself).
Before every run the database is settled off the clock (`settle`: the legacy sync's backlog
taken, vacuum, analyze, checkpoint), so that no run pays for the one before it.
Reported: the median rate of each (with min and max) and floor ÷ ceiling, dm ÷ ceiling,
dm ÷ floor, dm_sync ÷ ceiling, first ÷ ceiling.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

SETUP = """
drop table if exists public.bench_pairs, public.bench_first_pairs, public.bench_messages,
  public.bench_floor_messages;
drop sequence if exists public.bench_first_seq;
create table public.bench_pairs as
select row_number() over (order by d.conversation_id) as i, a.id as sender, m.id as recipient,
       json_build_object('sub', a.id, 'role', 'authenticated')::text as claims
  from public.direct_conversations d
  join public.profiles a on a.id in (d.user_low, d.user_high) and a.role = 'attendee'
  join public.profiles m on m.id in (d.user_low, d.user_high) and m.role = 'mvp_dealer';
alter table public.bench_pairs add primary key (i);
create table public.bench_first_pairs as
select row_number() over () as i, sender, recipient,
       json_build_object('sub', sender, 'role', 'authenticated')::text as claims
  from (select distinct a.id as sender, m.id as recipient
          from (select id, row_number() over (order by id) as n from public.profiles
                 where role = 'attendee') a
          cross join generate_series(0, 5) k
          join (select id, row_number() over (order by id) as n, count(*) over () as total
                  from public.profiles where role = 'mvp_dealer') m
            on m.n = 1 + (a.n * 7 + k * 131) % m.total
         where not exists (select 1 from public.direct_conversations d
                            where d.user_low = least(a.id, m.id)
                              and d.user_high = greatest(a.id, m.id))) fresh;
alter table public.bench_first_pairs add primary key (i);
create sequence public.bench_first_seq;
-- messages' columns, defaults and indexes (whatever messages has now), no trigger, FK or RLS,
-- and its rows: an insert descends indexes as deep as the ones a send writes into
create table public.bench_messages (like public.messages including defaults including indexes);
insert into public.bench_messages select * from public.messages;
create or replace function public.bench_insert_one(p_recipient_id uuid, p_message_text text)
returns uuid language sql volatile security definer set search_path = '' as $$
  insert into public.bench_messages (conversation_id, sender_id, message_text)
  values (p_recipient_id, (select auth.uid()), p_message_text) returning id
$$;
grant select on public.bench_pairs, public.bench_first_pairs to authenticated;
grant usage on sequence public.bench_first_seq to authenticated;
grant execute on function public.bench_insert_one(uuid, text) to authenticated;
analyze;
"""

FLOOR_SETUP = """
-- The floor's table: the same again, with production's foreign key and today's insert trigger.
create table public.bench_floor_messages
  (like public.bench_messages including defaults including indexes);
insert into public.bench_floor_messages select * from public.bench_messages;
alter table public.bench_floor_messages
  add foreign key (sender_id) references auth.users (id);
create trigger bench_floor_before_insert before insert on public.bench_floor_messages
  for each row execute function public.messages_before_insert_v2();
-- The steady send's statement without its permission joins (participant row, both profiles).
create or replace function public.bench_send_floor(p_recipient_id uuid, p_message_text text)
returns uuid language plpgsql volatile security definer set search_path = '' as $$
declare
  v_uid uuid := auth.uid();
  v_id uuid;
begin
  insert into public.bench_floor_messages
    (conversation_id, sender_id, message_text, read_by_user_ids)
  select d.conversation_id, v_uid, t.message_text, array[v_uid]
    from (select pg_catalog.btrim(p_message_text, public.message_white_space()) as message_text) t
    join public.direct_conversations d
      on d.user_low = least(v_uid, p_recipient_id) and d.user_high = greatest(v_uid, p_recipient_id)
   where char_length(t.message_text) between 1 and 1000
  returning id into v_id;
  if v_id is null then
    raise exception 'bench_send_floor: no conversation with %', p_recipient_id;
  end if;
  return v_id;
end;
$$;
grant execute on function public.bench_send_floor(uuid, text) to authenticated;
analyze public.bench_floor_messages;
"""

TEARDOWN = """
drop function if exists public.bench_insert_one(uuid, text);
drop function if exists public.bench_send_floor(uuid, text);
drop table if exists public.bench_pairs, public.bench_first_pairs, public.bench_messages,
  public.bench_floor_messages;
drop sequence if exists public.bench_first_seq;
"""

# PostgREST's transaction shape around one RPC, one statement a line.
SHAPE = """begin;
set local role authenticated;
select set_config('request.jwt.claims', (select claims from public.{table} where i = {i}), true);
select public.{fn}((select recipient from public.{table} where i = {i}), 'hello there');
commit;
"""
SCRIPTS = {
    "raw": "insert into public.bench_messages (conversation_id, sender_id, message_text) "
           "values (gen_random_uuid(), gen_random_uuid(), 'hello there');\n",
    "ceiling": "\\set i random(1, :pairs)\n" + SHAPE.format(
        table="bench_pairs", i=":i", fn="bench_insert_one"),
    "floor": "\\set i random(1, :pairs)\n" + SHAPE.format(
        table="bench_pairs", i=":i", fn="bench_send_floor"),
    "dm": "\\set i random(1, :pairs)\n" + SHAPE.format(
        table="bench_pairs", i=":i", fn="send_direct_message"),
    # One fresh pair per transaction: the sequence is read once, inside the claims lookup.
    "first": """begin;
set local role authenticated;
select set_config('request.jwt.claims', claims, true), set_config('bench.to', recipient::text, true)
  from (select nextval('public.bench_first_seq') as n) s
  join public.bench_first_pairs p on p.i = s.n;
select public.send_direct_message(current_setting('bench.to')::uuid, 'hello there');
commit;
""",
}


def pgbench(binary: Path, url: str, script: Path, seconds: int, clients: int,
            variables: dict[str, int]) -> float:
    """Transactions per second of one pgbench run (failed transactions fail the bench)."""
    info = conninfo_to_dict(url)
    argv = [str(binary), "-n", "-c", str(clients), "-j", str(min(clients, 4)), "-T", str(seconds),
            "-h", str(info.get("host", "127.0.0.1")), "-p", str(info.get("port", 5432)),
            "-U", str(info.get("user", "postgres")), "-f", str(script),
            *[f"-D{k}={v}" for k, v in variables.items()], str(info.get("dbname", "postgres"))]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench {script.name} failed: {done.stderr[-1500:]}")
    match = re.search(r"tps = ([0-9.]+)", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    if not match or (failed and int(failed.group(1)) > 0):
        raise RuntimeError(f"pgbench {script.name}: {done.stdout[-1500:]}")
    return float(match.group(1))


def settle(url: str) -> None:
    """The database as it stands between bursts: the legacy sync caught up, dead rows vacuumed,
    statistics fresh and dirty pages written, so that no catch-up after a pgbench burst, no
    autovacuum and no checkpoint runs inside the next measurement."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select public.sync_legacy_message_columns()")
        conn.execute("vacuum analyze")
        conn.execute("checkpoint")


SYNC_SECONDS = 5  # the plans' schedule of the legacy sync job
RUNS = ("raw", "ceiling", "floor", "dm", "dm_sync", "first")
RATIOS = (("dm", "ceiling"), ("floor", "ceiling"), ("dm", "floor"), ("dm_sync", "ceiling"),
          ("first", "ceiling"), ("ceiling", "raw"))


class LegacySyncJob:
    """The legacy sync job, run every SYNC_SECONDS while in use (as the plan's cron job)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.runs: list[float] = []

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(SYNC_SECONDS):
                began = time.perf_counter()
                conn.execute("select public.sync_legacy_message_columns()")
                self.runs.append(time.perf_counter() - began)

    def __enter__(self) -> LegacySyncJob:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)


def dm_rates(url: str, binary: Path, *, rounds: int = 3, seconds: int = 10,
             clients: int = 8, runs: tuple[str, ...] = RUNS) -> dict[str, Any]:
    """Median rates of `runs` (of RUNS), alternated, and the ratios of RATIOS among them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP)
        if "floor" in runs:
            conn.execute(FLOOR_SETUP)
        conn.execute("select public.sync_legacy_message_columns()")  # caught up before
        pairs = conn.execute("select count(*) from public.bench_pairs").fetchone()[0]
    rates: dict[str, list[float]] = {name: [] for name in runs}
    sync_runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rollout-pgbench-") as tmp:
        files = {}
        for name, text in SCRIPTS.items():
            files[name] = Path(tmp) / f"{name}.sql"
            files[name].write_text(text)
        try:
            for _ in range(rounds):
                for name in runs:
                    # Each run starts from a settled database: the previous run's vacuum (a raw
                    # run inserts 200k rows) or the sync's backlog never lands in the next one.
                    settle(url)
                    script = files["dm" if name == "dm_sync" else name]
                    if name != "dm_sync":
                        rates[name].append(pgbench(binary, url, script, seconds, clients,
                                                   {"pairs": pairs}))
                        continue
                    with LegacySyncJob(url) as job:  # long enough for the job to run twice
                        rates[name].append(pgbench(binary, url, script, 2 * SYNC_SECONDS,
                                                   clients, {"pairs": pairs}))
                    sync_runs += job.runs
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(TEARDOWN)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"clients": clients, "seconds": seconds, "rounds": rounds, "pairs": pairs,
            "rates": rates, "median": medians, "sync_run_seconds": sync_runs,
            **{f"{a}_over_{b}": medians[a] / medians[b] for a, b in RATIOS
               if a in medians and b in medians}}
