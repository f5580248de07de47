"""Reference Claude job types: ai.generate, ai.extract, ai.match, ai.map_batches.

Each Claude call runs inside a checkpointed step, so a retry or a new
invocation never pays for a finished call twice. The Claude client (and
`anthropic`) is imported only when a handler runs.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ai_jobs.claude.batches import MAX_BATCH_BYTES
from ai_jobs.claude.caching import CacheTTL, PromptCache
from ai_jobs.claude.spend import ClaudeWork, utf8_bytes
from ai_jobs.context import JobContext
from ai_jobs.jobs.schema_regex import check_patterns, linear_time_validator, regex_format_checker
from ai_jobs.registry import job

MAX_PROMPT_CHARS = 400_000
# A user's JSON Schema (ai.extract): bounded, and never a reason to fetch anything.
MAX_SCHEMA_CHARS = 64_000
MAX_SCHEMA_DEPTH = 20
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _json_depth(value: Any) -> int:
    """Nesting depth of objects and arrays (a scalar is 0). Iterative."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def non_local_ref(schema: Any) -> tuple[str, str] | None:
    """(JSON pointer, value) of the first `$ref`-like keyword that leaves the schema
    (anything not starting with '#'), or None. Such a reference would make the
    validator resolve a URL; we refuse it instead."""
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, pointer = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"
                if key in _REF_KEYWORDS and isinstance(value, str) and not value.startswith("#"):
                    return child, value
                stack.append((value, child))
        elif isinstance(node, list):
            stack.extend((item, f"{pointer}/{i}") for i, item in enumerate(node))
    return None


def _no_retrieval() -> Any:
    """An empty `referencing.Registry`: it never retrieves, so a reference that is not
    in the schema (or the JSON Schema meta-schemas) is an error, never a download.
    jsonschema's default registry would fetch remote `$ref`s with urlopen and no timeout."""
    from referencing import Registry

    return Registry()


def check_user_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError unless `schema` is a bounded, self-contained JSON Schema."""
    from jsonschema import validators

    # Characters of compact JSON as written: "é" is one character, not a 6-character \u
    # escape, and no separator spaces.
    if len(json.dumps(schema, ensure_ascii=False, separators=(",", ":"))) > MAX_SCHEMA_CHARS:
        raise ValueError(f"schema is larger than {MAX_SCHEMA_CHARS} characters of JSON")
    if _json_depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    ref = non_local_ref(schema)
    if ref is not None:
        pointer, target = ref
        raise ValueError(
            f"schema reference at {pointer} ({target[:100]!r}) points outside the schema; "
            "only local references such as '#/$defs/item' are allowed"
        )
    if not isinstance(schema.get("$schema", ""), str):
        raise ValueError("$schema must be a string (a JSON Schema dialect URI)")
    check_patterns(schema)  # RE2 (linear time) or a clear refusal, before anything matches with `re`
    cls = validators.validator_for(schema)
    meta_cls = validators.validator_for(cls.META_SCHEMA, default=cls)
    meta = meta_cls(cls.META_SCHEMA, registry=_no_retrieval(), format_checker=regex_format_checker(meta_cls.FORMAT_CHECKER))
    try:
        error = next(iter(meta.iter_errors(schema)), None)
    except Exception as exc:  # noqa: BLE001 - a schema that breaks the meta-validation is not a valid one
        raise ValueError(f"not a valid JSON Schema: it could not be checked ({type(exc).__name__})") from None
    if error is not None:
        raise ValueError(f"not a valid JSON Schema: {error.message}")


def schema_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for a user's schema that cannot fetch anything and matches
    its patterns with RE2 (linear time: a pattern cannot hang the worker)."""
    from jsonschema import validators

    return linear_time_validator(validators.validator_for(schema))(schema, registry=_no_retrieval())


Effort = Literal["low", "medium", "high"]
_EFFORT_HELP = (
    "how much Claude thinks and writes (the API's output_config.effort); thinking tokens bill as "
    "output and count against max_tokens"
)


class _ClaudeOptions(BaseModel):
    max_tokens: int = Field(default=4096, ge=1, le=64_000)
    model: str | None = Field(default=None, max_length=100, description="defaults to AI_JOBS_MODEL")
    effort: Effort | None = Field(default=None, description=_EFFORT_HELP + "; null: the model's default")


class _LowEffortOptions(_ClaudeOptions):
    """Extraction, scoring and mapping need little deliberation: low effort by default
    (faster, fewer thinking tokens billed); the input can raise it."""

    effort: Effort = Field(default="low", description=_EFFORT_HELP + "; low unless raised")


# -- ai.generate ------------------------------------------------------------------------


