import assert from "node:assert/strict";
import {
  authenticate,
  AuthError,
  bearerToken,
  createVerifier,
  requireServiceRole,
  requireUser,
} from "./auth.ts";
import {
  expiredToken,
  serviceToken,
  signToken,
  TEST_SECRET,
  unsignedToken,
  userToken,
} from "../tests/helpers.ts";

const USER = "0b5a3c1e-5d6f-4a7b-8c9d-0e1f2a3b4c5d";
const verify = createVerifier({ jwtSecret: TEST_SECRET });

function req(authorization?: string): Request {
  const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
  return new Request("http://x/send-broadcast", { method: "POST", headers });
}

async function refused(promise: Promise<unknown>, status: number, message?: RegExp) {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof AuthError, `expected AuthError, got ${err}`);
    assert.equal(err.status, status);
    if (message) assert.match(err.message, message);
    return true;
  });
}

Deno.test("bearerToken: reads `Bearer <token>`, case-insensitive, else null", () => {
  assert.equal(bearerToken(req("Bearer abc.def.ghi")), "abc.def.ghi");
  assert.equal(bearerToken(req("bearer abc")), "abc");
  assert.equal(bearerToken(req()), null);
  assert.equal(bearerToken(req("Basic dXNlcjpwYXNz")), null);
  assert.equal(bearerToken(req("Bearer")), null);
});

Deno.test("jwt: missing token → 401", async () => {
  await refused(authenticate(req(), verify), 401, /missing bearer token/);
});

Deno.test("jwt: valid HS256 user token → its claims", async () => {
  const claims = await authenticate(req(`Bearer ${await userToken(USER)}`), verify);
  assert.equal(claims.sub, USER);
  assert.equal(claims.role, "authenticated");
  assert.equal(requireUser(claims), USER);
});

Deno.test("jwt: unsigned `alg: none` token → 401", async () => {
  const token = unsignedToken({ sub: USER, role: "authenticated" });
  await refused(verify(token), 401, /invalid token/);
  await refused(verify(unsignedToken({ role: "service_role" })), 401);
});

Deno.test("jwt: signed with the wrong secret → 401", async () => {
  await refused(
    verify(await userToken(USER, "some-other-secret-some-other-secret")),
    401,
    /invalid/,
  );
});

Deno.test("jwt: expired → 401 token expired", async () => {
  await refused(verify(await expiredToken(USER)), 401, /expired/);
});

Deno.test("jwt: garbage and tampered tokens → 401", async () => {
  await refused(verify("not-a-jwt"), 401);
  await refused(verify(""), 401);
  const good = await userToken(USER);
  const [h, , s] = good.split(".");
  const forged = btoa(JSON.stringify({ sub: USER, role: "service_role" })).replace(/=+$/, "");
  await refused(verify(`${h}.${forged}.${s}`), 401);
});

Deno.test("jwt: asymmetric alg without a JWKS configured → 401", async () => {
  // An RS256 header cannot be checked against an HS256 secret (algorithm confusion).
  const header = btoa(JSON.stringify({ alg: "RS256", typ: "JWT" })).replace(/=+$/, "");
  const body = btoa(JSON.stringify({ sub: USER })).replace(/=+$/, "");
  await refused(verify(`${header}.${body}.c2ln`), 401);
});

Deno.test("requireUser: anon key (no sub) → 401; non-authenticated role → 403", async () => {
  const anon = await verify(await signToken({ role: "anon" }));
  assert.throws(
    () => requireUser(anon),
    (e: unknown) => e instanceof AuthError && e.status === 401,
  );
  const odd = await verify(await signToken({ sub: USER, role: "service_role" }));
  assert.throws(() => requireUser(odd), (e: unknown) => e instanceof AuthError && e.status === 403);
});

Deno.test("requireServiceRole: service role passes, a user token → 403", async () => {
  requireServiceRole(await verify(await serviceToken()));
  const user = await verify(await userToken(USER));
  assert.throws(
    () => requireServiceRole(user),
    (e: unknown) => e instanceof AuthError && e.status === 403,
  );
});
