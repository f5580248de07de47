"""`bench.noop`: a job that does nothing, for throughput benchmarks
(AI_JOBS_JOB_MODULES=bench.noop_jobs, with AI_JOBS_DEMO_JOB_TYPES=1)."""

from __future__ import annotations

from pydantic import BaseModel

from ai_jobs.context import JobContext
from ai_jobs.registry import job


class NoopInput(BaseModel):
    n: int = 0


class NoopOutput(BaseModel):
    n: int


@job("bench.noop", input=NoopInput, output=NoopOutput, max_attempts=3, demo=True)
def noop(data: NoopInput, ctx: JobContext) -> NoopOutput:
    return NoopOutput(n=data.n)
