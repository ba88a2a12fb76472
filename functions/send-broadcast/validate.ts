/**
 * The send-broadcast request body: parsed, checked, and the message cleaned.
 *
 * Rules that need data (who may broadcast to whom, the quota) are the SQL function's; this
 * only rejects what can never be valid, naming the offending field.
 */

export const ROLES = ["attendee", "dealer", "mvp_dealer", "show_organizer", "admin"] as const;
export type Role = typeof ROLES[number];

export const MAX_MESSAGE_CHARS = 1000;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface BroadcastRequest {
  show_id: string;
  recipient_roles: Role[];
  message: string;
  /** Absent: the SQL function decides (its default). */
  is_pre_show?: boolean;
}

/** A 400 naming the field that is wrong. */
export class ValidationError extends Error {
  override name = "ValidationError";
  constructor(readonly field: string, message: string) {
    super(message);
  }
}

/** A `sender_id` that is not the token's subject: a spoof attempt (403). */
export class SenderMismatch extends Error {
  override name = "SenderMismatch";
  constructor() {
    super("sender_id does not match the signed-in user");
  }
}

/**
 * Strip HTML tags (and the content of script/style elements and comments), drop control
 * characters other than tab and newlines (PostgreSQL text cannot hold NUL), and trim.
 * Repeats until stable so that nested fragments like `<<b>script>` cannot reassemble a tag.
 * A lone `<` or `>` that is not part of a tag (`a < b`) is kept.
 */
export function sanitizeMessage(raw: string): string {
  let text = raw;
  for (let i = 0; i < 10; i++) {
    const next = text
      .replace(/<!--[\s\S]*?(?:-->|$)/g, "")
      .replace(/<(script|style)\b[^>]*>[\s\S]*?(?:<\/\1\s*>|$)/gi, "")
      .replace(/<\/?[a-zA-Z!?][^<>]*>/g, "");
    if (next === text) break;
    text = next;
  }
  // deno-lint-ignore no-control-regex
  return text.replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g, "").trim();
}

/** Characters as PostgreSQL's `char_length` counts them (code points, not UTF-16 units). */
export function charLength(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Parse the body text; throws ValidationError (400) or SenderMismatch (403). */
export function parseBroadcast(text: string, userId: string): BroadcastRequest {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ValidationError("body", "body must be a JSON object");
  }
  if (!isObject(body)) throw new ValidationError("body", "body must be a JSON object");

  // Identity comes from the token; a sender_id is only tolerated when it says the same.
  if ("sender_id" in body && body.sender_id !== undefined && body.sender_id !== null) {
    const claimed = body.sender_id;
    if (typeof claimed !== "string" || claimed.toLowerCase() !== userId.toLowerCase()) {
      throw new SenderMismatch();
    }
  }

  const showId = body.show_id;
  if (typeof showId !== "string" || !UUID.test(showId)) {
    throw new ValidationError("show_id", "show_id must be a uuid");
  }

  const roles = body.recipient_roles;
  if (!Array.isArray(roles) || roles.length === 0) {
    throw new ValidationError("recipient_roles", "recipient_roles must be a non-empty array");
  }
  for (const role of roles) {
    if (typeof role !== "string" || !(ROLES as readonly string[]).includes(role)) {
      throw new ValidationError(
        "recipient_roles",
        `recipient_roles may only contain ${ROLES.join(", ")}`,
      );
    }
  }

  if (typeof body.message !== "string") {
    throw new ValidationError("message", "message must be a string");
  }
  const message = sanitizeMessage(body.message);
  const length = charLength(message);
  if (length < 1) {
    throw new ValidationError("message", "message is empty once HTML is removed and trimmed");
  }
  if (length > MAX_MESSAGE_CHARS) {
    throw new ValidationError("message", `message must be at most ${MAX_MESSAGE_CHARS} characters`);
  }

  const isPreShow = body.is_pre_show;
  if (isPreShow !== undefined && isPreShow !== null && typeof isPreShow !== "boolean") {
    throw new ValidationError("is_pre_show", "is_pre_show must be a boolean");
  }

  return {
    show_id: showId.toLowerCase(),
    recipient_roles: [...new Set(roles as Role[])],
    message,
    ...(typeof isPreShow === "boolean" ? { is_pre_show: isPreShow } : {}),
  };
}
