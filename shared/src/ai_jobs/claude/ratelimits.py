"""Claude rate limits shared by every worker, kept in the database.

Parallel serverless invocations each call Claude; only a budget they all see keeps
them together under the organization's per-minute limits. Before a call, the
worker reserves 1 request, the estimated input tokens and `max_tokens` output in
every configured bucket that applies (`model:<model>`, `type:<job type>` of the job
and of each of its ancestors, so a limit on a type also bounds the children it
spawns, e.g. ai.map_batches and its ai.map_batch children); after
it, the reservation is settled to what was billed. A call that does not fit waits:
a few seconds in place, longer by deferring the job (pending again at the time
the window frees up, no attempt spent, no error).

Limits come from AI_JOBS_RATE_LIMITS (JSON); none by default.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from ai_jobs.errors import AiJobsError

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

log = logging.getLogger(__name__)

ENV_VAR = "AI_JOBS_RATE_LIMITS"
# model:<id> or type:<job type>; a trailing * shares one bucket among every id with that
# prefix (Anthropic counts some model families against one limit).
BUCKET = re.compile(r"(model|type):(\*|[A-Za-z0-9][A-Za-z0-9._:@/-]{0,190}\*?)")
# A wait this short is slept in place; a longer one defers the job (no attempt spent).
SLEEP_IN_PLACE_SECONDS = 5.0
# At most this much in-place sleeping per call before deferring anyway.
SLEEP_IN_PLACE_TOTAL_SECONDS = 20.0
# An in-place sleep must leave the invocation this much budget for the call itself.
SLEEP_MIN_REMAINING_SECONDS = 10.0
CHARS_PER_INPUT_TOKEN = 3  # conservative: English prose runs ~4 characters per token
INPUT_TOKENS_OVERHEAD = 20  # message framing


class RateLimit(BaseModel):
    """One bucket's per-minute limits; a missing one is not limited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, ge=1, le=2_000_000_000, description="requests per minute")
    itpm: int | None = Field(default=None, ge=1, le=2_000_000_000, description="input tokens per minute")
    otpm: int | None = Field(default=None, ge=1, le=2_000_000_000, description="output tokens per minute")

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimit:
        if self.rpm is None and self.itpm is None and self.otpm is None:
            raise ValueError("give at least one of rpm, itpm, otpm")
        return self


class RateLimits(RootModel[dict[str, RateLimit]]):
    """{"model:claude-sonnet-5-5": {"rpm": 50, "itpm": 30000, "otpm": 8000}, "type:ai.map_batches": {"rpm": 20}}"""

    root: dict[str, RateLimit] = Field(default_factory=dict)

    @field_validator("root")
    @classmethod
    def _buckets(cls, value: dict[str, RateLimit]) -> dict[str, RateLimit]:
        for name in value:
            if not BUCKET.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a bucket: use model:<model id> (e.g. model:claude-sonnet-5-5, or "
                    "model:claude-opus-5* for every id with that prefix) or type:<job type> (e.g. type:ai.map_batches)"
                )
        if len(value) > 50:
            raise ValueError("at most 50 buckets")
        return value

    @classmethod
    def parse(cls, raw: str | None) -> RateLimits:
        """The setting's JSON; a bad value raises ValueError naming the setting."""
        if not raw or not raw.strip():
            return cls()
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(
                f"{ENV_VAR} is not valid ({details}). Expected JSON such as "
                '{"model:claude-sonnet-5-5": {"rpm": 50, "itpm": 30000, "otpm": 8000}}'
            ) from None

    def for_call(self, model: str, job_type: str, *ancestor_types: str) -> dict[str, dict[str, int]]:
        """The buckets this call counts against, with their limits (wire form): the
        model's, the job type's and, for a child job, its ancestors' types'."""
        keys = (f"model:{model}", f"type:{job_type}", *(f"type:{t}" for t in ancestor_types))

        def applies(name: str) -> bool:
            if name.endswith("*"):
                return any(key.startswith(name[:-1]) for key in keys)
            return name in keys

        return {name: limit.model_dump(exclude_none=True) for name, limit in self.root.items() if applies(name)}

    @property
    def has_type_buckets(self) -> bool:
        return any(name.startswith("type:") for name in self.root)


@lru_cache(maxsize=8)
def _parsed(raw: str) -> RateLimits:
    return RateLimits.parse(raw)


