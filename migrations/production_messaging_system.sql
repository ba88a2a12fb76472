-- Messaging v2: role-based DMs, broadcasts with quotas, moderation, exact unread counts,
-- feature flags. Applied to the card-show app's production database (legacy_baseline.sql =
-- ../shared/production/app_schema.sql) by the owner, in one transaction, while the app is live.
-- What it expects to find is data beside it (production_messaging_system.expect.yaml), checked
-- before anything changes. Undone by rollback_production_messaging.sql, back to production's
-- exact catalog and rows; a re-apply after a rollback restores what the rollback archived.
--
-- Expand, then contract. v2 adds no column to production's tables and changes no constraint:
--   * broadcasts use the existing conversation kind 'show' (one-way: recipients have
--     can_reply = false, the message is_broadcast and is_one_way, show_context = the show);
--   * moderation reuses messages.is_deleted / deleted_by / deleted_at / deletion_reason; the
--     text of a soft-deleted message moves to moderated_message_texts (admins only) and the row
--     keeps a placeholder, so no path (old builds' direct reads included) returns it;
--   * reported_messages is production's table, used in place (report_reason, report_status);
--   * broadcast_quotas exists in an earlier shape (remaining counters per organizer and show,
--     no day). It moves to messaging_v2_archive.broadcast_quotas_v1 and v2's per-day table takes
--     its name. A v1 row last updated today (UTC) becomes today's usage (limit - remaining); a
--     row not updated today says nothing about today, and today starts fresh. The rollback puts
--     the v1 table back and folds into it what v2 wrote after the conversion.
-- Production's own functions name tables unqualified and pin no search_path, so a v2 definer
-- function (search_path = '') inserting participants made them fail: v2 pins theirs to
-- `public, pg_temp` (the rollback resets it). The role trigger is replaced by one that derives
-- the same roles but never demotes an admin; the recursive participants policy is replaced.
-- Users can no longer change what their role derives from (column privileges on profiles).
--
-- A send writes one row (the message). Production's own columns (conversations.last_message_*,
-- conversation_participants.unread_count), which today's builds read, are brought up to date by
-- sync_legacy_message_columns() — a cron job every few seconds that counts each message once —
-- and v2's reads answer exactly at once: those columns plus the messages the job has not taken
-- yet (an index probe per conversation). The legacy trigger is replaced by v2's, never both: no
-- double counts.
--
-- Live-safety: no table rewrite; one index is built on messages (writes wait for it, inside the
-- maintenance window); the whole file is one short transaction and every lock waits at most
-- lock_timeout.
-- Identity is always auth.uid(). Refusals raise PostgREST-style SQLSTATEs: PT400 invalid
-- input, PT403 not allowed, PT404 not found, PT429 quota exhausted (see docs/sql-api.md).

-- squawk: every integer column here holds a percentage (0..100) or a per-day quota count
-- (0..2): 32-bit is right, so prefer-bigint-over-int is waived for this file.
-- squawk-ignore-file prefer-bigint-over-int

begin;

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Archive schema used by the rollback (never exposed to the API roles).
create schema if not exists messaging_v2_archive;
comment on schema messaging_v2_archive is
  'Messaging v2 data kept by rollback_production_messaging.sql; restored by a re-apply. '
  'While v2 is live it holds production''s earlier-shape broadcast_quotas (broadcast_quotas_v1).';
revoke all on schema messaging_v2_archive from public;

-- A previous rollback moved the v2 tables here: bring them back, rows and all.
do $$
declare
  t text;
begin
  foreach t in array array['feature_flags', 'feature_flag_audit', 'moderated_message_texts',
                           'direct_conversations']
  loop
    if to_regclass('messaging_v2_archive.' || t) is not null
       and to_regclass('public.' || t) is null then
      execute format('alter table messaging_v2_archive.%I set schema public', t);
    end if;
  end loop;
end
$$;

-- Functions of the first (defective) implementation that trusted an identity argument must
-- not survive next to the new API: drop any overload taking one.
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure
      from pg_catalog.pg_proc p
     where p.pronamespace = 'public'::regnamespace
       and p.proname in ('send_broadcast', 'moderate_delete_message', 'send_message',
                         'send_direct_message', 'report_message', 'mark_conversation_read')
       and p.proargnames && array['p_sender_id', 'p_moderator_id', 'p_user_id', 'p_reporter_id']
  loop
    execute format('drop function %s', f);
  end loop;
end
$$;

-- ---------------------------------------------------------------------------------------
-- Production's functions: pinned search_path (see the header). Bodies unchanged.
-- ---------------------------------------------------------------------------------------
alter function public.is_admin() set search_path = public, pg_temp;
alter function public.is_mvp_dealer() set search_path = public, pg_temp;
alter function public.is_show_organizer() set search_path = public, pg_temp;
alter function public.sync_user_role() set search_path = public, pg_temp;
alter function public.set_role_when_added_trigger() set search_path = public, pg_temp;
alter function public.messages_update_conversation_trigger() set search_path = public, pg_temp;

-- messages.created_at defaults to timezone('utc', now()): UTC wall-clock time read back in the
-- session's time zone, so wrong by the offset on any session not in UTC. now() is the instant
-- (catalog-only change; the rollback puts production's default back).
alter table public.messages alter column created_at set default now();

-- ---------------------------------------------------------------------------------------
-- Broadcast quotas: the earlier shape steps aside, v2's per-day table takes the name.
-- ---------------------------------------------------------------------------------------
do $$
begin
  if exists (select 1 from pg_catalog.pg_attribute
              where attrelid = to_regclass('public.broadcast_quotas')
                and attname = 'pre_show_remaining' and not attisdropped) then
    if to_regclass('messaging_v2_archive.broadcast_quotas_v1') is not null then
      raise exception using errcode = 'P0001',
        message = 'messaging_v2_archive.broadcast_quotas_v1 already exists next to the '
                  'earlier-shape public.broadcast_quotas: resolve by hand before applying';
    end if;
    alter table public.broadcast_quotas rename to broadcast_quotas_v1;
    alter table public.broadcast_quotas_v1 set schema messaging_v2_archive;
  end if;
  -- v2's own table, archived by a previous rollback.
  if to_regclass('messaging_v2_archive.broadcast_quotas') is not null
     and to_regclass('public.broadcast_quotas') is null then
    alter table messaging_v2_archive.broadcast_quotas set schema public;
  end if;
end
$$;

-- Constraint and index names carry `daily` so they never meet the v1 table's in one schema.
create table if not exists public.broadcast_quotas (
  organizer_id uuid not null,
  show_id uuid not null,
  quota_date date not null,
  pre_show_used integer not null default 0,
  post_show_used integer not null default 0,
  pre_show_limit integer not null default 2,
  post_show_limit integer not null default 1,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint broadcast_quotas_daily_pkey primary key (organizer_id, show_id, quota_date),
  constraint broadcast_quotas_daily_organizer_fkey foreign key (organizer_id)
    references auth.users (id) on delete cascade,
  constraint broadcast_quotas_daily_show_fkey foreign key (show_id)
    references public.shows (id) on delete cascade,
  constraint broadcast_quotas_daily_pre_check check (pre_show_used between 0 and pre_show_limit),
  constraint broadcast_quotas_daily_post_check
    check (post_show_used between 0 and post_show_limit)
);
comment on table public.broadcast_quotas is
  'Organizer broadcast quota per show and UTC day; a new day is a new row. Functions only. '
  'Production''s earlier shape waits in messaging_v2_archive.broadcast_quotas_v1.';
alter table public.broadcast_quotas enable row level security;
create index if not exists broadcast_quotas_daily_show_id_idx on public.broadcast_quotas (show_id);
create index if not exists broadcast_quotas_daily_quota_date_idx
  on public.broadcast_quotas (quota_date);

-- v1 rows changed today are today's usage (greatest: a re-apply never gives quota back).
do $$
begin
  if to_regclass('messaging_v2_archive.broadcast_quotas_v1') is not null then
    insert into public.broadcast_quotas as q
      (organizer_id, show_id, quota_date, pre_show_used, post_show_used, created_at, updated_at)
    select v.organizer_id, v.show_id, (now() at time zone 'utc')::date,
           least(2, greatest(0, 2 - coalesce(v.pre_show_remaining, 2))),
           least(1, greatest(0, 1 - coalesce(v.post_show_remaining, 1))),
           v.last_updated, v.last_updated
      from messaging_v2_archive.broadcast_quotas_v1 v
     where (v.last_updated at time zone 'utc')::date = (now() at time zone 'utc')::date
    on conflict (organizer_id, show_id, quota_date) do update
       set pre_show_used = greatest(q.pre_show_used, excluded.pre_show_used),
           post_show_used = greatest(q.post_show_used, excluded.post_show_used),
           updated_at = greatest(q.updated_at, excluded.updated_at);
  end if;
end
$$;

-- ---------------------------------------------------------------------------------------
-- New tables (RLS enabled here, where they are created).
-- ---------------------------------------------------------------------------------------
create table if not exists public.feature_flags (
  name text primary key check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
  rollout_percentage integer not null default 0 check (rollout_percentage between 0 and 100),
  salt text not null,
  description text,
  updated_at timestamptz not null default now(),
  updated_by text
);
comment on table public.feature_flags is
  'Feature flags with a sticky percentage rollout: user in iff feature_bucket(salt, uid) < pct.';
alter table public.feature_flags enable row level security;

create table if not exists public.feature_flag_audit (
  id bigint generated always as identity primary key,
  flag_name text not null,
  changed_at timestamptz not null default now(),
  changed_by text not null,
  from_percentage integer,
  to_percentage integer,
  reason text
);
comment on table public.feature_flag_audit is
  'Every insert/update of feature_flags: who (rollout.actor), when, from/to, why (rollout.reason).';
alter table public.feature_flag_audit enable row level security;
create index if not exists feature_flag_audit_flag_name_changed_at_idx
  on public.feature_flag_audit (flag_name, changed_at);

create table if not exists public.moderated_message_texts (
  message_id uuid primary key references public.messages (id) on delete cascade,
  message_text text not null,
  moved_at timestamptz not null default now()
);
comment on table public.moderated_message_texts is
  'Original text of soft-deleted messages (messages.message_text holds a placeholder; who, '
  'when and why stay in messages.deleted_by / deleted_at / deletion_reason). Admins only.';
alter table public.moderated_message_texts enable row level security;

-- One direct conversation per pair of users, found by one primary-key lookup (a DM used to
-- search the participants of every conversation of the sender). Filled from production's direct
-- conversations with exactly two participants (the latest per pair); kept by send_direct_message
-- and, when a participant leaves, by a trigger.
create table if not exists public.direct_conversations (
  user_low uuid not null,
  user_high uuid not null,
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  created_at timestamptz not null default now(),
  constraint direct_conversations_pkey primary key (user_low, user_high),
  constraint direct_conversations_ordered check (user_low < user_high)
);
comment on table public.direct_conversations is
  'The direct conversation of each pair of users (user_low < user_high). Functions only.';
alter table public.direct_conversations enable row level security;
create index if not exists direct_conversations_conversation_id_idx
  on public.direct_conversations (conversation_id);
-- Whether each side may write in the pair's conversation now (both still in it with a profile,
-- this one not a dealer, its can_reply not false): a steady DM reads this one row instead of
-- the participant row and both profiles. Only ever an accelerator: false sends a DM down the
-- full path, which decides from the rows themselves; triggers on profiles and participants keep
-- it from ever being true when those rows say no (direct_conversations_refresh_v2). Added to a
-- table a rollback archived too (catalog-only: a constant default).
alter table public.direct_conversations
  add column if not exists low_may_send boolean not null default false,
  add column if not exists high_may_send boolean not null default false;
