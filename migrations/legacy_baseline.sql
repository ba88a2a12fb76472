-- Legacy baseline: the card-show app's production schema as it is today, before messaging v2.
--
-- This is ../shared/production/app_schema.sql (written from the app's public schema dump), kept
-- verbatim below the line so local stacks, tests, rehearsals and benchmarks start from what
-- production really holds; tests/messaging/test_production_baseline.py compares the two catalogs
-- so they cannot drift apart. Local plans apply it once (`db.seed` with `unless_exists`); on
-- Supabase it already exists. Apply after the Supabase-like bootstrap.
-- ------------------------------------------------------------------------------------------------
-- The card-show app's production database, as far as messaging touches it.
--
-- Written from the app's public schema dump of 2025-07-22 (tables, columns, defaults,
-- constraints, triggers, policies and grants of the tables below), so a migration can be tried
-- against what production really holds before it is trusted with it. Apply it after a
-- Supabase-like bootstrap (roles anon / authenticated / service_role, auth.users, auth.uid(),
-- auth.role(), default grants of public to the API roles), as Supabase projects have.
--
-- What it shows about production that a migration must survive:
--   * profiles.role is derived by a trigger from account_type + subscription_status (lowercase
--     values); the app writes many profile columns directly (names, zip, socials, favourites);
--   * conversations.type is checked to ('direct', 'group', 'show') and the table has no
--     updated_at / created_by;
--   * broadcast_quotas and reported_messages already exist, in an earlier shape (quotas as
--     "remaining" counters, one row per organizer and show, no date);
--   * messages already carries moderation / broadcast columns from an earlier partial release;
--   * the participants' select policy compares a column with itself and queries its own table:
--     as deployed it fails with "infinite recursion detected in policy" for API users.
-- One deliberate difference from the dump: messages has the columns that the app's builds and
-- its trigger use (message_text, read_by_user_ids); the dump also lists an older shape
-- (content, recipient_id, read_at) that nothing in the app writes any more.

begin;

create table public.profiles (
  id uuid primary key references auth.users (id),
  email text not null,
  first_name text,
  last_name text,
  home_zip_code text,
  role text default 'ATTENDEE',
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  favorite_shows text[] default '{}',
  attended_shows text[] default '{}',
  account_type varchar(20) not null default 'collector'
    check (account_type in ('collector', 'dealer', 'organizer')),
  subscription_status varchar(20) not null default 'none'
    check (subscription_status in ('active', 'expired', 'none')),
  subscription_expiry timestamptz,
  subscription_type text default 'none',
  subscription_id text,
  profile_image_url text,
  business_name text,
  dealer_bio text,
  external_links jsonb,
  dealer_specialties text[],
  banner_image_url text,
  pre_show_broadcasts_remaining integer default 2,
  post_show_broadcasts_remaining integer default 1,
  phone_number text,
  facebook_url text,
  instagram_url text,
  twitter_url text,
  whatnot_url text,
  ebay_store_url text,
  favorite_shows_count integer not null default 0,
  payment_status varchar(20) not null default 'none'
    check (payment_status in ('trial', 'paid', 'none'))
);

create table public.shows (
  id uuid primary key default gen_random_uuid(),
  title text not null,
  location text not null,
  address text not null,
  start_date timestamptz not null,
  end_date timestamptz not null,
  entry_fee numeric(10, 2),
  description text,
  image_url text,
  rating numeric(2, 1),
  status text default 'ACTIVE',
  organizer_id uuid references auth.users (id),
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  features jsonb default '{}',
  categories text[] default '{}',
  start_time text,
  end_time text,
  website_url text
);

create table public.show_participants (
  id uuid primary key default gen_random_uuid(),
  userid uuid not null references auth.users (id) on delete cascade,
  showid uuid not null references public.shows (id) on delete cascade,
  createdat timestamptz default now(),
  card_types text[] default '{}',
  specialty text,
  price_range varchar(20) check (price_range in ('budget', 'mid-range', 'high-end')),
  notable_items text,
  booth_location text,
  payment_methods text[] default '{}',
  open_to_trades boolean default false,
  buying_cards boolean default false,
  status varchar(20) default 'registered'
    check (status in ('registered', 'confirmed', 'cancelled', 'completed')),
  role text not null default 'attendee',
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  unique (userid, showid)
);
create index idx_show_participants_showid on public.show_participants (showid);
create index idx_show_participants_userid on public.show_participants (userid);
create index idx_show_participants_role on public.show_participants (role);

