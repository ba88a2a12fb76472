-- Rollback of production_messaging_system.sql: production back to exactly its earlier shape
-- (the catalog of legacy_baseline.sql = ../shared/production/app_schema.sql) WITHOUT losing
-- anything written while v2 was live.
--
-- Nothing is deleted:
-- * messages (broadcasts included), conversations, participant rows and reports stay where
--   they are: v2 wrote them into production's own tables and columns;
-- * production's earlier-shape broadcast_quotas comes back from the archive, with today's v2
--   usage folded in (remaining = limit - used, for rows v2 changed after converting them);
-- * v2's own tables (per-day quotas, flags and their audit, moderated texts, DM pairs) move to schema
--   messaging_v2_archive (`alter table ... set schema`: catalog-only, instant), where a
--   re-apply finds them again.
-- Soft-deleted messages keep their placeholder text in public.messages; the original text
-- only ever lived in moderated_message_texts, which goes to the unexposed archive schema.
-- One transaction; safe to re-run (every step checks what is there).

begin;

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create schema if not exists messaging_v2_archive;
comment on schema messaging_v2_archive is
  'Messaging v2 data kept by rollback_production_messaging.sql; restored by a re-apply. '
  'While v2 is live it holds production''s earlier-shape broadcast_quotas (broadcast_quotas_v1).';
revoke all on schema messaging_v2_archive from public;

-- 0. Production's last_message_* and unread_count columns catch up with every message v2 sent
-- (its functions leave them to the legacy sync job). No insert can slip in between: messages
-- stay locked against writes until production's trigger is back, at commit.
lock table public.messages in share row exclusive mode;
do $$
begin
  if to_regprocedure('public.sync_legacy_message_columns(timestamptz)') is not null then
    perform public.sync_legacy_message_columns(pg_catalog.clock_timestamp());
  end if;
end
$$;

-- 1. Broadcast quotas: today's v2 usage into the earlier shape, then the tables swap back.
do $$
begin
  if to_regclass('messaging_v2_archive.broadcast_quotas_v1') is null then
    return;
  end if;
  if exists (select 1 from pg_catalog.pg_attribute
              where attrelid = to_regclass('public.broadcast_quotas')
                and attname = 'quota_date' and not attisdropped) then
    insert into messaging_v2_archive.broadcast_quotas_v1 as v
      (organizer_id, show_id, pre_show_remaining, post_show_remaining, last_updated)
    select q.organizer_id, q.show_id,
           greatest(0, q.pre_show_limit - q.pre_show_used)::smallint,
           greatest(0, q.post_show_limit - q.post_show_used)::smallint,
           q.updated_at
      from public.broadcast_quotas q
     where q.quota_date = (now() at time zone 'utc')::date
    on conflict (organizer_id, show_id) do update
       set pre_show_remaining = excluded.pre_show_remaining,
           post_show_remaining = excluded.post_show_remaining,
           last_updated = excluded.last_updated
     where excluded.last_updated > v.last_updated;
    if to_regclass('messaging_v2_archive.broadcast_quotas') is not null then
      raise exception 'messaging_v2_archive.broadcast_quotas already exists next to public.broadcast_quotas';
    end if;
    alter table public.broadcast_quotas set schema messaging_v2_archive;
  end if;
  alter table messaging_v2_archive.broadcast_quotas_v1 set schema public;
  alter table public.broadcast_quotas_v1 rename to broadcast_quotas;
end
$$;

-- 2. v2 policies, dropped by name (other policies, e.g. maintenance ones, are left alone).
drop policy if exists conversations_select_member on public.conversations;
drop policy if exists conversation_participants_select_member
  on public.conversation_participants;
drop policy if exists conversation_participants_update_own_unread
  on public.conversation_participants;
drop policy if exists messages_select_member on public.messages;
drop policy if exists messages_insert_reply on public.messages;
drop policy if exists messages_update_mark_read on public.messages;
drop policy if exists reported_messages_select_own_or_admin on public.reported_messages;

do $$
begin
  if to_regclass('public.feature_flags') is not null then
    drop policy if exists feature_flags_select_all on public.feature_flags;
    drop trigger if exists feature_flags_before_write on public.feature_flags;
    drop trigger if exists feature_flags_audit_write on public.feature_flags;
  end if;
  if to_regclass('public.moderated_message_texts') is not null then
    drop policy if exists moderated_message_texts_select_admin
      on public.moderated_message_texts;
  end if;
