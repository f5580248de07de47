"""Registers tests.workflow_jobs' types in the global registry (for worker processes)."""

from ai_jobs.registry import registry
from tests.workflow_jobs import register

register(registry)
