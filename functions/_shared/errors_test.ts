import assert from "node:assert/strict";
import { errorResponse, statusForSqlState } from "./errors.ts";
import { AuthError } from "./auth.ts";
import { pgError } from "../tests/helpers.ts";

Deno.test("SQLSTATE → HTTP status: PT4xx as PostgREST, anything else 500", () => {
  assert.equal(statusForSqlState("PT400"), 400);
  assert.equal(statusForSqlState("PT403"), 403);
  assert.equal(statusForSqlState("PT404"), 404);
  assert.equal(statusForSqlState("PT429"), 429);
  for (const code of ["P0001", "42501", "23505", "57014", "PT500", "PTX00", "", undefined, null]) {
    assert.equal(statusForSqlState(code), 500, String(code));
  }
});

Deno.test("errorResponse: 429 carries quota_remaining 0", async () => {
  const res = errorResponse("f", pgError("PT429", "broadcast quota exhausted"));
  assert.equal(res.status, 429);
  assert.deepEqual(await res.json(), { error: "broadcast quota exhausted", quota_remaining: 0 });
});

Deno.test("errorResponse: PT400 names the field from the error's column", async () => {
  const res = errorResponse("f", pgError("PT400", "bad roles", { column_name: "recipient_roles" }));
  assert.equal(res.status, 400);
  assert.deepEqual(await res.json(), { error: "bad roles", field: "recipient_roles" });
});

Deno.test("errorResponse: PT403 / PT404 pass the client-facing message", async () => {
  const forbidden = errorResponse("f", pgError("PT403", "not an organizer of this show"));
  assert.equal(forbidden.status, 403);
  assert.deepEqual(await forbidden.json(), { error: "not an organizer of this show" });
  const missing = errorResponse("f", pgError("PT404", "show not found"));
  assert.equal(missing.status, 404);
});

Deno.test("errorResponse: other errors → 500 with no internals, logged without params", async () => {
  const logged: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => logged.push(args.join(" "));
  try {
    const err = pgError("42P01", 'relation "public.secret_table" does not exist', {
      query: "select ...",
      parameters: ["super secret message text"],
    });
    const res = errorResponse("send-broadcast", err);
    assert.equal(res.status, 500);
    const text = await res.text();
    assert.deepEqual(JSON.parse(text), { error: "internal error" });
    assert.doesNotMatch(text, /secret_table/);
  } finally {
    console.error = original;
  }
  assert.equal(logged.length, 1);
  assert.match(logged[0], /42P01/);
  assert.doesNotMatch(logged[0], /super secret message text/);
});

Deno.test("errorResponse: AuthError 401 has WWW-Authenticate and CORS headers", async () => {
  const res = errorResponse("f", new AuthError(401, "token expired"));
  assert.equal(res.status, 401);
  assert.match(res.headers.get("www-authenticate") ?? "", /Bearer/);
  assert.equal(res.headers.get("access-control-allow-origin"), "*");
  assert.deepEqual(await res.json(), { error: "token expired" });
});
