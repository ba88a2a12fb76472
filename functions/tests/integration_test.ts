/**
 * Integration tests: the deployed functions against a running stack (real Deno workers,
 * real PostgreSQL with the messaging migration applied).
 *
 * Configured by the test runner (`make test` starts `rollout local` and sets these):
 *   ROLLOUT_TEST_FUNCTIONS_URL  e.g. http://127.0.0.1:54321/functions/v1 — requests go to
 *                               `${URL}/send-broadcast` and `${URL}/reset-broadcast-quotas`
 *   ROLLOUT_TEST_DB_URL         superuser URL of the database the functions use (seeding)
 *   ROLLOUT_TEST_JWT_SECRET     the project's JWT secret (to mint user and service tokens)
 *
 * Each run seeds its own users and shows with fresh uuids and removes them at the end.
 * Without the variables every test fails with instructions: nothing is silently skipped.
 */

import assert from "node:assert/strict";
import postgres from "npm:postgres@3.4.7";
import { expiredToken, serviceToken, signToken, unsignedToken, userToken } from "./helpers.ts";

const HOW_TO_RUN = "integration tests need a running stack: set ROLLOUT_TEST_FUNCTIONS_URL, " +
  "ROLLOUT_TEST_DB_URL and ROLLOUT_TEST_JWT_SECRET (`make test` starts the local stack and sets " +
  "them), or run only the unit tests with `deno task test:unit`";

interface Env {
  functionsUrl: string;
  dbUrl: string;
  secret: string;
}

function env(): Env {
  const functionsUrl = Deno.env.get("ROLLOUT_TEST_FUNCTIONS_URL");
  const dbUrl = Deno.env.get("ROLLOUT_TEST_DB_URL");
  const secret = Deno.env.get("ROLLOUT_TEST_JWT_SECRET");
  const missing = [
    ["ROLLOUT_TEST_FUNCTIONS_URL", functionsUrl],
    ["ROLLOUT_TEST_DB_URL", dbUrl],
    ["ROLLOUT_TEST_JWT_SECRET", secret],
  ].filter(([, value]) => !value).map(([name]) => name);
  if (missing.length > 0) throw new Error(`missing ${missing.join(", ")}: ${HOW_TO_RUN}`);
  return { functionsUrl: functionsUrl!.replace(/\/+$/, ""), dbUrl: dbUrl!, secret: secret! };
}

// ---- seeded world (fresh ids per run) -------------------------------------------------------

const id = () => crypto.randomUUID();
const W = {
  organizer: id(), // organizes `show` (upcoming): the success and authorization cases
  quotaOrganizer: id(), // organizes `quotaShow`: the quota and reset cases only
  otherOrganizer: id(), // organizes nothing here
  attendee1: id(),
  attendee2: id(),
  dealer: id(),
  mvp: id(),
  show: id(),
  quotaShow: id(),
};

let sql: ReturnType<typeof postgres> | undefined;
let seeded: Promise<void> | undefined;

function db(): ReturnType<typeof postgres> {
  sql ??= postgres(env().dbUrl, { max: 2, prepare: false, onnotice: () => {} });
  return sql;
}

async function seed(): Promise<void> {
  const s = db();
  const users: [string, string][] = [
    [W.organizer, "show_organizer"],
    [W.quotaOrganizer, "show_organizer"],
    [W.otherOrganizer, "show_organizer"],
    [W.attendee1, "attendee"],
    [W.attendee2, "attendee"],
    [W.dealer, "dealer"],
    [W.mvp, "mvp_dealer"],
  ];
  // Production derives profiles.role from account_type + subscription_status (a trigger).
  const subscription: Record<string, [string, string]> = {
    attendee: ["collector", "none"],
    dealer: ["dealer", "none"],
    mvp_dealer: ["dealer", "active"],
    show_organizer: ["organizer", "active"],
  };
  await s.begin(async (tx) => {
    for (const [user, role] of users) {
      const [accountType, status] = subscription[role];
      await tx`insert into auth.users (id, email) values (${user}, ${`${user}@it.test`})`;
      await tx`insert into public.profiles (id, email, first_name, account_type,
                                            subscription_status)
               values (${user}, ${`${user}@it.test`}, ${`it ${role}`}, ${accountType}, ${status})`;
    }
    for (const [show, organizer] of [[W.show, W.organizer], [W.quotaShow, W.quotaOrganizer]]) {
      await tx`insert into public.shows (id, title, location, address, start_date, end_date,
                                         status, organizer_id)
               values (${show}, 'integration test show', 'Test City', '1 Test St',
                       now() + interval '30 days', now() + interval '32 days', 'ACTIVE',
                       ${organizer})`;
      for (const [user, role] of users.slice(3)) {
        await tx`insert into public.show_participants (userid, showid, role, status)
                 values (${user}, ${show}, ${role}, 'registered')`;
      }
    }
  });
}

