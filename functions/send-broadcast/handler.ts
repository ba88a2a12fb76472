/**
 * send-broadcast: `POST /send-broadcast` sends a broadcast through `public.send_broadcast`;
 * `GET /send-broadcast/health` reports whether the database answers.
 *
 * Order: CORS preflight → route/method → auth → validate → ONE SQL call → JSON response.
 * The quota is taken by the SQL function only (a past defect took it twice), and the sender
 * is the token's subject — never a `sender_id` from the body.
 */

import { authenticate, requireUser, type Verifier } from "../_shared/auth.ts";
import type { Db } from "../_shared/db.ts";
import { errorResponse } from "../_shared/errors.ts";
import { BodyTooLarge, json, readBodyText, serveRoutes } from "../_shared/http.ts";
import { parseBroadcast, SenderMismatch, ValidationError } from "./validate.ts";

export const FUNCTION_NAME = "send-broadcast";
export const MAX_BODY_BYTES = 64 * 1024;

const SEND_WITH_PHASE = "select public.send_broadcast(p_show_id => $1::uuid, " +
  "p_message_text => $2, p_recipient_roles => $3::text[], p_is_pre_show => $4) as result";
const SEND_DEFAULT_PHASE = "select public.send_broadcast(p_show_id => $1::uuid, " +
  "p_message_text => $2, p_recipient_roles => $3::text[]) as result";

export interface Deps {
  verify: Verifier;
  db: Db;
}

export function createHandler({ verify, db }: Deps): (req: Request) => Promise<Response> {
  async function health(): Promise<Response> {
    try {
      await db.ping();
      return json({ status: "ok", db: "ok" });
    } catch (err) {
      console.error(JSON.stringify({
        level: "warn",
        function: FUNCTION_NAME,
        health: "db unreachable",
        message: err instanceof Error ? err.message : String(err),
      }));
      return json({ status: "degraded", db: "unreachable" }, 503);
    }
  }

  async function send(req: Request): Promise<Response> {
    const claims = await authenticate(req, verify);
    const userId = requireUser(claims);

    let text: string;
    try {
      text = await readBodyText(req, MAX_BODY_BYTES);
    } catch (err) {
      if (err instanceof BodyTooLarge) {
        return json({ error: err.message, field: "body" }, 413);
      }
      throw err;
    }

    const body = parseBroadcast(text, userId);
    const withPhase = body.is_pre_show !== undefined;
    const result = await db.call(
      "authenticated",
      claims,
      withPhase ? SEND_WITH_PHASE : SEND_DEFAULT_PHASE,
      withPhase
        ? [body.show_id, body.message, body.recipient_roles, body.is_pre_show]
        : [body.show_id, body.message, body.recipient_roles],
    );
    return json(result, 200);
  }

  return serveRoutes(FUNCTION_NAME, {
    post: send,
    health,
    onError: (err) => {
      if (err instanceof ValidationError) {
        return json({ error: err.message, field: err.field }, 400);
      }
      if (err instanceof SenderMismatch) return json({ error: err.message }, 403);
      return null;
    },
    fallback: (err) => errorResponse(FUNCTION_NAME, err),
  });
}
