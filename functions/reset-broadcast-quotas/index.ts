/**
 * reset-broadcast-quotas entry point (`Deno.serve(handler)`).
 * Secrets are read here, at start: a missing one throws before the server listens.
 */

import { createVerifier } from "../_shared/auth.ts";
import { loadConfig } from "../_shared/config.ts";
import { createDb } from "../_shared/db.ts";
import { createHandler, FUNCTION_NAME } from "./handler.ts";

const config = loadConfig(FUNCTION_NAME, "server");
const handler = createHandler({
  verify: createVerifier(config),
  secretKeys: config.secretKeys,
  db: createDb(config.dbUrl, FUNCTION_NAME),
});

Deno.serve(handler);
