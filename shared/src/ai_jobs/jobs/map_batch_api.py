"""ai.map_batches through Claude's Message Batches API (half the price, answers within 24 h).

The flow, across wake-ups of one job:
1. step `claude-batch`: every batch not yet done becomes one request of a single
   Message Batch (custom_id = its step name, `batch-<n>`; same cached prefix as the
   direct calls, with the 1-hour TTL) and the batch id is checkpointed. The create is
   sent once; if its reply is lost after the request may have reached the API, the
   batch it may have made is charged to the job at its worst case (the bound the spend
   guard checked) and the job is retried (see batches.submit); a batch made whose
   checkpoint cannot be written is cancelled (batches.abandon);
2. each wake-up asks Anthropic whether the batch has ended; until then the job goes
   back to pending (Deferred, wait_reason `claude_batch`) without holding a worker or
   spending an attempt, and runs again after AI_JOBS_MAP_BATCH_API_POLL_SECONDS. A
   transient error asking (or reading the results) is waited out the same way for
   up to 25 h after the submit; an error that fails the job cancels the batch first;
3. once it has ended, the results file is read and every billed result is recorded
   at once (`collect`), before any of them can fail the job: a reply that parses
   becomes its `batch-<n>` step, a refused, cut-off or unparsable one is checkpointed
   with its usage as `batch-<n>-batch-reply`, so it is never recorded twice. Then the
   Message Batch is deleted at Anthropic, so its prompts and results are not kept
   there longer than needed. A request that errored, expired or was canceled, or
   whose reply does not parse, then runs through the normal streamed call; a refusal
   or a truncated reply fails the job as it would there (a retry of the job asks
   Claude directly for that batch).
A cancel of the job cancels the Message Batch (`cancel`, the job type's on_cancel),
checkpoints what finished before it, then deletes it.

Loaded by the handler only (it imports the Claude client when it runs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ai_jobs.claude.batches import (
    MAX_BATCH_BYTES,
    STEP,
    BatchApiSettings,
    SubmittedBatch,
    abandon,
    cancel_batch,
    delete_batch,
    ended_results,
    save_step,
    submit,
    wait_until_ended,
)
from ai_jobs.claude.caching import CacheTTL, PromptCacheSettings
from ai_jobs.claude.pricing import usage_record
from ai_jobs.failures import FatalJobError
from ai_jobs.jobs.ai import BatchMappings, MapBatchesInput, map_request

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

log = logging.getLogger(__name__)

WAITING_PROGRESS = 5
# Checkpointed once the batch's results are recorded (and the batch deleted): later runs
# of the job ask Claude directly for whatever is still open.
COLLECTED = "claude-batch-collected"


def configured(settings: type[BaseModel]) -> Any:
    """PromptCacheSettings or BatchApiSettings from the environment; an invalid value
    (normally stopped at start-up) fails the job with a message naming the variable."""
    try:
        return settings.from_env()  # type: ignore[attr-defined]
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0] if e['loc'] else 'value'}: {e['msg']}" for e in exc.errors())
        raise FatalJobError(
            "claude_config",
            f"The worker's prompt-cache, Batch API or map fan-out settings are invalid ({problems}); check "
            "AI_JOBS_PROMPT_CACHE*, AI_JOBS_MAP_BATCH_API_*, AI_JOBS_MAP_FAN_OUT_MIN_BATCHES, AI_JOBS_MAP_PARALLELISM.",
        ) from None


def cache_ttl(calls: int, *, through_api: bool) -> CacheTTL | None:
    return configured(PromptCacheSettings).ttl_for(calls, long_running=through_api)


def wanted(data: MapBatchesInput, ctx: JobContext) -> bool:
    """Whether this job goes through the Batch API: it already does (a batch was
    submitted), its input says so, or it has at least AI_JOBS_MAP_BATCH_API_MIN_ITEMS
    items and fits in one Message Batch."""
    if STEP in ctx.checkpoints:
        return True
    if data.use_batch_api is not None:
        return data.use_batch_api
    settings = configured(BatchApiSettings)
    return (
        settings.min_items > 0
        and len(data.items) >= settings.min_items
        and data.message_batch_bytes() <= MAX_BATCH_BYTES
    )


def _request(
    data: MapBatchesInput, batch: list[str], custom_id: str, ttl: CacheTTL | None, model: str
) -> dict[str, Any]:
    """One Message Batch request: the same body as the direct call (system, cached
    document, items, structured-output schema, effort), built by the same function."""
    from ai_jobs.claude.calls import build_request, output_schema

    system, prompt, cache = map_request(data, batch, ttl)
    params = build_request(
        model=model, max_tokens=data.max_tokens, prompt=prompt, system=system,
        output_schema=output_schema(BatchMappings, None), effort=data.effort, cache=cache,
    )
    return {"custom_id": custom_id, "params": params}


def run(data: MapBatchesInput, ctx: JobContext, ttl: CacheTTL | None) -> None:
    """Submit (once), wait (Deferred until the batch has ended), then record every
    result (`collect`) and delete the batch. Does nothing once every batch step is
    done or every result has been recorded."""
    from ai_jobs.claude.settings import ClaudeSettings

    batches = data.batches()
    open_steps = [(f"batch-{n}", batch) for n, batch in enumerate(batches, start=1)
                  if f"batch-{n}" not in ctx.checkpoints]
    if not open_steps or (STEP in ctx.checkpoints and COLLECTED in ctx.checkpoints):
        return
    model = data.model or ClaudeSettings.from_env().model
    made: list[tuple[SubmittedBatch, float | None]] = []  # the batch send() created, and its worst case

    def send() -> SubmittedBatch:
        from ai_jobs.claude.spend import guard_call, utf8_bytes

        # Spend control: the whole Message Batch at its worst case (every request
        # writing the cache, all of max_tokens) must fit under the job's cap. The same
        # worst case is charged to the job if the create's reply is lost after the
        # request may have reached the API (the batch may be running unseen).
        largest = max(sum(utf8_bytes(item) + 3 for item in batch) for _, batch in open_steps)
        worst = guard_call(ctx, model, input_bytes=utf8_bytes(data.instructions, data.document) + largest,
                           max_tokens=data.max_tokens, calls=len(open_steps), cache_write=True, batch=True)
        ctx.progress(1, f"Submitting {len(open_steps)} requests as a Claude Message Batch")
        created = submit([_request(data, batch, name, ttl, model) for name, batch in open_steps],
                         ctx=ctx, worst_case_usd=worst)
        made.append((created, worst))
        return created

    try:
        submitted = ctx.step(STEP, send, returns=SubmittedBatch)
    except BaseException:
        if made and STEP not in ctx.checkpoints:  # created, but its checkpoint was not written
            abandon(ctx, made[0][0], worst_case_usd=made[0][1])
        raise
    poll_seconds = configured(BatchApiSettings).poll_seconds
    wait_until_ended(ctx, submitted, poll_seconds=poll_seconds, progress=WAITING_PROGRESS)
    found = ended_results(ctx, submitted, poll_seconds=poll_seconds, progress=WAITING_PROGRESS)
    failure = collect(ctx, submitted, found)
    save_step(ctx, COLLECTED, True)
    delete_batch(ctx, submitted.id)
    if failure is not None:
        raise failure


def collect(
    ctx: JobContext, submitted: SubmittedBatch, found: dict[str, Any], *, cancelling: bool = False
) -> FatalJobError | None:
    """Record every billed result of the batch once, before any of them can fail the job:
    a reply that parses becomes its `batch-<n>` step; a refused, cut-off or unparsable
    one is checkpointed as `<custom_id>-batch-reply` with its usage, so a later run
    neither records it again nor reuses it. Returns the first refusal or cut-off (which
    fails the job as a direct call would); errored, expired and canceled requests cost
    nothing and are left to run directly."""
    failure: FatalJobError | None = None
    for custom_id in submitted.custom_ids:
        marker = f"{custom_id}-batch-reply"
        if custom_id in ctx.checkpoints or marker in ctx.checkpoints:
            continue  # recorded by an earlier run
        result = found.get(custom_id)
        if getattr(result, "type", None) != "succeeded":
            if not cancelling:
                accept(ctx, result, custom_id, submitted.model)  # not billed; logs why it runs directly
            continue
        try:
            mapped = accept(ctx, result, custom_id, submitted.model)
        except FatalJobError as exc:
            failure = failure or exc
            save_step(ctx, marker, {"stop_reason": result.message.stop_reason})
            continue
        if mapped is None:
            save_step(ctx, marker, {"stop_reason": result.message.stop_reason, "parsed": False})
        else:
            save_step(ctx, custom_id, mapped.model_dump(mode="json"))
    return failure


def accept(ctx: JobContext, result: Any, custom_id: str, requested: str | None = None) -> BatchMappings | None:
    """The mappings of one succeeded request, its usage recorded at the Batch API price;
    None when the request must run through the normal path (errored, expired,
    canceled, missing, or a reply that does not parse)."""
    kind = getattr(result, "type", None)
    if kind != "succeeded":
        detail = ""
        if kind == "errored":
            error = getattr(getattr(result, "error", None), "error", None)
            detail = f" ({getattr(error, 'type', 'error')}: {str(getattr(error, 'message', ''))[:200]})"
        log.warning("job %s: Message Batch request %s %s%s; asking Claude directly",
                    ctx.job.id, custom_id, kind or "missing", detail)
        return None
    message = result.message
    ctx.add_usage(usage_record(message.model, message.usage.model_dump(), batch=True, requested=requested))
    if message.stop_reason == "refusal":
        raise FatalJobError("claude_refusal", "Claude declined this request. Rephrase the input and submit a new job.")
    if message.stop_reason in ("max_tokens", "model_context_window_exceeded"):
        raise FatalJobError(
            "output_truncated",
            f"Claude's structured reply to {custom_id} was cut off ({message.stop_reason}); raise max_tokens "
            "or lower batch_size.",
        )
    text = "".join(block.text for block in message.content if block.type == "text")
    try:
        return BatchMappings.model_validate_json(text)
    except ValidationError as exc:
        log.warning("job %s: Message Batch reply for %s did not parse (%d errors); asking Claude directly",
                    ctx.job.id, custom_id, exc.error_count())
        return None


def cancel(ctx: JobContext) -> None:
    """on_cancel: cancel the job's Message Batch if it may still be running; once it
    has stopped, record the replies that were finished (and billed) before the cancel,
    with their usage (`collect`), so the cost is on the job and a retry reuses them."""
    if STEP not in ctx.checkpoints or COLLECTED in ctx.checkpoints:
        return
    submitted = SubmittedBatch.model_validate(ctx.checkpoints[STEP])
    open_ids = [custom_id for custom_id in submitted.custom_ids if custom_id not in ctx.checkpoints]
    if not open_ids:
        return
    finished = cancel_batch(ctx, submitted)
    if finished is None:
        return
    collect(ctx, submitted, finished, cancelling=True)  # a refusal or a cut-off reply: its usage is recorded, nothing kept
    save_step(ctx, COLLECTED, True)
    delete_batch(ctx, submitted.id)