class GenerateInput(_ClaudeOptions):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system: str | None = Field(default=None, max_length=100_000)

    def claude_work(self) -> ClaudeWork:
        """One call (the spend limits check it at create)."""
        return ClaudeWork(self.model, self.max_tokens, 1, utf8_bytes(self.prompt, self.system))


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
            effort=data.effort, progress=(5, 95), progress_message="Generating",
        )
        return GenerateOutput(text=reply.text, model=reply.model, stop_reason=reply.stop_reason)

    return ctx.step("generate", call, returns=GenerateOutput)


# -- ai.extract -------------------------------------------------------------------------


class ExtractInput(_LowEffortOptions):
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    json_schema: dict[str, Any] = Field(alias="schema", description="JSON Schema the result must satisfy")
    instructions: str | None = Field(default=None, max_length=20_000)

    model_config = {"populate_by_name": True}

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        check_user_schema(schema)
        return schema

    def claude_work(self) -> ClaudeWork:
        """One call: the text, the instructions and the schema (sent as the output format)."""
        schema = json.dumps(self.json_schema, ensure_ascii=False)
        return ClaudeWork(self.model, self.max_tokens, 1, utf8_bytes(self.text, self.instructions, schema))


class ExtractOutput(BaseModel):
    data: Any
    model: str


@job("ai.extract", input=ExtractInput, output=ExtractOutput)
def extract(data: ExtractInput, ctx: JobContext) -> ExtractOutput:
    """Text plus a JSON Schema to JSON that validates against the schema."""
    from referencing.exceptions import Unresolvable

    from ai_jobs.claude.calls import ask_claude
    from ai_jobs.failures import FatalJobError

    def check(value: Any) -> str | None:
        """Why `value` does not satisfy the user's original schema (None: it does)."""
        try:
            errors = sorted(schema_validator(data.json_schema).iter_errors(value), key=lambda e: list(e.path))
        except (Unresolvable, RecursionError) as exc:  # a dangling or endlessly recursive $ref
            raise FatalJobError("invalid_schema", f"the schema cannot be applied: {type(exc).__name__}") from None
        if not errors:
            return None
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        return f"Claude's JSON does not match the schema at {where}: {first.message}"

    def call() -> ExtractOutput:
        prompt = (
            (data.instructions + "\n\n" if data.instructions else "")
            + "Extract the data described by the JSON schema from this text:\n\n"
            + data.text
        )
        reply = ask_claude(
            ctx, prompt=prompt, max_tokens=data.max_tokens, model=data.model, json_schema=data.json_schema,
            validate=check, effort=data.effort, progress=(5, 95), progress_message="Extracting",
        )
        value = reply.parsed
        return ExtractOutput(data=value, model=reply.model)

    return ctx.step("extract", call, returns=ExtractOutput)


# -- ai.match ---------------------------------------------------------------------------


class MatchInput(_LowEffortOptions):
    requirement: str = Field(min_length=1, max_length=100_000)
    document: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)

    def claude_work(self) -> ClaudeWork:
        return ClaudeWork(self.model, self.max_tokens, 1, utf8_bytes(self.requirement, self.document))


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
            max_tokens=data.max_tokens, model=data.model, output_format=MatchResult, effort=data.effort,
            progress=(5, 95), progress_message="Scoring",
        )
        return MatchOutput(**reply.parsed.model_dump(), model=reply.model)

    return ctx.step("match", call, returns=MatchOutput)


# -- ai.map_batches ---------------------------------------------------------------------


def _json_bytes(text: str) -> int:
    """Size of `text` as a JSON string, as the SDK sends it (UTF-8, not ASCII-escaped)."""
    return len(json.dumps(text, ensure_ascii=False).encode())


class MapBatchesInput(_LowEffortOptions):
    document: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    items: list[str] = Field(min_length=1, max_length=2000)
    batch_size: int = Field(default=10, ge=1, le=100)
    instructions: str = Field(
        default="For each item, say where and how the document addresses it.", max_length=20_000
    )
    use_batch_api: bool | None = Field(
        default=None,
        description="true: send every batch in one Claude Message Batch (half the price; the job waits, "
        "pending, until Claude has answered, usually within an hour and at most 24 h); false: never; "
        "null: when the job has at least AI_JOBS_MAP_BATCH_API_MIN_ITEMS items",
    )

    @field_validator("items")
    @classmethod
    def _items_not_blank(cls, items: list[str]) -> list[str]:
        if any(not item.strip() or len(item) > 5000 for item in items):
            raise ValueError("items must be non-blank strings of at most 5000 characters")
        return items

    @model_validator(mode="after")
    def _fits_one_message_batch(self) -> MapBatchesInput:
        if self.use_batch_api and self.message_batch_bytes() > MAX_BATCH_BYTES:
            raise ValueError(
                f"use_batch_api: the Message Batch would be about {self.message_batch_bytes() // 1_000_000} MB, "
                f"over the {MAX_BATCH_BYTES // 1_000_000} MB a batch may hold (every batch repeats the document); "
                "raise batch_size, send a shorter document, or leave use_batch_api unset"
            )
        return self

    def batches(self) -> list[list[str]]:
        return [self.items[i : i + self.batch_size] for i in range(0, len(self.items), self.batch_size)]

    def claude_work(self) -> ClaudeWork:
        """One call per batch, each sending the instructions, the document and its items
        (bounded by the largest batch); with several batches the document and
        instructions may be written to the prompt cache once."""
        batches = self.batches()
        prefix = utf8_bytes(self.instructions, self.document)
        largest = max(sum(utf8_bytes(item) + 3 for item in batch) for batch in batches)
        return ClaudeWork(self.model, self.max_tokens, len(batches), prefix + largest,
                          cached_prefix_bytes=prefix if len(batches) > 1 else 0)

    def message_batch_bytes(self) -> int:
        """About how large the Message Batch request would be: each batch repeats the
        document and the instructions (plus a few KB of schema and framing)."""
        per_request = _json_bytes(self.document) + _json_bytes(self.instructions) + 4_000
        return len(self.batches()) * per_request + sum(_json_bytes(item) + 4 for item in self.items)


