"""The periodic sweep (Vercel Cron, pg_cron, or `ai-jobs dev`'s timer):
evaluate alerts, recover crashed jobs, fail jobs of types this deployment does not
register, re-request missed hand-offs, purge old jobs, and use the rest of the
invocation to run due jobs itself, so the queue drains even when no hand-off gets
through."""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from ai_jobs.alerts import AlertReport, AlertSettings, run_alerts
from ai_jobs.dispatch import Dispatcher
from ai_jobs.errors import StoreUnavailableError
from ai_jobs.runner import Runner
from ai_jobs.store.base import JobStore

if TYPE_CHECKING:
    from ai_jobs.settings import Settings

MAX_DISPATCH_PER_SWEEP = 10
MAX_UNREGISTERED_FAILED_PER_SWEEP = 500

log = logging.getLogger(__name__)


class SweepReport(BaseModel):
    reaped: int
    redispatched: int
    purged: int
    ran: dict[str, int]
    alerts_opened: int = Field(description="alert incidents this sweep opened (see README: Alerts)")
    alerts_resolved: int = Field(description="alert incidents this sweep resolved")
    alerts_notified: int = Field(description="openings and resolutions posted to AI_JOBS_ALERT_WEBHOOK_URL (2xx)")
    schedules_fired: int = Field(default=0, description="schedule ticks this sweep fired (see README: Schedules)")
    unregistered_failed: int = Field(
        default=0, description="pending jobs of a type this deployment does not register, failed (unknown_job_type)")


def _unreachable(exc: BaseException) -> bool:
    """The store could not be reached at all (connection refused, timeout): the
    adapters raise StoreUnavailableError from an error that carries no SQLSTATE
    (psycopg) or PostgREST code, unlike a failing statement."""
    if not isinstance(exc, StoreUnavailableError):
        return False
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) is None and getattr(cause, "code", None) is None


def sweep(
    store: JobStore,
    runner: Runner,
    dispatcher: Dispatcher | None,
    *,
    stale_pending_seconds: int,
    budget_seconds: float | None,
    alerts: AlertSettings | None = None,
    settings: Settings | None = None,
) -> SweepReport:
    """`settings`: also declare deployment schedules and fire due schedule ticks
    (before running jobs, so this sweep runs what it fired)."""
    # Alerts first: they see the queue as the sweep found it (expired leases not yet
    # reaped), and their notifications do not wait for the jobs run below.
    try:
        alert_report = run_alerts(store, alerts or AlertSettings())
    except Exception as exc:  # noqa: BLE001 - alerting must never stop the sweep's recovery work
        if _unreachable(exc):
            raise  # nothing below could run either: fail now, not after a second timeout
        log.exception("alert evaluation failed; the sweep goes on")
        alert_report = AlertReport()
    reaped = store.reap_expired(limit=500)
    # Jobs no worker of this deployment can run: failed once they have been due as long
    # as a stale hand-off, instead of counting as due work for ever. A registry with no
    # types at all serves nothing, and fails nothing.
    job_types = runner.registry.types()
    unregistered = (
        store.fail_unregistered(job_types, older_than_seconds=stale_pending_seconds,
                                limit=MAX_UNREGISTERED_FAILED_PER_SWEEP)
        if job_types else []
    )
    for job in unregistered:
        log.warning("job %s: failed, its type %s is not registered in this deployment", job.id, job.job_type)
    redispatched = 0
    if dispatcher is not None and dispatcher.enabled:
        # only jobs a claim could take now: a job whose concurrency limit is full starts
        # when a slot frees (the worker whose job ends claims next)
        for job in store.stale_pending(older_than_seconds=stale_pending_seconds, limit=MAX_DISPATCH_PER_SWEEP,
                                       job_types=job_types):
            dispatcher.dispatch(job.id, wait=False)
            redispatched += 1
    purged = store.purge()
    # Parents waiting for children that no longer need to wait (a missed or lost
    # wake-up): due now, so the run below or a hand-off resumes them.
    woken = store.resolve_waiting()
    if woken:
        log.info("woke %d parent jobs with nothing left to wait for", woken)
    # Parents' children counts the trigger's 0.5 s throttle held back (the wake-up
    # writes them too, on every run).
    store.recount_parents(limit=500)
    fired = 0
    if settings is not None:
        from ai_jobs.schedules import run_schedules

        try:
            fired = run_schedules(store, runner.registry, settings).fired
        except Exception as exc:  # noqa: BLE001 - schedules must not stop the sweep running jobs
            if _unreachable(exc):
                raise
            log.exception("firing schedules failed; the sweep goes on")
    outcomes = runner.run_available(budget_seconds=budget_seconds)
    return SweepReport(
        reaped=len(reaped),
        redispatched=redispatched,
        purged=purged,
        ran=dict(Counter(o.kind for o in outcomes)),
        unregistered_failed=len(unregistered),
        alerts_opened=alert_report.opened,
        alerts_resolved=alert_report.resolved,
        alerts_notified=alert_report.notified,
        schedules_fired=fired,
    )
