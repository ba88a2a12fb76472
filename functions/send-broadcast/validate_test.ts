import assert from "node:assert/strict";
import {
  charLength,
  MAX_MESSAGE_CHARS,
  parseBroadcast,
  sanitizeMessage,
  SenderMismatch,
  ValidationError,
} from "./validate.ts";

const USER = "0b5a3c1e-5d6f-4a7b-8c9d-0e1f2a3b4c5d";
const SHOW = "5f0c6a57-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
const good = { show_id: SHOW, recipient_roles: ["attendee"], message: "Doors open at 9" };

function parse(body: unknown): ReturnType<typeof parseBroadcast> {
  return parseBroadcast(typeof body === "string" ? body : JSON.stringify(body), USER);
}

function badField(body: unknown, field: string) {
  assert.throws(
    () => parse(body),
    (e: unknown) => e instanceof ValidationError && e.field === field,
    `expected 400 naming ${field} for ${JSON.stringify(body)}`,
  );
}

Deno.test("validate: a good body parses (roles de-duplicated, is_pre_show optional)", () => {
  assert.deepEqual(parse(good), { ...good });
  assert.deepEqual(
    parse({ ...good, recipient_roles: ["dealer", "attendee", "dealer"], is_pre_show: false }),
    { ...good, recipient_roles: ["dealer", "attendee"], is_pre_show: false },
  );
  assert.equal(parse({ ...good, is_pre_show: null }).is_pre_show, undefined);
});

Deno.test("validate: body must be a JSON object", () => {
  for (const body of ["", "not json", "[]", "null", "42", '"text"', "{"]) badField(body, "body");
});

Deno.test("validate: show_id must be a uuid", () => {
  badField({ ...good, show_id: undefined }, "show_id");
  badField({ ...good, show_id: "show-1" }, "show_id");
  badField({ ...good, show_id: 7 }, "show_id");
  badField({ ...good, show_id: `${SHOW}'; drop table shows; --` }, "show_id");
});

Deno.test("validate: recipient_roles must be a non-empty array of the five roles", () => {
  badField({ ...good, recipient_roles: undefined }, "recipient_roles");
  badField({ ...good, recipient_roles: [] }, "recipient_roles");
  badField({ ...good, recipient_roles: "attendee" }, "recipient_roles");
  badField({ ...good, recipient_roles: ["attendee", "superuser"] }, "recipient_roles");
  badField({ ...good, recipient_roles: [1] }, "recipient_roles");
  badField({ ...good, recipient_roles: ["Attendee"] }, "recipient_roles");
  for (const role of ["attendee", "dealer", "mvp_dealer", "show_organizer", "admin"]) {
    assert.deepEqual(parse({ ...good, recipient_roles: [role] }).recipient_roles, [role]);
  }
});

Deno.test("validate: message must be a string of 1–1000 characters after cleaning", () => {
  badField({ ...good, message: undefined }, "message");
  badField({ ...good, message: 12 }, "message");
  badField({ ...good, message: "" }, "message");
  badField({ ...good, message: "   \n\t " }, "message");
  badField({ ...good, message: "<b></b> <br/>" }, "message");
  badField({ ...good, message: "x".repeat(MAX_MESSAGE_CHARS + 1) }, "message");
  assert.equal(parse({ ...good, message: "x".repeat(MAX_MESSAGE_CHARS) }).message.length, 1000);
  // Length is counted after stripping tags and trimming.
  const padded = `  <p>${"y".repeat(MAX_MESSAGE_CHARS)}</p>  `;
  assert.equal(parse({ ...good, message: padded }).message, "y".repeat(MAX_MESSAGE_CHARS));
  // Characters, not UTF-16 units: 1000 emoji are 1000 characters.
  assert.equal(charLength(parse({ ...good, message: "🎉".repeat(1000) }).message), 1000);
  badField({ ...good, message: "🎉".repeat(1001) }, "message");
});

Deno.test("validate: is_pre_show must be a boolean when given", () => {
  badField({ ...good, is_pre_show: "yes" }, "is_pre_show");
  badField({ ...good, is_pre_show: 1 }, "is_pre_show");
  assert.equal(parse({ ...good, is_pre_show: true }).is_pre_show, true);
});

Deno.test("validate: sender_id other than the token's subject → SenderMismatch (403)", () => {
  assert.throws(
    () => parse({ ...good, sender_id: "11111111-1111-4111-8111-111111111111" }),
    SenderMismatch,
  );
  assert.throws(() => parse({ ...good, sender_id: 5 }), SenderMismatch);
  assert.throws(() => parse({ ...good, sender_id: "" }), SenderMismatch);
  // Checked before the other fields: a spoof is refused as a spoof.
  assert.throws(() => parse({ sender_id: "someone-else" }), SenderMismatch);
  // Matching (any case) is tolerated and then ignored.
  assert.deepEqual(parse({ ...good, sender_id: USER.toUpperCase() }), { ...good });
});

Deno.test("sanitize: strips tags, scripts, styles and comments; trims", () => {
  assert.equal(sanitizeMessage("  <b>Hello</b> <i>world</i>  "), "Hello world");
  assert.equal(sanitizeMessage("<script>alert(1)</script>Hi"), "Hi");
  assert.equal(sanitizeMessage("<SCRIPT type='x'>alert(1)</SCRIPT >Hi"), "Hi");
  assert.equal(sanitizeMessage("<style>p{}</style>Hi"), "Hi");
  assert.equal(sanitizeMessage("a<!-- hidden -->b"), "ab");
  assert.equal(sanitizeMessage('<img src=x onerror="alert(1)">pic'), "pic");
  assert.equal(sanitizeMessage("<a href='https://x'>link</a>"), "link");
});

Deno.test("sanitize: nested fragments cannot reassemble a tag", () => {
  const out = sanitizeMessage("<scr<b>ipt>alert(1)</scr</b>ipt>");
  assert.doesNotMatch(out, /<\/?[a-z]/i);
  assert.doesNotMatch(sanitizeMessage("<<b>script>x<</b>/script>"), /<script/i);
});

Deno.test("sanitize: plain comparisons and text survive", () => {
  assert.equal(sanitizeMessage("a < b and c > d"), "a < b and c > d");
  assert.equal(sanitizeMessage("3 <4"), "3 <4");
  assert.equal(sanitizeMessage("line 1\nline 2"), "line 1\nline 2");
  assert.equal(sanitizeMessage("Tom & Jerry's stand #12"), "Tom & Jerry's stand #12");
});

Deno.test("sanitize: NUL and control characters are dropped (PostgreSQL text cannot hold NUL)", () => {
  assert.equal(sanitizeMessage("a\u0000b\u0007c\td"), "abc\td");
});
