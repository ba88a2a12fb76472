-- Rollback of production_messaging_system.sql: back to the legacy behaviour (legacy policies,
-- grants and trigger; no v2 functions or columns) WITHOUT losing anything written while v2
-- was live.
--
-- Nothing is deleted:
-- * messages (broadcasts included), conversations and participant rows stay where they are;
-- * the v2 tables (reports, quotas, flags and their audit, moderated texts) move to schema
--   messaging_v2_archive (`alter table ... set schema`: catalog-only, instant);
-- * the v2 columns of legacy tables are copied into messaging_v2_archive.*_v2_columns (only
--   rows that differ from the defaults) before the columns are dropped.
-- A re-apply of production_messaging_system.sql moves all of it back.
-- Soft-deleted messages keep their placeholder text in public.messages; the original text
-- only ever lived in moderated_message_texts, which goes to the unexposed archive schema.
-- One transaction; safe to re-run (every step checks what is there).

begin;

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create schema if not exists messaging_v2_archive;
comment on schema messaging_v2_archive is
  'Messaging v2 data kept by rollback_production_messaging.sql; restored by a re-apply.';
revoke all on schema messaging_v2_archive from public;

-- 1. Keep the v2 columns' values.
do $$
begin
  if exists (select 1 from pg_catalog.pg_attribute
              where attrelid = 'public.messages'::regclass and attname = 'is_deleted'
                and not attisdropped) then
    create table if not exists messaging_v2_archive.messages_v2_columns (
      id uuid primary key,
      is_deleted boolean not null,
      is_broadcast boolean not null,
      deleted_at timestamptz,
      deleted_by uuid
    );
    insert into messaging_v2_archive.messages_v2_columns
      (id, is_deleted, is_broadcast, deleted_at, deleted_by)
    select id, is_deleted, is_broadcast, deleted_at, deleted_by
      from public.messages
     where is_deleted or is_broadcast or deleted_at is not null or deleted_by is not null
    on conflict (id) do update
       set is_deleted = excluded.is_deleted, is_broadcast = excluded.is_broadcast,
           deleted_at = excluded.deleted_at, deleted_by = excluded.deleted_by;
  end if;

  if exists (select 1 from pg_catalog.pg_attribute
              where attrelid = 'public.conversations'::regclass and attname = 'show_id'
                and not attisdropped) then
    create table if not exists messaging_v2_archive.conversations_v2_columns (
      id uuid primary key,
      show_id uuid,
      created_by uuid
    );
    insert into messaging_v2_archive.conversations_v2_columns (id, show_id, created_by)
    select id, show_id, created_by
      from public.conversations
     where show_id is not null or created_by is not null
    on conflict (id) do update
       set show_id = excluded.show_id, created_by = excluded.created_by;
  end if;

  if exists (select 1 from pg_catalog.pg_attribute
              where attrelid = 'public.conversation_participants'::regclass
                and attname = 'can_reply' and not attisdropped) then
    create table if not exists messaging_v2_archive.conversation_participants_v2_columns (
      conversation_id uuid not null,
      user_id uuid not null,
      can_reply boolean not null,
      primary key (conversation_id, user_id)
    );
    insert into messaging_v2_archive.conversation_participants_v2_columns
      (conversation_id, user_id, can_reply)
    select conversation_id, user_id, can_reply
      from public.conversation_participants
     where not can_reply
    on conflict (conversation_id, user_id) do update set can_reply = excluded.can_reply;
  end if;
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

do $$
begin
  if to_regclass('public.feature_flags') is not null then
    drop policy if exists feature_flags_select_all on public.feature_flags;
    drop trigger if exists feature_flags_before_write on public.feature_flags;
    drop trigger if exists feature_flags_audit_write on public.feature_flags;
  end if;
  if to_regclass('public.reported_messages') is not null then
    drop policy if exists reported_messages_select_own_or_admin on public.reported_messages;
  end if;
  if to_regclass('public.moderated_message_texts') is not null then
    drop policy if exists moderated_message_texts_select_admin
      on public.moderated_message_texts;
  end if;
end
$$;

-- 3. v2 triggers on legacy tables; the legacy trigger comes back.
drop trigger if exists messages_before_insert_v2 on public.messages;
drop trigger if exists messages_after_insert_v2 on public.messages;
drop trigger if exists messages_before_update_v2 on public.messages;
drop trigger if exists conversation_participants_before_update_v2
  on public.conversation_participants;
drop trigger if exists conversation_participants_after_update_v2
  on public.conversation_participants;
drop trigger if exists on_new_message on public.messages;
create trigger on_new_message
  after insert on public.messages
  for each row execute function public.handle_new_message();

-- 4. Legacy grants (the defaults every public table had).
revoke update (unread_count) on public.conversation_participants from authenticated;
revoke insert (id, conversation_id, sender_id, message_text, created_at, read_by_user_ids)
  on public.messages from authenticated;
revoke update (read_by_user_ids) on public.messages from authenticated;
revoke insert (id, display_name, avatar_url) on public.profiles from authenticated;
revoke update (display_name, avatar_url, updated_at) on public.profiles from authenticated;
grant insert, update, delete, truncate on public.conversations to authenticated, anon;
grant insert, update, delete, truncate on public.conversation_participants
  to authenticated, anon;
grant insert, update, delete, truncate on public.messages to authenticated, anon;
grant insert, update on public.profiles to authenticated, anon;

-- 5. Legacy policies (same definitions as legacy_baseline.sql).
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

-- 6. v2 columns (values archived in step 1; dropping a column is catalog-only).
alter table public.conversations drop column if exists show_id;
alter table public.conversations drop column if exists created_by;
alter table public.conversation_participants drop column if exists can_reply;
alter table public.messages drop column if exists is_deleted;
alter table public.messages drop column if exists is_broadcast;
alter table public.messages drop column if exists deleted_at;
alter table public.messages drop column if exists deleted_by;

-- 7. v2 tables to the archive, rows and all.
do $$
declare
  t text;
begin
  foreach t in array array['feature_flags', 'feature_flag_audit', 'broadcast_quotas',
                           'reported_messages', 'moderated_message_texts'] loop
    if to_regclass('public.' || t) is not null then
      if to_regclass('messaging_v2_archive.' || t) is not null then
        raise exception 'messaging_v2_archive.% already exists next to public.%', t, t;
      end if;
      execute format('alter table public.%I set schema messaging_v2_archive', t);
    end if;
  end loop;
end
$$;

-- 8. v2 functions.
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
drop function if exists public.messages_before_insert_v2();
drop function if exists public.messages_after_insert_v2();
drop function if exists public.messages_before_update_v2();
drop function if exists public.conversation_participants_before_update_v2();
drop function if exists public.conversation_participants_after_update_v2();
drop function if exists public.feature_flags_before_write();
drop function if exists public.feature_flags_audit_write();
drop function if exists public.can_user_send_dm(uuid, uuid, uuid);
drop function if exists public.can_user_reply(uuid, uuid);
drop function if exists public.normalize_message_text(text);
drop function if exists public.is_feature_enabled(text);
drop function if exists public.feature_bucket(text, uuid);
drop function if exists public.is_conversation_participant(uuid);
drop function if exists public.is_admin();
drop function if exists public.current_profile_role();

commit;
