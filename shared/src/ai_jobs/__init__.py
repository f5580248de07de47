"""ai-jobs: durable background jobs for Claude calls on Supabase + Vercel.

This top-level module stays light (pydantic only): the HTTP request path
imports it, and must not pay for `anthropic` or `supabase`.
"""

from ai_jobs.errors import (
    ActiveJobLimitError,
    AiJobsError,
    IdempotencyConflictError,
    InvalidArgumentError,
    JobNotFoundError,
    JobStateError,
    LeaseLostError,
    StoreUnavailableError,
)
from ai_jobs.models import EnqueueResult, Job, JobError, JobPage, JobStatus, NewJob

__version__ = "0.1.0"

__all__ = [
    "ActiveJobLimitError",
    "AiJobsError",
    "EnqueueResult",
    "IdempotencyConflictError",
    "InvalidArgumentError",
    "Job",
    "JobError",
    "JobNotFoundError",
    "JobPage",
    "JobStateError",
    "JobStatus",
    "LeaseLostError",
    "NewJob",
    "StoreUnavailableError",
    "__version__",
]
