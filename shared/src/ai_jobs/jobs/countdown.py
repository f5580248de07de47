"""`example.countdown`: a job with steps and no API call, for the quickstart,
demos, tests and benchmarks. A demo type: served only with
AI_JOBS_DEMO_JOB_TYPES=1 (`ai-jobs dev` sets it), and at most 10 minutes of sleep."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pydantic import BaseModel, Field, model_validator

from ai_jobs.context import JobContext
from ai_jobs.failures import FatalJobError, RetryableJobError
from ai_jobs.registry import job


MAX_TOTAL_SLEEP_SECONDS = 600


class CountdownInput(BaseModel):
    steps: int = Field(default=5, ge=1, le=1000, description="how many checkpointed steps")
    step_seconds: float = Field(default=1.0, ge=0, le=60, description="how long each step sleeps")
    fail_at_step: int | None = Field(default=None, ge=1, description="fail when this step runs")
    fail_retryable: bool = Field(default=False, description="whether that failure is retried")

    @model_validator(mode="after")
    def _bounded_sleep(self) -> CountdownInput:
        """A worker sleeping for a demo is a worker not running real jobs."""
        if self.steps * self.step_seconds > MAX_TOTAL_SLEEP_SECONDS:
            raise ValueError(
                f"steps * step_seconds is {self.steps * self.step_seconds:g} s; "
                f"the most a countdown may sleep is {MAX_TOTAL_SLEEP_SECONDS} s"
            )
        return self


class CountdownOutput(BaseModel):
    steps_completed: int
    finished_at: datetime


@job("example.countdown", input=CountdownInput, output=CountdownOutput, max_attempts=3, demo=True)
def countdown(data: CountdownInput, ctx: JobContext) -> CountdownOutput:
    """Counts through the given number of steps, sleeping step_seconds in each and checkpointing every step."""

    def tick(i: int) -> dict[str, object]:
        if data.fail_at_step == i:
            cls = RetryableJobError if data.fail_retryable else FatalJobError
            raise cls("countdown_failure", f"failed at step {i} as requested (fail_at_step)")
        time.sleep(data.step_seconds)
        return {"step": i, "at": datetime.now(UTC).isoformat()}

    for i in range(1, data.steps + 1):
        ctx.progress((i - 1) * 100 / data.steps, f"Step {i} of {data.steps}")
        ctx.step(f"step-{i}", lambda i=i: tick(i), estimate=data.step_seconds)
    return CountdownOutput(steps_completed=data.steps, finished_at=datetime.now(UTC))
