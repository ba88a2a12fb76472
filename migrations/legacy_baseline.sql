-- Legacy baseline: the app's schema BEFORE messaging v2, as deployed today on Supabase.
--
-- Applied after the Supabase bootstrap (local) and before production_messaging_system.sql.
-- The mobile app talks to these tables directly through PostgREST as `authenticated`, so the
-- table and column names are part of its contract and must not change.
-- Legacy rules: any participant reads and writes the conversations they are in; the app
-- creates conversations and participant rows itself; a trigger keeps the conversation's last
-- message and the other participants' unread counts.
-- Idempotent (create ... if not exists, policies dropped by name before being created).

begin;

-- profiles ----------------------------------------------------------------------------------
create table if not exists public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  role text not null default 'attendee'
    check (role in ('attendee', 'dealer', 'mvp_dealer', 'show_organizer', 'admin')),
  display_name text,
  avatar_url text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table public.profiles is 'One row per auth user: display data and the messaging role.';
alter table public.profiles enable row level security;
create index if not exists profiles_role_idx on public.profiles (role);

drop policy if exists profiles_select_all on public.profiles;
create policy profiles_select_all on public.profiles
  for select to authenticated using (true);
drop policy if exists profiles_insert_own on public.profiles;
create policy profiles_insert_own on public.profiles
  for insert to authenticated with check (id = auth.uid());
drop policy if exists profiles_update_own on public.profiles;
create policy profiles_update_own on public.profiles
  for update to authenticated using (id = auth.uid()) with check (id = auth.uid());

-- shows -------------------------------------------------------------------------------------
create table if not exists public.shows (
  id uuid primary key default gen_random_uuid(),
  title text not null,
  start_date timestamptz not null,
  end_date timestamptz,
  status text not null default 'upcoming',
  organizer_id uuid references public.profiles (id) on delete set null,
  created_at timestamptz not null default now()
);
comment on table public.shows is 'Card shows; organizer_id is the organizing user.';
alter table public.shows enable row level security;
create index if not exists shows_organizer_id_idx on public.shows (organizer_id);

drop policy if exists shows_select_all on public.shows;
create policy shows_select_all on public.shows
  for select to authenticated using (true);
drop policy if exists shows_insert_organizer on public.shows;
create policy shows_insert_organizer on public.shows
  for insert to authenticated with check (organizer_id = auth.uid());
drop policy if exists shows_update_organizer on public.shows;
create policy shows_update_organizer on public.shows
  for update to authenticated using (organizer_id = auth.uid())
  with check (organizer_id = auth.uid());

-- show_participants -------------------------------------------------------------------------
create table if not exists public.show_participants (
  id uuid primary key default gen_random_uuid(),
  userid uuid not null references public.profiles (id) on delete cascade,
  showid uuid not null references public.shows (id) on delete cascade,
  role text,
  status text not null default 'registered',
  created_at timestamptz not null default now(),
  unique (userid, showid)
);
comment on table public.show_participants is 'Who is registered for which show (userid, showid).';
alter table public.show_participants enable row level security;
create index if not exists show_participants_showid_idx on public.show_participants (showid);

drop policy if exists show_participants_select_all on public.show_participants;
create policy show_participants_select_all on public.show_participants
  for select to authenticated using (true);
drop policy if exists show_participants_insert_own on public.show_participants;
create policy show_participants_insert_own on public.show_participants
  for insert to authenticated with check (userid = auth.uid());
drop policy if exists show_participants_delete_own on public.show_participants;
create policy show_participants_delete_own on public.show_participants
  for delete to authenticated using (userid = auth.uid());

-- conversations -----------------------------------------------------------------------------
create table if not exists public.conversations (
  id uuid primary key default gen_random_uuid(),
  type text not null default 'direct',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  last_message_text text,
  last_message_timestamp timestamptz
);
comment on table public.conversations is 'A chat thread; last_message_* are kept by a trigger.';
alter table public.conversations enable row level security;

