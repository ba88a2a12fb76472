/**
 * The real entry point as a process (no stack needed): it starts with its secrets, listens on
 * DENO_SERVE_ADDRESS as `rollout local` starts it, and reports a dead database as degraded.
 */

import assert from "node:assert/strict";

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

async function waitFor(url: string, child: Deno.ChildProcess, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { method: "OPTIONS" });
      await res.body?.cancel();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  child.kill("SIGKILL");
  throw new Error(`function did not start listening at ${url}`);
}

Deno.test("send-broadcast process: listens on DENO_SERVE_ADDRESS; dead database → health 503", async () => {
  const port = freePort();
  const deadDb = freePort(); // nothing listens there
  const entry = new URL("./index.ts", import.meta.url).pathname;
  const env: Record<string, string> = {};
  for (const key of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(key);
    if (value !== undefined) env[key] = value;
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--frozen", "--cached-only", "--allow-net", "--allow-env", "--allow-read", entry],
    clearEnv: true,
    env: {
      ...env,
      NO_COLOR: "1",
      DENO_SERVE_ADDRESS: `tcp:127.0.0.1:${port}`,
      SUPABASE_DB_URL: `postgresql://postgres@127.0.0.1:${deadDb}/postgres?sslmode=disable`,
      JWT_SECRET: "process-test-secret-process-test-secret",
    },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const base = `http://127.0.0.1:${port}/send-broadcast`;
    await waitFor(base, child);
    const health = await fetch(`${base}/health`);
    assert.equal(health.status, 503);
    assert.deepEqual(await health.json(), { status: "degraded", db: "unreachable" });
    const unauthenticated = await fetch(base, { method: "POST", body: "{}" });
    assert.equal(unauthenticated.status, 401);
    await unauthenticated.body?.cancel();
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
});
