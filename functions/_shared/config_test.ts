import assert from "node:assert/strict";
import { ConfigError, loadConfig } from "./config.ts";

function env(values: Record<string, string>) {
  return { get: (name: string) => values[name] };
}

Deno.test("config: SUPABASE_DB_URL and SUPABASE_JWT_SECRET are enough", () => {
  const cfg = loadConfig("f", env({ SUPABASE_DB_URL: "postgres://db", SUPABASE_JWT_SECRET: "s" }));
  assert.deepEqual(cfg, { dbUrl: "postgres://db", jwtSecret: "s", jwksUrl: undefined });
});

Deno.test("config: JWT_SECRET (the seed's edge-runtime v1 name) is accepted", () => {
  const cfg = loadConfig("f", env({ SUPABASE_DB_URL: "postgres://db", JWT_SECRET: "legacy" }));
  assert.equal(cfg.jwtSecret, "legacy");
});

Deno.test("config: a JWKS URL alone satisfies the JWT requirement", () => {
  const cfg = loadConfig(
    "f",
    env({ SUPABASE_DB_URL: "postgres://db", SUPABASE_JWKS_URL: "https://p.supabase.co/jwks" }),
  );
  assert.equal(cfg.jwtSecret, undefined);
  assert.equal(cfg.jwksUrl, "https://p.supabase.co/jwks");
});

Deno.test("config: missing or blank secrets are named, values never printed", () => {
  assert.throws(
    () => loadConfig("f", env({ SUPABASE_JWT_SECRET: "hunter2-secret" })),
    (e: unknown) =>
      e instanceof ConfigError && /SUPABASE_DB_URL/.test(e.message) &&
      !/hunter2/.test(e.message),
  );
  assert.throws(
    () =>
      loadConfig("f", env({ SUPABASE_DB_URL: "postgres://u:pw@db/x", SUPABASE_JWT_SECRET: " " })),
    (e: unknown) =>
      e instanceof ConfigError && /SUPABASE_JWT_SECRET/.test(e.message) && !/pw@db/.test(e.message),
  );
});

// Start the real entry points with a stripped environment: they must exit non-zero before
// listening, naming the missing variable and without echoing the values that were set.
const FUNCTIONS = ["send-broadcast", "reset-broadcast-quotas"];
const KEEP = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR"];

async function start(name: string, extra: Record<string, string>) {
  const envs: Record<string, string> = {};
  for (const key of KEEP) {
    const value = Deno.env.get(key);
    if (value !== undefined) envs[key] = value;
  }
  const entry = new URL(`../${name}/index.ts`, import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--frozen", "--cached-only", "--allow-net", "--allow-env", "--allow-read", entry],
    clearEnv: true,
    env: { ...envs, NO_COLOR: "1", DENO_SERVE_ADDRESS: "tcp:127.0.0.1:0", ...extra },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
  // A module that does not fail would serve forever; bound the wait.
  const process = child.spawn();
  const timer = setTimeout(() => process.kill("SIGKILL"), 60_000);
  const out = await process.output();
  clearTimeout(timer);
  return {
    code: out.code,
    text: new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr),
  };
}

for (const name of FUNCTIONS) {
  Deno.test(`${name}: no SUPABASE_DB_URL at start → exits non-zero naming it`, async () => {
    const { code, text } = await start(name, { SUPABASE_JWT_SECRET: "do-not-print-this-secret" });
    assert.notEqual(code, 0, text);
    assert.match(text, /missing required secret SUPABASE_DB_URL/);
    assert.match(text, new RegExp(name));
    assert.doesNotMatch(text, /do-not-print-this-secret/);
    assert.doesNotMatch(text, /Listening on/);
  });

  Deno.test(`${name}: no JWT secret at start → exits non-zero naming it`, async () => {
    const { code, text } = await start(name, {
      SUPABASE_DB_URL: "postgresql://postgres:do-not-print-pw@127.0.0.1:1/postgres",
    });
    assert.notEqual(code, 0, text);
    assert.match(text, /missing required secret SUPABASE_JWT_SECRET/);
    assert.doesNotMatch(text, /do-not-print-pw/);
    assert.doesNotMatch(text, /Listening on/);
  });
}
