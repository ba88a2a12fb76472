/**
 * Caller authentication with jose.
 *
 * User JWTs signed by the project's asymmetric signing keys (ES256/RS256) are checked against
 * the platform-provided JWKS (`SUPABASE_JWKS`); legacy HS256 tokens against the legacy secret,
 * only while the plan provides it. Unsigned tokens (`alg: none`), a wrong signature, expired or
 * not-yet-valid tokens, and tokens issued in the future beyond PostgREST's 30 s clock skew are
 * rejected; a user must have the string role `authenticated` and the audience
 * `authenticated`. Server callers (the nightly cron) send a secret API key in `apikey`, or,
 * where the legacy secret is configured, the legacy service-role JWT. Identity comes only from
 * verified credentials, never from a request body.
 */

import {
  createLocalJWKSet,
  decodeProtectedHeader,
  errors as joseErrors,
  type JWTPayload,
  jwtVerify,
} from "npm:jose@6.1.0";
import type { Config } from "./config.ts";

export type Claims = JWTPayload & { role?: string; [claim: string]: unknown };
export type Verifier = (token: string) => Promise<Claims>;

/** An authentication (401) or authorization (403) refusal, with a client-facing message. */
export class AuthError extends Error {
  override name = "AuthError";
  constructor(readonly status: 401 | 403, message: string) {
    super(message);
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ASYMMETRIC = ["RS256", "ES256"];
/** PostgREST's clock skew allowance (seconds) for `exp`, `nbf` and `iat`. */
export const CLOCK_SKEW = 30;

/** The token of an `Authorization: Bearer <token>` header, or null. */
export function bearerToken(req: Request): string | null {
  const header = req.headers.get("authorization");
  if (!header) return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1] : null;
}

export function createVerifier(config: Pick<Config, "jwtSecret" | "jwks">): Verifier {
  const secret = config.jwtSecret ? new TextEncoder().encode(config.jwtSecret) : undefined;
  const jwks = config.jwks ? createLocalJWKSet(config.jwks) : undefined;
  const options = { clockTolerance: CLOCK_SKEW };

  async function check(token: string, alg: string | undefined): Promise<Claims | null> {
    if (alg === "HS256" && secret) {
      return (await jwtVerify(token, secret, { ...options, algorithms: ["HS256"] }))
        .payload as Claims;
    }
    if (alg && ASYMMETRIC.includes(alg) && jwks) {
      return (await jwtVerify(token, jwks, { ...options, algorithms: ASYMMETRIC }))
        .payload as Claims;
    }
    return null;
  }

  return async (token: string): Promise<Claims> => {
    let alg: string | undefined;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      throw new AuthError(401, "invalid token");
    }
    let claims: Claims | null;
    try {
      claims = await check(token, alg);
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) throw new AuthError(401, "token expired");
      if (err instanceof joseErrors.JOSEError) throw new AuthError(401, "invalid token");
      throw err;
    }
    if (claims === null) throw new AuthError(401, "invalid token");
    const now = Math.floor(Date.now() / 1000);
    if (typeof claims.iat === "number" && claims.iat > now + CLOCK_SKEW) {
      throw new AuthError(401, "token issued in the future");
    }
    if (claims.role !== undefined && typeof claims.role !== "string") {
      throw new AuthError(401, "invalid token");
    }
    return claims;
  };
}

/** Verify the request's bearer token; 401 when it is missing or does not verify. */
export async function authenticate(req: Request, verify: Verifier): Promise<Claims> {
  const token = bearerToken(req);
  if (!token) throw new AuthError(401, "missing bearer token");
  return await verify(token);
}

/** A signed-in user's token: `role: authenticated`, audience `authenticated` and a uuid
 * subject. Returns the user id. */
export function requireUser(claims: Claims): string {
  if (typeof claims.sub !== "string" || !UUID.test(claims.sub)) {
    throw new AuthError(401, "token does not identify a user");
  }
  if (claims.role !== "authenticated") {
    throw new AuthError(403, "a signed-in user is required");
  }
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!aud.includes("authenticated")) {
    throw new AuthError(401, "token is not for this API (aud)");
  }
  return claims.sub;
}

/** Constant-time string comparison (a key check must not leak how much matched). */
function sameKey(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/**
 * A server caller (the nightly cron): a secret API key in `apikey` (checked against the
 * project's secret keys), or a legacy service-role JWT (in `Authorization: Bearer`, or in
 * `apikey` as legacy clients send it) that verifies while the legacy secret is configured.
 */
export async function authenticateServer(
  req: Request,
  secretKeys: readonly string[],
  verify: Verifier,
): Promise<Claims> {
  const apikey = req.headers.get("apikey")?.trim() ?? "";
  if (apikey && secretKeys.some((key) => sameKey(apikey, key))) {
    return { role: "service_role" };
  }
  const bearer = bearerToken(req);
  if (bearer) {
    const claims = await verify(bearer);
    requireServiceRole(claims);
    return claims;
  }
  // Legacy clients send the service-role JWT as the apikey; any other apikey (the public anon
  // key a browser sends) is no credential here.
  if (apikey.split(".").length === 3) {
    const claims = await verify(apikey);
    if (claims.role === "service_role") return claims;
  }
  throw new AuthError(401, "missing secret key");
}

/** The service role's token (the service-role key is a JWT with `role: service_role`). */
export function requireServiceRole(claims: Claims): void {
  if (claims.role !== "service_role") {
    throw new AuthError(403, "the service role is required");
  }
}
