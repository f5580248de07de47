"""One Claude call done right: streamed, cancellable, inside the invocation's budget,
with every billed token recorded and the reply checked after the stream ends.

- The request body is assembled in one place (`build_request`).
- The stream is read by a helper thread; the job thread takes its events from a
  queue and looks up at least every POLL_SECONDS even when nothing arrives (a long
  silent think, a stalled connection), so a cancel or the invocation's deadline is
  noticed within a second and the connection is shut at once.
- Usage is recorded for every call that reached the API: completed, refused,
  truncated, cancelled and interrupted alike. Output tokens come from the last
  `message_delta` (cumulative); a stream cut before one records an estimate,
  flagged `estimated: true` with `output_tokens_estimated`.
- Structured output (`output_format` = a pydantic model, or `json_schema`) is sent
  as `output_config.format` after `anthropic.transform_schema`, and parsed only
  after the final message, once `stop_reason` is known; an unparsable reply is
  asked for once more.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from ai_jobs.claude.caching import PromptCache, request_parts
from ai_jobs.claude.client import get_client
from ai_jobs.claude.errors import classify
from ai_jobs.claude.pricing import usage_record
from ai_jobs.claude.ratelimits import (
    acquire,
    ancestor_types,
    billed_tokens,
    estimate_input_tokens,
    rate_limits_from_env,
    settle,
)
from ai_jobs.claude.settings import ClaudeSettings
from ai_jobs.claude.spend import guard_call, utf8_bytes
from ai_jobs.context import ContinuationNeeded
from ai_jobs.errors import AiJobsError
from ai_jobs.failures import FatalJobError, JobFailure, RetryableJobError

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

log = logging.getLogger(__name__)

Effort = Literal["low", "medium", "high"]

CHARS_PER_TOKEN = 4  # progress, and the estimate for a stream cut before its usage came
POLL_SECONDS = 0.25  # the job thread looks up from the stream at least this often
CANCEL_REFRESH_SECONDS = 0.5  # re-read the job row (cancel flag) when nothing else did for this long
FINISH_MARGIN_SECONDS = 5.0  # left at the end of the invocation to record the outcome
FIRST_TOKEN_SECONDS = 5.0  # allowed before output starts, on top of max_tokens / tokens per second
MIN_CALL_TOKENS = 256  # a first call is shortened to fit the budget, never below this
INVALID_OUTPUT_RETRIES = 1  # one more call when a structured reply does not parse
# Models that reject `output_config.effort` (or need a beta header for it): it is left out for them.
NO_EFFORT_MODELS = (
    "claude-3", "claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1",
    "claude-opus-4-0", "claude-sonnet-4-0", "claude-opus-4-2", "claude-sonnet-4-2",
)  # Opus 4.5 was the first model to take `effort`; Haiku 4.5 and Sonnet 4.5 never did

# Claude calls made per job context (this invocation): a job that already used part of
# the invocation continues in a new one rather than squeezing its next call.
_calls_made: weakref.WeakKeyDictionary[JobContext, int] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ClaudeReply:
    text: str
    parsed: Any
    model: str
    stop_reason: str | None
    usage: dict[str, Any]
    max_tokens: int = 0  # what was sent (lower than asked when the budget did not fit it)


def supports_effort(model: str) -> bool:
    return not model.startswith(NO_EFFORT_MODELS)


def build_request(
    *,
    model: str,
    max_tokens: int,
    prompt: str,
    system: str | None = None,
    output_schema: dict[str, Any] | None = None,
    effort: Effort | None = None,
    cache: PromptCache | None = None,
) -> dict[str, Any]:
    """The Messages API body for one call; the one place it is assembled. With `cache`,
    system and user turn become text blocks with a cache breakpoint (see caching.py).
    `output_schema` must already be in the API's subset (see `output_schema`)."""
    system_part, content = request_parts(system, prompt, cache)
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    }
    if system_part:
        request["system"] = system_part
    output_config: dict[str, Any] = {}
    if output_schema is not None:
        output_config["format"] = {"type": "json_schema", "schema": output_schema}
    if effort is not None and supports_effort(model):
        output_config["effort"] = effort
    if output_config:
        request["output_config"] = output_config
    return request


