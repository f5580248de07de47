"""Built-in job types. Importing this package registers them (pydantic only)."""

from ai_jobs.jobs import ai, countdown, fan_out, map_fan_out

__all__ = ["ai", "countdown", "fan_out", "map_fan_out"]
