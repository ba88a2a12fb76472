import assert from "node:assert/strict";
import { createVerifier } from "../_shared/auth.ts";
import { createHandler, MAX_BODY_BYTES } from "./handler.ts";
import {
  expiredToken,
  FakeDb,
  pgError,
  serviceToken,
  signToken,
  unsignedToken,
  userToken,
} from "../tests/helpers.ts";
import { TEST_SECRET } from "../tests/helpers.ts";

const USER = "0b5a3c1e-5d6f-4a7b-8c9d-0e1f2a3b4c5d";
const SHOW = "5f0c6a57-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const BASE = "http://127.0.0.1/send-broadcast";
const RESULT = {
  conversation_id: "c0000000-0000-4000-8000-000000000001",
  message_id: "d0000000-0000-4000-8000-000000000001",
  recipient_count: 3,
  quota_remaining: 1,
};
const good = { show_id: SHOW, recipient_roles: ["attendee", "dealer"], message: " <b>Hi</b> all " };

function setup(db = new FakeDb(RESULT)) {
  return { db, handle: createHandler({ verify: createVerifier({ jwtSecret: TEST_SECRET }), db }) };
}

async function post(
  handle: (r: Request) => Promise<Response>,
  body: unknown,
  token?: string,
  url = BASE,
) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await handle(
    new Request(url, {
      method: "POST",
      headers,
      body: typeof body === "string" ? body : JSON.stringify(body),
    }),
  );
  return { res, body: await res.json() };
}

async function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const original = console.error;
  console.error = () => {};
  try {
    return await fn();
  } finally {
    console.error = original;
  }
}

