"""One streamed Claude call with progress, usage accounting and classified errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ai_jobs.claude.client import get_client
from ai_jobs.claude.errors import classify
from ai_jobs.claude.pricing import usage_record
from ai_jobs.claude.settings import ClaudeSettings
from ai_jobs.failures import FatalJobError

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

CHARS_PER_TOKEN = 4  # a rough guide for progress only; usage comes from the API


@dataclass(frozen=True)
class ClaudeReply:
    text: str
    parsed: Any
    model: str
    stop_reason: str | None
    usage: dict[str, Any]


def _record_partial_usage(ctx: JobContext, stream: Any, model: str) -> None:
    """A reply rejected mid-stream was still (partly) billed: keep what the stream reported."""
    try:
        snapshot = stream.current_message_snapshot
    except Exception:  # noqa: BLE001 - no message_start yet: nothing was reported
        return
    ctx.add_usage(usage_record(snapshot.model or model, snapshot.usage.model_dump()))


def ask_claude(
    ctx: JobContext,
    *,
    prompt: str,
    max_tokens: int,
    system: str | None = None,
    model: str | None = None,
    output_format: type[BaseModel] | None = None,
    json_schema: dict[str, Any] | None = None,
    progress: tuple[float, float] | None = None,
    progress_message: str | None = None,
) -> ClaudeReply:
    """Stream one message. With `progress=(start, end)`, job progress moves from
    start towards end as output tokens arrive. Usage is recorded on the job even
    when the reply is then rejected (refusal, truncation): it was paid for."""
    import anthropic

    settings = ClaudeSettings.from_env()
    client = get_client(settings)
    chosen_model = model or settings.model
    request: dict[str, Any] = {
        "model": chosen_model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    if system:
        request["system"] = system
    if output_format is not None:
        request["output_format"] = output_format
    elif json_schema is not None:
        request["output_config"] = {"format": {"type": "json_schema", "schema": json_schema}}

    try:
        with client.messages.stream(**request) as stream:
            try:
                received = 0
                for chunk in stream.text_stream:
                    received += len(chunk)
                    if progress is not None:
                        share = min(1.0, received / CHARS_PER_TOKEN / max_tokens)
                        ctx.progress(progress[0] + (progress[1] - progress[0]) * share, progress_message)
                message = stream.get_final_message()
            except (ValidationError, anthropic.APIStatusError):
                _record_partial_usage(ctx, stream, chosen_model)
                raise
    except ValidationError as exc:
        raise FatalJobError(
            "invalid_output",
            f"Claude's structured output did not match the expected schema ({exc.error_count()} errors). "
            f"If the reply was cut off, raise max_tokens (was {max_tokens}).",
        ) from exc
    except anthropic.AnthropicError as exc:
        raise classify(exc) from exc

    usage = usage_record(message.model or chosen_model, message.usage.model_dump())
    ctx.add_usage(usage)
    text = "".join(block.text for block in message.content if block.type == "text")
    if message.stop_reason == "refusal":
        raise FatalJobError("claude_refusal", "Claude declined this request. Rephrase the input and submit a new job.")
    structured = output_format is not None or json_schema is not None
    if structured and message.stop_reason in ("max_tokens", "model_context_window_exceeded"):
        raise FatalJobError(
            "output_truncated",
            f"Claude's structured reply was cut off ({message.stop_reason}); raise max_tokens (was {max_tokens}) "
            "or send less input.",
        )
    parsed = None
    if output_format is not None:
        parsed = next((getattr(b, "parsed_output", None) for b in message.content if b.type == "text"), None)
        if parsed is None:
            raise FatalJobError("invalid_output", "Claude returned no structured output.")
    return ClaudeReply(text=text, parsed=parsed, model=message.model or chosen_model, stop_reason=message.stop_reason, usage=usage)
