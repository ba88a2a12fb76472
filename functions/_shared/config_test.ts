import assert from "node:assert/strict";
import { ConfigError, loadConfig } from "./config.ts";

function env(values: Record<string, string>) {
  return { get: (name: string) => values[name] };
}

const JWKS = { keys: [{ kty: "EC", crv: "P-256", x: "x", y: "y", kid: "k" }] };

Deno.test("config: the platform's SUPABASE_JWKS alone verifies users", () => {
  const cfg = loadConfig(
    "f",
    "users",
    env({ SUPABASE_DB_URL: "postgres://db", SUPABASE_JWKS: JSON.stringify(JWKS) }),
  );
  assert.deepEqual(cfg, {
    dbUrl: "postgres://db",
    jwks: JWKS,
    jwtSecret: undefined,
    secretKeys: [],
  });
  // A bare array is a key set too; an empty one is none.
  const bare = loadConfig(
    "f",
    "users",
    env({ SUPABASE_DB_URL: "d", SUPABASE_JWKS: JSON.stringify(JWKS.keys), JWT_SECRET: "s" }),
  );
  assert.deepEqual(bare.jwks, JWKS);
  const empty = loadConfig(
    "f",
    "users",
    env({ SUPABASE_DB_URL: "d", SUPABASE_JWKS: '{"keys": []}', JWT_SECRET: "s" }),
  );
  assert.equal(empty.jwks, undefined);
});

Deno.test("config: the legacy JWT_SECRET alone still verifies users; SUPABASE_JWT_SECRET is not read", () => {
  const cfg = loadConfig(
    "f",
    "users",
    env({ SUPABASE_DB_URL: "postgres://db", JWT_SECRET: "legacy" }),
  );
  assert.equal(cfg.jwtSecret, "legacy");
  assert.throws(
    () => loadConfig("f", "users", env({ SUPABASE_DB_URL: "d", SUPABASE_JWT_SECRET: "x" })),
    (e: unknown) =>
      e instanceof ConfigError && /SUPABASE_JWKS \(or the legacy JWT_SECRET\)/.test(e.message),
  );
});

Deno.test("config: server callers need the secret keys or the legacy secret", () => {
  const cfg = loadConfig(
    "f",
    "server",
    env({
      SUPABASE_DB_URL: "d",
      SUPABASE_SECRET_KEYS: '{"default": "sb_secret_a", "ci": "sb_secret_b"}',
    }),
  );
  assert.deepEqual(cfg.secretKeys, ["sb_secret_a", "sb_secret_b"]);
  assert.throws(
    () =>
      loadConfig("f", "server", env({ SUPABASE_DB_URL: "d", SUPABASE_JWKS: JSON.stringify(JWKS) })),
    (e: unknown) => e instanceof ConfigError && /SUPABASE_SECRET_KEYS/.test(e.message),
  );
});

Deno.test("config: malformed platform JSON is named, never echoed", () => {
  assert.throws(
    () =>
      loadConfig(
        "f",
        "server",
        env({ SUPABASE_DB_URL: "d", SUPABASE_SECRET_KEYS: "sb_secret_leak" }),
      ),
    (e: unknown) =>
      e instanceof ConfigError && /SUPABASE_SECRET_KEYS is not valid JSON/.test(e.message) &&
      !/sb_secret_leak/.test(e.message),
  );
  assert.throws(
    () => loadConfig("f", "users", env({ SUPABASE_DB_URL: "d", SUPABASE_JWKS: '{"k": 1}' })),
    (e: unknown) => e instanceof ConfigError && /not a JSON Web Key Set/.test(e.message),
  );
});

Deno.test("config: missing or blank secrets are named, values never printed", () => {
  assert.throws(
    () => loadConfig("f", "users", env({ JWT_SECRET: "hunter2-secret" })),
    (e: unknown) =>
      e instanceof ConfigError && /SUPABASE_DB_URL/.test(e.message) &&
      !/hunter2/.test(e.message),
  );
  assert.throws(
    () =>
      loadConfig("f", "users", env({ SUPABASE_DB_URL: "postgres://u:pw@db/x", JWT_SECRET: " " })),
    (e: unknown) =>
      e instanceof ConfigError && /JWT_SECRET/.test(e.message) && !/pw@db/.test(e.message),
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
    const { code, text } = await start(name, { JWT_SECRET: "do-not-print-this-secret" });
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
    assert.match(
      text,
      /missing required secret SUPABASE_(JWKS|SECRET_KEYS) \(or the legacy JWT_SECRET/,
    );
    assert.doesNotMatch(text, /do-not-print-pw/);
    assert.doesNotMatch(text, /Listening on/);
  });
}