end
$$;

-- 3. v2 triggers; production's come back.
drop trigger if exists messages_before_insert_v2 on public.messages;
drop trigger if exists messages_after_insert_v2 on public.messages;
drop trigger if exists messages_before_update_v2 on public.messages;
drop trigger if exists messages_after_read_v2 on public.messages;
drop trigger if exists conversation_participants_before_update_v2
  on public.conversation_participants;
drop trigger if exists conversation_participants_after_update_v2
  on public.conversation_participants;
drop trigger if exists messages_after_insert_trigger on public.messages;
create trigger messages_after_insert_trigger after insert on public.messages
  for each row execute function public.messages_update_conversation_trigger();
drop trigger if exists profiles_role_sync_trigger on public.profiles;
create trigger profiles_role_sync_trigger before insert or update on public.profiles
  for each row execute function public.sync_user_role();
drop trigger if exists set_role_when_added_trigger on public.conversation_participants;
create trigger set_role_when_added_trigger before insert on public.conversation_participants
  for each row execute function public.set_role_when_added_trigger();
drop trigger if exists direct_conversations_forget_v2 on public.conversation_participants;
drop trigger if exists direct_conversations_refresh_v2 on public.conversation_participants;
drop trigger if exists direct_conversations_refresh_v2 on public.profiles;

-- 4. Production's grants: every table privilege to the API roles, no column grants.
do $$
declare
  v_columns text;
begin
  select string_agg(format('%I', a.attname), ', ') into v_columns
    from pg_catalog.pg_attribute a
   where a.attrelid = 'public.profiles'::regclass and a.attnum > 0 and not a.attisdropped;
  execute format('revoke update (%s) on public.profiles from authenticated', v_columns);
end
$$;
revoke update (unread_count) on public.conversation_participants from authenticated;
revoke insert (id, conversation_id, sender_id, message_text, created_at, read_by_user_ids)
  on public.messages from authenticated;
revoke update (read_by_user_ids) on public.messages from authenticated;
grant all on public.profiles, public.conversations, public.conversation_participants,
  public.messages, public.reported_messages to anon, authenticated, service_role;

-- 5. Production's policies, exactly as deployed (the recursive one included: this is the
-- shape the app had, and a re-apply replaces it again).
drop policy if exists conversations_all_admin on public.conversations;
create policy conversations_all_admin on public.conversations
  using (public.is_admin() or auth.role() = 'service_role');
drop policy if exists conversations_insert on public.conversations;
create policy conversations_insert on public.conversations for insert
  with check (auth.role() = 'authenticated');
drop policy if exists conversations_select_participant on public.conversations;
create policy conversations_select_participant on public.conversations for select
  using (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = conversations.id
                    and conversation_participants.user_id = auth.uid()));
drop policy if exists conversations_update_participant on public.conversations;
create policy conversations_update_participant on public.conversations for update
  using (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = conversations.id
                    and conversation_participants.user_id = auth.uid()))
  with check (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = conversations.id
                    and conversation_participants.user_id = auth.uid()));

drop policy if exists conversation_participants_all_admin on public.conversation_participants;
create policy conversation_participants_all_admin on public.conversation_participants
  using (public.is_admin() or auth.role() = 'service_role');
drop policy if exists conversation_participants_insert_self on public.conversation_participants;
create policy conversation_participants_insert_self on public.conversation_participants
  for insert with check (user_id = auth.uid());
drop policy if exists conversation_participants_select on public.conversation_participants;
create policy conversation_participants_select on public.conversation_participants for select
  using (exists (select 1 from public.conversation_participants cp1
                  where cp1.conversation_id = cp1.conversation_id and cp1.user_id = auth.uid()));

drop policy if exists messages_all_admin on public.messages;
create policy messages_all_admin on public.messages
  using (public.is_admin() or auth.role() = 'service_role');
drop policy if exists messages_insert_participant on public.messages;
create policy messages_insert_participant on public.messages for insert
  with check (sender_id = auth.uid() and exists (
    select 1 from public.conversation_participants
     where conversation_participants.conversation_id = messages.conversation_id
       and conversation_participants.user_id = auth.uid()));
