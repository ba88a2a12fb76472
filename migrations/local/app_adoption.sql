-- LOCAL ONLY: which app build each demo user runs, so the plan's adoption gate (the seed's
-- "flip the flag after 50 % adoption") has something real to measure: 60 % of the users
-- (by id order, deterministic) run the v2 build, the rest the old one.
update auth.users u
set raw_user_meta_data = u.raw_user_meta_data || jsonb_build_object(
  'app_build', case when r.rn <= ceil(0.6 * r.n) then '2.0.0' else '1.9.4' end)
from (
  select id, row_number() over (order by id) as rn, count(*) over () as n from auth.users
) r
where r.id = u.id and not u.raw_user_meta_data ? 'app_build';