Deno.test("send-broadcast: success → 200 with the SQL result, one call as the user", async () => {
  const { db, handle } = setup();
  const { res, body } = await post(handle, { ...good, is_pre_show: true }, await userToken(USER));
  assert.equal(res.status, 200);
  assert.deepEqual(body, RESULT);
  assert.equal(res.headers.get("access-control-allow-origin"), "*");
  assert.equal(db.calls.length, 1);
  const [call] = db.calls;
  assert.equal(call.role, "authenticated");
  assert.equal(call.claims.sub, USER);
  assert.match(call.text, /public\.send_broadcast\(p_show_id => \$1::uuid/);
  assert.match(call.text, /p_is_pre_show => \$4/);
  assert.deepEqual(call.params, [SHOW, "Hi all", ["attendee", "dealer"], true]);
});

Deno.test("send-broadcast: no is_pre_show → the SQL default decides (parameter omitted)", async () => {
  const { db, handle } = setup();
  const { res } = await post(handle, good, await userToken(USER));
  assert.equal(res.status, 200);
  assert.doesNotMatch(db.calls[0].text, /p_is_pre_show/);
  assert.equal(db.calls[0].params.length, 3);
});

Deno.test("send-broadcast: the Supabase URL prefix is accepted", async () => {
  const { res } = await post(
    setup().handle,
    good,
    await userToken(USER),
    "http://gw/functions/v1/send-broadcast",
  );
  assert.equal(res.status, 200);
});

Deno.test("send-broadcast: missing / unsigned / forged / expired token → 401, no SQL", async () => {
  const { db, handle } = setup();
  const tokens = [
    undefined,
    unsignedToken({ sub: USER, role: "authenticated" }),
    await userToken(USER, "the-wrong-secret-the-wrong-secret"),
    await expiredToken(USER),
    await signToken({ role: "anon" }), // the anon key: valid, but nobody
  ];
  for (const token of tokens) {
    const { res, body } = await post(handle, good, token);
    assert.equal(res.status, 401, String(token));
    assert.equal(typeof body.error, "string");
    assert.match(res.headers.get("www-authenticate") ?? "", /Bearer/);
  }
  assert.equal(db.calls.length, 0);
});

Deno.test("send-broadcast: a service-role token is not a sender → 403", async () => {
  const { db, handle } = setup();
  const token = await signToken({ sub: USER, role: "service_role" });
  assert.equal((await post(handle, good, token)).res.status, 403);
  assert.equal((await post(handle, good, await serviceToken())).res.status, 401);
  assert.equal(db.calls.length, 0);
});

Deno.test("send-broadcast: sender_id spoof → 403, no SQL; matching sender_id is fine", async () => {
  const { db, handle } = setup();
  const token = await userToken(USER);
  const spoof = await post(handle, { ...good, sender_id: SHOW }, token);
  assert.equal(spoof.res.status, 403);
  assert.match(spoof.body.error, /sender_id/);
  assert.equal(db.calls.length, 0);
  const same = await post(handle, { ...good, sender_id: USER }, token);
  assert.equal(same.res.status, 200);
  assert.equal(db.calls[0].claims.sub, USER); // identity from the token, not the body
});

Deno.test("send-broadcast: each bad field → 400 naming it, no SQL", async () => {
  const { db, handle } = setup();
  const token = await userToken(USER);
  const cases: [unknown, string][] = [
    ["{not json", "body"],
    [[good], "body"],
    [{ ...good, show_id: "nope" }, "show_id"],
    [{ ...good, recipient_roles: [] }, "recipient_roles"],
    [{ ...good, recipient_roles: ["vip"] }, "recipient_roles"],
    [{ ...good, message: "<p> </p>" }, "message"],
    [{ ...good, message: "m".repeat(1001) }, "message"],
    [{ ...good, is_pre_show: "true" }, "is_pre_show"],
  ];
  for (const [body, field] of cases) {
    const { res, body: answer } = await post(handle, body, token);
    assert.equal(res.status, 400, JSON.stringify(body).slice(0, 80));
    assert.equal(answer.field, field);
    assert.equal(typeof answer.error, "string");
  }
  assert.equal(db.calls.length, 0);
});

Deno.test("send-broadcast: body over 64 KiB → 413", async () => {
  const { db, handle } = setup();
  const big = JSON.stringify({ ...good, message: "x".repeat(MAX_BODY_BYTES) });
  const { res, body } = await post(handle, big, await userToken(USER));
  assert.equal(res.status, 413);
  assert.equal(body.field, "body");
  assert.equal(db.calls.length, 0);
});

Deno.test("send-broadcast: SQL refusals map to 403 / 404 / 429 / 400; others 500", async () => {
  const token = await userToken(USER);
  const cases: [unknown, number, Record<string, unknown>][] = [
    [pgError("PT403", "not allowed to broadcast to this show"), 403, {}],
    [pgError("PT404", "show not found"), 404, {}],
    [pgError("PT429", "pre-show quota exhausted"), 429, { quota_remaining: 0 }],
    [pgError("PT400", "bad", { column_name: "recipient_roles" }), 400, {
      field: "recipient_roles",
    }],
    [pgError("XX000", "internal detail: /var/lib/postgresql"), 500, { error: "internal error" }],
    [new TypeError("boom"), 500, { error: "internal error" }],
  ];
  for (const [error, status, expected] of cases) {
    const { handle } = setup(new FakeDb(null, error));
    const { res, body } = await quietly(() => post(handle, good, token));
    assert.equal(res.status, status, String(error));
    for (const [key, value] of Object.entries(expected)) assert.deepEqual(body[key], value);
    if (status === 500) assert.deepEqual(body, { error: "internal error" });
  }
});

Deno.test("send-broadcast: wrong method → 405 with Allow", async () => {
  const { handle } = setup();
  for (const method of ["GET", "PUT", "DELETE", "PATCH"]) {
    const res = await handle(new Request(BASE, { method }));
    assert.equal(res.status, 405);
    assert.equal(res.headers.get("allow"), "POST, OPTIONS");
    await res.body?.cancel();
  }
  const res = await handle(new Request(`${BASE}/health`, { method: "POST" }));
  assert.equal(res.status, 405);
  assert.equal(res.headers.get("allow"), "GET, HEAD, OPTIONS");
  await res.body?.cancel();
});

Deno.test("send-broadcast: CORS preflight answered without auth", async () => {
  const { db, handle } = setup();
  for (const url of [BASE, `${BASE}/health`]) {
    const res = await handle(
      new Request(url, {
        method: "OPTIONS",
        headers: { origin: "https://app.example", "access-control-request-method": "POST" },
      }),
    );
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), "*");
    assert.equal(
      res.headers.get("access-control-allow-headers"),
      "authorization, x-client-info, apikey, content-type",
    );
    assert.match(res.headers.get("access-control-allow-methods") ?? "", /POST/);
    await res.body?.cancel();
  }
  assert.equal(db.calls.length, 0);
});

Deno.test("send-broadcast: health → 200 ok / 503 degraded", async () => {
  const up = await setup().handle(new Request(`${BASE}/health`));
  assert.equal(up.status, 200);
  assert.deepEqual(await up.json(), { status: "ok", db: "ok" });
  const down = await quietly(() =>
    setup(new FakeDb(null, undefined, false)).handle(new Request(`${BASE}/health`))
  );
  assert.equal(down.status, 503);
  assert.deepEqual(await down.json(), { status: "degraded", db: "unreachable" });
});

Deno.test("send-broadcast: unknown path → 404", async () => {
  const res = await setup().handle(new Request(`${BASE}/nope`));
  assert.equal(res.status, 404);
  await res.body?.cancel();
});
