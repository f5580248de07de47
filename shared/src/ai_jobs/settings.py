"""Configuration from environment variables, read once and validated."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from ai_jobs.alerts import AlertSettings
from ai_jobs.claude.batches import BatchApiSettings
from ai_jobs.claude.caching import PromptCacheSettings
from ai_jobs.claude.pricing import ModelPrice, parse_overrides
from ai_jobs.claude.ratelimits import RateLimits
from ai_jobs.claude.settings import ClaudeSettings
from ai_jobs.claude.spend import SpendSettings
from ai_jobs.schedules import ScheduleSettings
from ai_jobs.workflows import WorkflowSettings

StoreKind = Literal["auto", "postgres", "supabase", "embedded"]
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s@]+")


def check_claude_settings(environ: Mapping[str, str]) -> None:
    """A malformed or out-of-range AI_JOBS_CLAUDE_* value stops start-up (ValueError
    naming the variable) instead of failing every ai.* job with `claude_config`."""
    try:
        ClaudeSettings.from_env(environ)
    except ValidationError as exc:
        names = ClaudeSettings.ENV_VARIABLES
        problems = "; ".join(f"{names.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}, "
                             f"got {e['input']!r}" for e in exc.errors())
        raise ValueError(problems) from None


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
    # Running-job limits checked by the claim, unless a job type sets its own; 0: none.
    user_concurrency: int = Field(default=3, ge=0, le=10000)
    org_concurrency: int = Field(default=5, ge=0, le=10000)
    key_concurrency: int = Field(default=2, ge=0, le=10000)
    # Where the organization id is in the access token (dotted path); "" : no org limits.
    org_claim: str = Field(default="app_metadata.org_id", pattern=r"^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)?$",
                           max_length=200)
    lease_seconds: int = Field(default=30, ge=1, le=3600)
    pool_max_size: int = Field(default=10, ge=1, le=100)
    # Connect / wait-for-connection / REST timeout: a down database answers 503 fast.
    db_timeout_seconds: float = Field(default=2.5, gt=0, le=60)

    # Auth: Supabase access tokens (asymmetric keys via JWKS, or the legacy HS256 secret).
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_audience: str = "authenticated"
    # How long the JWKS key set is cached: a key removed from it stops working within this.
    jwks_cache_seconds: float = Field(default=600, gt=0, le=86400)
    # Supabase anonymous sign-ins (is_anonymous: true) are refused unless allowed.
    allow_anonymous: bool = False
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
    # How an idle `ai-jobs worker` learns of new jobs: "listen" (LISTEN ai_jobs_due on a
    # direct connection, plus the poll as a safety net), "poll" (the poll only: needed
    # where a transaction pooler, e.g. Supavisor on port 6543, drops LISTEN), or "auto"
    # (listen on a direct DATABASE_URL or the embedded database, poll otherwise).
    worker_wakeup: Literal["auto", "listen", "poll"] = "auto"
    # Requests.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_input_depth: int = Field(default=32, ge=1, le=200)
    stale_pending_seconds: int = Field(default=60, ge=1)
    # Browser origins allowed to call the public /api routes cross-origin ("*": any);
    # empty: same-origin only. Exact origins, as browsers send them in Origin.
    cors_origins: tuple[str, ...] = ()
    # Claude per-minute limits shared by all workers (AI_JOBS_RATE_LIMITS, JSON). Checked
    # here so a typo stops start-up; workers read the same variable when they call Claude.
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    # Alerts evaluated by the sweep (AI_JOBS_ALERTS, AI_JOBS_ALERT_*; see ai_jobs.alerts).
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    # Prompt caching (AI_JOBS_PROMPT_CACHE*) and the Message Batches API for large
    # ai.map_batches jobs (AI_JOBS_MAP_BATCH_API_*); workers read the same variables.
    prompt_cache: PromptCacheSettings = Field(default_factory=PromptCacheSettings)
    batch_api: BatchApiSettings = Field(default_factory=BatchApiSettings)
    # Claude spend limits checked at create (AI_JOBS_MODELS, AI_JOBS_MAX_TOKENS,
    # AI_JOBS_MAX_CALLS_PER_JOB, AI_JOBS_MAX_JOB_COST_USD, AI_JOBS_USER_DAILY_BUDGET_USD,
    # AI_JOBS_ALLOW_UNPRICED_MODELS; see ai_jobs.claude.spend); workers read the same variables.
    spend: SpendSettings = Field(default_factory=SpendSettings)
    # Schedules (recurring jobs): minimum interval, per-user cap, deployment schedules' user.
    schedules: ScheduleSettings = Field(default_factory=ScheduleSettings)
    # Child jobs (AI_JOBS_MAX_SPAWN_DEPTH, AI_JOBS_MAX_CHILDREN, AI_JOBS_WAIT_RECHECK_SECONDS).
    workflows: WorkflowSettings = Field(default_factory=WorkflowSettings)

    # Claude prices per exact model id (AI_JOBS_PRICES, JSON) replacing or adding to the
    # built-in table; checked here so a malformed value stops start-up, not a paid call.
    price_overrides: dict[str, ModelPrice] = Field(default_factory=dict)

    @field_validator("price_overrides", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        return parse_overrides(value) if isinstance(value, str) else value

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _parse_rate_limits(cls, value: object) -> object:
        return RateLimits.parse(value) if isinstance(value, str) else value

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
            "jwks_cache_seconds": "AI_JOBS_JWKS_CACHE_SECONDS",
            "allow_anonymous": "AI_JOBS_ALLOW_ANONYMOUS",
            "worker_secret": "WORKER_SECRET",
            "cron_secret": "CRON_SECRET",
            "worker_url": "AI_JOBS_WORKER_URL",
            "protection_bypass_secret": "VERCEL_AUTOMATION_BYPASS_SECRET",
            "handoff_wait_seconds": "AI_JOBS_HANDOFF_WAIT_SECONDS",
            "worker_budget_seconds": "AI_JOBS_WORKER_BUDGET_SECONDS",
            "worker_wakeup": "AI_JOBS_WORKER_WAKEUP",
            "max_body_bytes": "AI_JOBS_MAX_BODY_BYTES",
            "max_input_depth": "AI_JOBS_MAX_INPUT_DEPTH",
            "stale_pending_seconds": "AI_JOBS_STALE_PENDING_SECONDS",
            "cors_origins": "AI_JOBS_CORS_ORIGINS",
            "rate_limits": "AI_JOBS_RATE_LIMITS",
            "price_overrides": "AI_JOBS_PRICES",
            "data_dir": "AI_JOBS_DATA_DIR",
            "max_active_per_user": "AI_JOBS_MAX_ACTIVE_PER_USER",
            "user_concurrency": "AI_JOBS_USER_CONCURRENCY",
            "org_concurrency": "AI_JOBS_ORG_CONCURRENCY",
            "key_concurrency": "AI_JOBS_KEY_CONCURRENCY",
            "lease_seconds": "AI_JOBS_LEASE_SECONDS",
            "pool_max_size": "AI_JOBS_POOL_MAX_SIZE",
            "db_timeout_seconds": "AI_JOBS_DB_TIMEOUT_SECONDS",
        }
        for field, name in optional.items():
            if env.get(name):
                values[field] = env[name]
        if "AI_JOBS_ORG_CLAIM" in env:  # set but empty: no organization limits
            values["org_claim"] = env["AI_JOBS_ORG_CLAIM"].strip()
        values["alerts"] = AlertSettings.from_env(env)
        values["prompt_cache"] = PromptCacheSettings.from_env(env)
        values["batch_api"] = BatchApiSettings.from_env(env)
        values["spend"] = SpendSettings.from_env(env)
        values["schedules"] = ScheduleSettings.from_env(env)
        values["workflows"] = WorkflowSettings.from_env(env)
        check_claude_settings(env)
        return cls.model_validate(values)

    def resolved_store(self) -> Literal["postgres", "supabase", "embedded"]:
        if self.store != "auto":
            return self.store
        if self.database_url:
            return "postgres"
        if self.supabase_url and self.supabase_service_key:
            return "supabase"
        return "embedded"
