"""What a handler raises to say how its job failed.

The runner turns these into `ai_jobs_fail_v1` calls: retryable failures go
back to pending (at `retry_at` when the upstream said when), fatal ones fail
the job at once with a message meant for the person who submitted it.
"""

from __future__ import annotations

from datetime import datetime

from ai_jobs.models import JobError


class JobFailure(Exception):
    """Base: a classified failure with a stable code and a human message."""

    retryable: bool = False

    def __init__(self, code: str, message: str, *, retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_at = retry_at

    def to_error(self) -> JobError:
        return JobError(code=self.code, message=self.message[:4000], retryable=self.retryable)


class RetryableJobError(JobFailure):
    """Transient: the queue tries again (backoff, or `retry_at`) until max_attempts."""

    retryable = True


class FatalJobError(JobFailure):
    """Permanent: retrying cannot help; the message says what to fix."""

    retryable = False