-- A role change refreshes the pairs of that user, on either side.
create index if not exists direct_conversations_user_high_idx
  on public.direct_conversations (user_high);

-- Where the next run of sync_legacy_message_columns() starts (no message created before it is
-- still uncommitted), and the messages at or after it that production's trigger counted before
-- v2 replaced it.
create table if not exists public.messaging_legacy_sync (
  singleton boolean primary key default true
    constraint messaging_legacy_sync_singleton check (singleton),
  synced_from timestamptz not null,
  counted_before uuid[] not null default '{}',
  last_run_at timestamptz,
  last_changed integer
);
comment on table public.messaging_legacy_sync is
  'State of the job keeping production''s last_message_* and unread_count columns for '
  'today''s builds. Functions only.';
alter table public.messaging_legacy_sync enable row level security;

-- A conversation's messages by time: the last message and the unread count read the newest
-- ones. It takes the place of production's index on conversation_id alone (a send maintains
-- the same number of indexes); the rollback puts production's back.
-- squawk-ignore require-concurrent-index-creation
create index if not exists messages_conversation_id_created_at_idx
  on public.messages (conversation_id, created_at, id);
-- squawk-ignore require-concurrent-index-deletion
drop index if exists public.idx_messages_conversation_id;
-- A pair whose conversation lost a member while v2 was rolled back (no trigger forgot it then)
-- is forgotten now, as it would have been: the pair's next DM starts a new conversation.
delete from public.direct_conversations d
 where not exists (select 1 from public.conversation_participants cp
                    where cp.conversation_id = d.conversation_id and cp.user_id = d.user_low)
    or not exists (select 1 from public.conversation_participants cp
                    where cp.conversation_id = d.conversation_id and cp.user_id = d.user_high);
insert into public.direct_conversations (user_low, user_high, conversation_id)
select distinct on (least(a.user_id, b.user_id), greatest(a.user_id, b.user_id))
       least(a.user_id, b.user_id), greatest(a.user_id, b.user_id), c.id
  from public.conversations c
  join public.conversation_participants a on a.conversation_id = c.id
  join public.conversation_participants b on b.conversation_id = c.id and b.user_id > a.user_id
 where c.type = 'direct'
   and (select count(*) from public.conversation_participants n where n.conversation_id = c.id) = 2
 order by least(a.user_id, b.user_id), greatest(a.user_id, b.user_id),
          c.last_message_timestamp desc nulls last, c.created_at desc
on conflict do nothing;

-- Messages soft-deleted before v2 still carry their text: move it out of reach, as v2 does.
-- (No index on is_deleted: one sequential read of messages, row locks on the deleted ones only.)
with moved as (
  insert into public.moderated_message_texts (message_id, message_text, moved_at)
  select m.id, m.message_text, coalesce(m.deleted_at, now())
    from public.messages m
   where m.is_deleted and m.message_text <> '[message removed by a moderator]'
  on conflict (message_id) do nothing
  returning message_id
)
update public.messages m
   set message_text = '[message removed by a moderator]'
  from moved
 where m.id = moved.message_id;

-- Production's reports table, used in place: indexes for the policy and the monitors.
-- squawk-ignore require-concurrent-index-creation
create index if not exists reported_messages_message_id_idx
  on public.reported_messages (message_id);
-- squawk-ignore require-concurrent-index-creation
create index if not exists reported_messages_reported_by_idx
  on public.reported_messages (reported_by);
-- squawk-ignore require-concurrent-index-creation
create index if not exists reported_messages_report_status_idx
  on public.reported_messages (report_status);
-- Production's foreign keys from messages.deleted_by (to auth.users), messages.show_context
-- and conversations.show_id (to shows) have no index: deleting one user read all of messages
-- (~80 ms on 500,000), one show all of messages and conversations, so the cleanup after
-- `rollout load` (600 users, 500 shows) took a minute and stalled the legacy sync behind its
-- locks. Partial: only moderated messages, broadcasts and show conversations carry them, a
-- DM's insert adds no index entry.
-- squawk-ignore require-concurrent-index-creation
create index if not exists messages_deleted_by_idx
  on public.messages (deleted_by) where deleted_by is not null;
-- squawk-ignore require-concurrent-index-creation
create index if not exists messages_show_context_idx
  on public.messages (show_context) where show_context is not null;
-- squawk-ignore require-concurrent-index-creation
create index if not exists conversations_show_id_idx
  on public.conversations (show_id) where show_id is not null;
-- Policies and the inbox filter participants by user.
-- squawk-ignore require-concurrent-index-creation
create index if not exists conversation_participants_user_id_idx
  on public.conversation_participants (user_id);

-- Unread counts the legacy trigger capped at 999 (or left null) are recounted exactly.
update public.conversation_participants cp
   set unread_count = (
     select count(*) from public.messages m
      where m.conversation_id = cp.conversation_id
        and m.sender_id is distinct from cp.user_id
        and not (cp.user_id = any (coalesce(m.read_by_user_ids, '{}'))))
 where cp.unread_count is null or cp.unread_count >= 999;

-- ---------------------------------------------------------------------------------------
-- Helpers.
-- ---------------------------------------------------------------------------------------
create or replace function public.feature_bucket(p_salt text, p_user_id uuid)
returns integer
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select (('x' || substr(md5(p_salt || ':' || p_user_id::text), 1, 8))::bit(32)::bigint % 100)::int
$$;
comment on function public.feature_bucket(text, uuid) is
  'Sticky bucket 0..99 of a user for a flag salt; Python: int(md5(f"{salt}:{uid}")[:8], 16) % 100.';

create or replace function public.is_feature_enabled(p_flag text)
returns boolean
language sql
stable
set search_path = ''
as $$
  select coalesce((
    select public.feature_bucket(f.salt, (select auth.uid())) < f.rollout_percentage
      from public.feature_flags f
     where f.name = p_flag
  ), false)
$$;
comment on function public.is_feature_enabled(text) is
  'True when the caller (auth.uid()) falls inside the flag''s rollout percentage.';

create or replace function public.current_profile_role()
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select lower(p.role) from public.profiles p where p.id = (select auth.uid())
$$;
comment on function public.current_profile_role() is
  'Role of the caller (lower case), null without a profile. Definer: used inside policies, '
  'must not depend on the profiles policies.';

create or replace function public.is_conversation_participant(p_conversation_id uuid)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (
    select 1
      from public.conversation_participants cp
      join public.profiles p on p.id = cp.user_id
     where cp.conversation_id = p_conversation_id
       and cp.user_id = (select auth.uid())
  )
$$;
comment on function public.is_conversation_participant(uuid) is
  'Is the caller a participant of the conversation. Definer: policies on '
  'conversation_participants call it, and a policy querying its own table recurses.';

