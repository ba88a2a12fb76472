/**
 * Bearer-token verification with jose.
 *
 * HS256 tokens are checked against the project's JWT secret; when `SUPABASE_JWKS_URL` is set,
 * asymmetric tokens (RS256/ES256, Supabase's newer signing keys) are checked against that JWKS.
 * Unsigned tokens (`alg: none`), a wrong signature, and expired or not-yet-valid tokens are
 * rejected. Identity comes only from the verified claims, never from a request body.
 */

import {
  createRemoteJWKSet,
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
const ASYMMETRIC = ["RS256", "ES256", "EdDSA"];

/** The token of an `Authorization: Bearer <token>` header, or null. */
export function bearerToken(req: Request): string | null {
  const header = req.headers.get("authorization");
  if (!header) return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1] : null;
}

export function createVerifier(config: Pick<Config, "jwtSecret" | "jwksUrl">): Verifier {
  const secret = config.jwtSecret ? new TextEncoder().encode(config.jwtSecret) : undefined;
  const jwks = config.jwksUrl ? createRemoteJWKSet(new URL(config.jwksUrl)) : undefined;

  return async (token: string): Promise<Claims> => {
    let alg: string | undefined;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      throw new AuthError(401, "invalid token");
    }
    try {
      if (alg === "HS256" && secret) {
        return (await jwtVerify(token, secret, { algorithms: ["HS256"] })).payload as Claims;
      }
      if (alg && ASYMMETRIC.includes(alg) && jwks) {
        return (await jwtVerify(token, jwks, { algorithms: ASYMMETRIC })).payload as Claims;
      }
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) throw new AuthError(401, "token expired");
      if (err instanceof joseErrors.JOSEError) throw new AuthError(401, "invalid token");
      throw err; // e.g. the JWKS endpoint is unreachable: a server problem, not the caller's
    }
    throw new AuthError(401, "invalid token");
  };
}

/** Verify the request's bearer token; 401 when it is missing or does not verify. */
export async function authenticate(req: Request, verify: Verifier): Promise<Claims> {
  const token = bearerToken(req);
  if (!token) throw new AuthError(401, "missing bearer token");
  return await verify(token);
}

/** A signed-in user's token: `role: authenticated` and a uuid subject. Returns the user id. */
export function requireUser(claims: Claims): string {
  if (typeof claims.sub !== "string" || !UUID.test(claims.sub)) {
    throw new AuthError(401, "token does not identify a user");
  }
  if (claims.role !== "authenticated") {
    throw new AuthError(403, "a signed-in user is required");
  }
  return claims.sub;
}

/** The service role's token (the service-role key is a JWT with `role: service_role`). */
export function requireServiceRole(claims: Claims): void {
  if (claims.role !== "service_role") {
    throw new AuthError(403, "the service role is required");
  }
}