def output_schema(output_format: type[BaseModel] | None, json_schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema to send: converted as the SDK does for structured outputs
    (`anthropic.transform_schema`: unsupported keywords such as `minimum` or
    `maxLength` move into the description, objects get `additionalProperties: false`).
    Replies are still validated against the original."""
    if output_format is None and json_schema is None:
        return None
    from anthropic import transform_schema

    try:
        return transform_schema(output_format if output_format is not None else dict(json_schema or {}))
    except Exception as exc:  # noqa: BLE001 - the SDK raises ValueError, AssertionError or TypeError
        raise FatalJobError(
            "invalid_schema",
            f"The schema cannot be used for Claude's structured output ({type(exc).__name__}: {str(exc)[:300]}). "
            "Give every (sub)schema a 'type' (a single name), 'anyOf', 'oneOf', 'allOf', 'enum' or 'const'.",
        ) from None


def plan_max_tokens(ctx: JobContext, max_tokens: int, tokens_per_second: float) -> int:
    """`max_tokens` for the next call so that, at `tokens_per_second` after
    FIRST_TOKEN_SECONDS, it ends FINISH_MARGIN_SECONDS before the invocation does.
    When the asked-for max_tokens does not fit: a job that already ran a step or a call
    in this invocation, or that started after the invocation's first tenth (it waited
    for a due job, or ran after others), continues in a new one (ContinuationNeeded: it
    will have more time); a job at the start of a fresh invocation is shortened to what
    fits (the next invocation would be no longer), unless that is below
    MIN_CALL_TOKENS, which continues too."""
    remaining = ctx.remaining()
    if remaining is None:
        return max_tokens
    usable = remaining - FINISH_MARGIN_SECONDS - FIRST_TOKEN_SECONDS
    fits = int(usable * tokens_per_second)
    if fits >= max_tokens:
        return max_tokens
    worked = ctx.steps_run > 0 or _calls_made.get(ctx, 0) > 0
    if worked or not ctx.fresh_invocation() or fits < MIN_CALL_TOKENS:
        needed = FINISH_MARGIN_SECONDS + FIRST_TOKEN_SECONDS + max_tokens / tokens_per_second
        raise ContinuationNeeded(
            f"{remaining:.0f}s left; a Claude call of max_tokens={max_tokens} needs ~{needed:.0f}s "
            f"at {tokens_per_second:g} tokens/s"
        )
    log.info("job %s: max_tokens %d lowered to %d to end inside the invocation", ctx.job.id, max_tokens, fits)
    return fits


# -- one streamed call -------------------------------------------------------------------


class _OutOfTime(Exception):
    """The invocation's deadline came while the call was still streaming."""


_STARTED = object()  # the response headers came: the request reached the API
_END = object()


@dataclass
class _Tally:
    """What one call was billed for, from the events the job thread has seen."""

    requested: str  # the model id the request named
    max_tokens: int  # as sent: the most output a cut stream can have been billed for
    model: str | None = None  # the reply's own id, once message_start names it
    reached_api: bool = False
    usage: dict[str, Any] | None = None
    output_final: bool = False  # a message_delta gave the cumulative output count
    stop_reason: str | None = None
    stopped: bool = False
    chars: int = 0
    events: int = 0
    started: float = field(default_factory=time.monotonic)

    def see(self, event: Any) -> None:
        self.events += 1
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.model = event.message.model or None
            self.usage = event.message.usage.model_dump(exclude_none=True)
        elif kind == "message_delta":
            usage = self.usage if self.usage is not None else {}
            delta = event.usage
            usage["output_tokens"] = delta.output_tokens  # cumulative, like the other counts
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                value = getattr(delta, key, None)
                if value is not None:
                    usage[key] = value
            self.usage = usage
            self.output_final = True
            self.stop_reason = event.delta.stop_reason
        elif kind == "content_block_delta":
            delta = event.delta
            for attr in ("text", "thinking", "partial_json"):  # signature deltas are not output text
                self.chars += len(getattr(delta, attr, None) or "")
        elif kind == "message_stop":
            self.stopped = True

    @property
    def complete(self) -> bool:
        return self.stopped or (self.output_final and self.stop_reason is not None)

    def output_so_far(self) -> int:
        if self.output_final and self.usage is not None:
            return int(self.usage.get("output_tokens") or 0)
        return math.ceil(self.chars / CHARS_PER_TOKEN)

    def record(self) -> dict[str, Any]:
        """The usage record for the job (requests 1 with no tokens when the API answered
        with an error before any message began). A stream cut before its final
        `message_delta` records the most it can have been billed for, the `max_tokens`
        sent: the characters received say nothing of thinking that was omitted or
        summarised, nor of text that tokenizes densely, and an under-count would let a
        cancel-and-retry loop spend outside the job's cap and the user's budget."""
        usage = dict(self.usage or {})
        estimated = self.usage is not None and not self.output_final
        if estimated:
            estimate = max(int(usage.get("output_tokens") or 0), math.ceil(self.chars / CHARS_PER_TOKEN),
                           self.max_tokens)
            usage["output_tokens"] = estimate
        record = usage_record(self.model or self.requested, usage, requested=self.requested)
        if estimated:
            record["estimated"] = True
            record["output_tokens_estimated"] = record["output_tokens"]
        return record


