"""Typed errors for everything the queue can refuse.

The SQL API raises its own SQLSTATEs (AJ001-AJ005, see the api migration);
both store adapters turn them into these classes, so callers never parse
database messages.
"""

from __future__ import annotations

import json
from typing import Any


class AiJobsError(Exception):
    """Base class. `code` is stable and safe to show to API clients."""

    code = "ai_jobs_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ActiveJobLimitError(AiJobsError):
    """The owner already has the maximum number of unfinished (pending, running or paused) jobs."""

    code = "active_job_limit"


class JobNotFoundError(AiJobsError):
    """No such job, or it belongs to someone else (never say which)."""

    code = "job_not_found"


class JobStateError(AiJobsError):
    """The job's status forbids the operation (e.g. cancelling a completed job)."""

    code = "invalid_state"


class LeaseLostError(AiJobsError):
    """The worker no longer holds the job: its lease expired or it finished elsewhere."""

    code = "lease_lost"


class IdempotencyConflictError(AiJobsError):
    """An idempotency key was reused for a request with different parameters."""

    code = "idempotency_conflict"


class InvalidArgumentError(AiJobsError):
    """The database rejected a value (bad range, shape or reference)."""

    code = "invalid_argument"


class BudgetExceededError(AiJobsError):
    """The owner's rolling 24 h Claude budget has no room for this job's cap (AJ006).
    `facts` come from the error's DETAIL (JSON): budget_usd, spent_usd, reserved_usd,
    job_cap_usd, retry_after_seconds (null: active jobs hold the budget)."""

    code = "budget_exceeded"

    def __init__(self, message: str, *, hint: str | None = None, detail: Any = None) -> None:
        super().__init__(message, hint=hint)
        facts: Any = detail
        if isinstance(detail, (str, bytes)):
            try:
                facts = json.loads(detail)
            except ValueError:
                facts = None
        self.facts: dict[str, Any] = facts if isinstance(facts, dict) else {}

    @property
    def retry_after_seconds(self) -> int | None:
        value = self.facts.get("retry_after_seconds")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


class JobTypesUnavailableError(AiJobsError):
    """The job types' modules (built-in or AI_JOBS_JOB_MODULES) failed to import:
    a deployment error, reported on the request that needed them (500)."""

    code = "job_types_unavailable"


class StoreUnavailableError(AiJobsError):
    """The database or Supabase could not be reached, or failed unexpectedly."""

    code = "store_unavailable"


_BY_SQLSTATE: dict[str, type[AiJobsError]] = {
    "AJ001": ActiveJobLimitError,
    "AJ002": JobNotFoundError,
    "AJ003": JobStateError,
    "AJ004": LeaseLostError,
    "AJ005": IdempotencyConflictError,
    "AJ006": BudgetExceededError,
    "22023": InvalidArgumentError,  # invalid_parameter_value
    "22P02": InvalidArgumentError,  # invalid_text_representation (e.g. a bad uuid)
    "22P05": InvalidArgumentError,  # untranslatable_character (\u0000 in jsonb)
    "22021": InvalidArgumentError,  # character_not_in_repertoire (NUL in text)
    "22007": InvalidArgumentError,  # invalid_datetime_format
    "22008": InvalidArgumentError,  # datetime_field_overflow
    "22003": InvalidArgumentError,  # numeric_value_out_of_range
    "23502": InvalidArgumentError,  # not_null_violation
    "23503": InvalidArgumentError,  # foreign_key_violation (unknown user)
    "23514": InvalidArgumentError,  # check_violation
}


def error_from_sqlstate(
    sqlstate: str | None, message: str, hint: str | None = None, detail: Any = None
) -> AiJobsError:
    """Map a database error to the matching typed exception (`detail`: the error's
    DETAIL, read by the errors that carry figures in it)."""
    cls = _BY_SQLSTATE.get(sqlstate or "", StoreUnavailableError)
    if cls is StoreUnavailableError:
        message = f"database error {sqlstate or '?'}: {message}"
    if cls is BudgetExceededError:
        return BudgetExceededError(message, hint=hint, detail=detail)
    return cls(message, hint=hint)