-- The white space trimmed off a message's text: Unicode white space (JavaScript's
-- String.prototype.trim set, plus NEL). Used as btrim's character set, far cheaper than a regular
-- expression on every send; immutable, so the planner folds it into a constant once per plan.
create or replace function public.message_white_space()
returns text language sql immutable parallel safe set search_path = '' as $$
  select E'\t\n\u000b\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff'::text
$$;
comment on function public.message_white_space() is
  'The characters trimmed off both ends of a message''s text.';

create or replace function public.normalize_message_text(p_text text)
returns text language plpgsql immutable set search_path = '' as $$
declare
  v_text text := pg_catalog.btrim(p_text, public.message_white_space());
begin
  if v_text is null or char_length(v_text) = 0 or char_length(v_text) > 1000 then
    raise exception using errcode = 'PT400',
      message = 'message text must be 1 to 1000 characters after trimming white space';
  end if;
  return v_text;
end;
$$;
comment on function public.normalize_message_text(text) is
  'Text trimmed of Unicode white space, or PT400 unless it is 1..1000 characters.';

create or replace function public.can_user_send_dm(
  p_sender_id uuid, p_recipient_id uuid, p_show_id uuid default null
)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  -- The DM matrix. p_show_id is accepted for the app's UI and currently does not change it.
  select coalesce((
    select case lower(s.role)
             when 'attendee' then lower(r.role) = 'mvp_dealer'
             when 'mvp_dealer' then lower(r.role) in ('attendee', 'dealer', 'show_organizer')
             when 'show_organizer' then true
             else false
           end
      from public.profiles s, public.profiles r
     where s.id = p_sender_id and r.id = p_recipient_id and s.id <> r.id
  ), false)
$$;
comment on function public.can_user_send_dm(uuid, uuid, uuid) is
  'May sender start a DM with recipient (role matrix only). Definer: reads both profiles '
  'regardless of the profiles policies; it grants nothing by itself.';

create or replace function public.can_user_reply(p_user_id uuid, p_conversation_id uuid)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  -- Dealers never reply; a 'show' conversation (a broadcast) is one-way: only whoever
  -- broadcast in it writes there, whatever can_reply says; elsewhere can_reply decides.
  select coalesce((
    select lower(p.role) <> 'dealer'
           and coalesce(cp.can_reply, true)
           and (c.type <> 'show'
                or exists (select 1 from public.messages m
                            where m.conversation_id = c.id and m.sender_id = p_user_id
                              and m.is_broadcast))
      from public.conversation_participants cp
      join public.profiles p on p.id = cp.user_id
      join public.conversations c on c.id = cp.conversation_id
     where cp.conversation_id = p_conversation_id
       and cp.user_id = p_user_id
  ), false)
  -- An API caller only learns this about itself or about conversations it is in.
  and ((select auth.uid()) is null
       or p_user_id = (select auth.uid())
       or public.is_conversation_participant(p_conversation_id))
$$;
comment on function public.can_user_reply(uuid, uuid) is
  'Reply rule: participant, not a dealer, not a broadcast recipient. Definer: the messages '
  'insert policy calls it and it reads conversation_participants.';

-- ---------------------------------------------------------------------------------------
-- Triggers: the same bookkeeping and guards whichever path a row takes.
-- ---------------------------------------------------------------------------------------
create or replace function public.profiles_sync_role_v2()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- An admin is made by a privileged role (service role, owner), never by a subscription,
  -- and an unrelated update (a new zip code) must not demote one.
  if new.role = 'admin' and (current_user not in ('authenticated', 'anon')
                             or (tg_op = 'UPDATE' and old.role = 'admin')) then
    return new;
  end if;
  -- The rest exactly as production's sync_user_role.
  if new.account_type = 'organizer' then
    new.role := case when new.subscription_status = 'active' then 'show_organizer' else 'dealer' end;
  elsif new.account_type = 'dealer' then
    new.role := case when new.subscription_status = 'active' then 'mvp_dealer' else 'dealer' end;
  elsif new.account_type = 'collector' then
    new.role := 'attendee';
  end if;
  return new;
end;
$$;
comment on function public.profiles_sync_role_v2() is
  'profiles.role from account_type + subscription_status (as production''s sync_user_role), '
  'but an admin set by a privileged role stays an admin.';

-- ---------------------------------------------------------------------------------------
-- Unread counts and the last message, derived (one definition for the API and the legacy sync).
-- ---------------------------------------------------------------------------------------
-- A time before which no message can still be uncommitted: the start of the oldest open
-- transaction that could insert one (a session of this database; a message's created_at is its
-- transaction's start). Read from pg_stat_activity
-- before the caller's next statement takes its snapshot, so any message that statement cannot
-- see is created at or after it. Without the right to see other sessions' transactions:
-- ten minutes ago (API statements time out long before).
create or replace function public.messaging_horizon()
returns timestamptz
language sql
volatile
security definer
set search_path = ''
as $$
  select case
    when pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'member') then
      least(pg_catalog.now(),
            (select min(a.xact_start) from pg_catalog.pg_stat_get_activity(null) a
              where a.datid = (select d.oid from pg_catalog.pg_database d
                                where d.datname = pg_catalog.current_database())
                and a.backend_type in ('client backend', 'background worker', 'pg_cron')))
    else pg_catalog.now() - interval '10 minutes'
  end
$$;
comment on function public.messaging_horizon() is
  'No message created before this time is still uncommitted. Definer: reads every session''s '
  'transaction start.';

