"""Job types for tests that run real worker processes (AI_JOBS_JOB_MODULES).
Each step appends to a file, so side effects can be counted across processes."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

from ai_jobs.context import JobContext
from ai_jobs.registry import job


class FileStepsInput(BaseModel):
    path: str
    steps: int = Field(ge=1, le=100)
    step_seconds: float = Field(ge=0, le=30)


class FileStepsOutput(BaseModel):
    steps: int


def _append(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@job("test.file_steps", input=FileStepsInput, output=FileStepsOutput)
def file_steps(data: FileStepsInput, ctx: JobContext) -> FileStepsOutput:
    for i in range(1, data.steps + 1):

        def work(i: int = i) -> int:
            _append(data.path, f"start {i} {os.getpid()}")
            time.sleep(data.step_seconds)
            _append(data.path, f"done {i} {os.getpid()}")
            return i

        ctx.step(f"step-{i}", work)
    return FileStepsOutput(steps=data.steps)
