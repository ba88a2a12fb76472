/**
 * The function's secrets, read once at start.
 *
 * A missing required secret throws at module load with a message naming the variable (never
 * its value, never the values of others), so a misconfigured deploy fails loudly on boot
 * instead of answering 500 to every request.
 */

export interface Config {
  /** Postgres URL of the project database (hosted Supabase provides `SUPABASE_DB_URL`). */
  dbUrl: string;
  /** HS256 secret for the project's JWTs (`SUPABASE_JWT_SECRET`, or the older `JWT_SECRET`). */
  jwtSecret?: string;
  /** Remote JWKS for asymmetric JWT signing keys, when the project uses them. */
  jwksUrl?: string;
}

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

export function loadConfig(functionName: string, env: EnvReader = Deno.env): Config {
  const dbUrl = read(env, "SUPABASE_DB_URL");
  const jwtSecret = read(env, "SUPABASE_JWT_SECRET") ?? read(env, "JWT_SECRET");
  const jwksUrl = read(env, "SUPABASE_JWKS_URL");
  const missing: string[] = [];
  if (!dbUrl) missing.push("SUPABASE_DB_URL");
  if (!jwtSecret && !jwksUrl) {
    missing.push("SUPABASE_JWT_SECRET (or JWT_SECRET, or SUPABASE_JWKS_URL)");
  }
  if (missing.length > 0) {
    throw new ConfigError(
      `${functionName}: missing required secret ${missing.join(" and ")}; ` +
        `set it in the function's environment (supabase secrets set / the rollout plan)`,
    );
  }
  if (jwksUrl) {
    try {
      new URL(jwksUrl);
    } catch {
      throw new ConfigError(`${functionName}: SUPABASE_JWKS_URL is not a valid URL`);
    }
  }
  return { dbUrl: dbUrl!, jwtSecret, jwksUrl };
}
