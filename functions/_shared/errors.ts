/**
 * Map errors to HTTP responses.
 *
 * The SQL API raises PostgREST-convention SQLSTATEs (`PT403` → 403, `PT429` → 429, `PT404`,
 * `PT400`); their messages are written for clients and passed on. Anything else is a 500 with
 * no internals: the detail goes to the server log (code and message only — never the query's
 * parameters, which can hold message text or tokens).
 */

import { AuthError } from "./auth.ts";
import { json } from "./http.ts";

/** The HTTP status for a SQLSTATE: `PT4xx` → xxx (PostgREST's convention), else 500. */
export function statusForSqlState(code: unknown): number {
  if (typeof code === "string" && /^PT4\d\d$/.test(code)) return Number(code.slice(2));
  return 500;
}

interface PgLikeError {
  code?: unknown;
  message?: unknown;
  column_name?: unknown;
}

function log(functionName: string, err: unknown): void {
  const e = (err ?? {}) as PgLikeError & { name?: unknown };
  console.error(JSON.stringify({
    level: "error",
    function: functionName,
    error: typeof e.name === "string" ? e.name : typeof err,
    code: typeof e.code === "string" ? e.code : undefined,
    message: typeof e.message === "string" ? e.message : String(err),
  }));
}

export function internalError(functionName: string, err: unknown): Response {
  log(functionName, err);
  return json({ error: "internal error" }, 500);
}

/** The response for anything a handler throws. */
export function errorResponse(functionName: string, err: unknown): Response {
  if (err instanceof AuthError) {
    const extra: Record<string, string> = err.status === 401
      ? { "WWW-Authenticate": `Bearer error="invalid_token"` }
      : {};
    return json({ error: err.message }, err.status, extra);
  }
  const e = (err ?? {}) as PgLikeError;
  const status = statusForSqlState(e.code);
  if (status === 500) return internalError(functionName, err);
  const message = typeof e.message === "string" && e.message ? e.message : "request refused";
  switch (status) {
    case 429:
      return json({ error: message, quota_remaining: 0 }, 429);
    case 400: {
      // `raise ... using column = 'message'` names the field, as the function's own checks do.
      const field = typeof e.column_name === "string" && e.column_name ? e.column_name : null;
      return json({ error: message, field }, 400);
    }
    default:
      return json({ error: message }, status);
  }
}
