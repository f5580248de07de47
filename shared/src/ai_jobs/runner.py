"""Runner: claim -> run -> complete / fail / release, then drain while budget remains.

One Runner serves both hosts: a serverless invocation (`budget_seconds` set
to what is left of maxDuration) and the long-lived `ai-jobs worker` loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal
from uuid import UUID

from pydantic import ValidationError

from ai_jobs.context import ContinuationNeeded, Deferred, JobCancelled, JobContext, JobPaused, Suspended
from ai_jobs.errors import AiJobsError, LeaseLostError
from ai_jobs.failures import FatalJobError, JobFailure, RetryableJobError
from ai_jobs.heartbeat import Heartbeater
from ai_jobs.models import Job
from ai_jobs.redaction import describe_exception, redacted
from ai_jobs.registry import InputValidationError, JobRegistry, UnknownJobTypeError, registry as default_registry
from ai_jobs.store.base import JobStore

log = logging.getLogger(__name__)

COMPLETE_DELAY = 0.1  # seconds a finished job may wait for its batch's completion write
WAIT_POLL_SECONDS = 1.0  # an idle runner waiting for due work re-checks at least this often
WAIT_MIN_SECONDS = 0.05
# Due work that no claim can take (a concurrency limit is full, or another claimer holds
# it) is retried with backoff this many times (about 2.5 s), then left to the workers
# whose running jobs free the slots, and to the sweep.
DUE_BUT_UNCLAIMABLE_RETRIES = 6
RUNNER_MIN_REMAINING_SECONDS = 5.0  # no job starts with less budget than this left

OutcomeKind = Literal["completed", "failed", "retrying", "cancelled", "continued", "deferred", "lost"]


@dataclass(frozen=True)
class Outcome:
    job_id: UUID
    job_type: str
    kind: OutcomeKind
    error_code: str | None = None


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Runner:
    store: JobStore
    registry: JobRegistry = field(default_factory=lambda: default_registry)
    worker_id: str = field(default_factory=default_worker_id)
    lease_seconds: int = 30
    progress_interval: float = 0.5
    # Called with a job id after it was released for continuation (serverless hand-off).
    request_continuation: Callable[[UUID], None] | None = None
    clock: Callable[[], float] = time.monotonic
    # Set to shut down: running jobs are released at their next step, nothing new is claimed.
    stopping: threading.Event = field(default_factory=threading.Event)
    # The budget of the current run_available call (JobContext.fresh_invocation).
    _budget_seconds: float | None = field(default=None, init=False, repr=False)

    @cached_property
    def heartbeater(self) -> Heartbeater:
        return Heartbeater(self.store, self.worker_id, lease_seconds=self.lease_seconds)

    def run_available(
        self,
        *,
        budget_seconds: float | None = None,
        job_id: UUID | None = None,
        max_jobs: int | None = None,
        min_remaining_seconds: float = RUNNER_MIN_REMAINING_SECONDS,
        batch: int = 1,
        wait_for_due: bool = True,
    ) -> list[Outcome]:
        """Claim and run due jobs until none is left, `max_jobs` ran, or fewer than
        `min_remaining_seconds` of the budget remain. `job_id` is tried first (the
        hand-off's job), then any other due job. `batch` > 1 claims several jobs per
        round trip; they are leased while they wait, and released unrun (no attempt
        spent) if the budget ends first. With a budget and `wait_for_due`, an idle
        runner waits for a job due within the budget (a retry-after, a near-future
        run_at) instead of returning: nothing else would start it before the next
        wake-up."""
        deadline = None if budget_seconds is None else self.clock() + budget_seconds
        self._budget_seconds = budget_seconds
        outcomes: list[Outcome] = []
        # A finished batch's completions, written by the next claim's statement (one
        # round trip per batch), or on their own when the loop ends.
        carry: list[tuple[Job, Any, dict[str, Any]]] = []
        try:
            self._drain(outcomes, carry, deadline, job_id, max_jobs, min_remaining_seconds, batch, wait_for_due)
        finally:
            if carry:
                self._complete_deferred(carry, outcomes)
        return outcomes

    def _drain(
        self,
        outcomes: list[Outcome],
        carry: list[tuple[Job, Any, dict[str, Any]]],
        deadline: float | None,
        job_id: UUID | None,
        max_jobs: int | None,
        min_remaining_seconds: float,
        batch: int,
        wait_for_due: bool,
    ) -> None:
        first = job_id
        due_misses = 0  # consecutive empty claims while work was due
        while max_jobs is None or len(outcomes) < max_jobs:
            if self.stopping.is_set():
                break
            if deadline is not None and deadline - self.clock() < min_remaining_seconds:
                break
            want = 1 if first is not None else batch
            if max_jobs is not None:
                want = max(1, min(want, max_jobs - len(outcomes)))
            if carry and first is None:
                claimed = self._complete_and_claim(carry, outcomes, want)
            else:
                claimed = self.store.claim(
                    self.worker_id, limit=want, lease_seconds=self.lease_seconds, job_types=self.registry.types(),
                    job_id=first,
                )
            if not claimed and first is not None:
                first = None  # the hand-off's job was taken or is not due; drain the rest
                continue
            first = None
            if not claimed:
                misses = self._wait_for_due(deadline, min_remaining_seconds, due_misses) if wait_for_due else None
                if misses is None:
                    break
                due_misses = misses
                continue
            due_misses = 0
            contexts = [self._context(job, deadline) for job in claimed]
            for ctx in contexts:
                self.heartbeater.track(ctx)
            # With batches, finished jobs are completed together (one commit) at the
            # end of the batch or after COMPLETE_DELAY; they stay leased until then.
            deferred: list[tuple[Job, Any, dict[str, Any]]] | None = [] if batch > 1 else None
            first_deferred_at = 0.0
            finished = False
            try:
                for index, ctx in enumerate(contexts):
                    out_of_time = deadline is not None and deadline - self.clock() < min_remaining_seconds
                    if out_of_time or self.stopping.is_set() or (outcomes and outcomes[-1].kind == "continued"):
                        self._release_unstarted(contexts[index:])
                        return
                    if deferred and time.monotonic() - first_deferred_at > COMPLETE_DELAY:
                        self._complete_deferred(deferred, outcomes)
                    if deferred is not None and not deferred:
                        first_deferred_at = time.monotonic()
                    outcome = self.run_claimed(ctx.job, ctx=ctx, deferred=deferred)
                    outcomes.append(outcome)
                    if deferred is None or outcome.kind != "completed":
                        self.heartbeater.untrack(ctx.job.id)  # a deferred completion stays leased until written
                finished = True
            finally:
                if deferred and finished:
                    carry.extend(deferred)  # still leased (tracked) until the next statement writes them
                elif deferred:
                    self._complete_deferred(deferred, outcomes)
                written = {job.id for job, _, _ in carry}
                for ctx in contexts:
                    if ctx.job.id not in written:
                        self.heartbeater.untrack(ctx.job.id)
            if outcomes and outcomes[-1].kind == "continued":
                break  # the budget is spent: leave the rest to the next invocation

    def _wait_for_due(self, deadline: float | None, min_remaining_seconds: float, due_misses: int = 0) -> int | None:
        """Sleep until the next pending job is due, if that is within the budget.
        Re-checks at least every WAIT_POLL_SECONDS, so work enqueued meanwhile (or a
        job another worker took) is noticed. Returns the count of consecutive waits
        for work that was already due, or None: nothing due in time, the due work
        stayed unclaimable too long, or stopping."""
        if deadline is None:
            return None  # the long-lived worker loop polls on its own
        usable = deadline - self.clock() - min_remaining_seconds
        if usable <= 0:
            return None
        due_in = self.store.next_due_in(job_types=self.registry.types())
        if due_in is None or due_in > usable:
            return None
        if due_in > 0:
            pause, misses = min(due_in, WAIT_POLL_SECONDS, usable), 0
        else:
            # due now but not claimed: a concurrent claim holds it (a job its full
            # concurrency limit holds back is not counted as due at all); back off, then leave
            if due_misses >= DUE_BUT_UNCLAIMABLE_RETRIES:
                return None
            pause, misses = min(WAIT_MIN_SECONDS * 2**due_misses, WAIT_POLL_SECONDS, usable), due_misses + 1
        return None if self.stopping.wait(max(pause, WAIT_MIN_SECONDS)) else misses

    def _context(self, job: Job, deadline: float | None) -> JobContext:
        ctx = JobContext(
            job,
            self.store,
            self.worker_id,
            deadline=deadline,
            budget_seconds=self._budget_seconds if deadline is not None else None,
            lease_seconds=self.lease_seconds,
            progress_interval=self.progress_interval,
            clock=self.clock,
            stopping=self.stopping,
        )
        # child jobs (ctx.spawn) are checked against this registry and handed off like continuations
        ctx.registry = self.registry
        ctx.handoff = self.request_continuation
        return ctx

    def _complete_deferred(self, deferred: list[tuple[Job, Any, dict[str, Any]]], outcomes: list[Outcome]) -> None:
        """Write the batch's completions in one statement; a job whose lease was
        lost meanwhile is not completed and its outcome becomes "lost"."""
        batch, deferred[:] = list(deferred), []
        try:
            done = self.store.complete_many(self.worker_id, [(job.id, result, usage) for job, result, usage in batch])
        except AiJobsError:
            log.warning("could not complete %d jobs; their leases will expire and they will run again", len(batch))
            done = set()
        finally:
            for job, _, _ in batch:
                self.heartbeater.untrack(job.id)
        self._mark_lost(batch, done, outcomes)

    @staticmethod
    def _mark_lost(batch: list[tuple[Job, Any, dict[str, Any]]], done: set[UUID], outcomes: list[Outcome]) -> None:
        """A deferred completion that was not written: its outcome becomes "lost"."""
        lost = {job.id for job, _, _ in batch} - done
        if not lost:
            return
        for i in range(len(outcomes) - 1, -1, -1):  # the batch is near the tail
            if outcomes[i].job_id in lost and outcomes[i].kind == "completed":
                outcomes[i] = Outcome(outcomes[i].job_id, outcomes[i].job_type, "lost")
                lost.discard(outcomes[i].job_id)
                if not lost:
                    return

    def _complete_and_claim(
        self, carry: list[tuple[Job, Any, dict[str, Any]]], outcomes: list[Outcome], want: int
    ) -> list[Job]:
        """Write the carried completions and claim the next batch in one statement.
        If it fails, nothing was written or claimed: the carried jobs' leases expire
        and they run again (as when complete_many fails), and the claim returns empty."""
        batch, carry[:] = list(carry), []
        try:
            done, claimed = self.store.complete_and_claim(
                self.worker_id,
                [(job.id, result, usage) for job, result, usage in batch],
                limit=want,
                lease_seconds=self.lease_seconds,
                job_types=self.registry.types(),
            )
        except AiJobsError:
            log.warning("could not complete %d jobs; their leases will expire and they will run again", len(batch))
            done, claimed = set(), []
        finally:
            for job, _, _ in batch:
                self.heartbeater.untrack(job.id)
        self._mark_lost(batch, done, outcomes)
        return claimed

    def _release_unstarted(self, contexts: list[JobContext]) -> None:
        for ctx in contexts:
            try:
                self.store.release(ctx.job.id, self.worker_id)
            except AiJobsError:
                log.warning("job %s: could not release; its lease will expire", ctx.job.id)

    def run_claimed(
        self,
        job: Job,
        *,
        deadline: float | None = None,
        ctx: JobContext | None = None,
        deferred: list[tuple[Job, Any, dict[str, Any]]] | None = None,
    ) -> Outcome:
        """Run one job this worker holds the lease on, and record how it ended
        (a completion goes to `deferred` when given, to be written with others)."""
        ctx = ctx or self._context(job, deadline)
        standalone = not self.heartbeater.is_tracking(job.id)  # called directly, not via run_available
        if standalone:
            self.heartbeater.track(ctx)
        try:
            return self._run(job, ctx, deferred)
        except LeaseLostError:
            log.warning("job %s: lease lost; another worker owns it now", job.id)
            return Outcome(job.id, job.job_type, "lost")
        finally:
            if standalone:
                self.heartbeater.untrack(job.id)

    def _run(self, job: Job, ctx: JobContext, deferred: list[tuple[Job, Any, dict[str, Any]]] | None = None) -> Outcome:
        try:
            definition = self.registry.get(job.job_type)
            payload = definition.parse_input(job.input)
            ctx.check_cancelled()
            output = definition.handler(payload, ctx)
            # An instance of the output model was validated when it was built: dump it
            # once, straight to JSON types. Anything else is validated first.
            if type(output) is not definition.output_model:
                output = definition.output_model.model_validate(
                    output.model_dump() if hasattr(output, "model_dump") else output
                )
            result = output.model_dump(mode="json")
        except JobCancelled:
            ctx.flush_progress()
            waiting = self._on_cancel(job, ctx)
            if waiting is not None:
                return waiting
            self.store.mark_cancelled(job.id, self.worker_id, usage=ctx.take_usage())
            return Outcome(job.id, job.job_type, "cancelled")
        except ContinuationNeeded as why:
            ctx.flush_progress()
            self.store.release(job.id, self.worker_id, usage=ctx.take_usage())
            log.info("job %s: continuing in a new invocation (%s)", job.id, why)
            if self.request_continuation is not None:
                try:
                    self.request_continuation(job.id)
                except Exception:  # noqa: BLE001 - the sweeper re-dispatches anything missed
                    log.exception("job %s: continuation request failed; the sweeper will pick it up", job.id)
            return Outcome(job.id, job.job_type, "continued")
        except Deferred as why:
            # waiting (a full rate limit) is not a failure: no attempt spent, no error
            ctx.flush_progress()
            self.store.defer(
                job.id, self.worker_id, delay_seconds=why.delay_seconds, reason=why.reason,
                message=why.message, usage=ctx.take_usage(),
            )
            log.info("job %s: deferred %.1f s (%s)", job.id, why.delay_seconds, why.reason)
            return Outcome(job.id, job.job_type, "deferred")
        except Suspended as why:  # waiting for its children: the row is pending already
            log.info("job %s: %s", job.id, why)
            return Outcome(job.id, job.job_type, "deferred")
        except JobPaused:  # its owner paused it: checkpoints kept, no attempt spent
            ctx.flush_progress()
            self.store.mark_paused(job.id, self.worker_id, usage=ctx.take_usage())
            return Outcome(job.id, job.job_type, "deferred")
        except LeaseLostError:
            raise
        except InputValidationError as exc:
            return self._fail(job, ctx, FatalJobError("invalid_input", f"{exc.message}: {exc.errors}"))
        except UnknownJobTypeError as exc:  # a row of a type this deployment does not serve: retrying cannot help
            return self._fail(job, ctx, FatalJobError(exc.code, exc.message))
        except ValidationError as exc:
            return self._fail(
                job, ctx, FatalJobError("invalid_output", f"handler returned output that does not match its model: {exc}")
            )
        except JobFailure as failure:
            return self._fail(job, ctx, failure)
        except AiJobsError as exc:
            # the store failed under the handler: the queue will try again
            return self._fail(job, ctx, RetryableJobError(exc.code, exc.message))
        except Exception as exc:  # noqa: BLE001 - an unclassified bug in a handler
            log.error("job %s (%s) raised %s", job.id, job.job_type, describe_exception(exc))
            return self._fail(job, ctx, RetryableJobError("handler_error", f"{type(exc).__name__}: {exc}"))
        ctx.flush_progress()
        if deferred is not None:
            deferred.append((job, result, ctx.take_usage()))
        else:
            self.store.complete(job.id, self.worker_id, result, usage=ctx.take_usage())
        return Outcome(job.id, job.job_type, "completed")

    def _on_cancel(self, job: Job, ctx: JobContext) -> Outcome | None:
        """Let the job type release what it holds outside the queue (a Claude Message
        Batch) before the job is marked cancelled. It may ask to be called again later
        (Deferred: the job stays pending, cancel still requested); its failure is logged
        and does not keep the job from ending cancelled."""
        try:
            hook = self.registry.get(job.job_type).on_cancel
        except UnknownJobTypeError:
            return None
        if hook is None:
            return None
        try:
            hook(ctx)
        except Deferred as why:
            self.store.defer(
                job.id, self.worker_id, delay_seconds=why.delay_seconds, reason=why.reason,
                message=why.message, usage=ctx.take_usage(),
            )
            log.info("job %s: cancel waits %.1f s (%s)", job.id, why.delay_seconds, why.reason)
            return Outcome(job.id, job.job_type, "deferred")
        except LeaseLostError:
            raise
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the cancel still happens
            log.error("job %s: cancel clean-up failed: %s", job.id, describe_exception(exc))
        return None

    def _fail(self, job: Job, ctx: JobContext, failure: JobFailure) -> Outcome:
        try:
            ctx.flush_progress()
        except AiJobsError:
            pass
        row = self.store.fail(
            job.id, self.worker_id, failure.to_error(), retry_at=failure.retry_at, usage=ctx.take_usage()
        )
        kind: OutcomeKind = "retrying" if row.status == "pending" else ("cancelled" if row.status == "cancelled" else "failed")
        log.info("job %s: %s (%s: %s)", job.id, kind, failure.code, redacted(failure.message))
        return Outcome(job.id, job.job_type, kind, failure.code)