-- Production's columns for today's builds. Each run takes the messages created since the last
-- run and before the horizon (all committed: a message not seen now is created after it, and the
-- next run takes it), so every message is taken exactly once: a conversation's last message
-- moves forward to the newest (a tie in time keeps what is there, as production's trigger did),
-- and each other participant who has not read a message gets one more unread (broadcasts are
-- counted by send_broadcast, which writes every recipient's row anyway). A participant row
-- that changed since the run read it (a mark-read) is locked and counted again. Messages
-- production's trigger already counted when v2 was applied are skipped. `p_until` replaces the
-- horizon when no insert can be in flight (the rollback holds messages locked).
create or replace function public.sync_legacy_message_columns(p_until timestamptz default null)
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_sync public.messaging_legacy_sync%rowtype;
  v_next timestamptz;
  v_changed integer;
  v_rows integer;
  v_conflict_conversations uuid[];
  v_conflict_users uuid[];
begin
  -- One run at a time; a run that waited starts where the other ended.
  select * into v_sync from public.messaging_legacy_sync where singleton for update;
  if not found then
    raise exception 'messaging_legacy_sync has no row: is messaging v2 applied?';
  end if;
  v_next := greatest(v_sync.synced_from, coalesce(p_until, public.messaging_horizon()));

  -- The conversation rows first, as every writer takes them (moderation rewrites a last
  -- message under that lock): the texts below are read after any such change has committed.
  -- Read before the wait, a moderated text would come back into last_message_text.
  perform 1 from public.conversations c
   where c.id in (select m.conversation_id from public.messages m
                   where m.created_at >= v_sync.synced_from and m.created_at < v_next)
   order by c.id
     for no key update of c;

  update public.conversations c
     set last_message_text = l.message_text, last_message_timestamp = l.created_at
    from (select distinct on (m.conversation_id) m.conversation_id, m.message_text, m.created_at
            from public.messages m
           where m.created_at >= v_sync.synced_from and m.created_at < v_next
           order by m.conversation_id, m.created_at desc, m.id desc) l
   where c.id = l.conversation_id
     and (c.last_message_timestamp is null or l.created_at > c.last_message_timestamp);
  get diagnostics v_changed = row_count;

  -- Unread per participant: applied only to the row version the count was made against.
  with delta as (
    select m.conversation_id, cp.user_id, count(*)::integer as n
      from public.messages m
      join public.conversation_participants cp on cp.conversation_id = m.conversation_id
     where m.created_at >= v_sync.synced_from and m.created_at < v_next
       and not (m.id = any (v_sync.counted_before)) and not m.is_broadcast
       and m.sender_id is distinct from cp.user_id
       and not (cp.user_id = any (coalesce(m.read_by_user_ids, '{}')))
     group by m.conversation_id, cp.user_id
  ), seen as (
    select d.*, cp.xmin as row_version
      from delta d
      join public.conversation_participants cp
        on cp.conversation_id = d.conversation_id and cp.user_id = d.user_id
  ), applied as (
    update public.conversation_participants cp
       set unread_count = coalesce(cp.unread_count, 0) + s.n
      from seen s
     where cp.conversation_id = s.conversation_id and cp.user_id = s.user_id
       and cp.xmin = s.row_version
    returning cp.conversation_id, cp.user_id
  )
  -- The ones not applied, as a set difference: hashed or sorted, never a loop over both (the
  -- planner estimates these CTEs at one row; a NOT EXISTS became a nested loop, 7 s for 9,500
  -- rows).
  select (select count(*) from applied),
         coalesce(array_agg(x.conversation_id), '{}'), coalesce(array_agg(x.user_id), '{}')
    into v_rows, v_conflict_conversations, v_conflict_users
    from (select s.conversation_id, s.user_id from seen s
          except all
          select a.conversation_id, a.user_id from applied a) x;
  v_changed := v_changed + v_rows;

  if cardinality(v_conflict_users) > 0 then
    -- Changed since (a mark-read, most likely): locked, then counted again against what is
    -- committed now.
    perform 1
       from public.conversation_participants cp
       join unnest(v_conflict_conversations, v_conflict_users) k (conversation_id, user_id)
         on cp.conversation_id = k.conversation_id and cp.user_id = k.user_id
      order by cp.conversation_id, cp.user_id
        for update of cp;
    update public.conversation_participants cp
       set unread_count = coalesce(cp.unread_count, 0) + d.n
      from (select m.conversation_id, k.user_id, count(*)::integer as n
              from unnest(v_conflict_conversations, v_conflict_users) k (conversation_id, user_id)
              join public.messages m on m.conversation_id = k.conversation_id
             where m.created_at >= v_sync.synced_from and m.created_at < v_next
               and not (m.id = any (v_sync.counted_before)) and not m.is_broadcast
               and m.sender_id is distinct from k.user_id
               and not (k.user_id = any (coalesce(m.read_by_user_ids, '{}')))
             group by m.conversation_id, k.user_id) d
     where cp.conversation_id = d.conversation_id and cp.user_id = d.user_id;
    get diagnostics v_rows = row_count;
    v_changed := v_changed + v_rows;
  end if;

  update public.messaging_legacy_sync
     set synced_from = v_next,
         counted_before = array(select m.id from public.messages m
                                 where m.id = any (v_sync.counted_before)
                                   and m.created_at >= v_next),
         last_run_at = pg_catalog.now(), last_changed = v_changed
   where singleton;
  return v_changed;
end;
$$;
comment on function public.sync_legacy_message_columns(timestamptz) is
  'Keeps production''s last_message_* and unread_count for today''s builds (a cron job; the '
  'rollback runs it once more). Returns the rows changed. Definer: writes every user''s rows.';

-- From here no insert into messages runs until commit, and every one before it was counted by
-- production's trigger: those created at or after the horizon are remembered, not counted again.
lock table public.messages in share row exclusive mode;
insert into public.messaging_legacy_sync (singleton, synced_from, counted_before)
select true, h.horizon,
       array(select m.id from public.messages m where m.created_at >= h.horizon)
  from (select public.messaging_horizon() as horizon) h
on conflict (singleton) do nothing;

-- The functions' inserts (text normalised, read state set, dated now) leave by the first
-- test, one expression: a WHEN clause would say the same, but PostgreSQL rebuilds a trigger's
-- WHEN from its stored form for every statement, which cost a single-row send more than this
-- whole call.
create or replace function public.messages_before_insert_v2()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if not (current_user in ('authenticated', 'anon') or new.read_by_user_ids is null
          or new.created_at < now() or char_length(new.message_text) not between 1 and 1000
          or new.message_text <> pg_catalog.btrim(new.message_text, public.message_white_space()))
  then
    return new;
  end if;
  new.message_text := public.normalize_message_text(new.message_text);
  new.read_by_user_ids := coalesce(new.read_by_user_ids, '{}');
  -- Direct table writes by an API client (functions run as the owner): the client does not
  -- choose the time, the read state or the broadcast and moderation columns.
  if current_user in ('authenticated', 'anon') then
    new.created_at := now();
    new.read_by_user_ids := array[new.sender_id];
    new.is_deleted := false;
    new.is_broadcast := false;
    new.is_one_way := false;
    new.show_context := null;
    new.deleted_at := null;
    new.deleted_by := null;
    new.deletion_reason := null;
  elsif new.created_at < now() then
    perform public.messages_count_backdated_v2(new);
  end if;
  return new;
end;
$$;
comment on function public.messages_before_insert_v2() is
  'Validates message text; normalises direct inserts by API clients; counts a back-dated '
  'message into production''s columns.';

create or replace function public.messages_count_backdated_v2(p_message public.messages)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- A message dated before the legacy sync's position is behind it: counted here, at once.
  -- Otherwise the sync takes it (the share lock keeps its next run waiting until this commits).
  perform 1 from public.messaging_legacy_sync
   where singleton and p_message.created_at >= synced_from
     for share;
  if found then
    return;
  end if;
  -- Lock order for every write in a conversation: conversation row, then participant rows,
  -- then message rows (this runs before the message row is written).
  -- One statement that always locks and updates the row (so concurrent senders serialise on
  -- it) and keeps the newest message whatever order they commit in.
  update public.conversations
     set last_message_text = case when last_message_timestamp is null
                                    or last_message_timestamp <= p_message.created_at
                                  then p_message.message_text else last_message_text end,
         last_message_timestamp = greatest(last_message_timestamp, p_message.created_at)
   where id = p_message.conversation_id;
  -- Exactly one unread per message per other participant who has not read it (no cap).
  update public.conversation_participants
     set unread_count = coalesce(unread_count, 0) + 1
   where conversation_id = p_message.conversation_id
     and user_id is distinct from p_message.sender_id
     and not (user_id = any (p_message.read_by_user_ids));
end;
$$;
comment on function public.messages_count_backdated_v2(public.messages) is
  'Last message and unread counts for a message dated in the past, which the legacy sync has '
  'gone by (replaces production''s messages_after_insert_trigger; called by the insert '
  'trigger). Definer: updates other users'' rows.';

create or replace function public.messages_before_update_v2()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_old uuid[] := coalesce(old.read_by_user_ids, '{}');
begin
  -- Column privileges limit API clients to read_by_user_ids; here: only add yourself.
  if current_user in ('authenticated', 'anon')
     and new.read_by_user_ids is distinct from old.read_by_user_ids then
    if v_uid is null
       or new.read_by_user_ids is null
       or not (new.read_by_user_ids @> v_old and (v_old || v_uid) @> new.read_by_user_ids) then
      raise exception using errcode = 'PT403',
        message = 'you may only mark messages read for yourself';
    end if;
    new.read_by_user_ids := case when v_uid = any (v_old) then v_old else v_old || v_uid end;
  end if;
  return new;
end;
$$;
comment on function public.messages_before_update_v2() is
  'API clients may only add themselves to read_by_user_ids.';

create or replace function public.messages_after_read_v2()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_counted boolean;
begin
  -- A reader added themselves to one message's read_by_user_ids (today's builds do, before they
  -- reset their count): production's unread_count loses the message if it is counted there
  -- already; if not, the legacy sync will not count it.
  if v_uid is null or new.sender_id is not distinct from v_uid
     or v_uid = any (coalesce(old.read_by_user_ids, '{}'))
     or not (v_uid = any (coalesce(new.read_by_user_ids, '{}'))) then
    return null;
  end if;
  -- The participant row first (a sync run that changed it has committed once this returns),
  -- then the sync's position, read after that.
  perform 1 from public.conversation_participants
   where conversation_id = new.conversation_id and user_id = v_uid
     for update;
  if not found then
    return null;
  end if;
  select new.is_broadcast or new.created_at < s.synced_from or new.id = any (s.counted_before)
    into v_counted
    from public.messaging_legacy_sync s where s.singleton;
  -- A new row version either way: a sync run that counted against the old one counts again.
  update public.conversation_participants
     set unread_count = case when v_counted and unread_count > 0 then unread_count - 1
                             else unread_count end
   where conversation_id = new.conversation_id and user_id = v_uid;
  return null;
end;
$$;
comment on function public.messages_after_read_v2() is
  'One message read on its own by an API client: one unread less in production''s column. '
  'Definer: API clients may only reset their count to 0.';

create or replace function public.conversation_participants_before_update_v2()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_user in ('authenticated', 'anon')
     and new.unread_count is distinct from old.unread_count
     and new.unread_count is distinct from 0 then
    raise exception using errcode = 'PT403', message = 'unread_count can only be reset to 0';
  end if;
  return new;
end;
$$;
comment on function public.conversation_participants_before_update_v2() is
  'API clients may only reset their unread_count to 0.';

create or replace function public.conversation_participants_after_update_v2()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Reset to 0 = the member has read the conversation: keep read_by_user_ids in step, so
  -- the function path and the old app's direct update end in the same state.
  -- Rows are locked in id order so that two members marking read at once cannot deadlock.
  update public.messages m
     set read_by_user_ids = coalesce(m.read_by_user_ids, '{}') || new.user_id
   where m.id in (select u.id from public.messages u
                   where u.conversation_id = new.conversation_id
                     and not (new.user_id = any (coalesce(u.read_by_user_ids, '{}')))
                   order by u.id
                   for update)
     and not (new.user_id = any (coalesce(m.read_by_user_ids, '{}')));
  return new;
end;
$$;
comment on function public.conversation_participants_after_update_v2() is
  'Marks the conversation''s messages read when unread_count is reset. Definer: updates '
  'messages of other senders.';

create or replace function public.feature_flags_before_write()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.salt := coalesce(new.salt, new.name);
  new.updated_at := now();
  new.updated_by := coalesce(nullif(current_setting('rollout.actor', true), ''), current_user);
  return new;
end;
$$;
comment on function public.feature_flags_before_write() is
  'Salt defaults to the flag name; stamps updated_at/updated_by.';

create or replace function public.feature_flags_audit_write()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.feature_flag_audit
    (flag_name, changed_by, from_percentage, to_percentage, reason)
  values (
    new.name,
    -- Stamped by feature_flags_before_write, which runs as the invoker: rollout.actor, or
    -- the role that made the change (here, in a definer function, current_user is the owner).
    new.updated_by,
    case when tg_op = 'UPDATE' then old.rollout_percentage end,
    new.rollout_percentage,
    nullif(current_setting('rollout.reason', true), '')
  );
  return new;
end;
$$;
comment on function public.feature_flags_audit_write() is
  'Audit row per flag insert/update. Definer: the audit table is closed to every API role.';

create or replace function public.direct_conversations_forget_v2()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- A participant left: the pair's next DM starts a new conversation.
  delete from public.direct_conversations where conversation_id = old.conversation_id;
  return null;
end;
$$;
comment on function public.direct_conversations_forget_v2() is
  'Forgets a pair''s conversation when a participant leaves it. Definer: direct_conversations '
  'is closed to the API roles.';

-- The one definition of direct_conversations.*_may_send. The pairs' rows are locked before
-- the rows they derive from are read, so two refreshes of one pair (a role change beside a
-- can_reply change) take turns and the second reads what the first committed: neither can
-- write a flag from a state that is no longer there.
-- One plan for every call: custom plans re-planned the five-table join each time (1.6 ms,
-- against 0.25 ms for a call of one pair with the generic plan).
create or replace function public.direct_conversations_refresh_v2(p_conversation_ids uuid[])
returns void
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
begin
  perform 1 from public.direct_conversations d
   where d.conversation_id = any (p_conversation_ids)
   order by d.user_low, d.user_high
     for update;
  update public.direct_conversations d
     set low_may_send = f.low_may_send, high_may_send = f.high_may_send
    from (select x.user_low, x.user_high,
                 both_in and coalesce(lc.can_reply, true)
                   and lower(lp.role) is distinct from 'dealer' as low_may_send,
                 both_in and coalesce(hc.can_reply, true)
                   and lower(hp.role) is distinct from 'dealer' as high_may_send
            from public.direct_conversations x
            left join public.conversation_participants lc
              on lc.conversation_id = x.conversation_id and lc.user_id = x.user_low
            left join public.profiles lp on lp.id = x.user_low
            left join public.conversation_participants hc
              on hc.conversation_id = x.conversation_id and hc.user_id = x.user_high
            left join public.profiles hp on hp.id = x.user_high
            cross join lateral (select lc.user_id is not null and lp.id is not null
                                       and hc.user_id is not null and hp.id is not null
                                         as both_in) b
           where x.conversation_id = any (p_conversation_ids)) f
   where d.user_low = f.user_low and d.user_high = f.user_high
     and (d.low_may_send, d.high_may_send) is distinct from (f.low_may_send, f.high_may_send);
end;
$$;
comment on function public.direct_conversations_refresh_v2(uuid[]) is
  'Recomputes whether each side of these direct conversations may write in it. Definer: '
  'direct_conversations is closed to the API roles.';

create or replace function public.direct_conversations_refresh_of_user_v2()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user uuid;
begin
  if tg_table_name = 'profiles' then
    if tg_op = 'UPDATE' and new.id = old.id and new.role is not distinct from old.role then
      return null;
    end if;
    v_user := case tg_op when 'DELETE' then old.id else new.id end;
    perform public.direct_conversations_refresh_v2(array(
      select d.conversation_id from public.direct_conversations d where d.user_low = v_user
      union all
      select d.conversation_id from public.direct_conversations d where d.user_high = v_user));
  else  -- conversation_participants: can_reply changed
    perform public.direct_conversations_refresh_v2(array[new.conversation_id]);
  end if;
  return null;
end;
$$;
comment on function public.direct_conversations_refresh_of_user_v2() is
  'A profile''s role (or the profile itself) or a participant''s can_reply changed: refreshes '
  'direct_conversations.*_may_send of its pairs. Definer: that table is closed to the API roles.';

-- Production's bookkeeping trigger gives way to v2's (both would count every unread twice).
drop trigger if exists messages_after_insert_trigger on public.messages;
drop trigger if exists profiles_role_sync_trigger on public.profiles;
create trigger profiles_role_sync_trigger
  before insert or update on public.profiles
  for each row execute function public.profiles_sync_role_v2();
-- Production's role_when_added trigger does nothing when the role is given: only fire it when
-- it is not (a broadcast to 5,000 gives it, and no longer pays 5,000 trigger calls).
drop trigger if exists set_role_when_added_trigger on public.conversation_participants;
create trigger set_role_when_added_trigger
  before insert on public.conversation_participants
  for each row when (new.role_when_added is null)
  execute function public.set_role_when_added_trigger();
drop trigger if exists direct_conversations_forget_v2 on public.conversation_participants;
create trigger direct_conversations_forget_v2
  after delete on public.conversation_participants
  for each row execute function public.direct_conversations_forget_v2();
drop trigger if exists direct_conversations_refresh_v2 on public.profiles;
create trigger direct_conversations_refresh_v2
  after insert or update or delete on public.profiles
  for each row execute function public.direct_conversations_refresh_of_user_v2();
drop trigger if exists direct_conversations_refresh_v2 on public.conversation_participants;
create trigger direct_conversations_refresh_v2
  after update of can_reply on public.conversation_participants
  for each row when (new.can_reply is distinct from old.can_reply)
  execute function public.direct_conversations_refresh_of_user_v2();
-- Every pair's flags from the rows as they stand (new pairs, and ones a rollback archived).
select public.direct_conversations_refresh_v2(
  array(select d.conversation_id from public.direct_conversations d));
drop trigger if exists messages_before_insert_v2 on public.messages;
-- A message is counted into production's columns once: by the legacy sync (every message
-- dated now, whoever inserts it), or by this trigger, for one dated in the past (a backfill)
-- that the sync may have gone by.
create trigger messages_before_insert_v2
  before insert on public.messages
  for each row execute function public.messages_before_insert_v2();
