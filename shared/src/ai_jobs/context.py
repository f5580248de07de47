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
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload
from uuid import UUID

from pydantic import BaseModel

from ai_jobs.errors import LeaseLostError
from ai_jobs.models import Job
from ai_jobs.store.base import JobStore

if TYPE_CHECKING:
    from ai_jobs.registry import JobRegistry
    from ai_jobs.workflows import Child, ChildResult

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
# An invocation counts as fresh until this many seconds (or a tenth of its budget,
# whichever is more) are spent: see JobContext.fresh_invocation.
FRESH_INVOCATION_SECONDS = 5.0


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


class JobPaused(Exception):
    """Raised inside a handler at its next step after a pause request: the runner marks
    the job paused (checkpoints kept, no attempt spent)."""


class Suspended(Exception):
    """Raised when the job released its lease itself (waiting for its children): the
    row is already pending, so the runner writes nothing more."""


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


def _unpriced(usage: Mapping[str, Any]) -> int:
    value = usage.get("unpriced_requests")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class JobContext:
    def __init__(
        self,
        job: Job,
        store: JobStore,
        worker: str,
        *,
        deadline: float | None = None,
        budget_seconds: float | None = None,
        lease_seconds: int = 30,
        progress_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        stopping: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.store = store
        self.worker = worker
        self.deadline = deadline
        self.budget_seconds = budget_seconds  # the whole invocation's budget (None: unknown)
        self.lease_seconds = lease_seconds
        self.progress_interval = progress_interval
        self._clock = clock
        self._stopping = stopping or threading.Event()
        self.checkpoints: dict[str, Any] = dict(job.checkpoints)
        self._usage: dict[str, Any] = {}
        # Claude cost recorded on the job (all attempts) plus what this invocation added:
        # the spend guard compares it with the job's cap before each call.
        self._spent_usd = _cost(job.usage)
        self._unpriced_calls = _unpriced(job.usage)
        self._cancel_requested = job.cancel_requested_at is not None
        self._pause_requested = job.pause_requested_at is not None
        self._sleeps = 0  # ctx.sleep calls so far in this run of the handler (durable step names)
        # set by the heartbeat thread, read by the handler's: a flag (a bool is written
        # atomically), since nothing ever waits on it and an Event per job costs ~5 us
        self._lease_lost = False
        self._lock = threading.Lock()
        self._pending_progress: tuple[int, str | None] | None = None
        self._last_progress_write = float("-inf")
        self._longest_step = 0.0
        self._steps_run = 0
        self.progress_writes = 0
        # Live output of a streaming Claude call: its snapshot rides on progress writes.
        self._stream_source: Callable[[], dict[str, Any] | None] | None = None

    # -- state from the row -------------------------------------------------------

    def observe(self, row: Job) -> None:
        """Take in the latest row (heartbeat, progress, checkpoint): it carries cancel requests."""
        if row.cancel_requested_at is not None:
            self._cancel_requested = True
        if row.pause_requested_at is not None:
            self._pause_requested = True

    def mark_lease_lost(self) -> None:
        """Another worker owns the job now; stop at the next step without writing."""
        self._lease_lost = True

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def check_cancelled(self) -> None:
        """Stop here if the lease is gone or a cancel was requested."""
        if self._lease_lost:
            raise LeaseLostError(f"job {self.job.id} lease lost")
        if self._cancel_requested:
            raise JobCancelled(str(self.job.id))
        if self._pause_requested:
            raise JobPaused(str(self.job.id))

    def remaining(self) -> float | None:
        """Seconds left in this invocation's budget (None: unlimited)."""
        return None if self.deadline is None else self.deadline - self._clock()

    def fresh_invocation(self) -> bool:
        """Whether a new invocation would give this job no more time than it has now:
        at most a tenth of the budget (or FRESH_INVOCATION_SECONDS) is spent. Only
        then does a first step or call that does not fit run anyway (shortened, for a
        Claude call); later in an invocation (after waiting for a due job, or running
        others) the job continues in a new one instead."""
        remaining = self.remaining()
        if remaining is None or self.budget_seconds is None:
            return True
        return self.budget_seconds - remaining <= max(FRESH_INVOCATION_SECONDS, self.budget_seconds / 10)

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
            self._unpriced_calls += _unpriced(usage)

    @property
    def spent_usd(self) -> float:
        """Claude cost recorded for this job so far, this invocation included."""
        return self._spent_usd

    @property
    def unpriced_calls(self) -> int:
        """Claude calls of this job (all attempts) whose cost could not be priced."""
        return self._unpriced_calls

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

    def attach_stream(self, source: Callable[[], dict[str, Any] | None] | None) -> None:
        """While a Claude call streams: `source()` gives the live-output snapshot
        ({id, seq, format, text}, or None when unchanged) to store with each progress
        write, so the text so far costs no write of its own. None detaches."""
        self._stream_source = source

    def flush_progress(self) -> None:
        pending = self._pending_progress
        if pending is None:
            return
        self._pending_progress = None
        self._last_progress_write = self._clock()
        self.progress_writes += 1
        stream = self._stream_source() if self._stream_source is not None else None
        extra: dict[str, Any] = {"stream": stream} if stream is not None else {}
        self.observe(self.store.progress(self.job.id, self.worker, pending[0], pending[1], **extra))

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
        step will not fit. A job's first step in a fresh invocation always runs
        (unless shutting down), so every invocation makes progress; started later in
        an invocation, a step that does not fit waits for a fresh one."""
        if self._stopping.is_set():
            raise ContinuationNeeded("worker shutting down")
        remaining = self.remaining()
        if remaining is None or (self._steps_run == 0 and self.fresh_invocation()):
            return
        needed = estimate if estimate is not None else self._longest_step
        if remaining < needed:
            raise ContinuationNeeded(f"{remaining:.1f}s left, next step needs ~{needed:.1f}s")

    # -- workflows: child jobs, waiting without a worker, durable sleep ---------------
    # Set by the runner: the registry children are checked against, and the hand-off
    # that asks for worker invocations for new children (None: workers drain them).
    registry: JobRegistry | None = None
    handoff: Callable[[UUID], Any] | None = None

    def spawn(self, job_type: str, input: Mapping[str, Any], *, key: str, **options: Any) -> UUID:  # noqa: A002
        """Create one child job (see spawn_many); returns its id."""
        from ai_jobs.workflows import Child

        return self.spawn_many([Child(job_type, input, key, **options)])[0]

    def spawn_many(self, children: Sequence[Child | Mapping[str, Any]]) -> list[UUID]:
        """Create children of this job in one round trip, owned by its user, each
        checked like an HTTP create. Idempotent by key: a retried or resumed handler
        gets the same children back, never new ones. A refused child (unknown type,
        bad input, depth or children cap, budget) fails this job (spawn_refused)."""
        from ai_jobs.workflows import spawn_children

        return spawn_children(self, children)

    def wait_for_children(
        self, keys: Sequence[str] | None = None, *, max_failures: int = 0
    ) -> list[ChildResult]:
        """The children's results in spawn order once all (or those with `keys`) are
        finished. Until then the job releases its worker and lease and waits, pending
        with wait_reason waiting_for_children; the last child wakes it and the handler
        runs again from the top (finished steps are kept). More than `max_failures`
        failed or cancelled children fail this job (child_failed); up to that many
        come back with status and error."""
        from ai_jobs.workflows import wait_for_children

        return wait_for_children(self, keys, max_failures)

    def sleep(self, seconds: float, *, key: str | None = None) -> None:
        """Resume this handler `seconds` from the first time it got here, without
        holding a worker meanwhile (finished steps are kept)."""
        from ai_jobs.workflows import sleep_until

        self._sleeps += 1
        sleep_until(self, time.time() + max(0.0, float(seconds)), key or f"sleep:{self._sleeps}")

    def sleep_until(self, when: datetime, *, key: str | None = None) -> None:
        """Like sleep, until `when` (timezone-aware)."""
        from ai_jobs.workflows import sleep_until

        if when.tzinfo is None:
            raise ValueError("sleep_until needs a timezone-aware datetime")
        self._sleeps += 1
        sleep_until(self, when.timestamp(), key or f"sleep:{self._sleeps}")
