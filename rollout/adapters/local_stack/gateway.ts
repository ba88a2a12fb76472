// The local stack's API gateway: Supabase's URL layout on 127.0.0.1.
//
//   /functions/v1/<name>/...  → the function's own Deno worker (pathname `/<name>/...`, as on
//                               the hosted edge runtime); 404 when the function is not deployed;
//                               401 {"msg": "Invalid JWT"} before a function deployed with
//                               verify_jwt runs, unless `Authorization: Bearer` holds a valid JWT
//                               (OPTIONS passes), as the hosted gateway does.
//   /rest/v1/rpc/<fn>         → authenticates as the hosted API does (an API key in `apikey`:
//                               publishable → anon, secret → service_role; or a JWT in
//                               `Authorization: Bearer`: legacy HS256 or ES256 from the project's
//                               signing key, checked against its JWKS), then runs
//                               `public.<fn>(named args from the JSON body)` in a transaction
//                               with `set local role <role claim>` and `request.jwt.claims` set,
//                               as PostgREST does (GET: in a read-only transaction, so a write
//                               answers 405), and answers with PostgREST's body and error shapes.
//                               OPTIONS answers the CORS preflight as hosted does.
//
// JWTs are refused when expired or issued in the future beyond PostgREST's 30 s clock skew, when
// `role` is not a string, or when a user token's `aud` is not `authenticated`. Bodies are read
// up to the size limit and no further (413).
//   /health                   → the gateway's own health, for `rollout local status`.
//
// It also runs the local cron schedule (the hosted platform's pg_cron + pg_net stand-in):
// jobs from the schedules file, each an HTTP POST to a function with the service-role key, or a
// SQL command run as the owner.
//
// Configuration (env): GATEWAY_ADDRESS host:port, GATEWAY_DB_URL (connects as `authenticator`),
// GATEWAY_JWT_SECRET, GATEWAY_JWKS, GATEWAY_PUBLISHABLE_KEY, GATEWAY_SECRET_KEY,
// GATEWAY_STATE_DIR (routes.json, schedules.json, cron.log), GATEWAY_CRON_DB_URL (SQL jobs).

import postgres from "npm:postgres@3.4.7";
import * as jose from "npm:jose@6.1.0";
import { Cron } from "npm:croner@9.1.0";

function required(name: string): string {
  const value = Deno.env.get(name);
  if (!value) throw new Error(`gateway: missing required environment variable ${name}`);
  return value;
}

const [host, port] = required("GATEWAY_ADDRESS").split(":");
const stateDir = required("GATEWAY_STATE_DIR");
// Imported once: handed the raw bytes, jose imports the HMAC key on every verify (~40 µs).
const secret = await crypto.subtle.importKey(
  "raw", new TextEncoder().encode(required("GATEWAY_JWT_SECRET")),
  { name: "HMAC", hash: "SHA-256" }, false, ["verify"],
);
const jwks = jose.createLocalJWKSet(JSON.parse(required("GATEWAY_JWKS")));
const API_KEYS: Record<string, string> = {
  [required("GATEWAY_PUBLISHABLE_KEY")]: "anon",
  [required("GATEWAY_SECRET_KEY")]: "service_role",
};
const CLOCK_SKEW = 30; // seconds, as PostgREST allows
const sql = postgres(required("GATEWAY_DB_URL"), {
  max: Number(Deno.env.get("GATEWAY_DB_POOL") ?? "20"),
  idle_timeout: 30,
  // Named statements per connection for the parameterised queries (the catalog lookup of
  // `describe`): parsed and planned once. An RPC itself goes as one simple-protocol query
  // (see `rpc`), which is never prepared.
  prepare: true,
  onnotice: () => {},
});

// SQL cron jobs: one connection as the owner (pg_cron runs a job as the role that scheduled it).
const cronSql = postgres(required("GATEWAY_CRON_DB_URL"), {
  max: 1, idle_timeout: 30, prepare: false, onnotice: () => {},
});

const API_ROLES = new Set(["anon", "authenticated", "service_role"]);
const MAX_BODY = 1024 * 1024;
const counters = {
  requests: 0, rpc_requests: 0, rpc_errors: 0, function_errors: 0, function_requests: 0,
  // PostgREST-shape errors by SQLSTATE class (the code's first two characters): the
  // `rpc-errors` guard source tells server trouble (XX, 53, 57…) from refused callers (42…).
  rpc_errors_by_class: {} as Record<string, number>,
};

type Routes = Record<string, { port: number; version: number; verify_jwt?: boolean }>;
let routesCache: { mtime: number; routes: Routes } = { mtime: -1, routes: {} };

