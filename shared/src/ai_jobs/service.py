"""Validate and enqueue: what the HTTP request path calls. Imports stay light
(pydantic, the registry and the store interface): no anthropic, no supabase."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from ai_jobs.claude.pricing import BUILT_IN
from ai_jobs.claude.spend import plan_new_job
from ai_jobs.models import EnqueueResult, NewJob
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
    priority: int | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    parent_id: UUID | None = None,
    org_id: str | None = None,
    concurrency_key: str | None = None,
) -> EnqueueResult:
    """Check the type and input against the registry, then enqueue under the
    per-user cap with the type's concurrency limits (settings' defaults where the
    type sets none). `priority` None: the type's. A type whose input declares its
    Claude calls is checked against the spend limits (model allowlist, max_tokens cap,
    calls per job, cost per job) and its cap is reserved against the owner's daily
    budget by the enqueue. Raises UnknownJobTypeError / InputValidationError /
    SpendLimitError before anything is written, BudgetExceededError from the enqueue."""
    new_job = build_job(
        user_id, job_type, raw_input, settings=settings, registry=registry, priority=priority, run_at=run_at,
        idempotency_key=idempotency_key, metadata=metadata, parent_id=parent_id, org_id=org_id,
        concurrency_key=concurrency_key,
    )
    return store.enqueue(new_job)


def build_job(
    user_id: UUID,
    job_type: str,
    raw_input: Mapping[str, Any],
    *,
    settings: Settings,
    registry: JobRegistry | None = None,
    priority: int | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    parent_id: UUID | None = None,
    org_id: str | None = None,
    concurrency_key: str | None = None,
) -> NewJob:
    """The enqueue request `submit_job` sends, checked the same way (schedules build
    theirs here and enqueue it when a tick fires)."""
    registry = registry or load_job_modules()
    definition = registry.get(job_type)
    user_limit, org_limit, key_limit = definition.concurrency.resolve(
        settings.user_concurrency, settings.org_concurrency, settings.key_concurrency
    )
    parsed = definition.parse_input(raw_input)
    plan = plan_new_job(job_type, parsed, settings.spend, {**BUILT_IN, **settings.price_overrides})
    return registry.new_job(
        user_id,
        job_type,
        raw_input,
        parsed=parsed,
        cost_estimate_usd=plan.estimate_usd if plan else None,
        cost_cap_usd=plan.cap_usd if plan else None,
        daily_budget_usd=settings.spend.daily_budget() if plan and plan.cap_usd is not None else None,
        priority=priority,
        run_at=run_at,
        idempotency_key=idempotency_key,
        metadata=dict(metadata or {}),
        parent_id=parent_id,
        max_active=settings.max_active_per_user,
        org_id=org_id,
        concurrency_key=concurrency_key,
        user_limit=user_limit,
        org_limit=org_limit if org_id is not None else None,
        key_limit=key_limit if concurrency_key is not None else None,
    )