drop policy if exists messages_select_participant on public.messages;
create policy messages_select_participant on public.messages for select
  using (exists (select 1 from public.conversation_participants
                  where conversation_participants.conversation_id = messages.conversation_id
                    and conversation_participants.user_id = auth.uid()));
drop policy if exists messages_update_own on public.messages;
create policy messages_update_own on public.messages for update
  using (sender_id = auth.uid()) with check (sender_id = auth.uid());
drop policy if exists messages_delete_own on public.messages;
create policy messages_delete_own on public.messages for delete using (sender_id = auth.uid());

-- 6. v2's indexes and the messages.created_at default on production tables.
alter table public.messages alter column created_at set default timezone('utc', now());
drop index if exists public.reported_messages_message_id_idx;
drop index if exists public.reported_messages_reported_by_idx;
drop index if exists public.reported_messages_report_status_idx;
drop index if exists public.conversation_participants_user_id_idx;
drop index if exists public.messages_deleted_by_idx;
drop index if exists public.messages_show_context_idx;
drop index if exists public.conversations_show_id_idx;
-- squawk-ignore require-concurrent-index-creation
create index if not exists idx_messages_conversation_id on public.messages (conversation_id);
drop index if exists public.messages_conversation_id_created_at_idx;

-- 7. v2 tables to the archive, rows and all.
do $$
declare
  t text;
begin
  foreach t in array array['feature_flags', 'feature_flag_audit', 'moderated_message_texts',
                           'direct_conversations']
  loop
    if to_regclass('public.' || t) is not null then
      if to_regclass('messaging_v2_archive.' || t) is not null then
        raise exception 'messaging_v2_archive.% already exists next to public.%', t, t;
      end if;
      execute format('alter table public.%I set schema messaging_v2_archive', t);
    end if;
  end loop;
end
$$;

-- The legacy sync's position goes (a re-apply starts from its own time: production's trigger
-- kept the columns meanwhile).
drop table if exists public.messaging_legacy_sync;

-- 8. v2 functions; production's functions get their unpinned search_path back.
drop function if exists public.sync_legacy_message_columns(timestamptz);
drop function if exists public.messaging_horizon();
drop function if exists public.messages_after_read_v2();
drop function if exists public.send_message(uuid, text);
drop function if exists public.send_direct_message(uuid, text, uuid);
drop function if exists public.send_broadcast(uuid, text, text[], boolean);
drop function if exists public.get_conversation_messages(uuid, timestamptz, integer);
drop function if exists public.get_user_conversations();
drop function if exists public.get_total_unread_count();
drop function if exists public.mark_conversation_read(uuid);
drop function if exists public.report_message(uuid, text);
drop function if exists public.moderate_delete_message(uuid, text);
drop function if exists public.reset_broadcast_quotas();
drop function if exists public.profiles_sync_role_v2();
drop function if exists public.messages_before_insert_v2();
drop function if exists public.messages_after_insert_v2();
drop function if exists public.messages_count_backdated_v2(public.messages);
drop function if exists public.messages_before_update_v2();
drop function if exists public.conversation_participants_before_update_v2();
drop function if exists public.conversation_participants_after_update_v2();
drop function if exists public.feature_flags_before_write();
drop function if exists public.feature_flags_audit_write();
drop function if exists public.direct_conversations_forget_v2();
drop function if exists public.direct_conversations_refresh_of_user_v2();
drop function if exists public.direct_conversations_refresh_v2(uuid[]);
drop function if exists public.can_user_send_dm(uuid, uuid, uuid);
drop function if exists public.can_user_reply(uuid, uuid);
drop function if exists public.normalize_message_text(text);
drop function if exists public.message_white_space();
drop function if exists public.is_feature_enabled(text);
drop function if exists public.feature_bucket(text, uuid);
drop function if exists public.is_conversation_participant(uuid);
drop function if exists public.current_profile_role();

alter function public.is_admin() reset search_path;
alter function public.is_mvp_dealer() reset search_path;
alter function public.is_show_organizer() reset search_path;
alter function public.sync_user_role() reset search_path;
alter function public.set_role_when_added_trigger() reset search_path;
alter function public.messages_update_conversation_trigger() reset search_path;

commit;