-- Its work moved into messages_before_insert_v2 (an earlier v2 had it as an after trigger).
drop trigger if exists messages_after_insert_v2 on public.messages;
-- squawk-ignore ban-drop-function
drop function if exists public.messages_after_insert_v2();
drop trigger if exists messages_before_update_v2 on public.messages;
create trigger messages_before_update_v2
  before update on public.messages
  for each row execute function public.messages_before_update_v2();
drop trigger if exists messages_after_read_v2 on public.messages;
create trigger messages_after_read_v2
  after update of read_by_user_ids on public.messages
  for each row when (current_user in ('authenticated', 'anon'))
  execute function public.messages_after_read_v2();
drop trigger if exists conversation_participants_before_update_v2
  on public.conversation_participants;
create trigger conversation_participants_before_update_v2
  before update on public.conversation_participants
  for each row execute function public.conversation_participants_before_update_v2();
drop trigger if exists conversation_participants_after_update_v2
  on public.conversation_participants;
create trigger conversation_participants_after_update_v2
  after update of unread_count on public.conversation_participants
  for each row when (new.unread_count = 0)
  execute function public.conversation_participants_after_update_v2();
drop trigger if exists feature_flags_before_write on public.feature_flags;
create trigger feature_flags_before_write
  before insert or update on public.feature_flags
  for each row execute function public.feature_flags_before_write();
drop trigger if exists feature_flags_audit_write on public.feature_flags;
create trigger feature_flags_audit_write
  after insert or update on public.feature_flags
  for each row execute function public.feature_flags_audit_write();

insert into public.feature_flags (name, rollout_percentage, salt, description)
values ('messaging_v2_enabled', 0, 'messaging_v2_enabled',
        'New role-based messaging UI in the mobile app.')
on conflict (name) do nothing;

-- ---------------------------------------------------------------------------------------
-- The API. All security definer: they write rows the caller may not write directly, always
-- acting as auth.uid() (never an argument), and re-check every rule themselves.
-- ---------------------------------------------------------------------------------------
create or replace function public.send_message(p_conversation_id uuid, p_message_text text)
returns uuid
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_id uuid;
begin
  if public.current_profile_role() is null then
    raise exception using errcode = 'PT403', message = 'no profile for the current user';
  end if;
  if not public.is_conversation_participant(p_conversation_id) then
    raise exception using errcode = 'PT403', message = 'not a participant of this conversation';
  end if;
  if not public.can_user_reply(v_uid, p_conversation_id) then
    raise exception using errcode = 'PT403', message = 'you may not reply in this conversation';
  end if;
  insert into public.messages (conversation_id, sender_id, message_text, read_by_user_ids)
  values (p_conversation_id, v_uid, public.normalize_message_text(p_message_text), array[v_uid])
  returning id into v_id;
  return v_id;
end;
$$;
comment on function public.send_message(uuid, text) is
  'Reply in a conversation (reply rule). Definer: inserts as the caller after its own checks.';

create or replace function public.send_direct_message(
  p_recipient_id uuid, p_message_text text, p_show_id uuid default null)
returns uuid language plpgsql volatile security definer set search_path = '' as $$
declare
  v_uid uuid := auth.uid();
  v_text text;
  v_sender text;
  v_recipient text;
  v_conv uuid;
  v_can_reply boolean;
  v_id uuid;
