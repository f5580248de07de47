"""Classify Anthropic SDK errors as retryable or fatal, with a message that says what to do."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from ai_jobs.failures import FatalJobError, JobFailure, RetryableJobError

MAX_RETRY_AFTER = timedelta(hours=24)

# Mid-stream SSE `error` events arrive with HTTP 200; these types are transient.
TRANSIENT_STREAM_ERRORS = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}

FATAL_GUIDANCE = {
    400: ("claude_bad_request", "Claude rejected the request: {msg}. Check the job input (prompt size, max_tokens, schema)."),
    401: ("claude_auth", "Claude rejected ANTHROPIC_API_KEY: {msg}. Set a valid key for the worker and retry."),
    402: ("claude_billing", "Anthropic billing problem: {msg}. Fix billing in the Anthropic Console, then retry."),
    403: ("claude_forbidden", "This API key may not use this model or feature: {msg}."),
    404: ("claude_not_found", "Claude could not find what was asked for: {msg}. Check AI_JOBS_MODEL or the job's model."),
    413: ("claude_too_large", "The request is too large for Claude: {msg}. Send less text per job or per batch."),
    422: ("claude_unprocessable", "Claude could not process the request: {msg}."),
}


def retry_at_from_headers(headers: Mapping[str, str], now: datetime | None = None) -> datetime | None:
    """`retry-after-ms` or `retry-after` (seconds or an HTTP date) as an absolute time, capped at 24 h."""
    now = now or datetime.now(UTC)
    delay: timedelta | None = None
    raw_ms = headers.get("retry-after-ms")
    raw = headers.get("retry-after")
    try:
        if raw_ms is not None:
            delay = timedelta(milliseconds=float(raw_ms))
        elif raw is not None:
            try:
                delay = timedelta(seconds=float(raw))
            except ValueError:
                delay = parsedate_to_datetime(raw) - now
    except (ValueError, TypeError, OverflowError):
        return None
    if delay is None:
        return None
    delay = max(timedelta(0), min(delay, MAX_RETRY_AFTER))
    return now + delay


RATE_LIMIT_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")


def _rfc3339(raw: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def retry_at_from_rate_limit_reset(headers: Mapping[str, str], now: datetime | None = None) -> datetime | None:
    """For a 429 without `retry-after`: when the exhausted limit refills, from the
    `anthropic-ratelimit-<kind>-reset` headers (RFC 3339). The limits whose `-remaining`
    is 0 decide; when none says so, the latest reset. Capped at 24 h."""
    now = now or datetime.now(UTC)
    resets: dict[str, datetime] = {}
    for kind in RATE_LIMIT_KINDS:
        raw = headers.get(f"anthropic-ratelimit-{kind}-reset")
        at = _rfc3339(raw) if raw else None
        if at is not None:
            resets[kind] = at
    if not resets:
        return None
    exhausted = [at for kind, at in resets.items()
                 if (headers.get(f"anthropic-ratelimit-{kind}-remaining") or "").strip() == "0"]
    at = max(exhausted or resets.values())
    return now + max(timedelta(0), min(at - now, MAX_RETRY_AFTER))


def _should_retry(headers: Mapping[str, str]) -> bool | None:
    """The API's own verdict (`x-should-retry`, which the SDK follows first), if it gave one."""
    value = (headers.get("x-should-retry") or "").strip().lower()
    return True if value == "true" else False if value == "false" else None


def classify(exc: Exception) -> JobFailure:
    import anthropic
    import httpx2

    # Raised mid-stream, httpx2's own transport errors reach us unwrapped by the SDK.
    if isinstance(exc, httpx2.TimeoutException):
        return RetryableJobError("claude_timeout", "Claude stopped sending (read timeout); the job will be retried.")
    if isinstance(exc, httpx2.TransportError):
        return RetryableJobError(
            "claude_stream_interrupted", "The connection to Claude was cut mid-reply; the job will be retried."
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return RetryableJobError("claude_timeout", "Claude did not answer in time; the job will be retried.")
    if isinstance(exc, anthropic.APIConnectionError):
        return RetryableJobError("claude_unreachable", f"Could not reach the Anthropic API: {exc}")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = exc.type or ""
        msg = exc.api_message or str(exc)
        if status == 200:  # an error event in the middle of a stream
            if kind in TRANSIENT_STREAM_ERRORS:
                return RetryableJobError(f"claude_{kind}", f"Claude stream interrupted ({kind}): {msg}")
            return FatalJobError(f"claude_{kind or 'stream_error'}", f"Claude stream failed ({kind}): {msg}")
        if status == 429 and "spend_limit" in (exc.error_code or ""):
            return FatalJobError(
                "claude_spend_limit",
                f"The Anthropic spend limit is reached ({exc.error_code}): {msg}. Raise the limit in the "
                "Anthropic Console, then retry the job.",
            )
        headers = exc.response.headers
        verdict = _should_retry(headers)
        if verdict is True or (verdict is None and (status in (408, 409, 429) or status >= 500)):
            code = {408: "claude_timeout", 409: "claude_conflict", 429: "claude_rate_limited", 529: "claude_overloaded"}
            retry_at = retry_at_from_headers(headers)
            if retry_at is None and status == 429:
                retry_at = retry_at_from_rate_limit_reset(headers)
            return RetryableJobError(
                code.get(status, "claude_server_error" if status >= 500 else f"claude_http_{status}"),
                f"Claude answered {status} ({kind or 'error'}): {msg}",
                retry_at=retry_at,
            )
        code, template = FATAL_GUIDANCE.get(status, (f"claude_http_{status}", "Claude answered {status}: {msg}"))
        if verdict is False and code == f"claude_http_{status}":
            template = "Claude answered {status} and asked not to retry (x-should-retry: false): {msg}"
        return FatalJobError(code, template.format(msg=msg, status=status))
    if isinstance(exc, anthropic.AnthropicError):
        return FatalJobError("claude_client_error", f"Anthropic client error: {exc}")
    return RetryableJobError("handler_error", f"{type(exc).__name__}: {exc}")
