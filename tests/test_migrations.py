"""Migrations: Supabase CLI naming, apply on the stand-in, second run a no-op,
Realtime publication, and the stand-in's auth functions."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from ai_jobs.database.migrations import migrate, migration_files, supabase_dir

FINGERPRINT = """
select jsonb_build_object(
  'functions', (select jsonb_agg(pg_get_functiondef(p.oid) || coalesce(p.proacl::text, '') order by p.oid::regprocedure::text)
                from pg_proc p where p.pronamespace = 'public'::regnamespace),
  'constraints', (select jsonb_agg(conname || pg_get_constraintdef(oid) order by conname)
                  from pg_constraint where connamespace = 'public'::regnamespace),
  'indexes', (select jsonb_agg(indexdef order by indexname) from pg_indexes where schemaname = 'public'),
  'policies', (select jsonb_agg(to_jsonb(p) order by policyname) from pg_policies p where schemaname = 'public'),
  'acl', (select jsonb_agg(relname || coalesce(relacl::text, '') order by relname)
          from pg_class where relnamespace = 'public'::regnamespace),
  'publication', (select jsonb_agg(schemaname || '.' || tablename order by tablename)
                  from pg_publication_tables where pubname = 'supabase_realtime'),
  'triggers', (select jsonb_agg(tgname order by tgname) from pg_trigger where not tgisinternal)
)
"""


@pytest.fixture()
def fresh_database(database_url: str) -> Iterator[str]:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    yield psycopg.conninfo.make_conninfo(database_url, dbname=name)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'drop database "{name}" with (force)')


def test_migration_files_are_named_as_the_supabase_cli_expects() -> None:
    files = migration_files()
    assert len(files) >= 2
    for path in files:
        assert re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", path.name), path.name
    assert (supabase_dir() / "config.toml").is_file()


def test_migrate_twice_is_a_noop(fresh_database: str) -> None:
    first = migrate(fresh_database)
    assert first.standin_applied and first.applied == [p.name for p in migration_files()]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        user = uuid.uuid4()
        conn.execute("insert into auth.users (id) values (%s)", (user,))
        conn.execute("insert into public.ai_jobs (user_id, job_type) values (%s, 'a.b')", (user,))
        before = conn.execute(FINGERPRINT).fetchone()[0]
        second = migrate(fresh_database)
        assert second.applied == [] and second.already_applied == first.applied
        # the files themselves are idempotent too: apply them again, bypassing the ledger
        for path in [supabase_dir() / "local" / "supabase_standin.sql", *migration_files()]:
            conn.execute(path.read_text())
        after = conn.execute(FINGERPRINT).fetchone()[0]
        assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
        assert conn.execute("select count(*) from public.ai_jobs").fetchone()[0] == 1
        versions = [r[0] for r in conn.execute("select version from supabase_migrations.schema_migrations order by 1")]
        assert versions == [p.name.split("_")[0] for p in migration_files()]


def test_publication_contains_ai_jobs(fresh_database: str) -> None:
    migrate(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        tables = conn.execute(
            "select schemaname, tablename from pg_publication_tables where pubname = 'supabase_realtime'"
        ).fetchall()
    assert tables == [("public", "ai_jobs")]


def test_standin_skipped_on_supabase(fresh_database: str) -> None:
    """On a Supabase database (it has supabase_admin) only our migrations run."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        # what Supabase itself provides
        conn.execute((supabase_dir() / "local" / "supabase_standin.sql").read_text())
        created = not conn.execute("select 1 from pg_roles where rolname = 'supabase_admin'").fetchone()
        if created:
            conn.execute("create role supabase_admin nologin")
    try:
        report = migrate(fresh_database)
        assert report.standin_applied is False and report.applied
    finally:
        if created:
            with psycopg.connect(fresh_database, autocommit=True) as conn:
                conn.execute("drop role supabase_admin")


def test_auth_functions_read_claims_like_supabase(db: psycopg.Connection) -> None:
    sub = uuid.uuid4()
    with db.transaction():
        db.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": str(sub), "role": "authenticated", "aud": "authenticated"}),),
        )
        uid, role, claims = db.execute("select auth.uid(), auth.role(), auth.jwt()").fetchone()
    assert (uid, role, claims["aud"]) == (sub, "authenticated", "authenticated")
    with db.transaction():
        db.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(sub),))
        assert db.execute("select auth.uid()").fetchone()[0] == sub
    assert db.execute("select auth.uid()").fetchone()[0] is None
