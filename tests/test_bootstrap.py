import json

import psycopg


def test_auth_uid_reads_jwt_claims_as_supabase_does(make_database):
    url = make_database()
    sub = "6f1c2a4e-7d2b-4c1e-9a51-3b0f8e2d9c11"
    with psycopg.connect(url) as conn:
        conn.execute("set local role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": sub, "role": "authenticated"}),),
        )
        row = conn.execute("select auth.uid()::text, auth.role(), auth.jwt() ->> 'sub'").fetchone()
    assert row == (sub, "authenticated", sub)


def test_service_role_bypasses_rls_and_anon_does_not(make_database):
    url = make_database()
    with psycopg.connect(url) as conn:
        flags = dict(
            conn.execute(
                "select rolname, rolbypassrls from pg_roles "
                "where rolname in ('anon','authenticated','service_role')"
            ).fetchall()
        )
    assert flags == {"anon": False, "authenticated": False, "service_role": True}