def rate_limits_from_env() -> RateLimits:
    """AI_JOBS_RATE_LIMITS, parsed once per distinct value."""
    return _parsed(os.environ.get(ENV_VAR, ""))


# A job's type and parent never change: (job type, parent id) by job id, so the children
# of one parent that a worker runs read the parent once.
_lineage: dict[UUID, tuple[str, UUID | None]] = {}
_LINEAGE_MAX = 4096
_ANCESTORS_MAX = 100  # AI_JOBS_MAX_SPAWN_DEPTH is at most 100


def ancestor_types(ctx: JobContext, limits: RateLimits) -> tuple[str, ...]:
    """The types of the job's parent, its parent's parent and so on (parent first), for
    the type buckets: a child's Claude calls count against its ancestors' types too.
    Empty for a job that is not a child, or when no type bucket is configured (no read)."""
    from ai_jobs.errors import JobNotFoundError

    parent = ctx.job.parent_id
    if parent is None or not limits.has_type_buckets:
        return ()
    types: list[str] = []
    while parent is not None and len(types) < _ANCESTORS_MAX:
        known = _lineage.get(parent)
        if known is None:
            try:
                row = ctx.store.get(parent)
            except JobNotFoundError:  # deleted meanwhile: the types above it are unknown
                break
            known = (row.job_type, row.parent_id)
            if len(_lineage) >= _LINEAGE_MAX:
                _lineage.clear()
            _lineage[parent] = known
        types.append(known[0])
        parent = known[1]
    return tuple(types)


def estimate_input_tokens(*texts: str | None, extra: Any = None) -> int:
    """Input tokens a request will be billed for, estimated before sending it:
    characters / 3 rounds up for most text (the API bills fewer for English).
    `extra` (an output schema) is counted as its JSON. The one place to swap in
    an exact count."""
    chars = sum(len(t) for t in texts if t)
    if extra is not None:
        chars += len(json.dumps(extra, default=str, ensure_ascii=False))
    return math.ceil(chars / CHARS_PER_INPUT_TOKEN) + INPUT_TOKENS_OVERHEAD


def billed_tokens(usage: Any) -> tuple[int, int]:
    """What counts against the limits from an API `usage`: uncached input
    (input_tokens + cache_creation_input_tokens; cache reads do not count) and output."""
    if usage is None:
        return 0, 0
    get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
    input_tokens = int(get("input_tokens") or 0) + int(get("cache_creation_input_tokens") or 0)
    return input_tokens, int(get("output_tokens") or 0)


def acquire(ctx: JobContext, limits: dict[str, dict[str, int]], *, input_tokens: int, output_tokens: int) -> UUID:
    """Reserve capacity for one call, waiting a little in place if needed. Raises
    Deferred when the wait is long (or the worker is stopping): the runner puts the
    job back to pending for when the window has room."""
    from ai_jobs.context import Deferred  # not at import: settings imports this module

    slept = 0.0
    while True:
        ctx.check_cancelled()
        answer = ctx.store.rate_acquire(
            limits, input_tokens=input_tokens, output_tokens=output_tokens, job_id=ctx.job.id
        )
        if answer.reservation is not None:
            return answer.reservation
        wait = float(answer.wait_seconds or 0.0)
        remaining = ctx.remaining()
        fits_budget = remaining is None or remaining - wait >= SLEEP_MIN_REMAINING_SECONDS
        if wait <= SLEEP_IN_PLACE_SECONDS and slept + wait <= SLEEP_IN_PLACE_TOTAL_SECONDS and fits_budget:
            log.info("job %s: waiting %.1f s in place for rate limit %s %s", ctx.job.id, wait, answer.bucket, answer.limit)
            if ctx.wait(wait):
                slept += wait
                continue
        raise Deferred(
            wait,
            reason="rate_limited",
            message=(
                f"Waiting for the Claude rate limit ({answer.limit} of {answer.bucket}); "
                f"resumes in about {math.ceil(wait)} s"
            ),
        )


def settle(ctx: JobContext, reservation: UUID, *, input_tokens: int, output_tokens: int) -> None:
    """Correct the reservation to the billed usage. A failure only leaves the
    (larger) estimate in place for the rest of the minute: logged, not raised."""
    try:
        ctx.store.rate_settle(reservation, input_tokens=input_tokens, output_tokens=output_tokens)
    except AiJobsError as exc:
        log.warning("job %s: could not settle rate reservation %s: %s", ctx.job.id, reservation, exc.code)
