/**
 * CORS headers as Supabase's own functions send them, and the preflight answer.
 *
 * Browsers (and supabase-js in a web view) send `authorization, x-client-info, apikey,
 * content-type`; every response carries these headers so error bodies are readable too.
 */

export const corsHeaders: Readonly<Record<string, string>> = Object.freeze({
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
  "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
  "Access-Control-Max-Age": "86400",
});

/** The answer to an OPTIONS preflight: no auth, no body parsing, no database. */
export function preflight(): Response {
  return new Response("ok", { status: 200, headers: corsHeaders });
}