begin
  -- The steady state in one statement, one index probe: the pair's conversation exists and its
  -- row says the caller may write there (direct_conversations.*_may_send), the text is 1..1000
  -- characters once trimmed, no show is named (a show id to check would put one more scan in
  -- every send's plan). Anything else writes nothing here and takes the full path below, which
  -- decides from the participant and profile rows themselves and says why.
  insert into public.messages (conversation_id, sender_id, message_text, read_by_user_ids)
  select d.conversation_id, v_uid, t.message_text, array[v_uid]
    from (select pg_catalog.btrim(p_message_text, public.message_white_space()) as message_text) t
    join public.direct_conversations d
      on d.user_low = least(v_uid, p_recipient_id) and d.user_high = greatest(v_uid, p_recipient_id)
   where p_show_id is null and char_length(t.message_text) between 1 and 1000
     and case when v_uid = d.user_low then d.low_may_send else d.high_may_send end
  returning id into v_id;
  if v_id is not null then
    return v_id;
  end if;

  v_text := public.normalize_message_text(p_message_text);
  -- One query of index lookups: both roles, the pair's conversation and the caller's place in
  -- it. The advisory lock is only taken to create a pair's first conversation.
  -- (A pair's row goes when either participant leaves, so a pair found has both in it.)
  select lower(s.role), lower(r.role), cp.conversation_id, coalesce(cp.can_reply, true)
    into v_sender, v_recipient, v_conv, v_can_reply
    from public.profiles s
    left join public.profiles r on r.id = p_recipient_id
    left join public.direct_conversations d
      on d.user_low = least(v_uid, p_recipient_id) and d.user_high = greatest(v_uid, p_recipient_id)
    left join public.conversation_participants cp
      on cp.conversation_id = d.conversation_id and cp.user_id = v_uid
   where s.id = v_uid;
  if v_sender is null then
    raise exception using errcode = 'PT403', message = 'no profile for the current user';
  end if;
  if p_recipient_id is null or p_recipient_id = v_uid then
    raise exception using errcode = 'PT400', message = 'choose another user as recipient';
  end if;
  if v_recipient is null then
    raise exception using errcode = 'PT404', message = 'recipient not found';
  end if;
  if p_show_id is not null and not exists (select 1 from public.shows where id = p_show_id) then
    raise exception using errcode = 'PT404', message = 'show not found';
  end if;
  if v_conv is null then
    perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(
      'dm:' || least(v_uid, p_recipient_id)::text || ':' || greatest(v_uid, p_recipient_id)::text, 0));
    -- Both profiles held until the transaction ends: a role change (or a deletion) waits for
    -- the new pair's flags to be written and then refreshes them, or commits first and they are
    -- written from it. A row lock, not an advisory lock per user in the role-change trigger: a
    -- bulk update of thousands of profiles would fill the shared lock table with those.
    perform 1 from public.profiles p where p.id in (v_uid, p_recipient_id)
     order by p.id for share;
    -- A concurrent first message may have created it meanwhile.
    select cp.conversation_id, coalesce(cp.can_reply, true) into v_conv, v_can_reply
      from public.direct_conversations d
      join public.conversation_participants cp
        on cp.conversation_id = d.conversation_id and cp.user_id = v_uid
     where d.user_low = least(v_uid, p_recipient_id)
       and d.user_high = greatest(v_uid, p_recipient_id);
    if v_conv is null then
      if not public.can_user_send_dm(v_uid, p_recipient_id, p_show_id) then
        raise exception using errcode = 'PT403',
          message = 'your role may not start a conversation with this user';
      end if;
      insert into public.conversations (type, show_id) values ('direct', p_show_id)
      returning id into v_conv;
      -- The pair's flags as direct_conversations_refresh_v2 would compute them from the rows
      -- just written (both in, can_reply true: not a dealer), without a second version of the
      -- row (a refresh here costs a first message 15-25 % of its rate).
      with added as (
        insert into public.conversation_participants
          (conversation_id, user_id, can_reply, role_when_added, display_name, photo_url)
        select v_conv, p.id, true, p.role,
               coalesce(p.business_name, nullif(concat_ws(' ', p.first_name, p.last_name), '')),
               p.profile_image_url
          from public.profiles p where p.id in (v_uid, p_recipient_id)
        returning user_id, lower(role_when_added) is distinct from 'dealer' as may_write)
      insert into public.direct_conversations
        (user_low, user_high, conversation_id, low_may_send, high_may_send)
      select least(v_uid, p_recipient_id), greatest(v_uid, p_recipient_id), v_conv,
             count(*) = 2 and bool_or(a.may_write and a.user_id = least(v_uid, p_recipient_id)),
             count(*) = 2 and bool_or(a.may_write and a.user_id = greatest(v_uid, p_recipient_id))
        from added a
      on conflict (user_low, user_high) do update
        set conversation_id = excluded.conversation_id,
            low_may_send = excluded.low_may_send, high_may_send = excluded.high_may_send;
      v_can_reply := true;
    end if;
  end if;
  if v_sender = 'dealer' or not coalesce(v_can_reply, false) then
    raise exception using errcode = 'PT403', message = 'you may not reply in this conversation';
  end if;
  insert into public.messages (conversation_id, sender_id, message_text, read_by_user_ids)
  values (v_conv, v_uid, v_text, array[v_uid])
  returning id into v_id;
  return v_id;
end;
$$;
comment on function public.send_direct_message(uuid, text, uuid) is
  'DM: reuse the pair''s direct conversation (direct_conversations) if the caller may reply '
  'there, else start one if the role matrix allows. Definer: creates conversations and '
  'participant rows.';

create or replace function public.send_broadcast(
  p_show_id uuid, p_message_text text, p_recipient_roles text[],
  p_is_pre_show boolean default null
)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_role text := public.current_profile_role();
  v_show public.shows%rowtype;
  v_roles text[];
  v_text text;
  v_pre boolean;
  v_count integer;
  v_quota public.broadcast_quotas%rowtype;
  v_remaining integer;
  v_conv uuid;
  v_msg uuid;
begin
  if v_role is null or v_role not in ('show_organizer', 'mvp_dealer') then
    raise exception using errcode = 'PT403', message = 'your role may not send broadcasts';
  end if;
  select * into v_show from public.shows where id = p_show_id;
  if not found then
    raise exception using errcode = 'PT404', message = 'show not found';
  end if;
  select array_agg(distinct r order by r) into v_roles
    from unnest(p_recipient_roles) as r;
  if v_roles is null
     or exists (select 1 from unnest(v_roles) as r
                 where r is null
                    or r not in ('attendee', 'dealer', 'mvp_dealer', 'show_organizer', 'admin'))
  then
    raise exception using errcode = 'PT400', message = 'recipient roles must be known roles';
  end if;
  if v_role = 'show_organizer' then
    if v_show.organizer_id is distinct from v_uid then
      raise exception using errcode = 'PT403',
        message = 'only the organizer of this show may broadcast to it';
    end if;
  else
    if not exists (select 1 from public.show_participants
                    where userid = v_uid and showid = p_show_id) then
      raise exception using errcode = 'PT403',
        message = 'MVP dealers may only broadcast to shows they are registered for';
    end if;
    if v_roles <> array['attendee'] then
      raise exception using errcode = 'PT403',
        message = 'MVP dealers may broadcast to attendees only';
    end if;
  end if;
  v_text := public.normalize_message_text(p_message_text);
  -- The phase comes from the show's dates, never from the caller: a caller who declares the
  -- other phase is refused rather than given that phase's quota.
  v_pre := now() < v_show.start_date;
  if p_is_pre_show is not null and p_is_pre_show <> v_pre then
    raise exception using errcode = 'PT400', message = format(
      'this show is in its %s-show phase (it starts %s)',
      case when v_pre then 'pre' else 'post' end, v_show.start_date);
  end if;

  if v_role = 'show_organizer' then
    -- One atomic statement: concurrent callers serialise on the row, and the WHERE is
    -- re-checked on the latest version, so a quota of 2 yields exactly 2 successes.
    insert into public.broadcast_quotas as q
      (organizer_id, show_id, quota_date, pre_show_used, post_show_used)
    values (v_uid, p_show_id, (now() at time zone 'utc')::date,
            case when v_pre then 1 else 0 end, case when v_pre then 0 else 1 end)
    on conflict (organizer_id, show_id, quota_date) do update
       set pre_show_used = q.pre_show_used + excluded.pre_show_used,
           post_show_used = q.post_show_used + excluded.post_show_used,
           updated_at = now()
     where (excluded.pre_show_used = 1 and q.pre_show_used < q.pre_show_limit)
        or (excluded.post_show_used = 1 and q.post_show_used < q.post_show_limit)
    returning * into v_quota;
    if not found then
      raise exception using errcode = 'PT429', message = format(
        'broadcast quota exhausted: %s %s-show broadcast(s) per show per UTC day',
        case when v_pre then 2 else 1 end, case when v_pre then 'pre' else 'post' end);
    end if;
    v_remaining := case when v_pre then v_quota.pre_show_limit - v_quota.pre_show_used
                        else v_quota.post_show_limit - v_quota.post_show_used end;
  end if;

  -- A broadcast is production's 'show' conversation: the sender may write (can_reply), each
  -- recipient reads (can_reply = false); role_when_added given here, not looked up per row.
  -- Production's columns are written with the rows (the message is the last one, each
  -- recipient joins with its one unread): the legacy sync leaves broadcasts alone.
  insert into public.conversations (type, show_id, last_message_text, last_message_timestamp)
  values ('show', p_show_id, v_text, now())
  returning id into v_conv;
  insert into public.conversation_participants
    (conversation_id, user_id, can_reply, role_when_added, display_name, photo_url)
  select v_conv, p.id, true, p.role,
         coalesce(p.business_name, nullif(concat_ws(' ', p.first_name, p.last_name), '')),
         p.profile_image_url
    from public.profiles p where p.id = v_uid;
  insert into public.messages
    (conversation_id, sender_id, message_text, is_broadcast, is_one_way, show_context,
     read_by_user_ids)
  values (v_conv, v_uid, v_text, true, true, p_show_id, array[v_uid])
  returning id into v_msg;
  insert into public.conversation_participants
    (conversation_id, user_id, can_reply, role_when_added, display_name, photo_url,
     unread_count)
  select v_conv, p.id, false, p.role,
         coalesce(p.business_name, nullif(concat_ws(' ', p.first_name, p.last_name), '')),
         p.profile_image_url, 1
    from public.show_participants sp
    join public.profiles p on p.id = sp.userid
   where sp.showid = p_show_id and sp.userid <> v_uid and lower(p.role) = any (v_roles);
  -- Counted as they are written (one pass over the recipients); none → the whole call, quota
  -- included, is undone by the error.
  get diagnostics v_count = row_count;
  if v_count = 0 then
    raise exception using errcode = 'PT400',
      message = 'no participant of this show has the chosen roles';
  end if;

  return jsonb_build_object('conversation_id', v_conv, 'message_id', v_msg,
                            'recipient_count', v_count, 'quota_remaining', v_remaining);
