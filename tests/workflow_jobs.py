"""Job types for the workflow tests (child jobs, waiting, sleep, pause). `register`
adds them to a registry; tests.workflow_jobs_global adds them to the global one for
real worker processes (AI_JOBS_JOB_MODULES)."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, Field

from ai_jobs.context import JobContext
from ai_jobs.registry import JobRegistry


class FanOutInput(BaseModel):
    children: int = Field(ge=0, le=2000)
    child_type: str = "test.wf_leaf"
    child_seconds: float = Field(default=0, ge=0, le=30)
    fail_keys: list[str] = Field(default_factory=list)
    max_failures: int = 0
    grandchildren: int = Field(default=0, ge=0, le=100)  # children of each child (test.wf_mid)
    pause_seconds: float = Field(default=0, ge=0, le=30)  # a step before spawning (pause/kill window)
    fixed_path: str | None = None  # failing children stop failing once this file exists


class FanOutOutput(BaseModel):
    results: list[Any]
    errors: list[str]


class LeafInput(BaseModel):
    n: int = 0
    seconds: float = Field(default=0, ge=0, le=30)
    fail: bool = False
    grandchildren: int = Field(default=0, ge=0, le=100)
    fixed_path: str | None = None


class LeafOutput(BaseModel):
    n: int


class SleepInput(BaseModel):
    seconds: float = Field(ge=0, le=100000)
    path: str | None = None


class SleepOutput(BaseModel):
    slept: bool


class StepsInput(BaseModel):
    steps: int = Field(ge=1, le=1000)
    step_seconds: float = Field(default=0, ge=0, le=30)
    path: str | None = None


class StepsOutput(BaseModel):
    steps: int


def _append(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def register(registry: JobRegistry) -> JobRegistry:
    @registry.job("test.wf_parent", input=FanOutInput, output=FanOutOutput, max_attempts=5)
    def parent(data: FanOutInput, ctx: JobContext) -> FanOutOutput:
        if data.pause_seconds:
            ctx.step("before", lambda: time.sleep(data.pause_seconds))
        child_type = "test.wf_mid" if data.grandchildren else data.child_type
        ctx.spawn_many([
            {"job_type": child_type, "key": f"c{i}",
             "input": {"n": i, "seconds": data.child_seconds, "fail": f"c{i}" in data.fail_keys,
                       "grandchildren": data.grandchildren, "fixed_path": data.fixed_path}}
            for i in range(data.children)
        ])
        finished = ctx.wait_for_children(max_failures=data.max_failures)
        return FanOutOutput(
            results=[c.result for c in finished if c.ok],
            errors=[c.key or "" for c in finished if not c.ok],
        )

    @registry.job("test.wf_leaf", input=LeafInput, output=LeafOutput, max_attempts=3)
    def leaf(data: LeafInput, ctx: JobContext) -> LeafOutput:
        if data.seconds:
            ctx.step("work", lambda: time.sleep(data.seconds))
            ctx.progress(50)
        if data.fail and not (data.fixed_path and os.path.exists(data.fixed_path)):
            from ai_jobs.failures import FatalJobError

            raise FatalJobError("leaf_failed", f"leaf {data.n} failed on purpose")
        return LeafOutput(n=data.n)

    @registry.job("test.wf_mid", input=LeafInput, output=LeafOutput, max_attempts=3)
    def mid(data: LeafInput, ctx: JobContext) -> LeafOutput:
        ctx.spawn_many([  # with `fail`, its first child fails
            {"job_type": "test.wf_leaf", "key": f"g{i}",
             "input": {"n": i, "seconds": data.seconds, "fail": data.fail and i == 0,
                       "fixed_path": data.fixed_path}}
            for i in range(data.grandchildren)
        ])
        ctx.wait_for_children()
        return LeafOutput(n=data.n)

    @registry.job("test.wf_spawner", input=LeafInput, output=LeafOutput, max_attempts=1)
    def spawner(data: LeafInput, ctx: JobContext) -> LeafOutput:
        """Spawns one child of its own type per level until refused (depth cap)."""
        ctx.spawn("test.wf_spawner", {"n": data.n + 1}, key="next")
        ctx.wait_for_children()
        return LeafOutput(n=data.n)

    @registry.job("test.wf_sleeper", input=SleepInput, output=SleepOutput, max_attempts=1)
    def sleeper(data: SleepInput, ctx: JobContext) -> SleepOutput:
        ctx.step("before", lambda: _append(data.path, f"before {os.getpid()}"))
        ctx.sleep(data.seconds)
        ctx.step("after", lambda: _append(data.path, f"after {os.getpid()}"))
        return SleepOutput(slept=True)

    @registry.job("test.wf_steps", input=StepsInput, output=StepsOutput, max_attempts=1)
    def steps(data: StepsInput, ctx: JobContext) -> StepsOutput:
        for i in range(data.steps):
            ctx.step(f"s{i}", lambda i=i: (_append(data.path, f"s{i}"), time.sleep(data.step_seconds))[0])
        return StepsOutput(steps=data.steps)

    return registry
