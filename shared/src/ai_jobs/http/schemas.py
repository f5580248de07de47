"""Request and response bodies of the HTTP API (also the OpenAPI components)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ai_jobs.errors import InvalidArgumentError

from ai_jobs.models import (
    CONCURRENCY_KEY_PATTERN,
    JOB_TYPE_PATTERN,
    JobCursor,
    JobError,
    JobStatus,
    WakeupStatus,
)
from ai_jobs.models import Job as StoredJob

# How far run_at may be from now (the database checks the same with its own clock).
RUN_AT_PAST = timedelta(minutes=1)
RUN_AT_FUTURE = timedelta(days=365)
WAIT_REASONS = "user_limit, org_limit or key_limit"


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100, description="a registered job type, see GET /api/job-types")
    input: dict[str, Any] = Field(default_factory=dict, description="validated against the type's input schema")
    priority: int = Field(
        default=0, ge=-1000, json_schema_extra={"maximum": 0},
        description="0 or lower, added to the job type's priority: lower runs after your other jobs and "
                    "after other users' jobs of the same type priority; above 0 is refused (422)",
    )
    run_at: AwareDatetime | None = Field(
        default=None,
        description="not before this time (ISO 8601 with offset); at most 1 minute ago and 1 year (365 days) ahead",
    )
    concurrency_key: str | None = Field(
        default=None, max_length=200, pattern=CONCURRENCY_KEY_PATTERN,
        description="e.g. decision:123: at most the type's key limit (default 2) of the jobs sharing it run at once; "
                    "shared within your organization when your token has one, else yours alone",
    )
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=255, description="or the Idempotency-Key header"
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="yours to keep with the job")

    @field_validator("priority")
    @classmethod
    def _not_above_default(cls, priority: int) -> int:
        """Priority above the default would let one user jump everyone's queue."""
        if priority > 0:
            raise ValueError("priority above 0 is set by the job type, not by a request; send 0 or lower")
        return priority

    @field_validator("run_at")
    @classmethod
    def _within_range(cls, run_at: datetime | None) -> datetime | None:
        """Far-future or edge-of-range times would sit in the queue for ever (or break date arithmetic)."""
        if run_at is not None:
            now = datetime.now(UTC)
            if not now - RUN_AT_PAST <= run_at <= now + RUN_AT_FUTURE:
                raise ValueError("run_at must be between 1 minute ago and 1 year (365 days) from now")
        return run_at


class Job(BaseModel):
    """A job as its owner sees it (API responses; RLS reads return the same columns):
    every column of the row except locked_by, which names worker hosts."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    job_type: str
    status: JobStatus
    priority: int
    input: dict[str, Any]
    result: Any | None = None
    error: JobError | None = None
    progress: int
    progress_message: str | None = None
    checkpoints: dict[str, Any]
    attempts: int
    max_attempts: int
    run_at: datetime
    lease_expires_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    idempotency_key: str | None = None
    parent_id: UUID | None = None
    metadata: dict[str, Any]
    usage: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    org_id: str | None = Field(default=None, description="your organization (from your access token) when created")
    concurrency_key: str | None = None
    user_limit: int | None = Field(default=None, description="starts only while fewer of your jobs run; null: no limit")
    org_limit: int | None = Field(default=None, description="likewise for your organization's jobs")
    key_limit: int | None = Field(default=None, description="likewise for jobs with the same concurrency_key")
    wait_reason: str | None = Field(
        default=None,
        description=f"why a pending job has not started yet: {WAIT_REASONS} (that concurrency limit is full; "
                    "it starts when a slot frees), or a reason the worker gave when it put the job back to wait "
                    "(e.g. rate_limited; sleeping: ctx.sleep; waiting_for_children: it waits for its child jobs, "
                    "the last one to finish wakes it); paused for a paused job; null otherwise",
    )
    cost_estimate_usd: float | None = Field(
        default=None,
        description="Claude cost estimated at create (input at 3 bytes per token, every call using all of "
                    "max_tokens); null for job types that make no Claude calls",
    )
    cost_cap_usd: float | None = Field(
        default=None,
        description="the job stops (error budget_exceeded) rather than start a Claude call that could take its "
                    "recorded cost (usage.cost_usd) over this; reserved against your daily budget while active",
    )
    stream: dict[str, Any] | None = Field(
        default=None,
        description="live output of the Claude call that is streaming (or streamed last): {id (new per call), seq, "
                    "format (text|json), text (the text so far)}, updated with the progress writes; live deltas "
                    "arrive on the private Realtime Broadcast topic ai-jobs-live:<id>",
    )

    spawn_key: str | None = Field(default=None, description="a child job: the key its parent spawned it under")
    spawn_seq: int | None = Field(default=None, description="a child job: its place in its parent's spawn order")
    depth: int = Field(default=0, description="0 for a job you created, 1 for its children, 2 for theirs")
    waiting: dict[str, Any] | None = Field(
        default=None, description="while wait_reason is waiting_for_children: {keys (null: all children), max_failures}")
    children: dict[str, Any] | None = Field(
        default=None, description="a parent's children: {total, done, failed, active, at}, updated as they finish "
                                  "(at most every 0.5 s, always when the last one does); null: none spawned")
    pause_requested_at: datetime | None = Field(
        default=None, description="a running job asked to pause: it stops at its next step and becomes paused")

    @classmethod
    def of(cls, job: StoredJob) -> Job:
        """The owner's view of a stored row (already validated: no second validation)."""
        return cls.model_construct(**{name: getattr(job, name) for name in cls.model_fields})


