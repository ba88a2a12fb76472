#!/usr/bin/env bash
# Debian packages the test suite uses beyond the Python and Deno locks: PostgreSQL 15 with
# pg_cron (Supabase runs 15/17; the migration and cron suites run on it), and Chromium (the
# release report is rendered in a real headless browser). Installed only when missing and only
# when we may (root with apt-get); otherwise those suites say what to install.
set -euo pipefail
missing=()
if ! [ -f /usr/lib/postgresql/15/lib/pg_cron.so ] || ! [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  missing+=(postgresql-15 postgresql-15-cron)
fi
if ! command -v chromium >/dev/null; then
  missing+=(chromium)
fi
if [ "${#missing[@]}" = 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (apt-get)…"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "note: missing Debian packages; run: sudo apt-get install ${missing[*]}" >&2
fi
