/** JSON responses, routing on the pathname's tail, and a size-limited body reader. */

import { corsHeaders, preflight } from "./cors.ts";

/** `Response.json(body, {status})` with the CORS headers (and any extra headers). */
export function json(body: unknown, status = 200, extra: Record<string, string> = {}): Response {
  return Response.json(body, { status, headers: { ...corsHeaders, ...extra } });
}

/**
 * The path segments after the function's own name.
 *
 * Hosted Supabase and the local gateway both hand the function a pathname starting with
 * `/<function-name>` (`/send-broadcast/health`); a bare `/health` (a direct call) works too.
 */
export function routeTail(url: string, functionName: string): string[] {
  const segments = new URL(url).pathname.split("/").filter((s) => s !== "");
  const at = segments.lastIndexOf(functionName);
  return at === -1 ? segments : segments.slice(at + 1);
}

/** What a function answers: its POST action, its health, and how to shape its own errors. */
export interface Routes {
  post: (req: Request) => Promise<Response>;
  health: () => Promise<Response>;
  /** A function-specific error response, or null to fall back to `fallback`. */
  onError?: (err: unknown) => Response | null;
  fallback: (err: unknown) => Response;
}

/**
 * The request handler every function shares: CORS preflight, `POST /<name>`, `GET /<name>/health`,
 * 405 with `Allow` for the wrong method, 404 for anything else, errors shaped once.
 */
export function serveRoutes(
  functionName: string,
  routes: Routes,
): (req: Request) => Promise<Response> {
  return async function handle(req: Request): Promise<Response> {
    if (req.method === "OPTIONS") return preflight();
    try {
      const tail = routeTail(req.url, functionName);
      if (tail.length === 0) {
        if (req.method !== "POST") return methodNotAllowed(["POST", "OPTIONS"]);
        return await routes.post(req);
      }
      if (tail.length === 1 && tail[0] === "health") {
        if (req.method !== "GET" && req.method !== "HEAD") {
          return methodNotAllowed(["GET", "HEAD", "OPTIONS"]);
        }
        return await routes.health();
      }
      return json({ error: "not found" }, 404);
    } catch (err) {
      return routes.onError?.(err) ?? routes.fallback(err);
    }
  };
}

/** 405 with the `Allow` header the client needs. */
export function methodNotAllowed(allow: string[]): Response {
  return json({ error: "method not allowed" }, 405, { Allow: allow.join(", ") });
}

export class BodyTooLarge extends Error {
  constructor(readonly limit: number) {
    super(`request body larger than ${limit} bytes`);
  }
}

/** Read the body as UTF-8 text, refusing (without buffering it all) anything over `limit`. */
export async function readBodyText(req: Request, limit: number): Promise<string> {
  const declared = Number(req.headers.get("content-length") ?? "NaN");
  if (Number.isFinite(declared) && declared > limit) throw new BodyTooLarge(limit);
  if (req.body === null) return "";
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw new BodyTooLarge(limit);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}
