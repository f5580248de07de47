"""RFC 9457 problem details: every error the API returns, and the mapping
from queue errors to HTTP statuses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ai_jobs.claude.spend import BUDGET_RETRY_AFTER_SECONDS, SpendLimitError
from ai_jobs.errors import (
    ActiveJobLimitError,
    AiJobsError,
    BudgetExceededError,
    IdempotencyConflictError,
    InvalidArgumentError,
    JobNotFoundError,
    JobStateError,
    LeaseLostError,
    StoreUnavailableError,
)
from ai_jobs.registry import InputValidationError, UnknownJobTypeError

PROBLEM_JSON = "application/problem+json"
# `type` of every problem: this prefix + its `code` (a URN: nothing to dereference).
PROBLEM_TYPE_PREFIX = "urn:ai-jobs:problem:"


class Problem(Exception):
    """An error response: status, stable code, human title and detail, optional field errors."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        # RFC 9457 extension members (e.g. the figures of a spend limit), next to the standard ones.
        self.extensions = {k: v for k, v in (extensions or {}).items() if v is not None}
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or TITLES.get(status, "Error")
        self.errors = list(errors) if errors else None
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors:
            body["errors"] = self.errors
        for key, value in self.extensions.items():
            body.setdefault(key, value)
        return body


TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

ACTIVE_LIMIT_RETRY_AFTER_SECONDS = 10
# Request header limits (431 header_too_large), checked before anything else.
MAX_AUTHORIZATION_BYTES = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024


def field_errors(errors: Sequence[Mapping[str, Any]], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """pydantic errors as `{field, message, type}` with a dotted field path."""
    out = []
    for error in errors:
        loc = [*prefix, *error.get("loc", ())]
        out.append(
            {
                "field": ".".join(str(part) for part in loc) or "(body)",
                "message": error.get("msg", "invalid"),
                "type": error.get("type", "value_error"),
            }
        )
    return out


def problem_from_error(exc: AiJobsError) -> Problem:
    """Queue errors to statuses. Not-found never says whether the job exists."""
    if isinstance(exc, InputValidationError):
        return Problem(422, exc.code, str(exc), errors=field_errors(exc.errors, ("input",)))
    if isinstance(exc, UnknownJobTypeError):
        return Problem(422, exc.code, exc.message, errors=[{"field": "type", "message": exc.message, "type": exc.code}])
    if isinstance(exc, JobNotFoundError):
        return Problem(404, exc.code, "job not found")
    if isinstance(exc, JobStateError):
        return Problem(409, exc.code, exc.message)
    if isinstance(exc, ActiveJobLimitError):
        return Problem(
            429, exc.code, f"{exc.message}; {exc.hint or ''}".rstrip("; "),
            headers={"Retry-After": str(ACTIVE_LIMIT_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, SpendLimitError):
        errors = [{"field": exc.field, "message": exc.message, "type": exc.code}] if exc.field else None
        return Problem(422, exc.code, exc.message, errors=errors, extensions=exc.facts)
    if isinstance(exc, BudgetExceededError):
        retry_after = exc.retry_after_seconds or BUDGET_RETRY_AFTER_SECONDS
        facts = {**exc.facts, "daily_budget_usd": exc.facts.get("budget_usd"), "retry_after_seconds": retry_after}
        facts.pop("budget_usd", None)
        return Problem(
            429, exc.code, f"{exc.message}; {exc.hint or ''}".rstrip("; "),
            headers={"Retry-After": str(retry_after)}, extensions=facts,
        )
    if isinstance(exc, IdempotencyConflictError):
        return Problem(422, exc.code, exc.message)
    if isinstance(exc, InvalidArgumentError):
        return Problem(422, exc.code, exc.message)
    if isinstance(exc, LeaseLostError):
        return Problem(409, exc.code, exc.message)
    if isinstance(exc, StoreUnavailableError):
        return Problem(503, exc.code, "the job store is unavailable; try again shortly", headers={"Retry-After": "5"})
    return Problem(500, exc.code, exc.message)
