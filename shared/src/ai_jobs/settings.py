"""Configuration from environment variables, read once and validated."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

StoreKind = Literal["auto", "postgres", "supabase", "embedded"]
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s@]+")


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
    # Connect / wait-for-connection / REST timeout: a down database answers 503 fast.
    db_timeout_seconds: float = Field(default=2.5, gt=0, le=60)

    # Auth: Supabase access tokens (asymmetric keys via JWKS, or the legacy HS256 secret).
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_audience: str = "authenticated"
    # Internal endpoints.
    worker_secret: str | None = None
    cron_secret: str | None = None
    # Hand-off: where /api/internal/work lives, and how long a create may wait for it.
    worker_url: str | None = None
    protection_bypass_secret: str | None = None
    # A create returns only once its hand-off request is fully written (bounded by this).
    handoff_wait_seconds: float = Field(default=5.0, ge=0, le=30)
    # Worker invocations: seconds of work per invocation (keep below maxDuration).
    worker_budget_seconds: float = Field(default=270, gt=0)
    # Requests.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_input_depth: int = Field(default=32, ge=1, le=200)
    stale_pending_seconds: int = Field(default=60, ge=1)
    # Browser origins allowed to call the public /api routes cross-origin ("*": any);
    # empty: same-origin only. Exact origins, as browsers send them in Origin.
    cors_origins: tuple[str, ...] = ()

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """AI_JOBS_CORS_ORIGINS is comma-separated; a typo must fail at start-up, not
        silently block every browser."""
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            return value
        origins: list[str] = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            origin = item.rstrip("/").lower()
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{item!r} is not an origin: use scheme://host[:port] (no path), or *")
            origins.append(origin)
        return tuple(origins)

    def jwt_issuer(self) -> str | None:
        """Supabase signs user tokens with iss = <SUPABASE_URL>/auth/v1."""
        return f"{self.supabase_url.rstrip('/')}/auth/v1" if self.supabase_url else None

    def resolved_jwks_url(self) -> str | None:
        if self.jwks_url:
            return self.jwks_url
        if self.supabase_url:
            return f"{self.supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json"
        return None

    def resolved_worker_url(self) -> str | None:
        """Explicit AI_JOBS_WORKER_URL, else this Vercel deployment's own URL."""
        if self.worker_url:
            return self.worker_url.rstrip("/")
        vercel_url = os.environ.get("VERCEL_URL")
        return f"https://{vercel_url}" if vercel_url else None

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
            "jwt_secret": "SUPABASE_JWT_SECRET",
            "jwks_url": "SUPABASE_JWKS_URL",
            "jwt_audience": "AI_JOBS_JWT_AUDIENCE",
            "worker_secret": "WORKER_SECRET",
            "cron_secret": "CRON_SECRET",
            "worker_url": "AI_JOBS_WORKER_URL",
            "protection_bypass_secret": "VERCEL_AUTOMATION_BYPASS_SECRET",
            "handoff_wait_seconds": "AI_JOBS_HANDOFF_WAIT_SECONDS",
            "worker_budget_seconds": "AI_JOBS_WORKER_BUDGET_SECONDS",
            "max_body_bytes": "AI_JOBS_MAX_BODY_BYTES",
            "max_input_depth": "AI_JOBS_MAX_INPUT_DEPTH",
            "stale_pending_seconds": "AI_JOBS_STALE_PENDING_SECONDS",
            "cors_origins": "AI_JOBS_CORS_ORIGINS",
            "data_dir": "AI_JOBS_DATA_DIR",
            "max_active_per_user": "AI_JOBS_MAX_ACTIVE_PER_USER",
            "lease_seconds": "AI_JOBS_LEASE_SECONDS",
            "pool_max_size": "AI_JOBS_POOL_MAX_SIZE",
            "db_timeout_seconds": "AI_JOBS_DB_TIMEOUT_SECONDS",
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
