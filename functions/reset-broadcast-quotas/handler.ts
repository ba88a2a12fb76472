/**
 * reset-broadcast-quotas: `POST /reset-broadcast-quotas`, called nightly (02:00 UTC) by the
 * schedule with a secret API key in `apikey` (deployed with verify_jwt off: the function checks
 * the key itself), or, where the legacy JWT secret is configured, the legacy service-role JWT.
 * Runs `public.reset_broadcast_quotas()` as `service_role` and returns its stats. Idempotent:
 * the SQL function decides what to reset.
 *
 * Order: CORS preflight → route/method → auth (server callers only) → ONE SQL call → JSON.
 */

import { authenticateServer, type Verifier } from "../_shared/auth.ts";
import type { Db } from "../_shared/db.ts";
import { errorResponse } from "../_shared/errors.ts";
import { json, serveRoutes } from "../_shared/http.ts";

export const FUNCTION_NAME = "reset-broadcast-quotas";

const RESET = "select public.reset_broadcast_quotas() as result";

export interface Deps {
  verify: Verifier;
  /** The project's secret API keys (`SUPABASE_SECRET_KEYS`). */
  secretKeys: readonly string[];
  db: Db;
}

export function createHandler(
  { verify, secretKeys, db }: Deps,
): (req: Request) => Promise<Response> {
  async function health(): Promise<Response> {
    try {
      await db.ping();
      return json({ status: "ok", db: "ok" });
    } catch {
      return json({ status: "degraded", db: "unreachable" }, 503);
    }
  }

  async function reset(req: Request): Promise<Response> {
    const claims = await authenticateServer(req, secretKeys, verify);
    // The body (the scheduler may send `{}` or a timestamp) carries nothing we use.
    await req.body?.cancel().catch(() => {});
    const stats = await db.call("service_role", claims, RESET, []);
    return json(stats, 200);
  }

  return serveRoutes(FUNCTION_NAME, {
    post: reset,
    health,
    fallback: (err) => errorResponse(FUNCTION_NAME, err),
  });
}
