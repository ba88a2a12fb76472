import assert from "node:assert/strict";
import {
  authenticate,
  authenticateServer,
  AuthError,
  bearerToken,
  createVerifier,
  requireServiceRole,
  requireUser,
} from "./auth.ts";
import {
  es256Token,
  es256UserToken,
  expiredToken,
  serviceToken,
  signToken,
  TEST_JWKS,
  TEST_SECRET,
  TEST_SECRET_KEY,
  unsignedToken,
  userToken,
} from "../tests/helpers.ts";
import { generateKeyPair } from "npm:jose@6.1.0";

const USER = "0b5a3c1e-5d6f-4a7b-8c9d-0e1f2a3b4c5d";
// A project during the key migration: signing keys (JWKS) and the legacy secret both verify.
const verify = createVerifier({ jwtSecret: TEST_SECRET, jwks: TEST_JWKS });
// A project that rotated and revoked the legacy secret: only the JWKS.
const rotated = createVerifier({ jwks: TEST_JWKS });

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

Deno.test("jwt: ES256 user token signed by the project's key → verified from SUPABASE_JWKS", async () => {
  for (const v of [verify, rotated]) {
    const claims = await v(await es256UserToken(USER));
    assert.equal(requireUser(claims), USER);
  }
});

Deno.test("jwt: ES256 signed by another key, or HS256 once the legacy secret is gone → 401", async () => {
  const other = await generateKeyPair("ES256");
  await refused(
    verify(await es256Token({ sub: USER, role: "authenticated" }, other.privateKey)),
    401,
  );
  await refused(rotated(await userToken(USER)), 401, /invalid token/);
});

Deno.test("jwt: issued in the future beyond the 30 s clock skew → 401; within it → ok", async () => {
  const now = Math.floor(Date.now() / 1000);
  const ahead = (s: number) =>
    signToken({ sub: USER, role: "authenticated", aud: "authenticated", iat: now + s });
  await refused(verify(await ahead(120)), 401, /future/);
  assert.equal(requireUser(await verify(await ahead(10))), USER);
});

Deno.test("jwt: a non-string role → 401; a user token for another audience → 401", async () => {
  await refused(
    verify(await signToken({ sub: USER, role: ["authenticated"], aud: "authenticated" })),
    401,
  );
  const other = await verify(await signToken({ sub: USER, role: "authenticated", aud: "other" }));
  assert.throws(
    () => requireUser(other),
    (e: unknown) => e instanceof AuthError && e.status === 401,
  );
});

function server(headers: Record<string, string>): Request {
  return new Request("http://x/reset-broadcast-quotas", { method: "POST", headers });
}

Deno.test("server caller: the secret key in apikey → service role; another key → 401", async () => {
  const claims = await authenticateServer(
    server({ apikey: TEST_SECRET_KEY }),
    [TEST_SECRET_KEY],
    rotated,
  );
  assert.equal(claims.role, "service_role");
  await refused(
    authenticateServer(server({ apikey: "sb_secret_wrong" }), [TEST_SECRET_KEY], rotated),
    401,
  );
  await refused(authenticateServer(server({}), [TEST_SECRET_KEY], rotated), 401, /missing/);
  // A publishable key or a user's token is not a server credential.
  await refused(
    authenticateServer(server({ authorization: `Bearer ${await es256UserToken(USER)}` }), [
      TEST_SECRET_KEY,
    ], rotated),
    403,
  );
});

Deno.test("server caller: the legacy service-role JWT, only while the legacy secret is configured", async () => {
  const legacy = await serviceToken();
  const variants: Record<string, string>[] = [{ apikey: legacy }, {
    authorization: `Bearer ${legacy}`,
  }];
  for (const headers of variants) {
    const claims = await authenticateServer(server(headers), [TEST_SECRET_KEY], verify);
    assert.equal(claims.role, "service_role");
    await refused(authenticateServer(server(headers), [TEST_SECRET_KEY], rotated), 401);
  }
});
