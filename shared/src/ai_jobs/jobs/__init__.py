"""Built-in job types. Importing this package registers them (pydantic only)."""

from ai_jobs.jobs import ai, countdown

__all__ = ["ai", "countdown"]
