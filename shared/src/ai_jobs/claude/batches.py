"""Claude Message Batches: many requests at half price, answered within 24 hours.

A job submits its requests as one Message Batch inside a checkpointed step (so a retry
never submits twice once the step is recorded), then releases its worker while Claude
works: `wait_until_ended` raises Deferred (reason `claude_batch`), the runner puts the
job back to pending with run_at = now + the poll interval, and every wake-up asks
Anthropic once whether the batch has ended. Results come from the batch's JSONL
results file, matched to requests by `custom_id`; each one records its usage at the
Batch API price. Once every result is checkpointed the Message Batch is deleted at
Anthropic (`delete_batch`), so its prompts and results are not kept there longer than
needed. A cancel of the job cancels the Message Batch (`cancel_batch`).

The create is sent once (no SDK retries): the API has no idempotency key for it. When
its reply is lost after the request may have reached the API (`may_have_created`), a
batch may be running that the job cannot identify; its worst case is charged to the job
at once (`record_unconfirmed`) before the job is retried, so repeated lost replies are
held to the job's cap and the owner's daily budget.

Settings (checked at start-up through ai_jobs.settings):
  AI_JOBS_MAP_BATCH_API_MIN_ITEMS     ai.map_batches jobs with at least this many items
                                      use the Batch API unless their input says
                                      use_batch_api: false; 0 (default): only jobs that
                                      say use_batch_api: true
  AI_JOBS_MAP_BATCH_API_POLL_SECONDS  how often a waiting job asks (default 60)

Only pydantic and the standard library load at import (the settings import this
module on the request path); the SDK loads when a worker calls Anthropic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

log = logging.getLogger(__name__)

WAIT_REASON = "claude_batch"
# The step name under which a job checkpoints its SubmittedBatch. The queue knows it:
# a pending job with this step is not cancelled at once but left to a worker, which
# calls the job type's on_cancel to cancel the batch (migration 20261130000800).
STEP = "claude-batch"
# The checkpoint listing creates whose reply was lost after the request may have reached
# the API (each may have left a batch running that the job cannot see; see submit).
UNCONFIRMED = "claude-batch-unconfirmed"
# The API accepts up to 100,000 requests or 256 MB per batch; we stay under both.
MAX_REQUESTS = 100_000
MAX_BATCH_BYTES = 250_000_000
# A batch ends within 24 hours of its creation (its unfinished requests expire). Until a
# little after that, an error while asking about it or reading its results is waited
# out (Deferred, no attempt spent): the batch is still running, and billing, meanwhile.
BATCH_WINDOW_SECONDS = 25 * 3600
# After a cancel, the batch stops once its in-flight requests finish ("canceling");
# the job waits this long for that, to record what the finished requests cost.
CANCEL_WAIT_SECONDS = 600
CANCEL_POLL_SECONDS = 10.0


class BatchApiSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    min_items: int = Field(default=0, ge=0, le=1_000_000)
    poll_seconds: float = Field(default=60.0, ge=1, le=3600)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BatchApiSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("AI_JOBS_MAP_BATCH_API_MIN_ITEMS"):
            values["min_items"] = env["AI_JOBS_MAP_BATCH_API_MIN_ITEMS"]
        if env.get("AI_JOBS_MAP_BATCH_API_POLL_SECONDS"):
            values["poll_seconds"] = env["AI_JOBS_MAP_BATCH_API_POLL_SECONDS"]
        return cls.model_validate(values)


class SubmittedBatch(BaseModel):
    """What the submit step checkpoints: enough to poll, collect and cancel."""

    id: str = Field(max_length=200)
    custom_ids: list[str]
    submitted_at: datetime
    # The model the requests named: replies naming an unlisted snapshot are priced as it.
    # None in a checkpoint written before it was recorded.
    model: str | None = Field(default=None, max_length=200)


def _client() -> Any:
    from ai_jobs.claude.client import get_client
    from ai_jobs.claude.settings import ClaudeSettings

    return get_client(ClaudeSettings.from_env())


def _classified(exc: Exception) -> Exception:
    from ai_jobs.claude.errors import classify

    return classify(exc)


def may_have_created(exc: BaseException) -> bool:
    """Whether a failed create may have created the Message Batch all the same: the
    request may have reached the API and only its reply is missing (the connection
    dropped after it was sent, a read or write timeout, a reply that did not parse) or
    the API failed while handling it (a 5xx other than 529). A connection that was
    never made (refused, connect or pool timeout), 429, 529 and the other 4xx: nothing
    was created. (The same test as calls._reached_api, plus the status codes.)"""
    import anthropic
    import httpx2

    if isinstance(exc, anthropic.APIStatusError):
        return exc.status_code >= 500 and exc.status_code != 529
    if isinstance(exc, anthropic.APIConnectionError):  # APITimeoutError too
        return not isinstance(exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout))
    return isinstance(exc, anthropic.APIResponseValidationError)  # a 2xx reply the SDK could not read


def submit(
    requests: list[dict[str, Any]], *, ctx: JobContext | None = None, worst_case_usd: float | None = None
) -> SubmittedBatch:
    """Create the Message Batch. `requests`: [{"custom_id", "params"}] (Messages API params).

    The create is sent once, without the SDK's retries: the API has no idempotency key
    for it, so a resend after a lost reply would create a second batch. When a failed
    create may have created the batch anyway (`may_have_created`), that batch, which we
    cannot identify (no id, and custom_ids only show in the results of an ended batch),
    runs and bills for up to 24 h: with `ctx`, its worst case (`worst_case_usd`, the
    bound the spend guard used before the submit) is recorded on the job at once
    (`record_unconfirmed`), so the job's cap and the owner's daily budget count it. The
    classified error (retryable) is raised either way."""
    import anthropic

    try:
        batch = _client().with_options(max_retries=0).messages.batches.create(requests=requests)
    except anthropic.AnthropicError as exc:
        failure = _classified(exc)
        if ctx is not None and may_have_created(exc):
            model = requests[0]["params"]["model"] if requests else None
            record_unconfirmed(ctx, requests=len(requests), model=model, worst_case_usd=worst_case_usd,
                               code=getattr(failure, "code", type(exc).__name__))
        raise failure from exc
    return SubmittedBatch(
        id=batch.id, custom_ids=[r["custom_id"] for r in requests], submitted_at=batch.created_at,
        model=requests[0]["params"]["model"] if requests else None,
    )


def _orphan_charge(worst_case_usd: float | None) -> dict[str, Any]:
    """The usage charged for a Message Batch that may run unseen: its worst case (only
    the count for an unpriced model), flagged as an estimate."""
    charge: dict[str, Any] = {"requests": 0, "estimated": True, "orphan_batches": 1}
    if worst_case_usd is not None:
        charge["cost_usd"] = worst_case_usd
        charge["orphan_batch_cost_usd"] = worst_case_usd
    return charge


def record_unconfirmed(
    ctx: JobContext, *, requests: int, model: str | None, worst_case_usd: float | None, code: str
) -> None:
    """Charge the job the worst case of a Message Batch whose create may have succeeded
    unseen, and write it to the row at once (with a `claude-batch-unconfirmed`
    checkpoint listing such creates): `cost_usd` = the bound, `requests` 0,
    `estimated: true`, `orphan_batches` 1. A retry's spend guard then counts it, so
    repeated lost replies end in `budget_exceeded` rather than unrecorded batches. With
    no bound (an unpriced model) only the count is recorded. Should the write fail, the
    charge stays on ctx for the runner's failure write."""
    at = datetime.now(UTC)
    charge = _orphan_charge(worst_case_usd)
    earlier = ctx.checkpoints.get(UNCONFIRMED)
    entries = [*(earlier if isinstance(earlier, list) else []), {
        "at": at.isoformat(), "requests": requests, "model": model, "worst_case_usd": worst_case_usd, "error": code,
    }]
    ctx.add_usage(charge)
    usage = ctx.take_usage()
    try:
        ctx.store.checkpoint(ctx.job.id, ctx.worker, UNCONFIRMED, entries, usage=usage)
        ctx.checkpoints[UNCONFIRMED] = entries
    except Exception as exc:  # noqa: BLE001 - the runner writes the usage with the failure
        ctx.add_usage(usage)  # back on ctx (its spent_usd counts it twice: no call follows in this run)
        log.error("job %s: could not record the worst case of a Message Batch that may exist (%s); it rides on "
                  "the failure write", ctx.job.id, type(exc).__name__)
    cost = f"${worst_case_usd:.4f}" if worst_case_usd is not None else "an unpriced amount"
    log.warning(
        "job %s: the reply to a Message Batch create was lost (%s) after the request may have reached Anthropic: "
        "a batch of %d %s requests created about %s may be running and billing for up to 24 h, unseen by the "
        "job; its worst case, %s, is charged to the job (usage.orphan_batches). Look for it in the Anthropic "
        "Console to cancel it.",
        ctx.job.id, code, requests, model, at.strftime("%Y-%m-%d %H:%M:%S UTC"), cost,
    )