class _Watch:
    """The job thread's checks between events: cancel (re-reading the row when no
    progress write did so lately) and the invocation's deadline."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.writes = ctx.progress_writes
        self.seen_at = time.monotonic()

    def check(self) -> None:
        ctx, now = self.ctx, time.monotonic()
        if ctx.progress_writes != self.writes:  # a progress write just returned the row
            self.writes, self.seen_at = ctx.progress_writes, now
        elif now - self.seen_at >= CANCEL_REFRESH_SECONDS:
            self.seen_at = now
            try:
                ctx.observe(ctx.store.get(ctx.job.id))
            except AiJobsError as exc:  # a database hiccup: the heartbeat still carries the flag
                log.debug("job %s: could not re-read the row: %s", ctx.job.id, exc.code)
        ctx.check_cancelled()
        remaining = ctx.remaining()
        if remaining is not None and remaining <= FINISH_MARGIN_SECONDS:
            raise _OutOfTime


def _shut(stream: Any) -> None:
    """Shut the connection under a stream a reader thread may be blocked on: closing the
    response alone does not wake a blocked read; shutting the socket down does."""
    try:
        network = stream.response.extensions.get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError, KeyError):
        pass


def _reached_api(exc: BaseException) -> bool:
    """Whether a failed call got as far as the API (it counts as a request)."""
    import anthropic
    import httpx2

    if isinstance(exc, anthropic.APIStatusError):
        return True
    if isinstance(exc, anthropic.APIConnectionError):
        return not isinstance(exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout))
    return False


def _stream_once(
    ctx: JobContext,
    client: Any,
    request: dict[str, Any],
    tally: _Tally,
    *,
    timeout: Any,
    on_output: Callable[[int], None] | None,
    on_text: Callable[[str], None] | None = None,
) -> Any:
    """Send one streamed request and read it to the end; returns the final message.
    A helper thread sends the request and reads the events (both block); the job
    thread takes them from a queue and checks cancel and deadline between them, at
    least every POLL_SECONDS. Raises the SDK's and httpx2's own errors,
    JobCancelled/LeaseLostError, _OutOfTime."""
    watch = _Watch(ctx)
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    opened: dict[str, Any] = {}
    aborted = threading.Event()

    def read() -> None:
        try:
            # No SDK retries here: one would sleep out a retry-after inside this thread and
            # send a billed request after the job had given up; the queue retries instead.
            stream = client.with_options(max_retries=0).messages.stream(**request, timeout=timeout).__enter__()
        except BaseException as exc:  # noqa: BLE001 - handed to the job thread
            events.put(exc)
            return
        opened["stream"] = stream
        events.put(_STARTED)
        try:
            if aborted.is_set():  # the job thread gave up while the response was on its way
                return
            for event in stream:
                events.put(event)
            events.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the job thread
            events.put(exc)
        finally:
            if aborted.is_set():
                stream.close()

    reader = threading.Thread(target=read, name=f"claude-stream-{ctx.job.id}", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                item = None
            if item is _END:
                reader.join(timeout=1.0)  # it is finishing: let it go before the checks below
                break
            if item is _STARTED:
                tally.reached_api = True
            elif isinstance(item, BaseException):
                if not tally.reached_api:
                    tally.reached_api = _reached_api(item)
                if isinstance(item, Exception) and tally.complete and "stream" in opened:
                    # The final message_delta (stop_reason, output count) had come: the reply
                    # is whole and billed; asking again would pay for it twice.
                    log.info("job %s: the Claude stream ended with %s after its final message_delta; "
                             "the reply is complete", ctx.job.id, type(item).__name__)
                    break
                raise item
            elif item is not None:
                tally.see(item)
                if on_text is not None and getattr(item, "type", None) == "content_block_delta":
                    text = getattr(item.delta, "text", None)  # text deltas only: not thinking, not signatures
                    if text:
                        on_text(text)
                if on_output is not None and getattr(item, "type", None) in ("content_block_delta", "message_delta"):
                    on_output(tally.output_so_far())
            watch.check()
        if not tally.complete:
            import httpx2

            raise httpx2.RemoteProtocolError("the stream ended before message_stop")
        return opened["stream"].current_message_snapshot
    finally:
        if reader.is_alive():
            aborted.set()
            stream = opened.get("stream")
            if stream is not None:
                _shut(stream)
                reader.join(timeout=1.0)
        stream = opened.get("stream")
        if stream is not None and not reader.is_alive():
            stream.close()


# -- the call with its budget, limits, usage and checks ------------------------------------


class _Unparsable(Exception):
    """A structured reply that does not parse or validate."""


def _parse(text: str, output_format: type[BaseModel] | None, validate: Callable[[Any], str | None] | None) -> Any:
    if not text.strip():
        raise _Unparsable("Claude returned no structured output")
    if output_format is not None:
        try:
            return output_format.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise _Unparsable(
                f"Claude's structured output did not match the expected schema ({exc.error_count()} errors; "
                f"first at {where}: {first['msg']})"
            ) from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _Unparsable(f"Claude's reply was not JSON: {exc}") from None
    problem = validate(value) if validate is not None else None
    if problem:
        raise _Unparsable(problem)
    return value


def _transport_failure(ctx: JobContext, tally: _Tally, exc: Exception) -> JobFailure:
    """A dropped or stalled connection (raw httpx2 errors: the SDK does not wrap those
    raised mid-stream): retryable, logged as one line."""
    import httpx2

    what = "stalled" if isinstance(exc, httpx2.TimeoutException) else "was cut"
    log.warning(
        "job %s: Claude stream %s after %.1f s and %d events (%s: %s); the job will be retried",
        ctx.job.id, what, time.monotonic() - tally.started, tally.events, type(exc).__name__, str(exc)[:200],
    )
    return classify(exc)


def _call(
    ctx: JobContext,
    settings: ClaudeSettings,
    request: dict[str, Any],
    *,
    job_type: str,
    estimate_text: tuple[str | None, ...],
    schema: dict[str, Any] | None,
    on_output: Callable[[float], None] | None,
) -> tuple[Any, dict[str, Any]]:
    """One request: its share of the rate limits first (a full limit defers the job),
    then `max_tokens` and the read timeout fitted to the budget (or ContinuationNeeded),
    then the stream, with its usage recorded on the job whatever happens. Sets the
    `max_tokens` sent in `request`; returns the final message and its usage record."""
    import anthropic
    import httpx2

    from ai_jobs.context import JobCancelled
    from ai_jobs.errors import LeaseLostError

    client = get_client(settings)
    configured = rate_limits_from_env()
    limits = configured.for_call(request["model"], job_type, *ancestor_types(ctx, configured))
    reservation = None
    if limits:
        reservation = acquire(
            ctx, limits, input_tokens=estimate_input_tokens(*estimate_text, extra=schema),
            output_tokens=request["max_tokens"],
        )
    try:
        request["max_tokens"] = plan_max_tokens(ctx, request["max_tokens"], settings.tokens_per_second)
    except ContinuationNeeded:
        if reservation is not None:
            settle(ctx, reservation, input_tokens=0, output_tokens=0)
        raise
    sent_max_tokens = request["max_tokens"]
    read_timeout = settings.timeout_seconds
    remaining = ctx.remaining()
    if remaining is not None:
        read_timeout = max(1.0, min(read_timeout, remaining - FINISH_MARGIN_SECONDS))
    timeout = anthropic.Timeout(read_timeout, connect=min(settings.connect_timeout_seconds, read_timeout))
    tally = _Tally(request["model"], sent_max_tokens)
    _calls_made[ctx] = _calls_made.get(ctx, 0) + 1
    record: dict[str, Any] = {}
    # Live output: deltas to the job's private Broadcast topic (a background thread),
    # the text so far with each coalesced progress write. A new stream per call.
    from ai_jobs.claude.live import LiveStream, publisher

    live = LiveStream(ctx.job.id, "json" if schema is not None else "text", publisher())
    ctx.attach_stream(live.snapshot)
    try:
        message = _stream_once(
            ctx, client, request, tally, timeout=timeout,
            on_output=None if on_output is None else lambda tokens: on_output(tokens / max(1, sent_max_tokens)),
            on_text=live.feed,
        )
    except (JobCancelled, LeaseLostError):
        log.info("job %s: Claude call stopped after %.1f s (cancel or lost lease)",
                 ctx.job.id, time.monotonic() - tally.started)
        raise
    except _OutOfTime:
        raise RetryableJobError(
            "claude_timeout",
            "Claude had not finished when the invocation's time ran out; the job will be retried "
            "(lower max_tokens or effort if this repeats).",
        ) from None
    except (httpx2.TimeoutException, httpx2.TransportError) as exc:
        raise _transport_failure(ctx, tally, exc) from None
    except anthropic.AnthropicError as exc:
        raise classify(exc) from exc
    finally:
        live.close()
        ctx.attach_stream(None)
        if tally.reached_api:  # billed (or at least counted) whatever happened
            record = tally.record()
            ctx.add_usage(record)
        if reservation is not None:
            input_tokens, output_tokens = billed_tokens(record or None)
            settle(ctx, reservation, input_tokens=input_tokens, output_tokens=output_tokens)
    return message, record

def ask_claude(
    ctx: JobContext,
    *,
    prompt: str,
    max_tokens: int,
    system: str | None = None,
    model: str | None = None,
    output_format: type[BaseModel] | None = None,
    json_schema: dict[str, Any] | None = None,
    validate: Callable[[Any], str | None] | None = None,
    effort: Effort | None = None,
    cache: PromptCache | None = None,
    progress: tuple[float, float] | None = None,
    progress_message: str | None = None,
) -> ClaudeReply:
    """Stream one message (two when a structured reply does not parse the first time).

    `output_format` (a pydantic model) or `json_schema` asks for structured output:
    `parsed` is then the model instance or the JSON value, checked with `validate`
    (returns a problem or None) against the original schema. `effort` sets
    `output_config.effort` (None: the model's default). `cache` adds a prompt-cache
    breakpoint (a repeated `cache.context` goes first in the user turn). With
    `progress=(start, end)`, job progress moves from start towards end as output
    (thinking included) arrives.
    Failures are classified JobFailures; JobCancelled and ContinuationNeeded pass through.
    With AI_JOBS_RATE_LIMITS covering this model or job type, each call first reserves
    its share of the shared per-minute limits and settles it to the billed usage after."""
    try:
        settings = ClaudeSettings.from_env()
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise FatalJobError("claude_config", f"The worker's Claude settings are invalid ({problems}).") from None
    get_client(settings)  # a missing API key fails before anything else
    chosen_model = model or settings.model
    schema = output_schema(output_format, json_schema)
    structured = schema is not None
    input_bytes = utf8_bytes(system, cache.context if cache else None, prompt) + (
        len(json.dumps(schema, ensure_ascii=False).encode()) if schema is not None else 0)  # as create measures it
    problem = ""
    for attempt in range(1 + (INVALID_OUTPUT_RETRIES if structured else 0)):
        ctx.check_cancelled()
        # Spend control: no call whose worst case would take the job over its cap.
        guard_call(ctx, chosen_model, input_bytes=input_bytes, max_tokens=max_tokens, cache_write=cache is not None)
        request = build_request(
            model=chosen_model, max_tokens=max_tokens, prompt=prompt, system=system,
            output_schema=schema, effort=effort, cache=cache,
        )

        def on_output(share: float) -> None:
            if progress is not None:
                ctx.progress(progress[0] + (progress[1] - progress[0]) * min(1.0, share), progress_message)

        message, usage = _call(
            ctx, settings, request, job_type=ctx.job.job_type,
            estimate_text=(system, cache.context if cache else None, prompt), schema=schema,
            on_output=on_output if progress is not None else None,
        )
        sent_max_tokens = request["max_tokens"]
        used_model = message.model or chosen_model
        text = "".join(block.text for block in message.content if block.type == "text")
        if message.stop_reason == "refusal":
            raise FatalJobError(
                "claude_refusal", "Claude declined this request. Rephrase the input and submit a new job."
            )
        if structured and message.stop_reason in ("max_tokens", "model_context_window_exceeded"):
            capped = f", lowered from {max_tokens} to fit the invocation's time" if sent_max_tokens < max_tokens else ""
            raise FatalJobError(
                "output_truncated",
                f"Claude's structured reply was cut off ({message.stop_reason}) at max_tokens={sent_max_tokens}"
                f"{capped}; raise max_tokens (thinking counts against it too), lower effort, or send less input.",
            )
        if not structured:
            return ClaudeReply(text, None, used_model, message.stop_reason, usage, sent_max_tokens)
        try:
            parsed = _parse(text, output_format, validate)
        except _Unparsable as why:
            problem = str(why)
            log.info("job %s: structured reply %d did not parse (%s)", ctx.job.id, attempt + 1, problem[:200])
            continue
        return ClaudeReply(text, parsed, used_model, message.stop_reason, usage, sent_max_tokens)
    raise FatalJobError(
        "invalid_output",
        f"{problem}. Asked {1 + INVALID_OUTPUT_RETRIES} times; if the reply was cut off, raise max_tokens "
        f"(was {max_tokens}).",
    )