end;
$$;
comment on function public.send_broadcast(uuid, text, text[], boolean) is
  'One-way broadcast to a show''s participants by role, quota taken atomically. Definer: '
  'writes quotas, conversations and participant rows closed to the caller.';

create or replace function public.get_conversation_messages(
  p_conversation_id uuid, p_before timestamptz default null, p_limit integer default 50
)
returns table (id uuid, sender_id uuid, message_text text, is_deleted boolean,
               is_broadcast boolean, created_at timestamptz)
language plpgsql
stable
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_admin boolean := public.is_admin();
begin
  if not (v_admin or public.is_conversation_participant(p_conversation_id)) then
    raise exception using errcode = 'PT403', message = 'not a participant of this conversation';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 500 then
    raise exception using errcode = 'PT400', message = 'p_limit must be 1..500';
  end if;
  return query
    select m.id, m.sender_id,
           case when not coalesce(m.is_deleted, false) then m.message_text
                when v_admin then t.message_text end,
           coalesce(m.is_deleted, false), coalesce(m.is_broadcast, false), m.created_at
      from public.messages m
      left join public.moderated_message_texts t on t.message_id = m.id
     where m.conversation_id = p_conversation_id
       and (p_before is null or m.created_at < p_before)
     order by m.created_at desc, m.id desc
     limit p_limit;
end;
$$;
comment on function public.get_conversation_messages(uuid, timestamptz, integer) is
  'Newest-first page of a conversation; soft-deleted text only for admins. Definer: reads '
  'the admin-only moderated texts.';

create or replace function public.get_user_conversations()
returns table (id uuid, type text, show_id uuid, last_message_text text,
               last_message_timestamp timestamptz, unread_count integer)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_sync public.messaging_legacy_sync%rowtype;
begin
  select * into v_sync from public.messaging_legacy_sync s where s.singleton;
  return query
  -- What the legacy sync has not taken yet, per conversation of the caller: the messages since
  -- its position (an index probe each; usually nothing) — their newest time, and the unread
  -- ones its next runs will add (broadcasts and the messages production's trigger counted are
  -- in the columns already). A lateral probe per conversation, driven by the caller's
  -- participant rows. (As a CTE over messages joined to them, the first five plans of each
  -- connection, custom ones, scanned every participant row in parallel: 15 ms a call for 1,000
  -- conversations against 6–9 ms; the generic plan after them costs the same.) PL/pgSQL so the plan is made once per connection (an SQL function is
  -- planned on every call before PostgreSQL 18); STABLE, so the sync position and the columns
  -- are read in one snapshot.
  select c.id, c.type, c.show_id,
         case when w.newer
              then (select m.message_text from public.messages m
                     where m.conversation_id = c.id
                     order by m.created_at desc, m.id desc limit 1)
              else c.last_message_text end,
         case when w.newer then r.created_at else c.last_message_timestamp end,
         coalesce(cp.unread_count, 0) + r.unread
    from public.conversation_participants cp
    join public.conversations c on c.id = cp.conversation_id
    cross join lateral (
      select max(m.created_at) as created_at,
             (count(*) filter (where not m.is_broadcast and not (m.id = any (v_sync.counted_before))
                                 and m.sender_id is distinct from v_uid
                                 and not (v_uid = any (coalesce(m.read_by_user_ids, '{}')))
                              ))::integer as unread
        from public.messages m
       where m.conversation_id = cp.conversation_id and m.created_at >= v_sync.synced_from) r
    cross join lateral (select coalesce(r.created_at > c.last_message_timestamp
                                        or c.last_message_timestamp is null, false)
                               and r.created_at is not null as newer) w
   where cp.user_id = v_uid
     and exists (select 1 from public.profiles p where p.id = v_uid)
   order by 5 desc nulls last, c.created_at desc;
end;
$$;
comment on function public.get_user_conversations() is
  'The caller''s inbox: last message and exact unread count (production''s columns plus what '
  'the legacy sync has not taken yet). Definer: one indexed query instead of a policy check '
  'per row.';

create or replace function public.get_total_unread_count()
returns integer
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(sum(i.unread_count), 0)::integer from public.get_user_conversations() i
$$;
comment on function public.get_total_unread_count() is
  'Sum of the caller''s exact unread counts (as get_user_conversations). Definer: same reason.';

create or replace function public.mark_conversation_read(p_conversation_id uuid)
returns void
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  if not public.is_conversation_participant(p_conversation_id) then
    raise exception using errcode = 'PT403', message = 'not a participant of this conversation';
  end if;
  -- The after-update trigger adds the caller to read_by_user_ids of every message.
  update public.conversation_participants
     set unread_count = 0
   where conversation_id = p_conversation_id and user_id = auth.uid();
end;
$$;
comment on function public.mark_conversation_read(uuid) is
  'Unread count to 0 and every message read by the caller. Definer: updates messages of '
  'other senders.';

create or replace function public.report_message(p_message_id uuid, p_reason text)
returns uuid
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_conv uuid;
  v_reason text := btrim(p_reason);
  v_id uuid;
begin
  if public.current_profile_role() is null then
    raise exception using errcode = 'PT403', message = 'no profile for the current user';
  end if;
  select conversation_id into v_conv from public.messages where id = p_message_id;
  if not found then
    raise exception using errcode = 'PT404', message = 'message not found';
  end if;
  if not public.is_conversation_participant(v_conv) then
    raise exception using errcode = 'PT403', message = 'only participants may report a message';
  end if;
  if v_reason is null or char_length(v_reason) = 0 or char_length(v_reason) > 500 then
    raise exception using errcode = 'PT400', message = 'reason must be 1 to 500 characters';
  end if;
  -- One pending report per reporter and message. Production's table may already hold
  -- duplicates, so this is a lock and a look rather than a unique index.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(
    'report:' || p_message_id::text || ':' || v_uid::text, 0));
  select id into v_id from public.reported_messages
   where message_id = p_message_id and reported_by = v_uid and report_status = 'pending'
   order by created_at
   limit 1;
  if v_id is null then
    insert into public.reported_messages (message_id, reported_by, report_reason)
    values (p_message_id, v_uid, v_reason)
    returning id into v_id;
  end if;
  return v_id;
end;
$$;
comment on function public.report_message(uuid, text) is
  'Report a message (participants; one pending report per reporter and message, returned '
  'again on repeat). Definer: reported_messages is closed to direct writes.';

create or replace function public.moderate_delete_message(
  p_message_id uuid, p_reason text default 'Content violation'
)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_role text := public.current_profile_role();
  v_msg public.messages%rowtype;
  v_show uuid;
  v_reason text := coalesce(nullif(btrim(p_reason), ''), 'Content violation');
begin
  if v_role is null or v_role not in ('admin', 'show_organizer') then
    raise exception using errcode = 'PT403', message = 'only moderators may delete messages';
  end if;
  -- Same lock order as every other write: the conversation row before the message row.
  perform 1 from public.conversations c
   where c.id = (select m.conversation_id from public.messages m where m.id = p_message_id)
     for no key update;
  select m.* into v_msg from public.messages m where m.id = p_message_id for update;
  if not found then
    raise exception using errcode = 'PT404', message = 'message not found';
  end if;
  if v_role = 'show_organizer' then
    select c.show_id into v_show from public.conversations c where c.id = v_msg.conversation_id;
    if not exists (select 1 from public.shows s where s.id = v_show and s.organizer_id = v_uid) then
      raise exception using errcode = 'PT403',
        message = 'organizers moderate only their own shows'' conversations';
    end if;
  end if;
  if char_length(v_reason) > 500 then
    raise exception using errcode = 'PT400', message = 'reason must be at most 500 characters';
  end if;
  if coalesce(v_msg.is_deleted, false) then
    return false;
  end if;

  -- The text leaves the messages table: no policy, function or rollback can show it again.
  insert into public.moderated_message_texts (message_id, message_text)
  values (v_msg.id, v_msg.message_text)
  on conflict (message_id) do nothing;
  update public.messages
     set is_deleted = true, deleted_at = now(), deleted_by = v_uid, deletion_reason = v_reason,
         message_text = '[message removed by a moderator]'
   where id = v_msg.id;
  update public.conversations c
     set last_message_text = (
       select m.message_text from public.messages m
        where m.conversation_id = c.id
        order by m.created_at desc, m.id desc
        limit 1)
   where c.id = v_msg.conversation_id;
  update public.reported_messages
     set report_status = 'actioned', reviewed_by = v_uid, reviewed_at = now()
   where message_id = v_msg.id and report_status = 'pending';
  return true;
