"""The periodic sweep (Vercel Cron, pg_cron, or `ai-jobs dev`'s timer):
recover crashed jobs, re-request missed hand-offs, purge old jobs, and use
the rest of the invocation to run due jobs itself, so the queue drains even
when no hand-off gets through."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel

from ai_jobs.dispatch import Dispatcher
from ai_jobs.runner import Runner
from ai_jobs.store.base import JobStore

MAX_DISPATCH_PER_SWEEP = 10


class SweepReport(BaseModel):
    reaped: int
    redispatched: int
    purged: int
    ran: dict[str, int]


def sweep(
    store: JobStore,
    runner: Runner,
    dispatcher: Dispatcher | None,
    *,
    stale_pending_seconds: int,
    budget_seconds: float | None,
) -> SweepReport:
    reaped = store.reap_expired(limit=500)
    redispatched = 0
    if dispatcher is not None and dispatcher.enabled:
        for job in store.stale_pending(older_than_seconds=stale_pending_seconds, limit=MAX_DISPATCH_PER_SWEEP):
            dispatcher.dispatch(job.id, wait=False)
            redispatched += 1
    purged = store.purge()
    outcomes = runner.run_available(budget_seconds=budget_seconds)
    return SweepReport(
        reaped=len(reaped),
        redispatched=redispatched,
        purged=purged,
        ran=dict(Counter(o.kind for o in outcomes)),
    )
