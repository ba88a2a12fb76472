-- LOCAL ONLY demo data, applied after legacy_baseline.sql (and before or after the v2 file).
-- Never apply this to staging or production.
--
-- Fixed, recognisable ids: the first digit of a user id names the role.
--   1xxxxxxx attendees, 2xxxxxxx dealers, 3xxxxxxx MVP dealers, 4xxxxxxx show organizers,
--   5xxxxxxx admins; 6xxxxxxx shows; 7xxxxxxx conversations; messages are md5-derived.
-- Idempotent: every insert is `on conflict do nothing`; the final unread recount is exact.

begin;

insert into auth.users (id, email, raw_user_meta_data)
values
  ('10000000-0000-4000-8000-000000000001', 'attendee1@demo.local', '{"name": "Alice Attendee"}'),
  ('10000000-0000-4000-8000-000000000002', 'attendee2@demo.local', '{"name": "Arthur Attendee"}'),
  ('20000000-0000-4000-8000-000000000001', 'dealer1@demo.local', '{"name": "Dana Dealer"}'),
  ('20000000-0000-4000-8000-000000000002', 'dealer2@demo.local', '{"name": "Dirk Dealer"}'),
  ('30000000-0000-4000-8000-000000000001', 'mvp1@demo.local', '{"name": "Max MVP"}'),
  ('40000000-0000-4000-8000-000000000001', 'organizer1@demo.local', '{"name": "Olga Organizer"}'),
  ('40000000-0000-4000-8000-000000000002', 'organizer2@demo.local', '{"name": "Oscar Organizer"}'),
  ('50000000-0000-4000-8000-000000000001', 'admin1@demo.local', '{"name": "Ada Admin"}')
on conflict do nothing;

-- People are created the way production creates them: the app writes account_type and
-- subscription_status and the role trigger derives profiles.role (collector → attendee,
-- dealer → dealer or, subscribed, mvp_dealer, organizer → show_organizer when subscribed).
-- No subscription makes an admin: production's admins were set with the trigger bypassed, and so
-- is Ada below.
insert into public.profiles (id, email, first_name, last_name, account_type, subscription_status,
                             payment_status)
select u.id, u.email, split_part(u.raw_user_meta_data ->> 'name', ' ', 1),
       split_part(u.raw_user_meta_data ->> 'name', ' ', 2), k.account_type, k.subscription_status,
       case when k.subscription_status = 'active' then 'paid' else 'none' end
  from auth.users u
  join (values
    ('10000000-0000-4000-8000-000000000001'::uuid, 'collector', 'none'),
    ('10000000-0000-4000-8000-000000000002'::uuid, 'collector', 'none'),
    ('20000000-0000-4000-8000-000000000001'::uuid, 'dealer', 'none'),
    ('20000000-0000-4000-8000-000000000002'::uuid, 'dealer', 'expired'),
    ('30000000-0000-4000-8000-000000000001'::uuid, 'dealer', 'active'),
    ('40000000-0000-4000-8000-000000000001'::uuid, 'organizer', 'active'),
    ('40000000-0000-4000-8000-000000000002'::uuid, 'organizer', 'active'),
    ('50000000-0000-4000-8000-000000000001'::uuid, 'collector', 'none')
  ) as k (id, account_type, subscription_status) on k.id = u.id
on conflict do nothing;

set local session_replication_role = replica;  -- as production's admins were made
update public.profiles set role = 'admin'
 where id = '50000000-0000-4000-8000-000000000001' and role is distinct from 'admin';
set local session_replication_role = origin;

-- One upcoming show (pre-show broadcasts) and one that already ended (post-show).
insert into public.shows (id, title, location, address, start_date, end_date, status, organizer_id)
values
  ('60000000-0000-4000-8000-000000000001', 'Spring Card Show', 'Springfield', '1 Main St',
   date_trunc('day', now()) + interval '30 days', date_trunc('day', now()) + interval '32 days',
   'ACTIVE', '40000000-0000-4000-8000-000000000001'),
  ('60000000-0000-4000-8000-000000000002', 'Winter Card Show', 'Springfield', '1 Main St',
   date_trunc('day', now()) - interval '30 days', date_trunc('day', now()) - interval '28 days',
   'COMPLETED', '40000000-0000-4000-8000-000000000001')
on conflict do nothing;

