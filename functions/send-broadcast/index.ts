/**
 * send-broadcast entry point (hosted Supabase and `rollout local`: `Deno.serve(handler)`).
 * Secrets are read here, at start: a missing one throws before the server listens.
 */

import { createVerifier } from "../_shared/auth.ts";
import { loadConfig } from "../_shared/config.ts";
import { createDb } from "../_shared/db.ts";
import { createHandler, FUNCTION_NAME } from "./handler.ts";

const config = loadConfig(FUNCTION_NAME, "users");
const handler = createHandler({
  verify: createVerifier(config),
  db: createDb(config.dbUrl, FUNCTION_NAME),
});

Deno.serve(handler);
