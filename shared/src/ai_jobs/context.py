"""JobContext: what a handler gets besides its input.

It turns a plain function into a durable one: `step()` results are
checkpointed on the job row and never recomputed, progress writes are
coalesced, the runner's heartbeat keeps the lease while a long call runs, cancellation
is cooperative, and a deadline makes the job continue in a new invocation
instead of being killed mid-step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from ai_jobs.errors import LeaseLostError
from ai_jobs.models import Job
from ai_jobs.store.base import JobStore

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class JobCancelled(Exception):
    """Raised inside a handler at its next step or progress call after a cancel request."""


class ContinuationNeeded(Exception):
    """Raised when the invocation's remaining budget cannot fit another step."""


class Deferred(Exception):
    """Raised when the job has to wait (a shared rate limit is full): the runner puts
    it back to pending `delay_seconds` from now without spending an attempt or
    recording an error; completed steps stay. `message` tells the owner why."""

    def __init__(self, delay_seconds: float, *, reason: str, message: str) -> None:
        super().__init__(message)
        self.delay_seconds = max(0.0, delay_seconds)
        self.reason = reason
        self.message = message


def add_usage(total: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Sum numbers key by key; other values (model name) take the newest. None never
    overwrites: an unpriced call's `cost_usd: None` leaves the sum of the priced ones,
    and its `unpriced_requests`/`cost_complete: false` say the sum is partial (the SQL
    merge, ai_jobs_usage_add, treats a JSON null as a value and would drop the sum)."""
    for key, value in delta.items():
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(total.get(key, 0), (int, float)):
            total[key] = total.get(key, 0) + value
        else:
            total[key] = value


def _cost(usage: Mapping[str, Any]) -> float:
    value = usage.get("cost_usd")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class JobContext:
    def __init__(
        self,
        job: Job,
        store: JobStore,
        worker: str,
        *,
        deadline: float | None = None,
        lease_seconds: int = 30,
        progress_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        stopping: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.store = store
        self.worker = worker
        self.deadline = deadline
        self.lease_seconds = lease_seconds
        self.progress_interval = progress_interval
        self._clock = clock
        self._stopping = stopping or threading.Event()
        self.checkpoints: dict[str, Any] = dict(job.checkpoints)
        self._usage: dict[str, Any] = {}
        # Claude cost recorded on the job (all attempts) plus what this invocation added:
        # the spend guard compares it with the job's cap before each call.
        self._spent_usd = _cost(job.usage)
        self._cancel_requested = job.cancel_requested_at is not None
        self._lease_lost = threading.Event()
        self._lock = threading.Lock()
        self._pending_progress: tuple[int, str | None] | None = None
        self._last_progress_write = float("-inf")
        self._longest_step = 0.0
        self._steps_run = 0
        self.progress_writes = 0

    # -- state from the row -------------------------------------------------------

    def observe(self, row: Job) -> None:
        """Take in the latest row (heartbeat, progress, checkpoint): it carries cancel requests."""
        if row.cancel_requested_at is not None:
            self._cancel_requested = True

    def mark_lease_lost(self) -> None:
        """Another worker owns the job now; stop at the next step without writing."""
        self._lease_lost.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def check_cancelled(self) -> None:
        """Stop here if the lease is gone or a cancel was requested."""
        if self._lease_lost.is_set():
            raise LeaseLostError(f"job {self.job.id} lease lost")
        if self._cancel_requested:
            raise JobCancelled(str(self.job.id))

    def remaining(self) -> float | None:
        """Seconds left in this invocation's budget (None: unlimited)."""
        return None if self.deadline is None else self.deadline - self._clock()

    @property
    def steps_run(self) -> int:
        """Steps run (not loaded from a checkpoint) in this invocation: once one has,
        a new invocation would give the job more time than is left in this one."""
        return self._steps_run

    def wait(self, seconds: float) -> bool:
        """Sleep in place (a short rate-limit wait), checking for a cancel request
        every half second. False, early, when the worker is shutting down."""
        end = time.monotonic() + max(0.0, seconds)
        while (left := end - time.monotonic()) > 0:
            if self._stopping.wait(min(left, 0.5)):
                return False
            self.check_cancelled()
        return not self._stopping.is_set()

    # -- usage ----------------------------------------------------------------------

    def add_usage(self, usage: Mapping[str, Any]) -> None:
        """Record tokens and cost; saved with the next checkpoint or the final status."""
        with self._lock:
            add_usage(self._usage, usage)
            self._spent_usd += _cost(usage)

    @property
    def spent_usd(self) -> float:
        """Claude cost recorded for this job so far, this invocation included."""
        return self._spent_usd

    def take_usage(self) -> dict[str, Any]:
        with self._lock:
            usage, self._usage = self._usage, {}
        return usage

    # -- progress -------------------------------------------------------------------

    def progress(self, value: float, message: str | None = None) -> None:
        """Report 0-100. Writes are coalesced to one per `progress_interval`;
        the latest value is kept and always lands (at the next step or the end)."""
        self.check_cancelled()
        percent = max(0, min(100, int(round(value))))
        self._pending_progress = (percent, message)
        if self._clock() - self._last_progress_write >= self.progress_interval:
            self.flush_progress()

    def flush_progress(self) -> None:
        pending = self._pending_progress
        if pending is None:
            return
        self._pending_progress = None
        self._last_progress_write = self._clock()
        self.progress_writes += 1
        self.observe(self.store.progress(self.job.id, self.worker, pending[0], pending[1]))

    # -- steps ----------------------------------------------------------------------

    @overload
    def step(self, name: str, fn: Callable[[], Any], *, estimate: float | None = ..., returns: type[M]) -> M: ...
    @overload
    def step(self, name: str, fn: Callable[[], T], *, estimate: float | None = ..., returns: None = ...) -> Any: ...

    def step(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        estimate: float | None = None,
        returns: type[BaseModel] | None = None,
    ) -> Any:
        """Run `fn` once per job, ever. Its JSON result is checkpointed; on retry,
        continuation or resume the stored result is returned without calling `fn`.
        `estimate` (seconds) lets the deadline check decide before starting.
        Returns the JSON form (or `returns` model), the same on first run and on resume."""
        if name in self.checkpoints:
            return self._load(self.checkpoints[name], returns)
        self.check_cancelled()
        self._ensure_budget(estimate)
        started = self._clock()
        result = fn()
        self._longest_step = max(self._longest_step, self._clock() - started)
        self._steps_run += 1
        stored = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        progress = self._pending_progress
        self._pending_progress = None
        row = self.store.checkpoint(
            self.job.id,
            self.worker,
            name,
            stored,
            usage=self.take_usage(),
            progress=progress[0] if progress else None,
            message=progress[1] if progress else None,
        )
        if progress:
            self._last_progress_write = self._clock()
        self.checkpoints[name] = stored
        self.observe(row)
        return self._load(stored, returns)

    @staticmethod
    def _load(value: Any, returns: type[BaseModel] | None) -> Any:
        return returns.model_validate(value) if returns is not None else value

    def _ensure_budget(self, estimate: float | None) -> None:
        """Continue in a new invocation if the worker is shutting down or the next
        step will not fit. The first step of an invocation always runs (unless
        shutting down), so every invocation makes progress."""
        if self._stopping.is_set():
            raise ContinuationNeeded("worker shutting down")
        remaining = self.remaining()
        if remaining is None or self._steps_run == 0:
            return
        needed = estimate if estimate is not None else self._longest_step
        if remaining < needed:
            raise ContinuationNeeded(f"{remaining:.1f}s left, next step needs ~{needed:.1f}s")