class PageQuery(BaseModel):
    """?limit=&cursor= of every paginated list (jobs, a job's children, schedules):
    keyset cursors as next_cursor gave them, checked before any query runs."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=500)

    @field_validator("cursor")
    @classmethod
    def _cursor_decodes(cls, cursor: str | None) -> str | None:
        if cursor is not None:
            try:
                JobCursor.decode(cursor)
            except InvalidArgumentError:
                raise ValueError("not a cursor returned by this API (use next_cursor as given)") from None
        return cursor


def page_parameters() -> list[dict[str, Any]]:
    """PageQuery's fields as OpenAPI query parameters: one definition for every
    paginated list's entry in the document (built on its first request)."""
    return [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
        {"name": "cursor", "in": "query", "description": "next_cursor of the previous page, as given",
         "schema": {"type": "string", "maxLength": 500}},
    ]


class ListJobsQuery(PageQuery):
    status: JobStatus | None = None
    type: str | None = Field(default=None, pattern=JOB_TYPE_PATTERN, max_length=100)


class JobList(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page")


class JobTypeInfo(BaseModel):
    type: str
    description: str
    max_attempts: int
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


class JobTypeList(BaseModel):
    job_types: list[JobTypeInfo]


class WorkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: UUID | None = None


class WorkOutcome(BaseModel):
    job_id: UUID
    job_type: str
    outcome: str
    error_code: str | None = None


class WorkResult(BaseModel):
    worker: str
    outcomes: list[WorkOutcome]


class Health(BaseModel):
    status: str = Field(description="ok, or degraded (HTTP 503) when the database or the wake-up has a problem")
    version: str
    store: str
    database: str = Field(description="ok or unavailable")
    wakeups: WakeupStatus | None = Field(
        default=None, description="how delayed and retried jobs get started on time; null when the database is unavailable"
    )
    detail: str | None = Field(default=None, description="a short reason when status is degraded")


class ProblemBody(BaseModel):
    """application/problem+json (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None
    # Extension members of the spend-control problems (422 model_not_allowed,
    # max_tokens_too_large, too_many_calls, job_cost_too_high; 429 budget_exceeded).
    allowed_models: list[str] | None = Field(default=None, description="model_not_allowed: the models you may use")
    max_tokens_cap: int | None = Field(default=None, description="max_tokens_too_large: the job type's cap")
    calls: int | None = Field(default=None, description="too_many_calls: the Claude calls the job would make")
    max_calls: int | None = Field(default=None, description="too_many_calls: the most allowed per job")
    estimated_cost_usd: float | None = Field(default=None, description="job_cost_too_high: the job's estimate")
    max_job_cost_usd: float | None = Field(default=None, description="job_cost_too_high: the per-job cap")
    daily_budget_usd: float | None = Field(
        default=None, description="budget_exceeded (and job_cost_too_high): your rolling 24 h Claude budget")
    spent_usd: float | None = Field(default=None, description="budget_exceeded: Claude cost recorded in the last 24 h")
    reserved_usd: float | None = Field(
        default=None, description="budget_exceeded: what your pending and running jobs may still spend (their caps)")
    job_cap_usd: float | None = Field(default=None, description="budget_exceeded: what this job would reserve")
    retry_after_seconds: int | None = Field(
        default=None, description="budget_exceeded: when enough recorded spend leaves the 24 h window (as Retry-After)")