class ItemMapping(BaseModel):
    item: str
    mapping: str
    confidence: int = Field(ge=0, le=100)


class BatchMappings(BaseModel):
    mappings: list[ItemMapping]


class MapBatchesOutput(BaseModel):
    mappings: list[ItemMapping]
    batches: int


def map_request(data: MapBatchesInput, batch: list[str], ttl: CacheTTL | None) -> tuple[str, str, PromptCache | None]:
    """(system, prompt, cache) for one batch. The instructions (system) and the
    document are the same bytes in every batch and come first; with a TTL they are the
    cached prefix, with the breakpoint on the document, and only the items follow."""
    listing = "\n".join(f"- {item}" for item in batch)
    document = f"<document>\n{data.document}\n</document>"
    if ttl is None:
        return data.instructions, f"{document}\n\nMap each of these items:\n{listing}", None
    return data.instructions, f"Map each of these items:\n{listing}", PromptCache(ttl=ttl, context=document)


def _cancel_map_batch(ctx: JobContext) -> None:
    """A cancel stops the job's Claude Message Batch too, and records what it cost."""
    from ai_jobs.jobs import map_batch_api

    map_batch_api.cancel(ctx)


@job("ai.map_batches", input=MapBatchesInput, output=MapBatchesOutput, on_cancel=_cancel_map_batch)
def map_batches(data: MapBatchesInput, ctx: JobContext) -> MapBatchesOutput:
    """A document and a list of items to one mapping per item, in checkpointed batches.
    The document is a cached prompt prefix shared by the batches; large jobs can go
    through the Message Batches API at half the price (see map_batch_api)."""
    from ai_jobs.claude.batches import STEP
    from ai_jobs.claude.calls import ask_claude
    from ai_jobs.jobs import map_batch_api

    batches = data.batches()
    total = len(batches)
    through_api = map_batch_api.wanted(data, ctx)
    ttl = map_batch_api.cache_ttl(total, through_api=through_api)

    def run_batch(index: int, batch: list[str]) -> BatchMappings:
        message = f"Analyzing batch {index} of {total}"
        ctx.progress((index - 1) * 100 / total, message)

        def call() -> BatchMappings:
            system, prompt, cache = map_request(data, batch, ttl)
            reply = ask_claude(
                ctx, system=system, prompt=prompt, cache=cache,
                max_tokens=data.max_tokens, model=data.model, output_format=BatchMappings, effort=data.effort,
                progress=((index - 1) * 100 / total, index * 100 / total), progress_message=message,
            )
            return reply.parsed

        return ctx.step(f"batch-{index}", call, returns=BatchMappings)

    from ai_jobs.jobs import map_fan_out

    if map_fan_out.wanted(total, through_api=through_api, checkpoints=ctx.checkpoints):
        # Over AI_JOBS_MAP_FAN_OUT_MIN_BATCHES: batch 1 here (it writes the cached
        # prefix), the rest as child jobs in parallel (see map_fan_out).
        return map_fan_out.run(data, ctx, ttl, run_batch(1, batches[0]))
    if through_api and ttl is not None and total > 1 and STEP not in ctx.checkpoints:
        # The first batch goes directly and writes the 1-hour cache before the Message
        # Batch is sent: the batch's requests run in parallel, so without this each
        # could write the cache (2x input) instead of reading it (0.1x).
        run_batch(1, batches[0])
    if through_api:
        # Every reply of the Message Batch becomes its batch step; what it did not
        # answer usably runs directly below.
        map_batch_api.run(data, ctx, ttl)
    results: list[ItemMapping] = []
    for index, batch in enumerate(batches, start=1):
        results.extend(run_batch(index, batch).mappings)
    return MapBatchesOutput(mappings=results, batches=total)
