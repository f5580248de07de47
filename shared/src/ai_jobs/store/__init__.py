"""Store adapters and the factory that picks one from Settings."""

from __future__ import annotations

from ai_jobs.settings import Settings
from ai_jobs.store.base import JobStore


def open_store(settings: Settings | None = None) -> JobStore:
    """The store the settings call for (see Settings for the selection rule)."""
    settings = settings or Settings.from_env()
    kind = settings.resolved_store()
    if kind == "supabase":
        if not (settings.supabase_url and settings.supabase_service_key):
            raise ValueError("AI_JOBS_STORE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        from ai_jobs.store.supabase import SupabaseStore

        return SupabaseStore(settings.supabase_url, settings.supabase_service_key, timeout=settings.db_timeout_seconds)

    from ai_jobs.store.postgres import PostgresStore

    if kind == "postgres":
        if not settings.database_url:
            raise ValueError("AI_JOBS_STORE=postgres needs DATABASE_URL")
        return PostgresStore(settings.database_url, max_size=settings.pool_max_size, timeout=settings.db_timeout_seconds)

    from ai_jobs.database.embedded import ensure_embedded_database

    return PostgresStore(
        ensure_embedded_database(settings.data_dir), max_size=settings.pool_max_size, timeout=settings.db_timeout_seconds
    )


__all__ = ["JobStore", "open_store"]
