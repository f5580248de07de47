"""Validate and enqueue: what the HTTP request path calls. Imports stay light
(pydantic, the registry and the store interface): no anthropic, no supabase."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from ai_jobs.models import EnqueueResult
from ai_jobs.registry import JobRegistry, load_job_modules
from ai_jobs.settings import Settings
from ai_jobs.store.base import JobStore


def submit_job(
    store: JobStore,
    user_id: UUID,
    job_type: str,
    raw_input: Mapping[str, Any],
    *,
    settings: Settings,
    registry: JobRegistry | None = None,
    priority: int = 0,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    parent_id: UUID | None = None,
) -> EnqueueResult:
    """Check the type and input against the registry, then enqueue under the
    per-user cap. Raises UnknownJobTypeError / InputValidationError before
    anything is written."""
    registry = registry or load_job_modules()
    new_job = registry.new_job(
        user_id,
        job_type,
        raw_input,
        priority=priority,
        run_at=run_at,
        idempotency_key=idempotency_key,
        metadata=dict(metadata or {}),
        parent_id=parent_id,
        max_active=settings.max_active_per_user,
    )
    return store.enqueue(new_job)