/** Seed once, on first use; every test awaits it (and fails with instructions without env). */
function ready(): Promise<void> {
  env();
  seeded ??= seed();
  return seeded;
}

// ---- HTTP ---------------------------------------------------------------------------------

interface Answer {
  status: number;
  headers: Headers;
  // deno-lint-ignore no-explicit-any
  body: any;
}

async function call(
  fn: "send-broadcast" | "reset-broadcast-quotas",
  opts: { method?: string; token?: string; body?: unknown; path?: string } = {},
): Promise<Answer> {
  const { functionsUrl, secret } = env();
  const headers: Record<string, string> = {
    // What supabase-js sends: the anon key as apikey, the user's JWT as the bearer.
    apikey: await signToken({ role: "anon", iss: "supabase" }, secret),
  };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${functionsUrl}/${fn}${opts.path ?? ""}`, {
    method: opts.method ?? "POST",
    headers,
    body: opts.body === undefined
      ? undefined
      : typeof opts.body === "string"
      ? opts.body
      : JSON.stringify(opts.body),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch { /* not JSON: keep the text for the assertion message */ }
  return { status: res.status, headers: res.headers, body };
}

async function asUser(user: string): Promise<string> {
  return await userToken(user, env().secret);
}

function broadcast(token: string | undefined, body: unknown) {
  return call("send-broadcast", { token, body });
}

const test = (name: string, fn: () => Promise<void>) =>
  Deno.test({
    name: `integration: ${name}`,
    // The seeding pool lives across tests; it is closed by the last test.
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      await ready();
      await fn();
    },
  });

// ---- tests --------------------------------------------------------------------------------

test("health → 200 ok with the database reachable", async () => {
  const { status, body } = await call("send-broadcast", { method: "GET", path: "/health" });
  assert.equal(status, 200, JSON.stringify(body));
  assert.deepEqual(body, { status: "ok", db: "ok" });
});

test("CORS preflight is answered with the Supabase headers", async () => {
  const { status, headers } = await call("send-broadcast", { method: "OPTIONS" });
  assert.ok(status >= 200 && status < 300, `status ${status}`);
  assert.equal(headers.get("access-control-allow-origin"), "*");
  assert.match(headers.get("access-control-allow-headers") ?? "", /authorization/i);
});

test("organizer broadcast → 200, body shape, rows written, quota taken once", async () => {
  const { status, body } = await broadcast(await asUser(W.organizer), {
    show_id: W.show,
    recipient_roles: ["attendee", "dealer"],
    message: "  <b>Doors</b> open at <i>9</i>  ",
    is_pre_show: true,
  });
  assert.equal(status, 200, JSON.stringify(body));
  assert.deepEqual(
    Object.keys(body).sort(),
    ["conversation_id", "message_id", "quota_remaining", "recipient_count"],
  );
  assert.equal(body.recipient_count, 3); // two attendees and the dealer; not the MVP dealer
  assert.equal(body.quota_remaining, 1); // 2 pre-show per day, one taken — not two

  const [message] = await db()`
    select conversation_id, sender_id, message_text from public.messages
     where id = ${body.message_id}`;
  assert.ok(message, "the message row exists");
  assert.equal(message.sender_id, W.organizer);
  assert.equal(message.message_text, "Doors open at 9");
  assert.equal(message.conversation_id, body.conversation_id);

  const members = (await db()`
    select user_id from public.conversation_participants
     where conversation_id = ${body.conversation_id}`).map((r) => r.user_id);
  for (const user of [W.attendee1, W.attendee2, W.dealer]) assert.ok(members.includes(user));
  assert.ok(!members.includes(W.mvp), "the MVP dealer was not a recipient");
});

test("quota: third pre-show broadcast → 429 with quota_remaining 0", async () => {
  const token = await asUser(W.quotaOrganizer);
  const body = { show_id: W.quotaShow, recipient_roles: ["attendee"], is_pre_show: true };
  const first = await broadcast(token, { ...body, message: "pre-show 1" });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.body.quota_remaining, 1);
  const second = await broadcast(token, { ...body, message: "pre-show 2" });
  assert.equal(second.status, 200, JSON.stringify(second.body));
  assert.equal(second.body.quota_remaining, 0);
  const third = await broadcast(token, { ...body, message: "pre-show 3" });
  assert.equal(third.status, 429, JSON.stringify(third.body));
  assert.equal(third.body.quota_remaining, 0);
  assert.equal(typeof third.body.error, "string");
  const [{ count }] = await db()`
    select count(*)::int as count from public.messages where sender_id = ${W.quotaOrganizer}`;
  assert.equal(count, 2, "the refused broadcast wrote nothing");
});

test("bad body → 400 naming the field, nothing written", async () => {
  const token = await asUser(W.organizer);
  const good = { show_id: W.show, recipient_roles: ["attendee"], message: "hi" };
  const cases: [unknown, string][] = [
    ["{nope", "body"],
    [{ ...good, show_id: "not-a-uuid" }, "show_id"],
    [{ ...good, recipient_roles: [] }, "recipient_roles"],
    [{ ...good, recipient_roles: ["vip"] }, "recipient_roles"],
    [{ ...good, message: "<p>   </p>" }, "message"],
    [{ ...good, message: "x".repeat(1001) }, "message"],
    [{ ...good, is_pre_show: "yes" }, "is_pre_show"],
  ];
  for (const [body, field] of cases) {
    const answer = await broadcast(token, body);
    assert.equal(answer.status, 400, `${JSON.stringify(body).slice(0, 60)}: ${answer.status}`);
    assert.equal(answer.body.field, field);
  }
});

test("missing, unsigned, forged and expired tokens → 401", async () => {
  const { secret } = env();
  const body = { show_id: W.show, recipient_roles: ["attendee"], message: "hi" };
  const tokens: [string, string | undefined][] = [
    ["missing", undefined],
    ["alg none", unsignedToken({ sub: W.organizer, role: "authenticated" })],
    ["forged", await userToken(W.organizer, `${secret}-but-not-quite`)],
    ["expired", await expiredToken(W.organizer, secret)],
  ];
  for (const [label, token] of tokens) {
    const answer = await broadcast(token, body);
    assert.equal(answer.status, 401, `${label}: ${answer.status} ${JSON.stringify(answer.body)}`);
  }
  for (const [label, token] of tokens) {
    const answer = await call("reset-broadcast-quotas", { token });
    assert.equal(answer.status, 401, `reset, ${label}: ${answer.status}`);
  }
});

test("attendee and dealer may not broadcast → 403", async () => {
  for (const user of [W.attendee1, W.dealer]) {
    const answer = await broadcast(await asUser(user), {
      show_id: W.show,
      recipient_roles: ["attendee"],
      message: "let me broadcast",
      is_pre_show: true,
    });
    assert.equal(answer.status, 403, JSON.stringify(answer.body));
  }
  const [{ count }] = await db()`
    select count(*)::int as count from public.messages
     where sender_id in (${W.attendee1}, ${W.dealer})`;
  assert.equal(count, 0);
});

test("organizer of another show → 403", async () => {
  const answer = await broadcast(await asUser(W.otherOrganizer), {
    show_id: W.show,
    recipient_roles: ["attendee"],
    message: "not my show",
    is_pre_show: true,
  });
  assert.equal(answer.status, 403, JSON.stringify(answer.body));
});

test("MVP dealer: to attendees → 200, to dealers → 403", async () => {
  const token = await asUser(W.mvp);
  const ok = await broadcast(token, {
    show_id: W.show,
    recipient_roles: ["attendee"],
    message: "MVP booth special",
    is_pre_show: true,
  });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.equal(ok.body.recipient_count, 2);
  const refused = await broadcast(token, {
    show_id: W.show,
    recipient_roles: ["dealer"],
    message: "to the dealers",
    is_pre_show: true,
  });
  assert.equal(refused.status, 403, JSON.stringify(refused.body));
});

test("sender_id spoof → 403 and nothing written", async () => {
  const answer = await broadcast(await asUser(W.attendee1), {
    sender_id: W.organizer,
    show_id: W.show,
    recipient_roles: ["attendee"],
    message: "I am the organizer, honest",
    is_pre_show: true,
  });
  assert.equal(answer.status, 403, JSON.stringify(answer.body));
  const [{ count }] = await db()`
    select count(*)::int as count from public.messages
     where message_text = 'I am the organizer, honest'`;
  assert.equal(count, 0);
});

test("show not found → 404", async () => {
  const answer = await broadcast(await asUser(W.organizer), {
    show_id: id(),
    recipient_roles: ["attendee"],
    message: "hello nobody",
    is_pre_show: true,
  });
  assert.equal(answer.status, 404, JSON.stringify(answer.body));
});

test("wrong method → 405 with Allow", async () => {
  const answer = await call("send-broadcast", { method: "GET", token: await asUser(W.organizer) });
  assert.equal(answer.status, 405);
  assert.match(answer.headers.get("allow") ?? "", /POST/);
});

test("reset authorization: none → 401, user token → 403, service role → 200", async () => {
  assert.equal((await call("reset-broadcast-quotas")).status, 401);
  const user = await call("reset-broadcast-quotas", { token: await asUser(W.organizer) });
  assert.equal(user.status, 403, JSON.stringify(user.body));
  const service = await call("reset-broadcast-quotas", { token: await serviceToken(env().secret) });
  assert.equal(service.status, 200, JSON.stringify(service.body));
  assert.equal(typeof service.body, "object");
});

test("reset is idempotent: twice → both 200, same state, no quota granted", async () => {
  const token = await asUser(W.quotaOrganizer);
  const service = await serviceToken(env().secret);
  const body = { show_id: W.quotaShow, recipient_roles: ["attendee"], is_pre_show: true };
  // Today's pre-show quota is exhausted (whether or not the quota test ran first).
  for (let i = 0; i < 2; i++) await broadcast(token, { ...body, message: `drain ${i}` });
  assert.equal((await broadcast(token, { ...body, message: "drained?" })).status, 429);
  // A stale row from long ago: the kind of row the nightly housekeeping removes.
  await db()`
    insert into public.broadcast_quotas (organizer_id, show_id, quota_date, pre_show_used)
    values (${W.quotaOrganizer}, ${W.quotaShow},
            (now() at time zone 'utc')::date - 400, 2)`;

  const first = await call("reset-broadcast-quotas", { token: service });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(typeof first.body, "object");
  const afterFirst = await quotaRows();
  const second = await call("reset-broadcast-quotas", { token: service });
  assert.equal(second.status, 200, JSON.stringify(second.body));
  assert.deepEqual(await quotaRows(), afterFirst, "a second reset changes nothing more");
  const [{ stale }] = await db()`
    select count(*)::int as stale from public.broadcast_quotas
     where organizer_id = ${W.quotaOrganizer}
       and quota_date < (now() at time zone 'utc')::date - 30`;
  assert.equal(stale, 0, "the stale row is gone");

  // A doubled run grants nothing: today's quota stays exhausted.
  const again = await broadcast(token, { ...body, message: "after two resets" });
  assert.equal(again.status, 429, JSON.stringify(again.body));
  assert.equal(again.body.quota_remaining, 0);
});

/** The quota organizer's broadcast_quotas rows (sorted JSON, timestamps left out). */
async function quotaRows(): Promise<string[]> {
  const rows = await db()`
    select to_jsonb(q) - 'created_at' - 'updated_at' as row
      from public.broadcast_quotas q where organizer_id = ${W.quotaOrganizer}`;
  return rows
    .map((r) => r.row as Record<string, unknown>)
    .map((row) => JSON.stringify(row, Object.keys(row).sort()))
    .sort();
}

Deno.test({
  name: "integration: clean up the seeded rows",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    env();
    try {
      if (seeded) {
        await seeded.catch(() => {});
        const users = Object.values(W);
        const s = db();
        await s.begin(async (tx) => {
          const convs = await tx`
            select distinct conversation_id from public.conversation_participants
             where user_id = any(${users}::uuid[])`;
          const ids = convs.map((r) => r.conversation_id);
          // Production's foreign keys: messages have none to conversations, profiles and
          // reports do not cascade from auth.users. Children first.
          await tx`delete from public.reported_messages where reported_by = any(${users}::uuid[])`;
          await tx`delete from public.messages
                    where conversation_id = any(${ids}::uuid[]) or sender_id = any(${users}::uuid[])`;
          await tx`delete from public.conversations where id = any(${ids}::uuid[])`;
          await tx`delete from public.shows where id = any(${[W.show, W.quotaShow]}::uuid[])`;
          await tx`delete from public.profiles where id = any(${users}::uuid[])`;
          await tx`delete from auth.users where id = any(${users}::uuid[])`;
        });
      }
    } finally {
      await sql?.end({ timeout: 5 });
    }
  },
});
