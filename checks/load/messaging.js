// Messaging load check (seed plan §4.3): DM sends and broadcasts, as the app makes them.
//
//   dm         POST /rest/v1/rpc/send_direct_message   attendee → MVP dealer (the matrix allows
//              it), the pair rotating per iteration. Tagged kind=dm.
//   broadcast  POST /functions/v1/send-broadcast        one broadcast per seeded show, each by
//              that show's organizer. The quota is 2 pre-show broadcasts per organizer, show
//              and UTC day, so every show is used once: a 429 here is a real failure (it would
//              mean the quota was taken twice), and it is also counted in broadcast_quota_refused.
//              Tagged kind=broadcast.
//
// Run by `rollout` (rollout/checks/k6.py), or by hand / by the k6-operator with:
//   API_URL        the project URL (https://<ref>.supabase.co or the local gateway)
//   ANON_KEY       the anon key (the `apikey` header)
//   USERS_FILE     JSON: {attendees: [{id, token}], mvp_dealers: [{id, token}],
//                         broadcasts: [{show_id, organizer_id, token}]}  (tokens = user JWTs)
//   TOKEN_FILES    optional, comma-separated JSON files {"<user id>": "<token>"}: the tokens
//                  of users listed in USERS_FILE without one (the k6-operator path keeps ids
//                  in a ConfigMap and tokens in Secrets; see rollout/checks/k6_operator.py)
//   DM_VUS, DM_ITERATIONS (per VU) or DM_DURATION ("30s": constant VUs instead), or DM_RATE
//   (DMs per second for DM_DURATION: constant-arrival-rate, DM_VUS pre-allocated; the
//   broadcasts then arrive evenly over DM_DURATION too), BROADCASTS (0 = none),
//   BROADCAST_VUS, MAX_DURATION, THRESHOLDS (JSON, k6's format)

import http from "k6/http";
import exec from "k6/execution";
import { check } from "k6";
import { SharedArray } from "k6/data";
import { Counter } from "k6/metrics";

const API_URL = (__ENV.API_URL || "").replace(/\/+$/, "");
const ANON_KEY = __ENV.ANON_KEY || "";
if (!API_URL || !ANON_KEY || !__ENV.USERS_FILE) {
  throw new Error("set API_URL, ANON_KEY and USERS_FILE (see the header of messaging.js)");
}