create table public.conversations (
  id uuid primary key default gen_random_uuid(),
  type text not null check (type in ('direct', 'group', 'show')),
  show_id uuid references public.shows (id),
  created_at timestamptz default now(),
  last_message_text text,
  last_message_timestamp timestamptz
);

create table public.conversation_participants (
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  display_name text,
  photo_url text,
  unread_count integer default 0,
  can_reply boolean default true,
  role_when_added text,
  primary key (conversation_id, user_id)
);

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  conversation_id uuid not null,
  sender_id uuid not null references auth.users (id),
  message_text text not null,
  created_at timestamptz default timezone('utc', now()),
  read_by_user_ids uuid[] default '{}',
  is_deleted boolean default false,
  deleted_by uuid references auth.users (id),
  deleted_at timestamptz,
  deletion_reason text,
  is_one_way boolean default false,
  is_broadcast boolean default false,
  show_context uuid references public.shows (id)
);
create index idx_messages_conversation_id on public.messages (conversation_id);
create index idx_messages_created_at on public.messages (created_at);
create index idx_messages_sender_id on public.messages (sender_id);

create table public.broadcast_quotas (
  organizer_id uuid not null references auth.users (id) on delete cascade,
  show_id uuid not null references public.shows (id) on delete cascade,
  pre_show_remaining smallint default 2,
  post_show_remaining smallint default 1,
  last_updated timestamptz default now(),
  primary key (organizer_id, show_id)
);

create table public.reported_messages (
  id uuid primary key default gen_random_uuid(),
  message_id uuid not null references public.messages (id) on delete cascade,
  reported_by uuid not null references auth.users (id),
  report_reason text not null,
  report_status text default 'pending'
    check (report_status in ('pending', 'reviewed', 'dismissed', 'actioned')),
  created_at timestamptz default now(),
  reviewed_at timestamptz,
  reviewed_by uuid references auth.users (id),
  admin_notes text
);

-- Functions and triggers as deployed (no search_path pinned, as in production).
create function public.is_admin() returns boolean language plpgsql security definer as $$
begin
  return exists (select 1 from profiles where id = auth.uid() and lower(role) = 'admin');
end $$;
create function public.is_mvp_dealer() returns boolean language plpgsql security definer as $$
begin
  return exists (select 1 from profiles where id = auth.uid() and lower(role) = 'mvp_dealer');
end $$;
create function public.is_show_organizer() returns boolean language plpgsql security definer as $$
begin
  return exists (select 1 from profiles where id = auth.uid() and lower(role) = 'show_organizer');
end $$;

create function public.sync_user_role() returns trigger language plpgsql security definer as $$
begin
  if new.account_type = 'organizer' then
    new.role := case when new.subscription_status = 'active' then 'show_organizer' else 'dealer' end;
  elsif new.account_type = 'dealer' then
    new.role := case when new.subscription_status = 'active' then 'mvp_dealer' else 'dealer' end;
  elsif new.account_type = 'collector' then
    new.role := 'attendee';
  end if;
  return new;
end $$;
create trigger profiles_role_sync_trigger before insert or update on public.profiles
  for each row execute function public.sync_user_role();

create function public.set_role_when_added_trigger() returns trigger language plpgsql as $$
begin
  if new.role_when_added is null then
    select role into new.role_when_added from profiles where id = new.user_id;
  end if;
  return new;
end $$;
create trigger set_role_when_added_trigger before insert on public.conversation_participants
  for each row execute function public.set_role_when_added_trigger();

create function public.messages_update_conversation_trigger() returns trigger language plpgsql as $$
begin
  update conversations set last_message_text = new.message_text,
                           last_message_timestamp = new.created_at
   where id = new.conversation_id;
  update conversation_participants set unread_count = unread_count + 1
   where conversation_id = new.conversation_id and user_id != new.sender_id
     and unread_count < 999;
  return new;
end $$;
create trigger messages_after_insert_trigger after insert on public.messages
  for each row execute function public.messages_update_conversation_trigger();

