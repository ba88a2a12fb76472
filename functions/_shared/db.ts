/**
 * Run one SQL call as the caller, exactly as PostgREST does.
 *
 * In one transaction: `set local role` to the caller's API role and `request.jwt.claims` to
 * the verified claims (both transaction-local, so a pooled connection never carries them
 * into another request), then the call. `auth.uid()`, RLS and grants then see the caller, not
 * the connection's owner. Logic stays in SQL: the functions make exactly one call.
 */

import postgres from "npm:postgres@3.4.7";
import type { Claims } from "./auth.ts";

export type DbRole = "authenticated" | "service_role";

export interface Db {
  /** Run `text` with `params` as `role` with `claims`; the first column of the first row. */
  call(role: DbRole, claims: Claims, text: string, params: unknown[]): Promise<unknown>;
  /** `select 1`, bounded by a timeout; throws when the database does not answer. */
  ping(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

const ROLES: ReadonlySet<string> = new Set(["authenticated", "service_role"]);

export function createDb(url: string, functionName: string): Db {
  const sql = postgres(url, {
    max: Number(Deno.env.get("DB_POOL_MAX") ?? "4"),
    prepare: false, // safe behind Supavisor/PgBouncer in transaction mode
    idle_timeout: 30,
    connect_timeout: 5,
    connection: { application_name: `edge:${functionName}` },
    onnotice: () => {},
  });

  return {
    async call(role, claims, text, params) {
      if (!ROLES.has(role)) throw new Error(`refusing unknown database role ${role}`);
      // deno-lint-ignore no-explicit-any
      const rows = await sql.begin(async (tx: any) => {
        await tx.unsafe(
          "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
          [role, JSON.stringify(claims)],
        );
        return await tx.unsafe(text, params);
      });
      const first = (rows as Record<string, unknown>[])[0];
      return first === undefined ? null : Object.values(first)[0];
    },

    async ping(timeoutMs = 3000) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("database ping timed out")), timeoutMs);
      });
      try {
        await Promise.race([sql.unsafe("select 1"), timeout]);
      } finally {
        clearTimeout(timer);
      }
    },

    async close() {
      await sql.end({ timeout: 5 });
    },
  };
}
