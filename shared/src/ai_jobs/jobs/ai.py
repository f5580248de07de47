"""Reference Claude job types: ai.generate, ai.extract, ai.match, ai.map_batches.

Each Claude call runs inside a checkpointed step, so a retry or a new
invocation never pays for a finished call twice. The Claude client (and
`anthropic`) is imported only when a handler runs.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field, field_validator

from ai_jobs.context import JobContext
from ai_jobs.registry import job

MAX_PROMPT_CHARS = 400_000


class _ClaudeOptions(BaseModel):
    max_tokens: int = Field(default=4096, ge=1, le=64_000)
    model: str | None = Field(default=None, max_length=100, description="defaults to AI_JOBS_MODEL")


# -- ai.generate ------------------------------------------------------------------------


class GenerateInput(_ClaudeOptions):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system: str | None = Field(default=None, max_length=100_000)


class GenerateOutput(BaseModel):
    text: str
    model: str
    stop_reason: str | None


@job("ai.generate", input=GenerateInput, output=GenerateOutput)
def generate(data: GenerateInput, ctx: JobContext) -> GenerateOutput:
    """Prompt (and optional system prompt) to text, streamed with live progress."""
    from ai_jobs.claude.calls import ask_claude

    def call() -> GenerateOutput:
        reply = ask_claude(
            ctx, prompt=data.prompt, system=data.system, max_tokens=data.max_tokens, model=data.model,
            progress=(5, 95), progress_message="Generating",
        )
        return GenerateOutput(text=reply.text, model=reply.model, stop_reason=reply.stop_reason)

    return ctx.step("generate", call, returns=GenerateOutput)


# -- ai.extract -------------------------------------------------------------------------


class ExtractInput(_ClaudeOptions):
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    json_schema: dict[str, Any] = Field(alias="schema", description="JSON Schema the result must satisfy")
    instructions: str | None = Field(default=None, max_length=20_000)

    model_config = {"populate_by_name": True}

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import SchemaError, validators

        try:
            validators.validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return schema


class ExtractOutput(BaseModel):
    data: Any
    model: str


@job("ai.extract", input=ExtractInput, output=ExtractOutput)
def extract(data: ExtractInput, ctx: JobContext) -> ExtractOutput:
    """Text plus a JSON Schema to JSON that validates against the schema."""
    from jsonschema import validators

    from ai_jobs.claude.calls import ask_claude
    from ai_jobs.failures import FatalJobError

    def call() -> ExtractOutput:
        prompt = (
            (data.instructions + "\n\n" if data.instructions else "")
            + "Extract the data described by the JSON schema from this text:\n\n"
            + data.text
        )
        reply = ask_claude(
            ctx, prompt=prompt, max_tokens=data.max_tokens, model=data.model, json_schema=data.json_schema,
            progress=(5, 95), progress_message="Extracting",
        )
        try:
            value = json.loads(reply.text)
        except ValueError as exc:
            raise FatalJobError("invalid_output", f"Claude's reply was not JSON: {exc}") from exc
        validator = validators.validator_for(data.json_schema)(data.json_schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "(root)"
            raise FatalJobError(
                "invalid_output", f"Claude's JSON does not match the schema at {where}: {first.message}"
            )
        return ExtractOutput(data=value, model=reply.model)

    return ctx.step("extract", call, returns=ExtractOutput)


# -- ai.match ---------------------------------------------------------------------------


class MatchInput(_ClaudeOptions):
    requirement: str = Field(min_length=1, max_length=100_000)
    document: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class MatchResult(BaseModel):
    score: int = Field(ge=0, le=100, description="how well the document meets the requirement")
    rationale: str
    recommendations: list[str]


class MatchOutput(MatchResult):
    model: str


@job("ai.match", input=MatchInput, output=MatchOutput)
def match(data: MatchInput, ctx: JobContext) -> MatchOutput:
    """A requirement and a document to a 0-100 score, a rationale and recommendations."""
    from ai_jobs.claude.calls import ask_claude

    def call() -> MatchOutput:
        reply = ask_claude(
            ctx,
            system="You assess how well a document satisfies a requirement. Be specific and fair.",
            prompt=f"<requirement>\n{data.requirement}\n</requirement>\n\n<document>\n{data.document}\n</document>",
            max_tokens=data.max_tokens, model=data.model, output_format=MatchResult,
            progress=(5, 95), progress_message="Scoring",
        )
        return MatchOutput(**reply.parsed.model_dump(), model=reply.model)

    return ctx.step("match", call, returns=MatchOutput)


# -- ai.map_batches ---------------------------------------------------------------------


class MapBatchesInput(_ClaudeOptions):
    document: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    items: list[str] = Field(min_length=1, max_length=2000)
    batch_size: int = Field(default=10, ge=1, le=100)
    instructions: str = Field(
        default="For each item, say where and how the document addresses it.", max_length=20_000
    )

    @field_validator("items")
    @classmethod
    def _items_not_blank(cls, items: list[str]) -> list[str]:
        if any(not item.strip() or len(item) > 5000 for item in items):
            raise ValueError("items must be non-blank strings of at most 5000 characters")
        return items


class ItemMapping(BaseModel):
    item: str
    mapping: str
    confidence: int = Field(ge=0, le=100)


class BatchMappings(BaseModel):
    mappings: list[ItemMapping]


class MapBatchesOutput(BaseModel):
    mappings: list[ItemMapping]
    batches: int


@job("ai.map_batches", input=MapBatchesInput, output=MapBatchesOutput)
def map_batches(data: MapBatchesInput, ctx: JobContext) -> MapBatchesOutput:
    """A document and a list of items to one mapping per item, in checkpointed batches."""
    from ai_jobs.claude.calls import ask_claude

    batches = [data.items[i : i + data.batch_size] for i in range(0, len(data.items), data.batch_size)]
    total = len(batches)
    results: list[ItemMapping] = []
    for index, batch in enumerate(batches, start=1):
        message = f"Analyzing batch {index} of {total}"
        ctx.progress((index - 1) * 100 / total, message)

        def call(batch: list[str] = batch, index: int = index, message: str = message) -> BatchMappings:
            listing = "\n".join(f"- {item}" for item in batch)
            reply = ask_claude(
                ctx,
                system=data.instructions,
                prompt=f"<document>\n{data.document}\n</document>\n\nMap each of these items:\n{listing}",
                max_tokens=data.max_tokens, model=data.model, output_format=BatchMappings,
                progress=((index - 1) * 100 / total, index * 100 / total), progress_message=message,
            )
            return reply.parsed

        mapped = ctx.step(f"batch-{index}", call, returns=BatchMappings)
        results.extend(mapped.mappings)
    return MapBatchesOutput(mappings=results, batches=total)
