#!/usr/bin/env bash
# Debian packages the test suite uses beyond the Python and Deno locks: PostgreSQL 15 with
# pg_cron (Supabase runs 15/17; the migration and cron suites run on it). Installed only when
# missing and only when we may (root with apt-get); otherwise those suites say what to install.
set -euo pipefail
if [ -f /usr/lib/postgresql/15/lib/pg_cron.so ] && [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing postgresql-15 and postgresql-15-cron (apt-get)…"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-15-cron >/dev/null
else
  echo "note: PostgreSQL 15 + pg_cron missing; run: sudo apt-get install postgresql-15 postgresql-15-cron" >&2
fi