def retrieve(batch_id: str) -> Any:
    """The MessageBatch as Anthropic reports it now; None once it has been deleted."""
    import anthropic

    try:
        return _client().messages.batches.retrieve(batch_id)
    except anthropic.NotFoundError:
        return None
    except anthropic.AnthropicError as exc:
        raise _classified(exc) from exc


def _waits_out(submitted: SubmittedBatch, exc: Exception) -> bool:
    """Whether an error about this batch is waited out rather than failing the job: a
    transient one, while the batch can still be running (see BATCH_WINDOW_SECONDS)."""
    from ai_jobs.failures import RetryableJobError

    age = (datetime.now(UTC) - submitted.submitted_at).total_seconds()
    return isinstance(exc, RetryableJobError) and age < BATCH_WINDOW_SECONDS


def _wait_out(ctx: JobContext, exc: Exception, *, poll_seconds: float, progress: float, what: str) -> NoReturn:
    """Defer the job after a transient error (no attempt spent), at the upstream's
    retry time when it gave one; a cancel that arrived meanwhile stops here."""
    from ai_jobs.context import Deferred
    from ai_jobs.failures import JobFailure

    delay = poll_seconds
    retry_at = exc.retry_at if isinstance(exc, JobFailure) else None
    if retry_at is not None:
        delay = max(delay, (retry_at - datetime.now(UTC)).total_seconds())
    code = exc.code if isinstance(exc, JobFailure) else type(exc).__name__
    message = f"Anthropic did not answer while {what} ({code}); asking again in {delay:.0f} s"
    log.warning("job %s: %s", ctx.job.id, message)
    ctx.progress(progress, message)
    ctx.flush_progress()
    ctx.check_cancelled()
    raise Deferred(delay, reason=WAIT_REASON, message=message)