-- Row-level security as deployed.
alter table public.profiles enable row level security;
alter table public.shows enable row level security;
alter table public.show_participants enable row level security;
alter table public.conversations enable row level security;
alter table public.conversation_participants enable row level security;
alter table public.messages enable row level security;
alter table public.broadcast_quotas enable row level security;   -- no policy: API roles see none
alter table public.reported_messages enable row level security;  -- no policy: API roles see none

create policy profiles_all_admin on public.profiles
  using (auth.role() = 'service_role' or public.is_admin());
create policy profiles_select_others on public.profiles for select
  using (auth.role() = 'authenticated');
create policy profiles_select_self on public.profiles for select using (auth.uid() = id);
create policy profiles_update_self on public.profiles for update
  using (auth.uid() = id) with check (auth.uid() = id);

create policy shows_select_all on public.shows for select using (true);
create policy shows_insert_organizer on public.shows for insert
  with check (auth.uid() = organizer_id or public.is_show_organizer());
create policy shows_update_organizer on public.shows for update
  using (auth.uid() = organizer_id) with check (auth.uid() = organizer_id);
create policy shows_update_admin on public.shows for update using (public.is_admin());
create policy shows_delete_organizer on public.shows for delete using (auth.uid() = organizer_id);

create policy show_participants_all_admin on public.show_participants
  using (public.is_admin() or auth.role() = 'service_role');
create policy show_participants_select_self on public.show_participants for select
  to authenticated using (userid = auth.uid());
create policy show_participants_select_organizer on public.show_participants for select
  using (exists (select 1 from public.shows
                  where shows.id = show_participants.showid and shows.organizer_id = auth.uid()));
create policy show_participants_insert on public.show_participants for insert
  with check (userid = auth.uid());
create policy show_participants_update_self on public.show_participants for update
  using (userid = auth.uid()) with check (userid = auth.uid());
create policy show_participants_delete_self on public.show_participants for delete
  using (userid = auth.uid());

create policy conversations_all_admin on public.conversations
  using (public.is_admin() or auth.role() = 'service_role');
create policy conversations_insert on public.conversations for insert
  with check (auth.role() = 'authenticated');
create policy conversations_select_participant on public.conversations for select
  using (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = conversations.id
                    and conversation_participants.user_id = auth.uid()));
create policy conversations_update_participant on public.conversations for update
  using (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = conversations.id
                    and conversation_participants.user_id = auth.uid()))
  with check (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = conversations.id
                    and conversation_participants.user_id = auth.uid()));

create policy conversation_participants_all_admin on public.conversation_participants
  using (public.is_admin() or auth.role() = 'service_role');
create policy conversation_participants_insert_self on public.conversation_participants
  for insert with check (user_id = auth.uid());
create policy conversation_participants_delete_self on public.conversation_participants
  for delete using (user_id = auth.uid());
-- As deployed: compares a column with itself and reads its own table (recursion for API users).
create policy conversation_participants_select on public.conversation_participants for select
  using (exists (select 1 from public.conversation_participants cp1
                  where cp1.conversation_id = cp1.conversation_id and cp1.user_id = auth.uid()));

create policy messages_all_admin on public.messages
  using (public.is_admin() or auth.role() = 'service_role');
create policy messages_insert_participant on public.messages for insert
  with check (sender_id = auth.uid() and exists (
    select 1 from public.conversation_participants
     where conversation_participants.conversation_id = messages.conversation_id
       and conversation_participants.user_id = auth.uid()));
create policy messages_select_participant on public.messages for select
  using (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = messages.conversation_id
                    and conversation_participants.user_id = auth.uid()));
create policy messages_update_own on public.messages for update
  using (sender_id = auth.uid()) with check (sender_id = auth.uid());
create policy messages_delete_own on public.messages for delete using (sender_id = auth.uid());

-- Grants as deployed: the API roles hold every table privilege; RLS decides the rows.
grant all on public.profiles, public.shows, public.show_participants, public.conversations,
  public.conversation_participants, public.messages, public.broadcast_quotas,
  public.reported_messages to anon, authenticated, service_role;
grant execute on function public.is_admin(), public.is_mvp_dealer(), public.is_show_organizer()
  to anon, authenticated, service_role;

commit;