function int(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a whole number`);
  return value;
}

// One copy of the (possibly large) user list shared by every VU, not one per VU.
const users = new SharedArray("users", () => [JSON.parse(open(__ENV.USERS_FILE))]);

// Fills in each user's token from TOKEN_FILES (by `key`, the user's id); runs once per
// instance, in a SharedArray's callback. A sender without a token stops the test at init.
function withTokens(list, key) {
  const files = (__ENV.TOKEN_FILES || "").split(",").map((f) => f.trim()).filter((f) => f);
  const tokens = Object.assign({}, ...files.map((f) => JSON.parse(open(f))));
  return list.map((user) => {
    const token = user.token || tokens[user[key]];
    if (!token) throw new Error(`no token for ${user[key]} (USERS_FILE, TOKEN_FILES)`);
    return Object.assign({}, user, { token });
  });
}

const attendees = new SharedArray("attendees", () => withTokens(users[0].attendees || [], "id"));
const mvpDealers = new SharedArray("mvp_dealers", () => users[0].mvp_dealers || []);
const broadcasts = new SharedArray(
  "broadcasts", () => withTokens(users[0].broadcasts || [], "organizer_id"));

const DM_VUS = int("DM_VUS", 10);
const DM_ITERATIONS = int("DM_ITERATIONS", 20);
const DM_DURATION = __ENV.DM_DURATION || "";
const DM_RATE = int("DM_RATE", 0); // DMs per second (arrival rate) for DM_DURATION; 0 = VU-driven
const BROADCASTS = Math.min(int("BROADCASTS", broadcasts.length), broadcasts.length);
const BROADCAST_VUS = Math.max(1, Math.min(int("BROADCAST_VUS", 5), BROADCASTS || 1));
const MAX_DURATION = __ENV.MAX_DURATION || "10m";

const quotaRefused = new Counter("broadcast_quota_refused");

const scenarios = {};
if (DM_VUS > 0 && attendees.length && mvpDealers.length) {
  scenarios.dm = DM_RATE
    ? {
      // Open model: DMs arrive at DM_RATE a second whatever the latency (k6 adds VUs up to
      // maxVUs when answers slow down), so a saturated server shows as latency and errors.
      executor: "constant-arrival-rate", rate: DM_RATE, timeUnit: "1s",
      duration: DM_DURATION || "10s", preAllocatedVUs: DM_VUS, maxVUs: DM_VUS * 4, exec: "dm",
    }
    : DM_DURATION
    ? { executor: "constant-vus", vus: DM_VUS, duration: DM_DURATION, exec: "dm" }
    : {
      executor: "per-vu-iterations", vus: DM_VUS, iterations: DM_ITERATIONS,
      maxDuration: MAX_DURATION, exec: "dm",
    };
}
if (BROADCASTS > 0) {
  scenarios.broadcast = DM_RATE
    ? {
      // Beside arrival-rate DMs, the broadcasts arrive evenly over the same time: BROADCASTS
      // per DM_DURATION, so exactly BROADCASTS of them (one per show).
      executor: "constant-arrival-rate", rate: BROADCASTS, timeUnit: DM_DURATION || "10s",
      duration: DM_DURATION || "10s", preAllocatedVUs: BROADCAST_VUS, maxVUs: BROADCAST_VUS * 4,
      exec: "broadcast",
    }
    : {
      executor: "shared-iterations", vus: BROADCAST_VUS, iterations: BROADCASTS,
      maxDuration: MAX_DURATION, exec: "broadcast",
    };
}

// Thresholds: the caller's, plus always-true ones on the per-kind submetrics, because k6 only
// reports a submetric (p99 of kind=dm, …) in its summary when a threshold names it.
const thresholds = __ENV.THRESHOLDS
  ? JSON.parse(__ENV.THRESHOLDS)
  : { "http_req_duration{kind:dm}": ["p(99)<200"], "http_req_failed": ["rate<0.005"] };
for (const kind of ["dm", "broadcast"]) {
  const always = {
    [`http_req_duration{kind:${kind}}`]: "max>=0",
    [`http_reqs{kind:${kind}}`]: "count>=0",
    [`http_req_failed{kind:${kind}}`]: "rate>=0",
  };
  for (const [metric, expression] of Object.entries(always)) {
    if (!(metric in thresholds)) thresholds[metric] = [expression];
  }
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ["avg", "min", "med", "max", "p(50)", "p(90)", "p(95)", "p(99)"],
  discardResponseBodies: true, // no check reads a body: k6 does not keep them
};

function headers(token) {
  return {
    apikey: ANON_KEY,
    Authorization: `Bearer ${token}`,
    "Content-Type": "application/json",
  };
}

export function dm() {
  const vu = exec.vu.idInTest - 1;
  const iteration = exec.vu.iterationInScenario;
  const sender = attendees[vu % attendees.length];
  const recipient = mvpDealers[(vu + iteration) % mvpDealers.length];
  const res = http.post(
    `${API_URL}/rest/v1/rpc/send_direct_message`,
    JSON.stringify({
      p_recipient_id: recipient.id,
      p_message_text: `load dm ${exec.vu.idInTest}-${iteration}`,
    }),
    { headers: headers(sender.token), tags: { kind: "dm", name: "rpc/send_direct_message" } },
  );
  check(res, { "dm: 200": (r) => r.status === 200 }, { kind: "dm" });
}

export function broadcast() {
  // Unique across the whole test (also across k6-operator runners): one broadcast per show.
  const index = exec.scenario.iterationInTest;
  const target = broadcasts[index % broadcasts.length];
  const res = http.post(
    `${API_URL}/functions/v1/send-broadcast`,
    JSON.stringify({
      show_id: target.show_id,
      recipient_roles: ["attendee"],
      message: `load broadcast ${index}`,
      is_pre_show: true,
    }),
    { headers: headers(target.token), tags: { kind: "broadcast", name: "functions/send-broadcast" } },
  );
  if (res.status === 429) quotaRefused.add(1);
  check(res, { "broadcast: 200": (r) => r.status === 200 }, { kind: "broadcast" });
}
