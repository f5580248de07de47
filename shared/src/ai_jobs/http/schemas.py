"""Request and response bodies of the HTTP API (also the OpenAPI components)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ai_jobs.errors import InvalidArgumentError

from ai_jobs.models import JOB_TYPE_PATTERN, Job, JobCursor, JobStatus, WakeupStatus


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100, description="a registered job type, see GET /api/job-types")
    input: dict[str, Any] = Field(default_factory=dict, description="validated against the type's input schema")
    priority: int = Field(default=0, ge=-1000, le=1000, description="higher runs first")
    run_at: AwareDatetime | None = Field(default=None, description="not before this time (ISO 8601 with offset)")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=255, description="or the Idempotency-Key header"
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="yours to keep with the job")


class ListJobsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    type: str | None = Field(default=None, pattern=JOB_TYPE_PATTERN, max_length=100)
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
