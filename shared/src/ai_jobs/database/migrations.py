"""Apply supabase/migrations in order, as the Supabase CLI would.

Applied versions are recorded in supabase_migrations.schema_migrations, the
table the Supabase CLI uses, so `ai-jobs migrate` and `supabase db push`
agree on what is applied. On a database that is not Supabase (embedded,
plain Postgres) the local stand-in (roles, auth schema, publication, default
privileges) is applied first. The migration files are idempotent on their
own as well.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from pydantic import BaseModel

from ai_jobs import resources

_LOCK_KEY = 0x61695F6A6F6273  # "ai_jobs": serialize concurrent migrate runs


def supabase_dir() -> Path:
    """The checkout's supabase/ folder, else the copy in the wheel (override
    with AI_JOBS_SUPABASE_DIR)."""
    return resources.supabase_dir()


class MigrationReport(BaseModel):
    standin_applied: bool
    applied: list[str]
    already_applied: list[str]


def migration_files(directory: Path | None = None) -> list[Path]:
    directory = directory or supabase_dir() / "migrations"
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no migrations found in {directory}")
    return files


def is_supabase(conn: psycopg.Connection) -> bool:
    """A hosted or CLI-started Supabase database has the supabase_admin role."""
    row = conn.execute("select exists (select 1 from pg_roles where rolname = 'supabase_admin')").fetchone()
    return bool(row and row[0])


def migrate(conninfo: str, *, standin: bool | None = None, directory: Path | None = None) -> MigrationReport:
    """Apply pending migrations; a second run applies nothing."""
    files = migration_files(directory)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            use_standin = (not is_supabase(conn)) if standin is None else standin
            if use_standin:
                conn.execute((supabase_dir() / "local" / "supabase_standin.sql").read_text())
            conn.execute("create schema if not exists supabase_migrations")
            conn.execute(
                "create table if not exists supabase_migrations.schema_migrations "
                "(version text primary key, statements text[], name text)"
            )
            done = {r[0] for r in conn.execute("select version from supabase_migrations.schema_migrations")}
            applied: list[str] = []
            skipped: list[str] = []
            for path in files:
                version, _, name = path.stem.partition("_")
                if version in done:
                    skipped.append(path.name)
                    continue
                text = path.read_text()
                with conn.transaction():
                    conn.execute(text)
                    conn.execute(
                        "insert into supabase_migrations.schema_migrations (version, statements, name) "
                        "values (%s, %s, %s)",
                        (version, [text], name),
                    )
                applied.append(path.name)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return MigrationReport(standin_applied=use_standin, applied=applied, already_applied=skipped)
