import assert from "node:assert/strict";
import { createVerifier } from "../_shared/auth.ts";
import { createHandler } from "./handler.ts";
import {
  expiredToken,
  FakeDb,
  pgError,
  serviceToken,
  TEST_JWKS,
  TEST_SECRET,
  TEST_SECRET_KEY,
  unsignedToken,
  userToken,
} from "../tests/helpers.ts";

const USER = "0b5a3c1e-5d6f-4a7b-8c9d-0e1f2a3b4c5d";
const BASE = "http://127.0.0.1/reset-broadcast-quotas";
const STATS = { reset_rows: 4, quota_day: "2025-01-01" };

function setup(db = new FakeDb(STATS)) {
  const verify = createVerifier({ jwtSecret: TEST_SECRET, jwks: TEST_JWKS });
  return { db, handle: createHandler({ verify, secretKeys: [TEST_SECRET_KEY], db }) };
}

function post(handle: (r: Request) => Promise<Response>, token?: string) {
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  return handle(new Request(BASE, { method: "POST", headers, body: "{}" }));
}

Deno.test("reset: service role → 200 with the SQL stats, one call as service_role", async () => {
  const { db, handle } = setup();
  const res = await post(handle, await serviceToken());
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), STATS);
  assert.equal(db.calls.length, 1);
  assert.equal(db.calls[0].role, "service_role");
  assert.equal(db.calls[0].text, "select public.reset_broadcast_quotas() as result");
  assert.deepEqual(db.calls[0].params, []);
});

Deno.test("reset: the secret key in apikey (as the pg_cron job sends it) → 200", async () => {
  const { db, handle } = setup();
  const res = await handle(
    new Request(BASE, { method: "POST", headers: { apikey: TEST_SECRET_KEY }, body: "{}" }),
  );
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), STATS);
  assert.equal(db.calls[0].role, "service_role");
  const wrong = await handle(
    new Request(BASE, { method: "POST", headers: { apikey: "sb_secret_nope" }, body: "{}" }),
  );
  assert.equal(wrong.status, 401);
  await wrong.body?.cancel();
  assert.equal(db.calls.length, 1);
});

Deno.test("reset: no / unsigned / forged / expired token → 401", async () => {
  const { db, handle } = setup();
  for (
    const token of [
      undefined,
      unsignedToken({ role: "service_role" }),
      await serviceToken("not-the-project-secret-not-the-project-secret"),
      await expiredToken(USER),
    ]
  ) {
    const res = await post(handle, token);
    assert.equal(res.status, 401, String(token));
    await res.body?.cancel();
  }
  assert.equal(db.calls.length, 0);
});

Deno.test("reset: a valid user token → 403", async () => {
  const { db, handle } = setup();
  const res = await post(handle, await userToken(USER));
  assert.equal(res.status, 403);
  assert.deepEqual(await res.json(), { error: "the service role is required" });
  assert.equal(db.calls.length, 0);
});

Deno.test("reset: wrong method → 405 with Allow; preflight → 200 CORS", async () => {
  const { handle } = setup();
  const res = await handle(new Request(BASE, { method: "GET" }));
  assert.equal(res.status, 405);
  assert.equal(res.headers.get("allow"), "POST, OPTIONS");
  await res.body?.cancel();
  const pre = await handle(new Request(BASE, { method: "OPTIONS" }));
  assert.equal(pre.status, 200);
  assert.equal(
    pre.headers.get("access-control-allow-headers"),
    "authorization, x-client-info, apikey, content-type",
  );
  await pre.body?.cancel();
});

Deno.test("reset: a database failure → 500 without internals", async () => {
  const { handle } = setup(new FakeDb(null, pgError("53300", "too many connections for role")));
  const original = console.error;
  console.error = () => {};
  try {
    const res = await post(handle, await serviceToken());
    assert.equal(res.status, 500);
    assert.deepEqual(await res.json(), { error: "internal error" });
  } finally {
    console.error = original;
  }
});
