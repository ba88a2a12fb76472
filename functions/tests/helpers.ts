/** Test helpers shared by the unit and integration tests: JWT minting and a recording Db. */

import { exportJWK, generateKeyPair, type JSONWebKeySet, SignJWT } from "npm:jose@6.1.0";
import type { Claims } from "../_shared/auth.ts";
import type { Db, DbRole } from "../_shared/db.ts";

export const TEST_SECRET = "unit-test-jwt-secret-that-is-long-enough-0123456789";

const enc = new TextEncoder();

/** An HS256 token as Supabase Auth issues them (`exp` one hour ahead unless given). */
export async function signToken(
  claims: Record<string, unknown>,
  secret: string = TEST_SECRET,
  expiresIn: string | number = "1h",
): Promise<string> {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" });
  if (claims.iat === undefined) jwt.setIssuedAt();
  return await jwt.setExpirationTime(expiresIn).sign(enc.encode(secret));
}

/** The project's asymmetric signing key (ES256) and the JWKS the platform gives functions. */
const SIGNING = await generateKeyPair("ES256", { extractable: true });
export const TEST_KID = "test-es256";
export const TEST_JWKS: JSONWebKeySet = {
  keys: [{ ...(await exportJWK(SIGNING.publicKey)), kid: TEST_KID, alg: "ES256", use: "sig" }],
};

/** An ES256 token as Auth issues it once the project rotated to signing keys. */
export async function es256Token(
  claims: Record<string, unknown>,
  key: CryptoKey = SIGNING.privateKey,
  expiresIn: string | number = "1h",
): Promise<string> {
  return await new SignJWT(claims)
    .setProtectedHeader({ alg: "ES256", typ: "JWT", kid: TEST_KID })
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(key);
}

export function es256UserToken(sub: string): Promise<string> {
  return es256Token({ sub, role: "authenticated", aud: "authenticated" });
}

/** A secret API key as `SUPABASE_SECRET_KEYS` holds it. */
export const TEST_SECRET_KEY = "sb_secret_unit-test-0123456789abcdef";

export function userToken(sub: string, secret: string = TEST_SECRET): Promise<string> {
  return signToken({ sub, role: "authenticated", aud: "authenticated" }, secret);
}

export function serviceToken(secret: string = TEST_SECRET): Promise<string> {
  return signToken({ role: "service_role", iss: "supabase" }, secret);
}

/** A token that expired an hour ago (well past any clock tolerance). */
export function expiredToken(sub: string, secret: string = TEST_SECRET): Promise<string> {
  const past = Math.floor(Date.now() / 1000) - 3600;
  return signToken(
    { sub, role: "authenticated", aud: "authenticated", iat: past - 60 },
    secret,
    past,
  );
}

function b64url(value: unknown): string {
  return btoa(JSON.stringify(value)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

/** An unsigned `alg: none` token claiming to be `sub` (must be refused). */
export function unsignedToken(claims: Record<string, unknown>): string {
  const exp = Math.floor(Date.now() / 1000) + 3600;
  return `${b64url({ alg: "none", typ: "JWT" })}.${b64url({ exp, ...claims })}.`;
}

export interface RecordedCall {
  role: DbRole;
  claims: Claims;
  text: string;
  params: unknown[];
}

/** A Db double for handler unit tests: records calls, answers with `result` or throws `error`. */
export class FakeDb implements Db {
  calls: RecordedCall[] = [];
  pings = 0;
  constructor(
    public result: unknown = null,
    public error: unknown = undefined,
    public reachable = true,
  ) {}

  call(role: DbRole, claims: Claims, text: string, params: unknown[]): Promise<unknown> {
    this.calls.push({ role, claims, text, params });
    return this.error === undefined ? Promise.resolve(this.result) : Promise.reject(this.error);
  }

  ping(): Promise<void> {
    this.pings++;
    return this.reachable ? Promise.resolve() : Promise.reject(new Error("connect ECONNREFUSED"));
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** An error shaped like postgres.js's PostgresError. */
export function pgError(code: string, message: string, extra: Record<string, unknown> = {}) {
  return Object.assign(new Error(message), { name: "PostgresError", code, ...extra });
}