insert into public.show_participants (userid, showid, role, status)
select u.id, s.id, p.role, 'registered'
  from (values
    ('10000000-0000-4000-8000-000000000001'::uuid),
    ('10000000-0000-4000-8000-000000000002'::uuid),
    ('20000000-0000-4000-8000-000000000001'::uuid),
    ('20000000-0000-4000-8000-000000000002'::uuid),
    ('30000000-0000-4000-8000-000000000001'::uuid)
  ) as u (id)
  join public.profiles p on p.id = u.id
  cross join (values
    ('60000000-0000-4000-8000-000000000001'::uuid),
    ('60000000-0000-4000-8000-000000000002'::uuid)
  ) as s (id)
on conflict do nothing;

-- Legacy direct conversations.
insert into public.conversations (id, type, created_at)
values
  ('70000000-0000-4000-8000-000000000001', 'direct', '2024-01-01 00:00:00+00'),
  ('70000000-0000-4000-8000-000000000002', 'direct', '2024-01-02 00:00:00+00'),
  ('70000000-0000-4000-8000-000000000003', 'direct', '2024-01-03 00:00:00+00')
on conflict do nothing;

insert into public.conversation_participants (conversation_id, user_id)
values
  -- Alice <-> Max MVP: the long history
  ('70000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001'),
  ('70000000-0000-4000-8000-000000000001', '30000000-0000-4000-8000-000000000001'),
  -- Alice <-> Dana Dealer (started before v2 made dealers unreachable)
  ('70000000-0000-4000-8000-000000000002', '10000000-0000-4000-8000-000000000001'),
  ('70000000-0000-4000-8000-000000000002', '20000000-0000-4000-8000-000000000001'),
  -- Arthur <-> Olga Organizer
  ('70000000-0000-4000-8000-000000000003', '10000000-0000-4000-8000-000000000002'),
  ('70000000-0000-4000-8000-000000000003', '40000000-0000-4000-8000-000000000001')
on conflict do nothing;

-- 240 historical messages between Alice and Max, one an hour, alternating senders; the last
-- five from Max are unread by Alice. Plus a few in the other two conversations.
insert into public.messages (id, conversation_id, sender_id, message_text, created_at,
                             read_by_user_ids)
select md5('demo-message-1-' || n)::uuid,
       '70000000-0000-4000-8000-000000000001',
       case when n % 2 = 0 then '10000000-0000-4000-8000-000000000001'::uuid
            else '30000000-0000-4000-8000-000000000001'::uuid end,
       format('Historical message %s', n),
       timestamptz '2024-01-01 00:00:00+00' + n * interval '1 hour',
       case when n > 230 and n % 2 = 1
            then array['30000000-0000-4000-8000-000000000001'::uuid]
            else array['10000000-0000-4000-8000-000000000001'::uuid,
                       '30000000-0000-4000-8000-000000000001'::uuid] end
  from generate_series(1, 240) as n
 order by n
on conflict do nothing;

insert into public.messages (id, conversation_id, sender_id, message_text, created_at,
                             read_by_user_ids)
select md5('demo-message-' || c || '-' || n)::uuid,
       ('70000000-0000-4000-8000-00000000000' || c)::uuid,
       case when n % 2 = 1 then a else b end,
       format('Legacy chat %s, message %s', c, n),
       timestamptz '2024-02-01 00:00:00+00' + c * interval '1 day' + n * interval '1 minute',
       array[a, b]
  from (values
    (2, '10000000-0000-4000-8000-000000000001'::uuid, '20000000-0000-4000-8000-000000000001'::uuid),
    (3, '10000000-0000-4000-8000-000000000002'::uuid, '40000000-0000-4000-8000-000000000001'::uuid)
  ) as convs (c, a, b)
  cross join generate_series(1, 6) as n
 order by c, n
on conflict do nothing;

-- Exact unread counts and last messages for the demo conversations (whatever trigger ran).
update public.conversation_participants cp
   set unread_count = (
     select count(*) from public.messages m
      where m.conversation_id = cp.conversation_id
        and m.sender_id is distinct from cp.user_id
        and not (cp.user_id = any (m.read_by_user_ids))
   )
 where cp.conversation_id in ('70000000-0000-4000-8000-000000000001',
                              '70000000-0000-4000-8000-000000000002',
                              '70000000-0000-4000-8000-000000000003');

update public.conversations c
   set last_message_text = m.message_text,
       last_message_timestamp = m.created_at
  from (
    select distinct on (conversation_id) conversation_id, message_text, created_at
      from public.messages
     order by conversation_id, created_at desc, id desc
  ) m
 where m.conversation_id = c.id
   and c.id in ('70000000-0000-4000-8000-000000000001',
                '70000000-0000-4000-8000-000000000002',
                '70000000-0000-4000-8000-000000000003');

commit;
