"""Built-in job types. Importing this package registers them (pydantic only)."""

from ai_jobs.jobs import ai, countdown, fan_out

__all__ = ["ai", "countdown", "fan_out"]