async function routes(): Promise<Routes> {
  const path = `${stateDir}/routes.json`;
  try {
    const info = await Deno.stat(path);
    const mtime = info.mtime?.getTime() ?? 0;
    if (mtime !== routesCache.mtime) {
      routesCache = { mtime, routes: JSON.parse(await Deno.readTextFile(path)) };
    }
  } catch {
    routesCache = { mtime: -1, routes: {} };
  }
  return routesCache.routes;
}

const CORS = { "access-control-allow-origin": "*" };

function pgrstError(status: number, code: string, message: string, details: unknown = null, hint: unknown = null) {
  return Response.json({ code, details, hint, message }, { status, headers: CORS });
}

// PostgREST's mapping of SQLSTATE to HTTP status (docs: "Errors"), including its
// `PTxyz` convention: a function raising SQLSTATE PT403 answers 403.
function statusFor(sqlstate: string, role: string): number {
  if (/^PT\d{3}$/.test(sqlstate)) return Number(sqlstate.slice(2));
  const table: Record<string, number> = {
    "23503": 409, "23505": 409, "25006": 405, "42883": 404, "42P01": 404,
    "42501": role === "anon" ? 401 : 403, "P0001": 400, "57014": 500, "53400": 500,
  };
  if (sqlstate in table) return table[sqlstate];
  if (sqlstate.startsWith("22") || sqlstate.startsWith("23")) return 400;
  if (sqlstate.startsWith("08") || sqlstate.startsWith("53")) return 503;
  return 400;
}

class TokenError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

// A JWT as the hosted gateway and PostgREST check it: the legacy HS256 secret or the signing
// key's JWKS; exp/nbf with PostgREST's clock skew, and no `iat` in the future beyond it; a
// string role; `aud: authenticated` on user tokens.
//
// Tokens already verified are kept, as PostgREST's JWT cache (jwt-cache-max-lifetime) keeps
// them: a token seen again skips the signature check (~115 µs, a tenth of a call's CPU here),
// not the time claims, which are checked on every request. Bounded: emptied when full.
const verifiedTokens = new Map<string, Record<string, unknown>>();
const VERIFIED_TOKENS_MAX = 10_000;

async function verifyToken(token: string): Promise<Record<string, unknown>> {
  let payload = verifiedTokens.get(token);
  if (payload === undefined) {
    payload = await verifySignature(token);
    if (verifiedTokens.size >= VERIFIED_TOKENS_MAX) verifiedTokens.clear();
    verifiedTokens.set(token, payload);
  }
  checkTimes(payload);
  return payload;
}

// The signature and what never changes for a token: its role and audience.
async function verifySignature(token: string): Promise<Record<string, unknown>> {
  let payload: jose.JWTPayload;
  try {
    const { alg } = jose.decodeProtectedHeader(token);
    const options = { clockTolerance: CLOCK_SKEW };
    payload = alg === "HS256"
      ? (await jose.jwtVerify(token, secret, { ...options, algorithms: ["HS256"] })).payload
      : (await jose.jwtVerify(token, jwks, { ...options, algorithms: ["ES256", "RS256"] })).payload;
  } catch (err) {
    if (err instanceof jose.errors.JWTExpired) throw new TokenError("PGRST303", "JWT expired");
    throw new TokenError("PGRST301", "JWT could not be verified");
  }
  const role = payload.role;
  if (typeof role !== "string" || !API_ROLES.has(role)) {
    throw new TokenError("PGRST301", `JWT role is not allowed`);
  }
  const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  if (role === "authenticated" && !aud.includes("authenticated")) {
    throw new TokenError("PGRST303", "JWT not in audience");
  }
  return payload as Record<string, unknown>;
}

// exp and nbf as jose checks them (whole seconds, the clock skew either way), and iat.
function checkTimes(payload: Record<string, unknown>): void {
  const now = Math.floor(Date.now() / 1000);
  const { exp, nbf, iat } = payload;
  if (typeof exp === "number" && exp <= now - CLOCK_SKEW) {
    throw new TokenError("PGRST303", "JWT expired");
  }
  if (typeof nbf === "number" && nbf > now + CLOCK_SKEW) {
    throw new TokenError("PGRST301", "JWT could not be verified");
  }
  if (typeof iat === "number" && iat > Date.now() / 1000 + CLOCK_SKEW) {
    throw new TokenError("PGRST303", "JWT issued at future");
  }
}

