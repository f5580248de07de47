"""Pydantic models at the queue's boundary: what a job is, and what enqueue takes."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ai_jobs.errors import InvalidArgumentError

JOB_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
# e.g. "decision:123": letters, digits and . _ : / = @ + -, 1 to 200 characters
CONCURRENCY_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/=@+-]{0,199}$"
MAX_CONCURRENCY_LIMIT = 10000
MAX_COST_USD = 100_000  # the range of the cost columns (numeric(12,6))


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # stopped by its owner (POST /api/jobs/{id}/pause); never claimed

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobError(BaseModel):
    """Why a job (or its last attempt) failed. `retryable` says if the queue will try again."""

    model_config = ConfigDict(extra="allow", frozen=True)

    code: str = Field(min_length=1, max_length=100)
    message: str = Field(max_length=4000)
    retryable: bool


class Job(BaseModel):
    """One row of public.ai_jobs, as both store adapters return it."""

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
    locked_by: str | None = None
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
    # Concurrency limits stored at enqueue (None: no limit) and why a pending job waits.
    org_id: str | None = None
    concurrency_key: str | None = None
    user_limit: int | None = None
    org_limit: int | None = None
    key_limit: int | None = None
    wait_reason: str | None = None
    # Claude spend (set at create for job types that declare their Claude calls): the
    # estimate, and the cap the job's recorded cost may not pass (None: none stored).
    cost_estimate_usd: float | None = None
    cost_cap_usd: float | None = None
    # Live Claude output: the streaming call's text so far {id, seq, format, text},
    # written with the coalesced progress writes (ai_jobs_progress_v2).
    stream: dict[str, Any] | None = None
    # Workflows: the key and place this child was spawned under, its nesting depth
    # (0 = root), what a waiting parent waits for, its children's counts, and a pause
    # request a running job honours at its next step.
    spawn_key: str | None = None
    spawn_seq: int | None = None
    depth: int = 0
    waiting: dict[str, Any] | None = None
    children: dict[str, Any] | None = None
    pause_requested_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class NewJob(BaseModel):
    """Everything enqueue needs. Input is validated against the job type before this point."""

    model_config = ConfigDict(extra="forbid")

    user_id: UUID
    job_type: str = Field(pattern=JOB_TYPE_PATTERN, max_length=100)
    input: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-1000, le=1000)
    run_at: datetime | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    parent_id: UUID | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    max_attempts: int = Field(default=3, ge=1, le=100)
    max_active: int | None = Field(default=None, ge=1, description="per-user cap on unfinished (pending, running or paused) jobs")
    # Checked by the claim: the job starts only while fewer than N of its user's
    # (organization's, concurrency key's) jobs run. None: no limit.
    org_id: str | None = Field(default=None, min_length=1, max_length=200)
    concurrency_key: str | None = Field(default=None, pattern=CONCURRENCY_KEY_PATTERN)
    user_limit: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY_LIMIT)
    org_limit: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY_LIMIT)
    key_limit: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY_LIMIT)
    # Claude spend: the estimate and cap stored on the row, and the owner's rolling 24 h
    # budget the cap is reserved against (checked by the enqueue; None: no budget).
    cost_estimate_usd: float | None = Field(default=None, ge=0, le=MAX_COST_USD)
    cost_cap_usd: float | None = Field(default=None, ge=0, le=MAX_COST_USD)
    daily_budget_usd: float | None = Field(default=None, ge=0, le=MAX_COST_USD)


class EnqueueResult(BaseModel):
    """The job, and whether this call created it (False: an idempotent repeat)."""

    job: Job
    created: bool


class JobCursor(BaseModel):
    """Keyset position in a newest-first listing; opaque to API clients."""

    created_at: datetime
    id: UUID

    def encode(self) -> str:
        raw = json.dumps({"c": self.created_at.isoformat(), "i": str(self.id)}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> JobCursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            return cls(created_at=data["c"], id=data["i"])
        except (binascii.Error, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise InvalidArgumentError(f"invalid cursor {token[:40]!r}") from exc


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = None


class QueueDepth(BaseModel):
    job_type: str
    status: JobStatus
    jobs: int
    oldest_run_at: datetime | None = None


class TypeStats(BaseModel):
    """Last 24 h for one job type. Run time is first start to finish, across invocations."""

    job_type: str
    completed: int
    failed: int
    cancelled: int
    failure_rate: float | None = None
    p50_run_seconds: float | None = None
    p95_run_seconds: float | None = None


class WakeupRun(BaseModel):
    """One finished run of the database's wake-up job, as pg_cron recorded it."""

    status: str = Field(description="succeeded or failed")
    message: str | None = Field(default=None, description="pg_cron's return message (the error, when failed)")
    start_time: datetime | None = None
    end_time: datetime | None = None


class WakeupStatus(BaseModel):
    """Who starts delayed and retried jobs on time (ai_jobs_wakeup_status_v2)."""

    mode: Literal["pg_cron", "none"] = Field(
        description="pg_cron: Supabase Cron wakes the app while work is due; none: no database wake-up"
    )
    schedule: str | None = Field(default=None, description="the pg_cron schedule, e.g. '5 seconds' or '* * * * *'")
    last_run: WakeupRun | None = Field(default=None, description="the last finished run, if pg_cron recorded one")
    problem: str | None = Field(default=None, description="why wake-ups are not working, and what to run to fix it")


class RateAcquisition(BaseModel):
    """ai_jobs_rate_acquire_v1's answer: a reservation for the call, or how long
    until the shared per-minute window has room for it (and which limit is full)."""

    reservation: UUID | None = None
    wait_seconds: float | None = None
    bucket: str | None = None
    limit: Literal["rpm", "itpm", "otpm"] | None = None
    used: int | None = None
    max: int | None = None
