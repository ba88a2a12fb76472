/**
 * The function's secrets, read once at start.
 *
 * From the platform (hosted Supabase sets these itself; names starting `SUPABASE_` cannot be
 * set as secrets): `SUPABASE_DB_URL`, `SUPABASE_JWKS` (the JSON Web Key Set of the project's
 * JWT signing keys, `{"keys": [...]}` or a bare array) and `SUPABASE_SECRET_KEYS` (the project's
 * secret API keys, a JSON object `{"default": "sb_secret_…"}`). From the plan, only while the
 * project still uses it: `JWT_SECRET`, the legacy HS256 secret.
 *
 * A missing required secret throws at module load with a message naming the variable (never
 * its value, never the values of others), so a misconfigured deploy fails loudly on boot
 * instead of answering 500 to every request.
 */

import type { JSONWebKeySet } from "npm:jose@6.1.0";

export interface Config {
  /** Postgres URL of the project database (`SUPABASE_DB_URL`). */
  dbUrl: string;
  /** Public keys that verify user JWTs signed by the project's signing keys (ES256/RS256). */
  jwks?: JSONWebKeySet;
  /** The legacy HS256 JWT secret (`JWT_SECRET`), while the project still uses it. */
  jwtSecret?: string;
  /** The project's secret API keys: what a server caller sends in `apikey`. */
  secretKeys: string[];
}

/** What a function authenticates: signed-in users, or server callers (cron). */
export type Callers = "users" | "server";

export class ConfigError extends Error {
  override name = "ConfigError";
}

interface EnvReader {
  get(name: string): string | undefined;
}

function read(env: EnvReader, name: string): string | undefined {
  const value = env.get(name)?.trim();
  return value ? value : undefined;
}

function parseJson(functionName: string, name: string, raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    throw new ConfigError(`${functionName}: ${name} is not valid JSON`);
  }
}

function readJwks(functionName: string, env: EnvReader): JSONWebKeySet | undefined {
  const raw = read(env, "SUPABASE_JWKS");
  if (!raw) return undefined;
  const value = parseJson(functionName, "SUPABASE_JWKS", raw);
  const keys = Array.isArray(value) ? value : (value as { keys?: unknown })?.keys;
  if (!Array.isArray(keys)) {
    throw new ConfigError(`${functionName}: SUPABASE_JWKS is not a JSON Web Key Set`);
  }
  return keys.length ? { keys } : undefined;
}

function readSecretKeys(functionName: string, env: EnvReader): string[] {
  const raw = read(env, "SUPABASE_SECRET_KEYS");
  if (!raw) return [];
  const value = parseJson(functionName, "SUPABASE_SECRET_KEYS", raw);
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError(`${functionName}: SUPABASE_SECRET_KEYS is not a JSON object`);
  }
  return Object.values(value).filter((k): k is string => typeof k === "string" && k !== "");
}

export function loadConfig(
  functionName: string,
  callers: Callers,
  env: EnvReader = Deno.env,
): Config {
  const dbUrl = read(env, "SUPABASE_DB_URL");
  const jwtSecret = read(env, "JWT_SECRET");
  const jwks = readJwks(functionName, env);
  const secretKeys = readSecretKeys(functionName, env);
  const missing: string[] = [];
  if (!dbUrl) missing.push("SUPABASE_DB_URL");
  if (callers === "users" && !jwks && !jwtSecret) {
    missing.push("SUPABASE_JWKS (or the legacy JWT_SECRET)");
  }
  if (callers === "server" && secretKeys.length === 0 && !jwtSecret) {
    missing.push("SUPABASE_SECRET_KEYS (or the legacy JWT_SECRET for a service-role JWT)");
  }
  if (missing.length > 0) {
    throw new ConfigError(
      `${functionName}: missing required secret ${missing.join(" and ")}; ` +
        `set it in the function's environment (supabase secrets set / the rollout plan)`,
    );
  }
  return { dbUrl: dbUrl!, jwks, jwtSecret, secretKeys };
}
