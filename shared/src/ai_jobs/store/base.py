"""The one narrow interface between Python and the queue's SQL functions.

Every operation is a call to a versioned SQL function with named arguments.
`JobStore` implements the operations once; an adapter only has to execute
`call(function, params)` (psycopg for PostgresStore, PostgREST RPC for
SupabaseStore), so both adapters are the same queue by construction.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from ai_jobs.alerts import Alert, AlertEvent, AlertNotice
from ai_jobs.errors import InvalidArgumentError
from ai_jobs.schedules import FireResult, Schedule
from ai_jobs.models import (
    EnqueueResult,
    Job,
    JobCursor,
    JobError,
    JobPage,
    JobStatus,
    NewJob,
    QueueDepth,
    RateAcquisition,
    TypeStats,
    WakeupStatus,
)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Json:
    """Marks a parameter bound to a jsonb argument."""

    value: Any


@dataclass(frozen=True)
class SqlFunction:
    """A named SQL function of the API migration; `returns_set` = setof rows."""

    name: str
    returns_set: bool = True


# v4: v3 (the Claude cost estimate and cap, reserved against the owner's daily budget)
# with the active-job cap counting paused jobs too.
ENQUEUE = SqlFunction("ai_jobs_enqueue_v4", returns_set=False)
# up to 1000 enqueues in one statement and transaction (all or nothing), each checked as enqueue_v4
ENQUEUE_MANY = SqlFunction("ai_jobs_enqueue_many_v2", returns_set=False)
MAX_ENQUEUE_MANY = 1000
CLAIM = SqlFunction("ai_jobs_claim_v2")
MAX_CLAIM_LIMIT = 1000  # the most jobs one claim leases (ai_jobs_claim_v2 refuses more)
HEARTBEAT = SqlFunction("ai_jobs_heartbeat_v1")
# v2: v1 plus the live-output snapshot (ai_jobs.stream), written in the same update.
PROGRESS = SqlFunction("ai_jobs_progress_v2")
CHECKPOINT = SqlFunction("ai_jobs_checkpoint_v1")
COMPLETE = SqlFunction("ai_jobs_complete_v1")
COMPLETE_MANY = SqlFunction("ai_jobs_complete_many_v2")
# complete_many_v2 then claim_v2 in one statement (one round trip per batch for a busy worker)
COMPLETE_CLAIM = SqlFunction("ai_jobs_complete_claim_v2", returns_set=False)
FAIL = SqlFunction("ai_jobs_fail_v1")
RELEASE = SqlFunction("ai_jobs_release_v1")
CANCELLED = SqlFunction("ai_jobs_cancelled_v1")
# v2: a pending job with a Claude Message Batch (step claude-batch) waits for a worker to cancel it.
REQUEST_CANCEL = SqlFunction("ai_jobs_request_cancel_v2")
# v4: the retried job's remaining cap is reserved against the owner's daily budget; its
# failed or cancelled descendants run again too; the active-job cap counts paused jobs
# and is checked for the job itself, never its children.
RETRY = SqlFunction("ai_jobs_retry_v4")
DELETE = SqlFunction("ai_jobs_delete_v1")
GET = SqlFunction("ai_jobs_get_v1")
LIST = SqlFunction("ai_jobs_list_v1")
MAX_LIST_LIMIT = 200  # the longest page ai_jobs_list_v1 returns (it refuses more)
REAP = SqlFunction("ai_jobs_reap_v1")
PURGE = SqlFunction("ai_jobs_purge_v1", returns_set=False)
# v2: only the caller's job types, and only jobs whose concurrency limits are not full
# (a claim could take them now).
STALE_PENDING = SqlFunction("ai_jobs_stale_pending_v2")
# pending jobs of a type the deployment does not register, due for a while: failed (unknown_job_type)
FAIL_UNREGISTERED = SqlFunction("ai_jobs_fail_unregistered_v1")
QUEUE_DEPTH = SqlFunction("ai_jobs_queue_depth_v1")
STATS_24H = SqlFunction("ai_jobs_stats_24h_v1")
# v2: names ai_jobs_schedule_wake_v2 in its fixes; a wake job still on ai_jobs_wake_v1 is a problem.
WAKEUP_STATUS = SqlFunction("ai_jobs_wakeup_status_v2", returns_set=False)
# v3: leaves out jobs held back by a full concurrency limit (a claim could not take them),
# so one user's held job does not end an idle invocation's wait for another user's job.
NEXT_DUE = SqlFunction("ai_jobs_next_due_v3", returns_set=False)
EVALUATE_ALERTS = SqlFunction("ai_jobs_evaluate_alerts_v1")
MARK_ALERT_NOTIFIED = SqlFunction("ai_jobs_mark_alert_notified_v1", returns_set=False)
ALERTS = SqlFunction("ai_jobs_alerts_v1")
# v2: a cancel-requested job with a Message Batch (step claude-batch) stays pending until it is cancelled.
DEFER = SqlFunction("ai_jobs_defer_v2")
RATE_ACQUIRE = SqlFunction("ai_jobs_rate_acquire_v1", returns_set=False)
RATE_SETTLE = SqlFunction("ai_jobs_rate_settle_v1", returns_set=False)
# Schedules (recurring jobs; ai_jobs.schedules computes the ticks).
SCHEDULE_CREATE = SqlFunction("ai_jobs_schedule_create_v1")
SCHEDULE_UPSERT = SqlFunction("ai_jobs_schedule_upsert_v1")
SCHEDULE_LIST = SqlFunction("ai_jobs_schedule_list_v1")
SCHEDULE_SET_PAUSED = SqlFunction("ai_jobs_schedule_set_paused_v1")
SCHEDULE_DELETE = SqlFunction("ai_jobs_schedule_delete_v1")
SCHEDULE_GET = SqlFunction("ai_jobs_schedule_get_v1")
SCHEDULE_DUE = SqlFunction("ai_jobs_schedule_due_v1")
# compare-and-set of next_run_at plus the enqueue, in one transaction
FIRE_SCHEDULE = SqlFunction("ai_jobs_fire_schedule_v1", returns_set=False)
# Workflows (issue 16): child jobs, waiting for them without a worker, pause/resume,
# and the tree rules for cancel, retry and delete.
SPAWN = SqlFunction("ai_jobs_spawn_v1", returns_set=False)
WAIT_CHILDREN = SqlFunction("ai_jobs_wait_children_v1", returns_set=False)
RESOLVE_WAITING = SqlFunction("ai_jobs_resolve_waiting_v1", returns_set=False)
# parents' children counts that the 0.5 s throttle held back, written once due
RECOUNT_PARENTS = SqlFunction("ai_jobs_recount_parents_v1", returns_set=False)
CHILDREN = SqlFunction("ai_jobs_children_v1")
PAUSE = SqlFunction("ai_jobs_pause_v1")
RESUME = SqlFunction("ai_jobs_resume_v1")
PAUSED = SqlFunction("ai_jobs_paused_v1")
# v4: v2 plus paused jobs and every unfinished descendant (a paused job with a
# Claude Message Batch is left to a worker, as a pending one is).
REQUEST_CANCEL_TREE = SqlFunction("ai_jobs_request_cancel_v4")
RETRY_TREE = RETRY  # the same function since v4
# v2: refused while a descendant is unfinished.
DELETE_TREE = SqlFunction("ai_jobs_delete_v2")
MAX_SPAWN_MANY = 1000


def _page_position(cursor: str | None) -> dict[str, Any]:
    """The keyset arguments of every paginated SQL list (jobs, children, schedules) for a
    cursor as next_cursor gave it; none: the first page."""
    position = JobCursor.decode(cursor) if cursor else None
    return {"p_before_created_at": position.created_at if position else None,
            "p_before_id": position.id if position else None}


def _next_cursor(page: Sequence[Job] | Sequence[Schedule], limit: int) -> str | None:
    """The following page's cursor: set whenever this page is full, so the page after a
    full last page is empty."""
    if len(page) != limit:
        return None
    return JobCursor(created_at=page[-1].created_at, id=page[-1].id).encode()


class JobStore(ABC):
    """Queue operations. Worker-side calls take the worker id that holds the lease;
    owner-side calls take `user_id` (None = operator, no owner scoping)."""

    # -- adapter port --------------------------------------------------------------

    @abstractmethod
    def call(self, function: SqlFunction, params: Mapping[str, Any]) -> Any:
        """Run one SQL function. Params whose value is None are omitted, so the
        function's own default applies. Returns a list of row dicts for
        set-returning functions, else the scalar value."""

    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------

    def _jobs(self, function: SqlFunction, params: Mapping[str, Any]) -> list[Job]:
        return [Job.model_validate(row) for row in self.call(function, params)]

    def _readable_jobs(self, rows: Sequence[Mapping[str, Any]], worker: str | None = None) -> list[Job]:
        """Parse rows one by one: a row the Job model refuses (written around our API)
        is left out, and when `worker` holds its lease it is failed on its own
        (`unreadable_row`, not retried), so it never strands the rest of a batch."""
        jobs: list[Job] = []
        for row in rows:
            try:
                jobs.append(Job.model_validate(row))
            except ValidationError as exc:
                self._unreadable(row, exc, worker)
        return jobs

    def _unreadable(self, row: Mapping[str, Any], exc: ValidationError, worker: str | None) -> None:
        job_id = row.get("id") if isinstance(row, Mapping) else None
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(row)'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_context=False, include_input=False)[:5]
        )
        log.error("job %s: unreadable row (%s)", job_id, problems)
        if job_id is None or worker is None:
            return
        error = JobError(code="unreadable_row", message=f"the worker could not read this job: {problems}"[:4000],
                         retryable=False)
        try:
            self.call(FAIL, {"p_job_id": job_id, "p_worker": worker, "p_error": Json(error.model_dump(mode="json"))})
        except Exception as fail_exc:  # noqa: BLE001 - the lease expires and the next claim tries again
            log.warning("job %s: could not fail the unreadable row: %s", job_id, type(fail_exc).__name__)

    def _job(self, function: SqlFunction, params: Mapping[str, Any]) -> Job:
        jobs = self._jobs(function, params)
        if len(jobs) != 1:
            raise RuntimeError(f"{function.name} returned {len(jobs)} rows, expected 1")
        return jobs[0]

    # -- enqueue -------------------------------------------------------------------

    def enqueue(self, new_job: NewJob) -> EnqueueResult:
        """Insert a job; an existing idempotency key returns the existing job. With
        `daily_budget_usd` and a `cost_cap_usd`, BudgetExceededError when the owner's
        Claude spend recorded in the last 24 h, plus what their active jobs may still
        spend, plus this cap would pass the budget."""
        value = self.call(
            ENQUEUE,
            {
                "p_user_id": new_job.user_id,
                "p_job_type": new_job.job_type,
                "p_input": Json(new_job.input),
                "p_priority": new_job.priority,
                "p_run_at": new_job.run_at,
                "p_idempotency_key": new_job.idempotency_key,
                "p_parent_id": new_job.parent_id,
                "p_metadata": Json(new_job.metadata),
                "p_max_attempts": new_job.max_attempts,
                "p_max_active": new_job.max_active,
                "p_org_id": new_job.org_id,
                "p_concurrency_key": new_job.concurrency_key,
                "p_user_limit": new_job.user_limit,
                "p_org_limit": new_job.org_limit,
                "p_key_limit": new_job.key_limit,
                "p_cost_estimate_usd": new_job.cost_estimate_usd,
                "p_cost_cap_usd": new_job.cost_cap_usd,
                "p_daily_budget_usd": new_job.daily_budget_usd,
            },
        )
        return EnqueueResult.model_validate(value)

    def enqueue_many(self, new_jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Insert up to 1000 jobs in one statement and one transaction, each with every
        check `enqueue` makes (idempotency key, active-job cap, daily budget; a job
        counts those before it). All or nothing: the first refused job raises the error
        its own `enqueue` would, and none is inserted. Results are in input order."""
        if len(new_jobs) > MAX_ENQUEUE_MANY:
            raise InvalidArgumentError(f"at most {MAX_ENQUEUE_MANY} jobs per call, got {len(new_jobs)}")
        if not new_jobs:
            return []
        payload = [job.model_dump(mode="json", exclude_none=True) for job in new_jobs]
        values = self.call(ENQUEUE_MANY, {"p_jobs": Json(payload)})
        return [EnqueueResult.model_validate(value) for value in values]

    # -- worker side ---------------------------------------------------------------

    def claim(
        self,
        worker: str,
        *,
        limit: int = 1,
        lease_seconds: int = 30,
        job_types: Sequence[str] | None = None,
        job_id: UUID | None = None,
    ) -> list[Job]:
        """Lease up to `limit` due jobs to `worker`; each job goes to one caller only.
        Owners take turns (fewest running first); a job over its concurrency limits
        stays pending with `wait_reason` set.
        A claimed row that cannot be parsed is failed alone (`unreadable_row`)."""
        rows = self.call(
            CLAIM,
            {
                "p_worker": worker,
                "p_limit": limit,
                "p_lease_seconds": lease_seconds,
                "p_job_types": list(job_types) if job_types is not None else None,
                "p_job_id": job_id,
            },
        )
        return self._readable_jobs(rows, worker)

    def heartbeat(self, job_id: UUID, worker: str, *, lease_seconds: int = 30) -> Job:
        return self._job(
            HEARTBEAT, {"p_job_id": job_id, "p_worker": worker, "p_lease_seconds": lease_seconds}
        )

    def progress(
        self,
        job_id: UUID,
        worker: str,
        progress: int,
        message: str | None = None,
        *,
        lease_seconds: int | None = None,
        stream: Mapping[str, Any] | None = None,
    ) -> Job:
        """`stream`: the live-output snapshot {id, seq, format, text} to store with it
        (an older snapshot of the same stream id is ignored)."""
        return self._job(
            PROGRESS,
            {
                "p_job_id": job_id,
                "p_worker": worker,
                "p_progress": progress,
                "p_message": message,
                "p_lease_seconds": lease_seconds,
                "p_stream": Json(dict(stream)) if stream is not None else None,
            },
        )

    def checkpoint(
        self,
        job_id: UUID,
        worker: str,
        step: str,
        value: Any,
        *,
        usage: Mapping[str, Any] | None = None,
        progress: int | None = None,
        message: str | None = None,
    ) -> Job:
        return self._job(
            CHECKPOINT,
            {
                "p_job_id": job_id,
                "p_worker": worker,
                "p_step": step,
                "p_value": Json(value),
                "p_usage": Json(dict(usage)) if usage else None,
                "p_progress": progress,
                "p_message": message,
            },
        )

    def complete(
        self, job_id: UUID, worker: str, result: Any, *, usage: Mapping[str, Any] | None = None
    ) -> Job:
        return self._job(
            COMPLETE,
            {
                "p_job_id": job_id,
                "p_worker": worker,
                "p_result": Json(result),
                "p_usage": Json(dict(usage)) if usage else None,
            },
        )

    def complete_many(self, worker: str, results: Sequence[tuple[UUID, Any, Mapping[str, Any] | None]]) -> set[UUID]:
        """Complete several jobs in one statement; returns the ids this worker still held."""
        payload = [
            {"id": str(job_id), "result": result, **({"usage": dict(usage)} if usage else {})}
            for job_id, result, usage in results
        ]
        rows = self.call(COMPLETE_MANY, {"p_worker": worker, "p_results": Json(payload)})
        return {UUID(str(row["id"])) for row in rows}

    def complete_and_claim(
        self,
        worker: str,
        results: Sequence[tuple[UUID, Any, Mapping[str, Any] | None]],
        *,
        limit: int = 1,
        lease_seconds: int = 30,
        job_types: Sequence[str] | None = None,
    ) -> tuple[set[UUID], list[Job]]:
        """`complete_many` then `claim`, in one statement: a busy worker writes batch N
        and leases batch N+1 with one round trip and one commit. Returns the ids this
        worker still held (now completed) and the newly claimed jobs."""
        payload = [
            {"id": str(job_id), "result": result, **({"usage": dict(usage)} if usage else {})}
            for job_id, result, usage in results
        ]
        value = self.call(
            COMPLETE_CLAIM,
            {
                "p_worker": worker,
                "p_results": Json(payload),
                "p_limit": limit,
                "p_lease_seconds": lease_seconds,
                "p_job_types": list(job_types) if job_types is not None else None,
            },
        )
        return {UUID(str(i)) for i in value["completed"]}, self._readable_jobs(value["claimed"], worker)

    def fail(
        self,
        job_id: UUID,
        worker: str,
        error: JobError,
        *,
        retry_at: datetime | None = None,
        usage: Mapping[str, Any] | None = None,
        backoff_base_seconds: float | None = None,
        backoff_max_seconds: float | None = None,
    ) -> Job:
        """Record a failure; retryable ones with attempts left go back to pending."""
        return self._job(
            FAIL,
            {
                "p_job_id": job_id,
                "p_worker": worker,
                "p_error": Json(error.model_dump(mode="json")),
                "p_retry_at": retry_at,
                "p_usage": Json(dict(usage)) if usage else None,
                "p_backoff_base_seconds": backoff_base_seconds,
                "p_backoff_max_seconds": backoff_max_seconds,
            },
        )

    def release(
        self,
        job_id: UUID,
        worker: str,
        *,
        run_at: datetime | None = None,
        usage: Mapping[str, Any] | None = None,
    ) -> Job:
        """Back to pending without spending an attempt (continue in a new invocation)."""
        return self._job(
            RELEASE,
            {
                "p_job_id": job_id,
                "p_worker": worker,
                "p_run_at": run_at,
                "p_usage": Json(dict(usage)) if usage else None,
            },
        )

    def defer(
        self,
        job_id: UUID,
        worker: str,
        *,
        delay_seconds: float,
        reason: str,
        message: str | None = None,
        usage: Mapping[str, Any] | None = None,
    ) -> Job:
        """Back to pending `delay_seconds` from now (database clock) because the job
        must wait (`reason`, e.g. rate_limited): no attempt spent, no error recorded.
        A pending cancel wins (the job ends cancelled), except for a job with a Claude
        Message Batch (a `claude-batch` step): it stays pending so a worker can still
        cancel the batch."""
        return self._job(
            DEFER,
            {
                "p_job_id": job_id,
                "p_worker": worker,
                "p_delay_seconds": delay_seconds,
                "p_reason": reason,
                "p_message": message,
                "p_usage": Json(dict(usage)) if usage else None,
            },
        )

    def rate_acquire(
        self,
        limits: Mapping[str, Mapping[str, int]],
        *,
        input_tokens: int,
        output_tokens: int,
        job_id: UUID | None = None,
        window_seconds: float | None = None,
    ) -> RateAcquisition:
        """Reserve one call's request and tokens in every bucket of `limits`
        (shared by all workers, sliding 60 s window), or learn how long to wait."""
        value = self.call(
            RATE_ACQUIRE,
            {
                "p_limits": Json(dict(limits)),
                "p_input_tokens": input_tokens,
                "p_output_tokens": output_tokens,
                "p_job_id": job_id,
                "p_window_seconds": window_seconds,
            },
        )
        return RateAcquisition.model_validate(value)

    def rate_settle(self, reservation: UUID, *, input_tokens: int, output_tokens: int) -> bool:
        """Correct a reservation to the billed tokens; False if it already left the window."""
        return bool(
            self.call(
                RATE_SETTLE,
                {"p_reservation": reservation, "p_input_tokens": input_tokens, "p_output_tokens": output_tokens},
            )
        )

    def mark_cancelled(
        self, job_id: UUID, worker: str, *, usage: Mapping[str, Any] | None = None
    ) -> Job:
        """The worker honoured a cancel request."""
        return self._job(
            CANCELLED,
            {"p_job_id": job_id, "p_worker": worker, "p_usage": Json(dict(usage)) if usage else None},
        )

    # -- owner side ----------------------------------------------------------------

    def get(self, job_id: UUID, *, user_id: UUID | None = None) -> Job:
        return self._job(GET, {"p_job_id": job_id, "p_user_id": user_id})

    def list(
        self,
        *,
        user_id: UUID | None = None,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """Newest first; pass `next_cursor` back to get the following page."""
        jobs = self._jobs(
            LIST,
            {
                "p_user_id": user_id,
                "p_status": status.value if status else None,
                "p_job_type": job_type,
                "p_limit": limit,
                **_page_position(cursor),
            },
        )
        return JobPage(jobs=jobs, next_cursor=_next_cursor(jobs, limit))

    def request_cancel(self, job_id: UUID, *, user_id: UUID | None = None) -> Job:
        """Pending: cancelled now. Running: flagged, the worker stops at its next step.
        Pending with a Claude Message Batch (a `claude-batch` step): flagged and due now,
        still pending; a worker cancels the batch, then marks the job cancelled."""
        return self._job(REQUEST_CANCEL, {"p_job_id": job_id, "p_user_id": user_id})

    def retry(
        self,
        job_id: UUID,
        *,
        user_id: UUID | None = None,
        max_active: int | None = None,
        daily_budget_usd: float | None = None,
    ) -> Job:
        """Failed or cancelled -> pending with fresh attempts; completed steps are kept,
        and its failed or cancelled descendants run again too. `max_active` caps the
        owner's unfinished (pending, running or paused) jobs, this one included, never
        its children. With `daily_budget_usd`, what the job may still spend under its
        cap is reserved against the owner's budget (BudgetExceededError when there is
        no room)."""
        return self._job(
            RETRY,
            {"p_job_id": job_id, "p_user_id": user_id, "p_max_active": max_active,
             "p_daily_budget_usd": daily_budget_usd},
        )

    def delete(self, job_id: UUID, *, user_id: UUID | None = None) -> Job:
        """Remove a finished job; returns it as it was."""
        return self._job(DELETE, {"p_job_id": job_id, "p_user_id": user_id})

    # -- maintenance ---------------------------------------------------------------

    def reap_expired(self, *, limit: int = 100) -> list[Job]:
        """Running jobs past their lease -> pending (or failed when attempts are spent)."""
        return self._readable_jobs(self.call(REAP, {"p_limit": limit}))

    def stale_pending(
        self, *, older_than_seconds: int = 60, limit: int = 100, job_types: Sequence[str] | None = None
    ) -> list[Job]:
        """Due jobs left pending longer than `older_than_seconds` (missed hand-offs) that a
        claim could take now: of `job_types` (None: any type), concurrency limits not full."""
        return self._readable_jobs(
            self.call(STALE_PENDING, {"p_older_than_seconds": older_than_seconds, "p_limit": limit,
                                      "p_job_types": list(job_types) if job_types is not None else None})
        )

    def fail_unregistered(
        self, job_types: Sequence[str], *, older_than_seconds: int = 60, limit: int = 100
    ) -> list[Job]:
        """Fail pending jobs due for longer than `older_than_seconds` whose type is not in
        `job_types` (the deployment's types, at least one): error `unknown_job_type`, not
        retried (cancelled instead when a cancel was requested). Returns those jobs."""
        if not job_types:
            raise InvalidArgumentError("job_types must list at least one registered job type")
        return self._readable_jobs(
            self.call(FAIL_UNREGISTERED, {"p_job_types": list(job_types),
                                          "p_older_than_seconds": older_than_seconds, "p_limit": limit})
        )

    def next_due_in(self, *, job_types: Sequence[str] | None = None) -> float | None:
        """Seconds until the earliest pending job of these types is due (<= 0: now),
        by the database's clock, leaving out jobs a full concurrency limit holds back;
        None when no other job is pending."""
        value = self.call(NEXT_DUE, {"p_job_types": list(job_types) if job_types is not None else None})
        return None if value is None else float(value)

    def purge(
        self,
        *,
        completed_retention: timedelta | None = None,
        failed_retention: timedelta | None = None,
        limit: int | None = None,
    ) -> int:
        """Delete finished jobs past retention; returns how many."""
        return int(
            self.call(
                PURGE,
                {
                    "p_completed_retention": completed_retention,
                    "p_failed_retention": failed_retention,
                    "p_limit": limit,
                },
            )
        )

    def queue_depth(self) -> list[QueueDepth]:
        return [QueueDepth.model_validate(row) for row in self.call(QUEUE_DEPTH, {})]

    def stats_24h(self) -> list[TypeStats]:
        return [TypeStats.model_validate(row) for row in self.call(STATS_24H, {})]

    def wakeup_status(self) -> WakeupStatus:
        """How delayed and retried jobs get started on time (Supabase Cron or nothing),
        and what is wrong with it. One call; health uses it as its database check."""
        return WakeupStatus.model_validate(self.call(WAKEUP_STATUS, {}))

    # -- alerts --------------------------------------------------------------------

    def evaluate_alerts(self, thresholds: Mapping[str, Any]) -> list[AlertNotice]:
        """Open, refresh and resolve alert incidents in SQL; returns the openings and
        resolutions still to be notified, held for this caller for 60 s."""
        rows = self.call(EVALUATE_ALERTS, {"p_thresholds": Json(dict(thresholds))})
        return [AlertNotice.model_validate(row) for row in rows]

    def mark_alert_notified(self, alert_id: UUID, event: AlertEvent, *, delivered: bool) -> bool:
        """Delivered: never sent again. Not delivered: released for the next sweep."""
        return bool(
            self.call(MARK_ALERT_NOTIFIED, {"p_alert_id": alert_id, "p_event": event, "p_delivered": delivered})
        )

    def alerts(self, *, resolved_within: timedelta = timedelta(hours=24), limit: int = 100) -> list[Alert]:
        """Open incidents, then those resolved within `resolved_within`, newest first."""
        rows = self.call(
            ALERTS, {"p_resolved_within_seconds": int(resolved_within.total_seconds()), "p_limit": limit}
        )
        return [Alert.model_validate(row) for row in rows]

    # -- workflows (child jobs, waiting, pause/resume) ------------------------------

    def spawn(
        self,
        job_id: UUID,
        worker: str,
        children: Sequence[Mapping[str, Any]],
        *,
        max_depth: int | None = None,
        max_children: int | None = None,
    ) -> list[EnqueueResult]:
        """Create children of a job this worker holds, idempotently by their `key`
        (one statement, all or nothing; results in input order). Each child is a
        NewJob's JSON plus "key"; the parent's owner and organization are used."""
        if len(children) > MAX_SPAWN_MANY:
            raise InvalidArgumentError(f"at most {MAX_SPAWN_MANY} children per call, got {len(children)}")
        if not children:
            return []
        values = self.call(
            SPAWN,
            {"p_job_id": job_id, "p_worker": worker, "p_children": Json(list(children)),
             "p_max_depth": max_depth, "p_max_children": max_children},
        )
        return [EnqueueResult.model_validate(value) for value in values]

    def wait_children(
        self,
        job_id: UUID,
        worker: str,
        *,
        keys: Sequence[str] | None = None,
        max_failures: int = 0,
        recheck_seconds: float | None = None,
        usage: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """{"state": "done" | "failed", "children": [...]} in spawn order, or
        {"state": "waiting"}: the job is pending again without its lease until its
        last waited-for child finishes (a trigger wakes it)."""
        value = self.call(
            WAIT_CHILDREN,
            {"p_job_id": job_id, "p_worker": worker, "p_keys": list(keys) if keys is not None else None,
             "p_max_failures": max_failures, "p_recheck_seconds": recheck_seconds,
             "p_usage": Json(dict(usage)) if usage else None},
        )
        return dict(value)

    def resolve_waiting(self, *, limit: int = 100) -> int:
        """Wake waiting parents that have nothing left to wait for; returns how many."""
        return int(self.call(RESOLVE_WAITING, {"p_limit": limit}) or 0)

    def recount_parents(self, *, limit: int = 100) -> int:
        """Write the `children` counts (and a waiting parent's progress) that the 0.5 s
        throttle held back, for parents whose next write is due; returns how many."""
        return int(self.call(RECOUNT_PARENTS, {"p_limit": limit}) or 0)

    def children(
        self, job_id: UUID, *, user_id: UUID | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobPage:
        """A job's children, newest first, paginated like `list`."""
        jobs = self._jobs(
            CHILDREN, {"p_job_id": job_id, "p_user_id": user_id, "p_limit": limit, **_page_position(cursor)}
        )
        return JobPage(jobs=jobs, next_cursor=_next_cursor(jobs, limit))

    def pause(self, job_id: UUID, *, user_id: UUID | None = None) -> Job:
        """Pending: paused now. Running: stops at its next step. Unfinished children too."""
        return self._job(PAUSE, {"p_job_id": job_id, "p_user_id": user_id})

    def resume(self, job_id: UUID, *, user_id: UUID | None = None) -> Job:
        """Paused: pending again, due now (children too)."""
        return self._job(RESUME, {"p_job_id": job_id, "p_user_id": user_id})

    def mark_paused(self, job_id: UUID, worker: str, *, usage: Mapping[str, Any] | None = None) -> Job:
        """The worker honoured a pause request: checkpoints kept, no attempt spent."""
        return self._job(PAUSED, {"p_job_id": job_id, "p_worker": worker,
                                  "p_usage": Json(dict(usage)) if usage else None})

    def request_cancel_tree(self, job_id: UUID, *, user_id: UUID | None = None) -> Job:
        """`request_cancel`, plus paused jobs and every unfinished descendant."""
        return self._job(REQUEST_CANCEL_TREE, {"p_job_id": job_id, "p_user_id": user_id})

    def retry_tree(
        self, job_id: UUID, *, user_id: UUID | None = None, max_active: int | None = None,
        daily_budget_usd: float | None = None,
    ) -> Job:
        """`retry`, plus the job's failed or cancelled descendants (completed ones stay)."""
        return self._job(
            RETRY_TREE,
            {"p_job_id": job_id, "p_user_id": user_id, "p_max_active": max_active,
             "p_daily_budget_usd": daily_budget_usd},
        )

    def delete_tree(self, job_id: UUID, *, user_id: UUID | None = None) -> Job:
        """`delete`, refused (JobStateError) while a descendant is unfinished."""
        return self._job(DELETE_TREE, {"p_job_id": job_id, "p_user_id": user_id})

    # -- schedules -----------------------------------------------------------------

    def create_schedule(
        self,
        user_id: UUID,
        *,
        name: str,
        job_type: str,
        input: Mapping[str, Any],  # noqa: A002
        cron: str,
        timezone: str,
        next_run_at: datetime,
        paused: bool = False,
        max_schedules: int | None = None,
    ) -> Schedule:
        """A user's schedule; ActiveJobLimitError when they already have `max_schedules`."""
        rows = self.call(SCHEDULE_CREATE, {
            "p_user_id": user_id, "p_name": name, "p_job_type": job_type, "p_input": Json(dict(input)),
            "p_cron": cron, "p_timezone": timezone, "p_next_run_at": next_run_at, "p_paused": paused,
            "p_max_schedules": max_schedules,
        })
        return Schedule.model_validate(rows[0])

    def upsert_schedule(
        self, *, name: str, run_as: UUID, job_type: str, input: Mapping[str, Any],  # noqa: A002
        cron: str, timezone: str, next_run_at: datetime,
    ) -> list[Schedule]:
        """Declare a deployment schedule by name; returns the row if it was inserted or changed."""
        rows = self.call(SCHEDULE_UPSERT, {
            "p_name": name, "p_run_as": run_as, "p_job_type": job_type, "p_input": Json(dict(input)),
            "p_cron": cron, "p_timezone": timezone, "p_next_run_at": next_run_at,
        })
        return [Schedule.model_validate(row) for row in rows]

    def list_schedules(
        self, *, user_id: UUID | None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Schedule], str | None]:
        """Newest first; user_id None: the deployment's schedules. Returns the page and
        the cursor of the next one (set when the page is full)."""
        rows = self.call(SCHEDULE_LIST, {"p_user_id": user_id, "p_limit": limit, **_page_position(cursor)})
        schedules = [Schedule.model_validate(row) for row in rows]
        return schedules, _next_cursor(schedules, limit)

    def set_schedule_paused(
        self, schedule_id: UUID, *, user_id: UUID | None, paused: bool, next_run_at: datetime | None = None
    ) -> Schedule:
        """Pause or resume (resuming moves next_run_at to `next_run_at`); JobNotFoundError
        for a schedule that is not this user's."""
        rows = self.call(SCHEDULE_SET_PAUSED, {
            "p_id": schedule_id, "p_user_id": user_id, "p_paused": paused, "p_next_run_at": next_run_at,
        })
        return Schedule.model_validate(rows[0])

    def get_schedule(self, schedule_id: UUID, *, user_id: UUID | None) -> Schedule:
        """JobNotFoundError for a schedule that is not this user's (user_id None: the deployment's)."""
        rows = self.call(SCHEDULE_GET, {"p_id": schedule_id, "p_user_id": user_id})
        return Schedule.model_validate(rows[0])

    def delete_schedule(self, schedule_id: UUID, *, user_id: UUID | None) -> Schedule:
        rows = self.call(SCHEDULE_DELETE, {"p_id": schedule_id, "p_user_id": user_id})
        return Schedule.model_validate(rows[0])

    def due_schedules(self, *, limit: int = 100) -> list[tuple[Schedule, datetime]]:
        """Active schedules whose tick has come, each with the database's now."""
        rows = self.call(SCHEDULE_DUE, {"p_limit": limit})
        out: list[tuple[Schedule, datetime]] = []
        for row in rows:
            db_now = row["db_now"]
            out.append((Schedule.model_validate(row["schedule"]),
                        db_now if isinstance(db_now, datetime) else datetime.fromisoformat(db_now)))
        return out

    def fire_schedule(
        self,
        schedule_id: UUID,
        *,
        expected_next: datetime,
        new_next: datetime,
        job: Mapping[str, Any] | None = None,
        skip_error: Mapping[str, Any] | None = None,
    ) -> FireResult:
        """Fire the tick `expected_next` unless another caller did (fired False), moving
        the schedule to `new_next` and enqueueing `job` (enqueue fields) in one transaction."""
        value = self.call(FIRE_SCHEDULE, {
            "p_id": schedule_id, "p_expected_next": expected_next, "p_new_next": new_next,
            "p_job": Json(dict(job)) if job is not None else None,
            "p_skip_error": Json(dict(skip_error)) if skip_error is not None else None,
        })
        return FireResult.model_validate(value)