end;
$$;
comment on function public.moderate_delete_message(uuid, text) is
  'Soft delete (admins anywhere, organizers in their shows'' conversations); the text moves '
  'to moderated_message_texts. Definer: moderators have no direct write access.';

create or replace function public.reset_broadcast_quotas()
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  v_today date := (now() at time zone 'utc')::date;
  v_deleted integer;
  v_rows integer;
  v_exhausted integer;
begin
  -- Housekeeping only: today's quota is today's row, so a missed or doubled run neither
  -- blocks nor grants a broadcast. Rows are kept 30 days for reporting.
  delete from public.broadcast_quotas where quota_date < v_today - 30;
  get diagnostics v_deleted = row_count;
  select count(*),
         count(*) filter (where pre_show_used >= pre_show_limit
                             or post_show_used >= post_show_limit)
    into v_rows, v_exhausted
    from public.broadcast_quotas where quota_date = v_today;
  return jsonb_build_object('quota_date', v_today, 'deleted_rows', v_deleted,
                            'quotas_today', v_rows, 'exhausted_today', v_exhausted,
                            'retention_days', 30);
end;
$$;
comment on function public.reset_broadcast_quotas() is
  'Nightly quota housekeeping and stats (service_role only). Definer: deletes quota rows '
  'no API role may touch.';

-- ---------------------------------------------------------------------------------------
-- Privileges: what API clients may touch directly (RLS then decides the rows). Production
-- grants `all` on every table to anon and authenticated; v2 keeps what today's app needs.
-- ---------------------------------------------------------------------------------------
revoke all on public.conversations, public.conversation_participants, public.messages
  from anon, authenticated;
grant select on public.conversations, public.conversation_participants, public.messages
  to authenticated;
grant update (unread_count) on public.conversation_participants to authenticated;
grant insert (id, conversation_id, sender_id, message_text, created_at, read_by_user_ids)
  on public.messages to authenticated;
grant update (read_by_user_ids) on public.messages to authenticated;

-- profiles: the role is what every rule keys on, and it derives from the subscription. The
-- table-wide UPDATE goes; every column the app edits is granted back, not the ones the role
-- or a subscription derives from (whatever columns production has when this runs).
revoke update, truncate, references, trigger on public.profiles from anon, authenticated;
do $$
declare
  v_columns text;
begin
  select string_agg(format('%I', a.attname), ', ' order by a.attnum) into v_columns
    from pg_catalog.pg_attribute a
   where a.attrelid = 'public.profiles'::regclass and a.attnum > 0 and not a.attisdropped
     and a.attname not in ('id', 'email', 'role', 'account_type', 'subscription_status',
                           'subscription_expiry', 'subscription_type', 'subscription_id',
                           'payment_status', 'pre_show_broadcasts_remaining',
                           'post_show_broadcasts_remaining', 'created_at');
  execute format('grant update (%s) on public.profiles to authenticated', v_columns);
end
$$;

revoke all on public.feature_flags, public.feature_flag_audit, public.broadcast_quotas,
  public.reported_messages, public.moderated_message_texts, public.direct_conversations,
  public.messaging_legacy_sync
  from anon, authenticated;
grant select on public.feature_flags, public.reported_messages, public.moderated_message_texts
  to authenticated;

revoke execute on function
  public.feature_bucket(text, uuid),
  public.is_feature_enabled(text),
  public.current_profile_role(),
  public.is_conversation_participant(uuid),
  public.message_white_space(),
  public.normalize_message_text(text),
  public.can_user_send_dm(uuid, uuid, uuid),
  public.can_user_reply(uuid, uuid),
  public.send_message(uuid, text),
  public.send_direct_message(uuid, text, uuid),
  public.send_broadcast(uuid, text, text[], boolean),
  public.get_conversation_messages(uuid, timestamptz, integer),
  public.get_user_conversations(),
  public.get_total_unread_count(),
  public.mark_conversation_read(uuid),
  public.report_message(uuid, text),
  public.moderate_delete_message(uuid, text),
  public.reset_broadcast_quotas(),
  public.profiles_sync_role_v2(),
  public.messages_before_insert_v2(),
  public.messages_count_backdated_v2(public.messages),
  public.messages_before_update_v2(),
  public.conversation_participants_before_update_v2(),
  public.conversation_participants_after_update_v2(),
  public.feature_flags_before_write(),
  public.feature_flags_audit_write(),
  public.direct_conversations_forget_v2(),
  public.direct_conversations_refresh_v2(uuid[]),
  public.direct_conversations_refresh_of_user_v2(),
  public.messaging_horizon(),
  public.sync_legacy_message_columns(timestamptz),
  public.messages_after_read_v2()
  from public, anon, authenticated;
grant execute on function
  public.feature_bucket(text, uuid),
  public.is_feature_enabled(text),
  public.current_profile_role(),
  public.is_conversation_participant(uuid),
  public.message_white_space(),
  public.normalize_message_text(text),
  public.can_user_send_dm(uuid, uuid, uuid),
  public.can_user_reply(uuid, uuid),
  public.send_message(uuid, text),
  public.send_direct_message(uuid, text, uuid),
  public.send_broadcast(uuid, text, text[], boolean),
  public.get_conversation_messages(uuid, timestamptz, integer),
  public.get_user_conversations(),
  public.get_total_unread_count(),
  public.mark_conversation_read(uuid),
  public.report_message(uuid, text),
  public.moderate_delete_message(uuid, text)
  to authenticated;
grant execute on function public.reset_broadcast_quotas() to service_role;

-- ---------------------------------------------------------------------------------------
-- Policies: one per operation, to authenticated. Production's policies on the messaging
-- tables are dropped by name (the rollback recreates them exactly): the participants' select
-- policy recursed, the others read that table under RLS (and so recursed too), and the admin
-- FOR ALL policies let an admin write as anyone. Admins keep reading everything.
-- ---------------------------------------------------------------------------------------
drop policy if exists conversations_all_admin on public.conversations;
drop policy if exists conversations_insert on public.conversations;
drop policy if exists conversations_select_participant on public.conversations;
drop policy if exists conversations_update_participant on public.conversations;
drop policy if exists conversations_select_member on public.conversations;
create policy conversations_select_member on public.conversations
  for select to authenticated
  using (public.is_conversation_participant(id) or (select public.is_admin()));

drop policy if exists conversation_participants_all_admin on public.conversation_participants;
drop policy if exists conversation_participants_insert_self on public.conversation_participants;
drop policy if exists conversation_participants_select on public.conversation_participants;
drop policy if exists conversation_participants_select_member
  on public.conversation_participants;
create policy conversation_participants_select_member on public.conversation_participants
  for select to authenticated
  using (public.is_conversation_participant(conversation_id) or (select public.is_admin()));
drop policy if exists conversation_participants_update_own_unread
  on public.conversation_participants;
create policy conversation_participants_update_own_unread on public.conversation_participants
  for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));
-- conversation_participants_delete_self (leave a conversation) stays as production has it.

drop policy if exists messages_all_admin on public.messages;
drop policy if exists messages_insert_participant on public.messages;
drop policy if exists messages_select_participant on public.messages;
drop policy if exists messages_update_own on public.messages;
drop policy if exists messages_delete_own on public.messages;
drop policy if exists messages_select_member on public.messages;
create policy messages_select_member on public.messages
  for select to authenticated
  using (public.is_conversation_participant(conversation_id) or (select public.is_admin()));
drop policy if exists messages_insert_reply on public.messages;
create policy messages_insert_reply on public.messages
  for insert to authenticated
  with check (sender_id = (select auth.uid())
              and public.can_user_reply((select auth.uid()), conversation_id));
drop policy if exists messages_update_mark_read on public.messages;
create policy messages_update_mark_read on public.messages
  for update to authenticated
  using (public.is_conversation_participant(conversation_id))
  with check (public.is_conversation_participant(conversation_id));

drop policy if exists feature_flags_select_all on public.feature_flags;
create policy feature_flags_select_all on public.feature_flags
  for select to authenticated using (true);

drop policy if exists reported_messages_select_own_or_admin on public.reported_messages;
create policy reported_messages_select_own_or_admin on public.reported_messages
  for select to authenticated
  using (reported_by = (select auth.uid()) or (select public.is_admin()));

drop policy if exists moderated_message_texts_select_admin on public.moderated_message_texts;
create policy moderated_message_texts_select_admin on public.moderated_message_texts
  for select to authenticated using ((select public.is_admin()));

-- broadcast_quotas, feature_flag_audit, direct_conversations: RLS on, no policy, no grant:
-- functions only.

commit;
