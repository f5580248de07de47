"""Workflows across invocations: child jobs, waiting for them without a worker,
durable sleep (see README: Child jobs and workflows).

The handler-facing calls live on JobContext (`ctx.spawn`, `ctx.spawn_many`,
`ctx.wait_for_children`, `ctx.sleep`, `ctx.sleep_until`); this module builds the
children's enqueue requests with the same checks as an HTTP create (registered
type, input model, concurrency limits, spend plan and daily budget) and holds the
settings. The SQL side is migration 20261130001200_workflows.sql.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from ai_jobs.context import JobContext
    from ai_jobs.registry import JobRegistry
    from ai_jobs.settings import Settings


class WorkflowSettings(BaseModel):
    """AI_JOBS_MAX_SPAWN_DEPTH: levels a tree may have (root = 1); a job on the last
    level cannot spawn. AI_JOBS_MAX_CHILDREN: children per job. AI_JOBS_WAIT_RECHECK_SECONDS:
    a waiting parent runs again after this long even if no child woke it (a safety net;
    the children's trigger and the sweep normally wake it first)."""

    max_spawn_depth: int = Field(default=3, ge=1, le=100)
    max_children: int = Field(default=1000, ge=0, le=100000)
    wait_recheck_seconds: float = Field(default=3600, ge=1, le=86400)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkflowSettings:
        env = os.environ if environ is None else environ
        names = {
            "max_spawn_depth": "AI_JOBS_MAX_SPAWN_DEPTH",
            "max_children": "AI_JOBS_MAX_CHILDREN",
            "wait_recheck_seconds": "AI_JOBS_WAIT_RECHECK_SECONDS",
        }
        return cls.model_validate({field: env[name] for field, name in names.items() if env.get(name)})


@dataclass(frozen=True)
class Child:
    """One child to spawn: its type, input and the key that makes the spawn idempotent
    (unique per parent). `concurrency_key`, `priority` and `metadata` as for a create.
    `key_limit`: how many jobs with this concurrency_key may run at once (default: the
    type's or AI_JOBS_KEY_CONCURRENCY). `cost_cap_usd`: a Claude spend cap carved out
    of the parent's (the lower of it and the child's own cap is stored); such a child
    is not checked against the daily budget at spawn: its parent's cap already was."""

    job_type: str
    input: Mapping[str, Any]
    key: str
    priority: int | None = None
    concurrency_key: str | None = None
    metadata: Mapping[str, Any] | None = None
    run_at: datetime | None = None
    key_limit: int | None = None
    cost_cap_usd: float | None = None


@dataclass(frozen=True)
class ChildResult:
    """A finished child as wait_for_children returns it, in spawn order."""

    id: UUID
    key: str | None
    job_type: str
    status: str
    result: Any
    error: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@lru_cache(maxsize=1)
def _settings_from_env() -> Settings:
    from ai_jobs.settings import Settings

    return Settings.from_env()


def child_spec(
    registry: JobRegistry,
    user_id: UUID,
    child: Child,
    *,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The spawn request for one child: what `submit_job` checks and stores for an
    HTTP create (type, input, concurrency limits, Claude spend plan and daily budget),
    as JSON for ai_jobs_spawn_v1. Raises UnknownJobTypeError / InputValidationError /
    SpendLimitError before anything is written. The per-user active-job cap does not
    apply to children: the children cap (AI_JOBS_MAX_CHILDREN) bounds them instead."""
    from ai_jobs.claude.pricing import BUILT_IN
    from ai_jobs.claude.spend import plan_new_job

    settings = settings or _settings_from_env()
    definition = registry.get(child.job_type)
    user_limit, org_limit, key_limit = definition.concurrency.resolve(
        settings.user_concurrency, settings.org_concurrency, settings.key_concurrency
    )
    parsed = definition.parse_input(child.input)
    plan = plan_new_job(child.job_type, parsed, settings.spend, {**BUILT_IN, **settings.price_overrides})
    cap = plan.cap_usd if plan else None
    carved = child.cost_cap_usd is not None
    if child.cost_cap_usd is not None:
        share = max(0.0, float(child.cost_cap_usd))
        cap = share if cap is None else min(cap, share)
    if child.key_limit is not None:
        key_limit = child.key_limit or None
    new_job = registry.new_job(
        user_id,
        child.job_type,
        child.input,
        parsed=parsed,
        cost_estimate_usd=plan.estimate_usd if plan else None,
        cost_cap_usd=cap,
        daily_budget_usd=settings.spend.daily_budget() if plan and cap is not None and not carved else None,
        priority=child.priority,
        run_at=child.run_at,
        metadata=dict(child.metadata or {}),
        concurrency_key=child.concurrency_key,
        user_limit=user_limit,
        org_limit=org_limit,
        key_limit=key_limit if child.concurrency_key is not None else None,
    )
    spec = new_job.model_dump(mode="json", exclude_none=True, exclude={"user_id"})
    spec["key"] = child.key
    return spec


HANDOFF_MAX = 10  # hand-off requests per spawn; each invocation drains more than one child


def _refused(exc: Exception) -> Exception:
    """A child the queue refuses fails the parent at once (retrying cannot help);
    a database outage or a lost lease keeps its usual meaning."""
    from ai_jobs.errors import AiJobsError, LeaseLostError, StoreUnavailableError
    from ai_jobs.failures import FatalJobError

    if isinstance(exc, (LeaseLostError, StoreUnavailableError)) or not isinstance(exc, AiJobsError):
        return exc
    return FatalJobError("spawn_refused", f"a child job was refused ({exc.code}): {exc.message}")


def spawn_children(ctx: JobContext, children: Sequence[Child | Mapping[str, Any]]) -> list[UUID]:
    """ctx.spawn_many: build every child's request (same checks as a create), then
    one ai_jobs_spawn_v1 call; hand off up to HANDOFF_MAX new children."""
    from ai_jobs.registry import load_job_modules

    ctx.check_cancelled()
    registry = ctx.registry or load_job_modules()
    settings = _settings_from_env()
    specs: list[dict[str, Any]] = []
    try:
        for child in children:
            item = child if isinstance(child, Child) else Child(**dict(child))
            specs.append(child_spec(registry, ctx.job.user_id, item, settings=settings))
        results = ctx.store.spawn(
            ctx.job.id, ctx.worker, specs,
            max_depth=settings.workflows.max_spawn_depth, max_children=settings.workflows.max_children,
        )
    except Exception as exc:
        refused = _refused(exc)
        if refused is exc:
            raise
        raise refused from exc
    created = [r.job.id for r in results if r.created]
    if ctx.handoff is not None:
        for job_id in created[:HANDOFF_MAX]:
            try:
                ctx.handoff(job_id)
            except Exception:  # noqa: BLE001 - the sweep and draining workers start the rest
                break
    return [r.job.id for r in results]


def wait_for_children(ctx: JobContext, keys: Sequence[str] | None, max_failures: int) -> list[ChildResult]:
    """ctx.wait_for_children: results, a failure, or Suspended (the row is pending)."""
    from ai_jobs.context import JobCancelled, Suspended
    from ai_jobs.failures import FatalJobError

    if max_failures < 0:
        raise ValueError("max_failures must be 0 or more")
    ctx.check_cancelled()
    ctx.flush_progress()
    settings = _settings_from_env()
    answer = ctx.store.wait_children(
        ctx.job.id, ctx.worker, keys=keys, max_failures=max_failures,
        recheck_seconds=settings.workflows.wait_recheck_seconds, usage=ctx.take_usage(),
    )
    if answer.get("state") == "cancelled":  # requested after the check above
        raise JobCancelled(str(ctx.job.id))
    if answer.get("state") == "waiting":
        raise Suspended(f"waiting for {answer.get('active')} children")
    results = [
        ChildResult(id=UUID(str(c["id"])), key=c.get("key"), job_type=c["job_type"], status=c["status"],
                    result=c.get("result"), error=c.get("error"))
        for c in answer.get("children") or []
    ]
    if answer.get("state") == "failed":
        failed = [c for c in results if c.status in ("failed", "cancelled")]
        first = failed[0] if failed else None
        detail = f"; first: {first.key} ({(first.error or {}).get('code', first.status)})" if first else ""
        raise FatalJobError(
            "child_failed", f"{len(failed)} child jobs failed or were cancelled, {max_failures} tolerated{detail}"
        )
    return results


def sleep_until(ctx: JobContext, target: float, key: str) -> None:
    """Durable sleep: the wake-up time is a checkpointed step, so a resumed handler
    sleeps only what is left; until then the job is deferred (reason sleeping), no
    worker held. Longer than a day: deferred a day at a time."""
    import time as _time

    from ai_jobs.context import Deferred

    stored = ctx.step(key, lambda: target)
    left = float(stored) - _time.time()
    if left <= 0:
        return
    ctx.check_cancelled()
    raise Deferred(min(left, 86400.0), reason="sleeping", message=f"sleeping {left:.0f} s")