async function claimsFrom(req: Request): Promise<Record<string, unknown> | Response> {
  const auth = req.headers.get("authorization");
  const apikey = req.headers.get("apikey") ?? "";
  let token = apikey;
  if (auth) {
    const match = /^Bearer\s+(.+)$/i.exec(auth);
    if (!match) return pgrstError(401, "PGRST301", "Authorization header is not a bearer token");
    token = match[1];
  }
  if (!token) return pgrstError(401, "PGRST302", "No API key found in request");
  // An API key (supabase-js also sends it as the bearer when no one is signed in).
  if (token in API_KEYS) return { role: API_KEYS[token] };
  try {
    return await verifyToken(token);
  } catch (err) {
    const e = err as TokenError;
    return pgrstError(401, e.code, e.message);
  }
}

class TooLarge extends Error {}

// Read a body up to `limit` bytes, and not one chunk further.
async function readLimited(req: Request, limit: number): Promise<Uint8Array<ArrayBuffer>> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > limit) throw new TooLarge();
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel();
        throw new TooLarge();
      }
      chunks.push(value);
    }
  }
  const body = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.byteLength;
  }
  return body;
}

// The hosted API's answer to a CORS preflight on /rest/v1.
function restPreflight(req: Request): Response {
  return new Response(null, {
    status: 200,
    headers: {
      "access-control-allow-origin": "*",
      "access-control-allow-methods": "GET,HEAD,PUT,PATCH,POST,DELETE",
      "access-control-allow-headers": req.headers.get("access-control-request-headers") ??
        "authorization,apikey,content-type,x-client-info",
      "access-control-max-age": "3600",
    },
  });
}

type FnInfo = {
  args: { name: string; type: string; hasDefault: boolean }[];
  setof: boolean;
  returnsVoid: boolean;
  composite: boolean;
};
const fnCache = new Map<string, { at: number; info: FnInfo | null }>();

async function describe(fn: string): Promise<FnInfo | null> {
  const cached = fnCache.get(fn);
  if (cached && Date.now() - cached.at < 2000) return cached.info;
  const rows = await sql`
    select p.proretset as setof, p.prorettype = 'void'::regtype as returns_void, p.pronargdefaults as ndefaults,
           (t.typtype = 'c' or p.prorettype = 'record'::regtype) as composite,
           coalesce(p.proargnames, '{}') as names,
           array(select format_type(t, null) from unnest(p.proargtypes) as t) as types
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    join pg_catalog.pg_type t on t.oid = p.prorettype
    where n.nspname = 'public' and p.proname = ${fn}
    order by p.pronargs desc limit 1`;
  let info: FnInfo | null = null;
  if (rows.length) {
    const r = rows[0];
    const n = r.types.length;
    info = {
      setof: r.setof,
      returnsVoid: r.returns_void,
      composite: r.composite,
      args: r.types.map((type: string, i: number) => ({
        name: r.names[i] ?? "", type, hasDefault: i >= n - r.ndefaults,
      })),
    };
  }
  fnCache.set(fn, { at: Date.now(), info });
  return info;
}