create table if not exists public.conversation_participants (
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  user_id uuid not null references public.profiles (id) on delete cascade,
  unread_count integer not null default 0,
  joined_at timestamptz not null default now(),
  primary key (conversation_id, user_id)
);
comment on table public.conversation_participants is
  'Membership of a conversation, with the member''s unread message count.';
alter table public.conversation_participants enable row level security;
create index if not exists conversation_participants_user_id_idx
  on public.conversation_participants (user_id);

create table if not exists public.messages (
  id uuid primary key default gen_random_uuid(),
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  sender_id uuid references public.profiles (id) on delete set null,
  message_text text not null,
  created_at timestamptz not null default now(),
  read_by_user_ids uuid[] not null default '{}'
);
comment on table public.messages is 'Chat messages; read_by_user_ids lists who has read each one.';
alter table public.messages enable row level security;
create index if not exists messages_conversation_id_created_at_idx
  on public.messages (conversation_id, created_at);
create index if not exists messages_sender_id_idx on public.messages (sender_id);

-- Legacy participant-based RLS. conversation_participants only shows the caller's own rows:
-- a policy on it that looked at other rows of the same table would recurse.
drop policy if exists conversations_select_participant on public.conversations;
create policy conversations_select_participant on public.conversations
  for select to authenticated using (
    exists (
      select 1 from public.conversation_participants cp
      where cp.conversation_id = conversations.id and cp.user_id = auth.uid()
    )
  );
drop policy if exists conversations_insert_authenticated on public.conversations;
create policy conversations_insert_authenticated on public.conversations
  for insert to authenticated with check (true);
drop policy if exists conversations_update_participant on public.conversations;
create policy conversations_update_participant on public.conversations
  for update to authenticated using (
    exists (
      select 1 from public.conversation_participants cp
      where cp.conversation_id = conversations.id and cp.user_id = auth.uid()
    )
  );

drop policy if exists conversation_participants_select_own on public.conversation_participants;
create policy conversation_participants_select_own on public.conversation_participants
  for select to authenticated using (user_id = auth.uid());
drop policy if exists conversation_participants_insert_authenticated
  on public.conversation_participants;
create policy conversation_participants_insert_authenticated on public.conversation_participants
  for insert to authenticated with check (true);
drop policy if exists conversation_participants_update_own on public.conversation_participants;
create policy conversation_participants_update_own on public.conversation_participants
  for update to authenticated using (user_id = auth.uid()) with check (user_id = auth.uid());

drop policy if exists messages_select_participant on public.messages;
create policy messages_select_participant on public.messages
  for select to authenticated using (
    exists (
      select 1 from public.conversation_participants cp
      where cp.conversation_id = messages.conversation_id and cp.user_id = auth.uid()
    )
  );
drop policy if exists messages_insert_participant on public.messages;
create policy messages_insert_participant on public.messages
  for insert to authenticated with check (
    sender_id = auth.uid()
    and exists (
      select 1 from public.conversation_participants cp
      where cp.conversation_id = messages.conversation_id and cp.user_id = auth.uid()
    )
  );
drop policy if exists messages_update_participant on public.messages;
create policy messages_update_participant on public.messages
  for update to authenticated using (
    exists (
      select 1 from public.conversation_participants cp
      where cp.conversation_id = messages.conversation_id and cp.user_id = auth.uid()
    )
  );

-- Last-message and unread bookkeeping for the legacy app (security definer: the sender may
-- not update the other participants' rows under RLS).
create or replace function public.handle_new_message()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.conversations
     set last_message_text = new.message_text,
         last_message_timestamp = new.created_at,
         updated_at = now()
   where id = new.conversation_id
     and (last_message_timestamp is null or last_message_timestamp <= new.created_at);
  update public.conversation_participants
     set unread_count = unread_count + 1
   where conversation_id = new.conversation_id
     and user_id is distinct from new.sender_id;
  return new;
end;
$$;
comment on function public.handle_new_message() is
  'Legacy: last message and unread counts on insert. Definer: writes other users'' rows.';

drop trigger if exists on_new_message on public.messages;
create trigger on_new_message
  after insert on public.messages
  for each row execute function public.handle_new_message();

commit;