def _cancel_quietly(ctx: JobContext, submitted: SubmittedBatch, why: str = "the job fails") -> bool:
    """A job about to fail for good stops its Message Batch, so it is not billed on.
    Whether the cancel was accepted."""
    try:
        _client().messages.batches.cancel(submitted.id)
        log.warning("job %s: cancelled Message Batch %s as %s", ctx.job.id, submitted.id, why)
        return True
    except Exception as exc:  # noqa: BLE001 - best effort; the job fails either way
        log.error("job %s: could not cancel Message Batch %s as %s (%s); it may run and bill for "
                  "up to 24 h", ctx.job.id, submitted.id, why, type(exc).__name__)
        return False


def abandon(ctx: JobContext, submitted: SubmittedBatch, *, worst_case_usd: float | None) -> None:
    """A batch was created but its checkpoint could not be written (the store failed,
    the lease was lost): no run of the job would ever look at it. Cancel it; if that
    fails too, charge the job its worst case, which the runner writes with the failure
    when it can (the store may be what failed)."""
    if _cancel_quietly(ctx, submitted, why="its checkpoint could not be written"):
        return
    ctx.add_usage(_orphan_charge(worst_case_usd))


def wait_until_ended(ctx: JobContext, submitted: SubmittedBatch, *, poll_seconds: float, progress: float) -> None:
    """Return once the batch has ended (or no longer exists); until then release the
    worker (Deferred) and ask again in `poll_seconds`. A cancel that arrived meanwhile
    stops here (JobCancelled) so the runner cancels the batch rather than leaving it
    running. A transient error asking is waited out the same way; an error that fails
    the job cancels the batch first."""
    from ai_jobs.context import Deferred

    try:
        batch = retrieve(submitted.id)
    except Exception as exc:
        if _waits_out(submitted, exc):
            _wait_out(ctx, exc, poll_seconds=poll_seconds, progress=progress,
                      what="asking whether its Message Batch has ended")
        _cancel_quietly(ctx, submitted)
        raise
    if batch is None or batch.processing_status == "ended":
        return
    minutes = max(0, int((datetime.now(UTC) - submitted.submitted_at).total_seconds() // 60))
    message = (
        f"Waiting for Claude's Message Batch: {len(submitted.custom_ids)} requests at the Batch API price, "
        f"submitted {minutes} min ago ({batch.processing_status}); checking every {poll_seconds:g} s"
    )
    ctx.progress(progress, message)
    ctx.flush_progress()  # writes and reads the row back: it carries a cancel request
    ctx.check_cancelled()
    raise Deferred(poll_seconds, reason=WAIT_REASON, message=message)


def ended_results(ctx: JobContext, submitted: SubmittedBatch, *, poll_seconds: float, progress: float) -> dict[str, Any]:
    """`results` of an ended batch; a transient error reading them is waited out (the
    results stay at Anthropic for 29 days)."""
    try:
        return results(submitted.id)
    except Exception as exc:
        if _waits_out(submitted, exc):
            _wait_out(ctx, exc, poll_seconds=poll_seconds, progress=progress, what="reading its Message Batch's results")
        raise


def results(batch_id: str) -> dict[str, Any]:
    """Every request's MessageBatchResult (succeeded / errored / canceled / expired) by
    custom_id; empty once the batch has been deleted (its requests then run directly)."""
    import anthropic

    try:
        return {line.custom_id: line.result for line in _client().messages.batches.results(batch_id)}
    except anthropic.NotFoundError:
        return {}
    except anthropic.AnthropicError as exc:
        raise _classified(exc) from exc


def delete_batch(ctx: JobContext, batch_id: str) -> None:
    """Delete an ended Message Batch (its requests and results) at Anthropic. Best effort:
    a failure is logged; the batch then stays until Anthropic archives it."""
    import anthropic

    try:
        _client().messages.batches.delete(batch_id)
    except anthropic.NotFoundError:
        return
    except anthropic.AnthropicError as exc:
        log.warning("job %s: could not delete Message Batch %s: %s", ctx.job.id, batch_id, type(exc).__name__)


def cancel_batch(ctx: JobContext, submitted: SubmittedBatch) -> dict[str, Any] | None:
    """Cancel the Message Batch of a job being cancelled. Returns the results once the
    batch has ended (requests finished before the cancel are billed: the caller records
    them); raises Deferred while it is still stopping, for up to CANCEL_WAIT_SECONDS
    after the cancel request; None when it gives up (logged)."""
    import anthropic

    from ai_jobs.context import Deferred

    try:
        batch = _client().messages.batches.retrieve(submitted.id)
        if batch.processing_status == "in_progress":
            batch = _client().messages.batches.cancel(submitted.id)
            log.info("job %s: cancelled Message Batch %s", ctx.job.id, submitted.id)
        if batch.processing_status == "ended":
            return results(submitted.id)
    except anthropic.NotFoundError:
        log.warning("job %s: Message Batch %s no longer exists; nothing to cancel", ctx.job.id, submitted.id)
        return None
    except (anthropic.AnthropicError, Exception) as exc:  # noqa: BLE001 - retried below, then given up
        log.warning("job %s: cancelling Message Batch %s failed: %s", ctx.job.id, submitted.id, type(exc).__name__)
    requested = ctx.job.cancel_requested_at or datetime.now(UTC)
    if (datetime.now(UTC) - requested).total_seconds() < CANCEL_WAIT_SECONDS:
        raise Deferred(
            CANCEL_POLL_SECONDS, reason=WAIT_REASON,
            message="Cancelling Claude's Message Batch; the job ends as soon as the batch has stopped",
        )
    log.error(
        "job %s: Message Batch %s did not stop within %d s of the cancel; its cost is not recorded on the job",
        ctx.job.id, submitted.id, CANCEL_WAIT_SECONDS,
    )
    return None


def save_step(ctx: JobContext, name: str, value: Any) -> None:
    """Checkpoint `value` as step `name` with the usage recorded so far, outside
    ctx.step (which refuses to run once a cancel is requested): used while cancelling,
    so a retry of the job reuses results that were already paid for."""
    ctx.store.checkpoint(ctx.job.id, ctx.worker, name, value, usage=ctx.take_usage())
    ctx.checkpoints[name] = value
