"""`example.fan_out`: a parent job that spawns example.countdown children and waits
for them without holding a worker (README: Child jobs and workflows). A demo type:
served only with AI_JOBS_DEMO_JOB_TYPES=1 (`ai-jobs dev` sets it)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ai_jobs.context import JobContext
from ai_jobs.registry import job


class FanOutInput(BaseModel):
    children: int = Field(default=5, ge=1, le=50, description="how many example.countdown children")
    steps: int = Field(default=3, ge=1, le=20, description="steps per child")
    step_seconds: float = Field(default=0.5, ge=0, le=5, description="seconds per child step")


class FanOutOutput(BaseModel):
    children: int
    completed: int


@job("example.fan_out", input=FanOutInput, output=FanOutOutput, max_attempts=3, demo=True)
def fan_out(data: FanOutInput, ctx: JobContext) -> FanOutOutput:
    """Spawns example.countdown children, waits for them (no worker held) and counts them."""
    ctx.spawn_many([
        {"job_type": "example.countdown", "key": f"child-{i}",
         "input": {"steps": data.steps, "step_seconds": data.step_seconds}}
        for i in range(1, data.children + 1)
    ])
    done = ctx.wait_for_children(max_failures=data.children)
    return FanOutOutput(children=len(done), completed=sum(1 for c in done if c.ok))