// A string as an SQL literal. E'' quoting has the same escapes whatever
// standard_conforming_strings says, so doubling quotes and backslashes closes every way out of
// it; the query text is a C string, so a NUL (which JSON.stringify never writes raw) is refused.
function literal(value: string): string {
  if (value.includes("\0")) throw new Error("NUL in an SQL literal");
  return `E'${value.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}

const ident = (name: string) => `"${name.replaceAll('"', '""')}"`;

async function rpc(req: Request, fn: string): Promise<Response> {
  if (req.method !== "POST" && req.method !== "GET") {
    return pgrstError(405, "PGRST117", `Unsupported HTTP method: ${req.method}`);
  }
  const claims = await claimsFrom(req);
  if (claims instanceof Response) return claims;
  const role = String(claims.role);

  let body: Record<string, unknown> = {};
  if (req.method === "POST") {
    let text: string;
    try {
      text = new TextDecoder().decode(await readLimited(req, MAX_BODY));
    } catch (err) {
      if (err instanceof TooLarge) return pgrstError(413, "PGRST413", "Payload too large");
      throw err;
    }
    if (text.trim()) {
      try {
        body = JSON.parse(text);
      } catch {
        return pgrstError(400, "PGRST102", "Empty or invalid json");
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        return pgrstError(400, "PGRST102", "Body must be a JSON object of named arguments");
      }
    }
  } else {
    body = Object.fromEntries(new URL(req.url).searchParams);
  }

  const info = await describe(fn);
  const keys = Object.keys(body).sort();
  const known = new Map(info?.args.map((a) => [a.name, a]) ?? []);
  const missing = info?.args.filter((a) => !a.hasDefault && !(a.name in body)) ?? [];
  if (!info || keys.some((k) => !known.has(k)) || missing.length) {
    return pgrstError(404, "PGRST202",
      `Could not find the function public.${fn}(${keys.join(", ")}) in the schema cache`);
  }
  // PostgREST's own technique: the JSON body becomes a record with the argument types, so
  // JSON arrays become SQL arrays. Only catalog identifiers and quoted literals go into the
  // text (see `literal`): the simple protocol below has no parameters.
  const cols = keys.map((k) => `${ident(k)} ${known.get(k)!.type}`).join(", ");
  const call = `public.${ident(fn)}(${keys.map((k) => `${ident(k)} := _args.${ident(k)}`).join(", ")})`;
  const args = keys.length
    ? `jsonb_to_record(${literal(JSON.stringify(body))}::jsonb) as _args(${cols})`
    : "";
  // Rows become objects; a set of scalars becomes an array of scalars, as in PostgREST.
  const rowset = info.composite ? `${call} _r` : `${call} as _s(_r)`;
  // The body leaves PostgreSQL as JSON text and goes out as it is (as PostgREST does): no
  // parse into objects and serialise again here, which cost most of a 1,000-row inbox. And
  // json_agg as PostgREST's, not jsonb_agg: keys in the function's column order, and a third
  // of the cost (1,000 inbox rows: ~2 ms against ~6 ms).
  const query = info.setof
    ? `select coalesce(json_agg(_r), '[]'::json)::text as body from ${args ? `${args}, lateral ` : ""}${rowset}`
    : `select to_json(${call})::text as body${args ? ` from ${args}` : ""}`;

  counters.rpc_requests++;
  try {
    // PostgREST's transaction around a call: the role (set_config('role') is `set local role`)
    // and the claims, then the call; a GET read-only, so a function that writes fails
    // (25006 → 405). Sent as one simple-protocol query: its statements are one implicit
    // transaction (all or nothing, the settings local to it), written in one send and answered
    // in one (PostgreSQL flushes at each ReadyForQuery: four with begin, statement, statement,
    // commit as extended-protocol messages). Steady DM sends through postgres.js at 20
    // connections: 3,100-3,300 a second against 2,000-2,100 that way on two cores.
    const mode = req.method === "GET" ? "read only" : "read write";
    const settings = [["role", role], ["request.jwt.claims", JSON.stringify(claims)],
      ["request.method", req.method], ["request.path", new URL(req.url).pathname]]
      .map(([name, value]) => `set_config('${name}', ${literal(value)}, true)`).join(", ");
    const rows = await sql.unsafe(`set transaction ${mode}; select ${settings}; ${query}`);
    // One result per statement: set transaction, the settings, the call.
    const result = ((rows as unknown as postgres.Row[][])[2][0]?.body as string | null | undefined) ?? null;
    if (info.returnsVoid) return new Response(null, { status: 204, headers: CORS });
    return new Response(result ?? "null", {
      status: 200, headers: { ...CORS, "content-type": "application/json" },
    });
  } catch (err) {
    counters.rpc_errors++;
    const e = err as { code?: string; message?: string; detail?: string; hint?: string };
    const code = e.code ?? "XX000";
    const sqlClass = code.slice(0, 2);
    counters.rpc_errors_by_class[sqlClass] = (counters.rpc_errors_by_class[sqlClass] ?? 0) + 1;
    return pgrstError(statusFor(code, role), code, e.message ?? "error", e.detail ?? null, e.hint ?? null);
  }
}

// The hosted gateway's verify_jwt check: a JWT in `Authorization: Bearer` that verifies
// (API keys in `apikey` do not count).
async function validJwt(req: Request): Promise<boolean> {
  const [bearer, token] = (req.headers.get("authorization") ?? "").split(" ");
  if (bearer !== "Bearer" || !token) return false;
  try {
    await verifyToken(token);
    return true;
  } catch {
    return false;
  }
}

async function proxyFunction(req: Request, name: string, rest: string): Promise<Response> {
  const route = (await routes())[name];
  if (!route) {
    return Response.json({ code: "NOT_FOUND", message: "Requested function was not found" }, { status: 404 });
  }
  if (route.verify_jwt !== false && req.method !== "OPTIONS" && !(await validJwt(req))) {
    return Response.json({ msg: "Invalid JWT" }, { status: 401 });
  }
  counters.function_requests++;
  const url = new URL(req.url);
  const target = `http://127.0.0.1:${route.port}/${name}${rest}${url.search}`;
  let body: Uint8Array<ArrayBuffer> | undefined;
  try {
    body = req.method === "GET" || req.method === "HEAD" ? undefined : await readLimited(req, MAX_BODY);
  } catch (err) {
    if (!(err instanceof TooLarge)) throw err;
    return Response.json({ code: "PAYLOAD_TOO_LARGE", message: "Request body too large" }, { status: 413 });
  }
  try {
    const upstream = await fetch(target, { method: req.method, headers: req.headers, body, redirect: "manual" });
    if (upstream.status >= 500) counters.function_errors++;
    return new Response(upstream.body, { status: upstream.status, headers: upstream.headers });
  } catch {
    counters.function_errors++;
    return Response.json({ code: "BOOT_ERROR", message: "Function failed to respond" }, { status: 502 });
  }
}

// ---- the local cron: `schedules.json` = [{name, schedule, function, body} | {name, schedule, sql}]

type Job = { name: string; schedule: string; function?: string; body?: unknown; sql?: string };
const running = new Map<string, Cron>();
let schedulesMtime = -1;

// pg_cron's interval form 'N seconds' as a six-field (seconds first) croner pattern.
function cronPattern(schedule: string): string {
  const seconds = /^(\d+)\s*seconds?$/i.exec(schedule.trim());
  return seconds ? `*/${seconds[1]} * * * * *` : schedule;
}

async function reloadSchedules() {
  const path = `${stateDir}/schedules.json`;
  let jobs: Job[] = [];
  try {
    const info = await Deno.stat(path);
    const mtime = info.mtime?.getTime() ?? 0;
    if (mtime === schedulesMtime) return;
    schedulesMtime = mtime;
    jobs = JSON.parse(await Deno.readTextFile(path));
  } catch {
    if (schedulesMtime === -2) return;
    schedulesMtime = -2;
  }
  for (const cron of running.values()) cron.stop();
  running.clear();
  for (const job of jobs) {
    // protect: one run of a job at a time (a run still going when the next is due skips it)
    running.set(job.name, new Cron(cronPattern(job.schedule), { timezone: "UTC", protect: true },
      () => runJob(job)));
  }
}

async function runJob(job: Job) {
  const started = new Date().toISOString();
  let status = "failed";
  let detail = "";
  let httpStatus: number | null = null;
  try {
    if (job.sql !== undefined) {
      // As pg_cron: the command runs in the database as the job's owner.
      const rows = await cronSql.unsafe(job.sql);
      detail = `${rows.count ?? rows.length} row(s)`;
      status = "succeeded";
    } else {
      // As the pg_cron job on hosted: the secret API key in `apikey` (the function checks it).
      const key = await Deno.readTextFile(`${stateDir}/secrets/secret_key`);
      const res = await fetch(`http://${host}:${port}/functions/v1/${job.function}`, {
        method: "POST",
        headers: { "content-type": "application/json", apikey: key.trim() },
        body: JSON.stringify(job.body ?? {}),
      });
      detail = `HTTP ${res.status}`;
      httpStatus = res.status;
      await res.body?.cancel();
      status = res.ok ? "succeeded" : "failed";
    }
  } catch (err) {
    detail = String((err as Error).message ?? err);
  }
  const line = JSON.stringify({
    job: job.name, started, finished: new Date().toISOString(), status, detail, http_status: httpStatus,
  });
  await Deno.writeTextFile(`${stateDir}/cron.log`, line + "\n", { append: true });
}

await reloadSchedules();
setInterval(reloadSchedules, 1000);

// ---- the server ---------------------------------------------------------------------------------

Deno.serve({ hostname: host, port: Number(port), onListen: () => {} }, async (req) => {
  counters.requests++;
  const { pathname } = new URL(req.url);
  const fn = /^\/functions\/v1\/([A-Za-z0-9_-]+)(\/.*)?$/.exec(pathname);
  if (fn) return proxyFunction(req, fn[1], fn[2] ?? "");
  if (req.method === "OPTIONS" && pathname.startsWith("/rest/v1/")) return restPreflight(req);
  const rpcMatch = /^\/rest\/v1\/rpc\/([A-Za-z_][A-Za-z0-9_]*)$/.exec(pathname);
  if (rpcMatch) return rpc(req, rpcMatch[1]);
  if (pathname === "/health") {
    let db = "ok";
    try {
      await sql`select 1`;
    } catch {
      db = "unreachable";
    }
    return Response.json({ status: db === "ok" ? "ok" : "degraded", db, counters, functions: await routes() },
      { status: db === "ok" ? 200 : 503 });
  }
  return Response.json({ code: "PGRST125", message: `Invalid path ${pathname}` }, { status: 404 });
});
