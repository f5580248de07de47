"""What may reach logs. Job inputs, results and exception messages can hold
prompts and personal data, so logs carry ids, types, codes and stack frames
only, unless AI_JOBS_LOG_SENSITIVE=1. (The job's owner still sees the full
error message on their own row.)"""

from __future__ import annotations

import os
import traceback


def log_sensitive() -> bool:
    return os.environ.get("AI_JOBS_LOG_SENSITIVE", "").lower() in ("1", "true", "yes")


def redacted(text: str) -> str:
    return text if log_sensitive() else f"<redacted, {len(text)} chars; AI_JOBS_LOG_SENSITIVE=1 shows it>"


def describe_exception(exc: BaseException) -> str:
    """The exception's type and stack frames; its message only if sensitive logging is on."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}: {redacted(str(exc))}\nTraceback (most recent call last):\n{frames}"
