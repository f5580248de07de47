"""Configuration from environment variables, read once and validated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

StoreKind = Literal["auto", "postgres", "supabase", "embedded"]


class Settings(BaseModel):
    """Which database to use and the queue's limits.

    Store selection (AI_JOBS_STORE=auto): DATABASE_URL -> PostgresStore;
    else SUPABASE_URL with a service key -> SupabaseStore; else the embedded
    PostgreSQL under data_dir (development and tests).
    """

    store: StoreKind = "auto"
    database_url: str | None = None
    supabase_url: str | None = None
    supabase_service_key: str | None = None
    data_dir: Path = Path(".ai-jobs")
    max_active_per_user: int = Field(default=20, ge=1)
    lease_seconds: int = Field(default=30, ge=1, le=3600)
    pool_max_size: int = Field(default=10, ge=1, le=100)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "store": env.get("AI_JOBS_STORE", "auto"),
            "database_url": env.get("DATABASE_URL") or None,
            "supabase_url": env.get("SUPABASE_URL") or None,
            "supabase_service_key": env.get("SUPABASE_SERVICE_ROLE_KEY")
            or env.get("SUPABASE_SECRET_KEY")
            or None,
        }
        optional = {
            "data_dir": "AI_JOBS_DATA_DIR",
            "max_active_per_user": "AI_JOBS_MAX_ACTIVE_PER_USER",
            "lease_seconds": "AI_JOBS_LEASE_SECONDS",
            "pool_max_size": "AI_JOBS_POOL_MAX_SIZE",
        }
        for field, name in optional.items():
            if env.get(name):
                values[field] = env[name]
        return cls.model_validate(values)

    def resolved_store(self) -> Literal["postgres", "supabase", "embedded"]:
        if self.store != "auto":
            return self.store
        if self.database_url:
            return "postgres"
        if self.supabase_url and self.supabase_service_key:
            return "supabase"
        return "embedded"
