"""Parallel ai.map_batches: over AI_JOBS_MAP_FAN_OUT_MIN_BATCHES batches, the map job
runs its first batch itself (writing the cached document prefix), then spawns one
`ai.map_batch` child per remaining batch and waits for them without holding a worker.

- Bounded parallelism: every child carries the concurrency key `map:<parent id>` with
  a key limit of AI_JOBS_MAP_PARALLELISM, so the claim-time key limit (the same SQL as
  any job's) runs at most that many at once; all children are spawned in one
  idempotent call, so a killed parent worker never creates a batch twice.
- Prompt caching: every child sends the same instructions and document prefix with
  the parent's TTL; batch 1 wrote it before the children start, so they read it.
- Spend: the parent's cap minus what batch 1 recorded is split evenly into the
  children's caps (each also at most its own estimate's cap), so the tree can never
  spend more than the parent's cap; a share too small for one call's worst case fails
  the parent with budget_exceeded before any child is spawned (batch 1 kept).
- Cost: once the children are done, their usage is added to the parent's, with their
  dollars as `children_cost_usd` (not `cost_usd`: the spend ledger already counted
  them on the children's rows). The map's recorded cost is cost_usd + children_cost_usd.
The Message Batches path never fans out: one Message Batch already runs in parallel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ai_jobs.claude.caching import CacheTTL
from ai_jobs.claude.spend import ClaudeWork, utf8_bytes
from ai_jobs.jobs.ai import (
    BatchMappings,
    ItemMapping,
    MapBatchesInput,
    MapBatchesOutput,
    _LowEffortOptions,
    map_request,
)
from ai_jobs.registry import job

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

CHILD_TYPE = "ai.map_batch"
USAGE_STEP = "children-usage"


class MapFanOutSettings(BaseModel):
    """AI_JOBS_MAP_FAN_OUT_MIN_BATCHES: a map job with at least this many batches runs
    them as child jobs (0: never). AI_JOBS_MAP_PARALLELISM: at most this many of one
    job's children run at once."""

    min_batches: int = Field(default=0, ge=0, le=100_000)
    parallelism: int = Field(default=10, ge=1, le=1000)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MapFanOutSettings:
        env = os.environ if environ is None else environ
        names = {"min_batches": "AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "parallelism": "AI_JOBS_MAP_PARALLELISM"}
        return cls.model_validate({field: env[name].strip() for field, name in names.items() if env.get(name, "").strip()})


class MapBatchInput(_LowEffortOptions):
    """One batch of a fanned-out ai.map_batches job (also valid on its own: a one-call map)."""

    document: str = Field(min_length=1, max_length=400_000)
    items: list[str] = Field(min_length=1, max_length=100)
    instructions: str = Field(max_length=20_000)
    cache_ttl: CacheTTL | None = Field(default=None, description="the parent's prompt-cache TTL for the document")
    index: int = Field(default=1, ge=1, le=100_000, description="the batch's number in the parent")

    def claude_work(self) -> ClaudeWork:
        prefix = utf8_bytes(self.instructions, self.document)
        return ClaudeWork(self.model, self.max_tokens, 1, prefix + sum(utf8_bytes(i) + 3 for i in self.items),
                          cached_prefix_bytes=prefix if self.cache_ttl else 0)


@job(CHILD_TYPE, input=MapBatchInput, output=BatchMappings)
def map_batch(data: MapBatchInput, ctx: JobContext) -> BatchMappings:
    """One batch of an ai.map_batches job run as a child job (same request as the parent's own batches)."""
    from ai_jobs.claude.calls import ask_claude

    parent = MapBatchesInput(document=data.document, items=data.items, batch_size=len(data.items),
                             instructions=data.instructions, max_tokens=data.max_tokens, model=data.model,
                             effort=data.effort, use_batch_api=False)

    def call() -> BatchMappings:
        system, prompt, cache = map_request(parent, data.items, data.cache_ttl)
        reply = ask_claude(
            ctx, system=system, prompt=prompt, cache=cache, max_tokens=data.max_tokens, model=data.model,
            output_format=BatchMappings, effort=data.effort, progress=(0, 100),
            progress_message=f"Analyzing batch {data.index}",
        )
        return reply.parsed

    return ctx.step(f"batch-{data.index}", call, returns=BatchMappings)


def settings() -> MapFanOutSettings:
    from ai_jobs.jobs.map_batch_api import configured

    return configured(MapFanOutSettings)  # type: ignore[no-any-return]


def wanted(batches: int, *, through_api: bool, checkpoints: Mapping[str, Any]) -> bool:
    """Whether this run fans out. A job keeps the way it started even if the settings
    change meanwhile: once spawned, always; once a later batch ran here, never (either
    switch would run batches twice)."""
    if "spawned" in checkpoints:
        return True
    if through_api or any(f"batch-{n}" in checkpoints for n in range(2, batches + 1)):
        return False
    limit = settings().min_batches
    return limit > 0 and batches >= max(2, limit)


def _children_budget(ctx: JobContext, data: MapBatchesInput, count: int) -> float | None:
    """Each child's share of what the parent's cap has left (None: no cap). Fails the
    job (budget_exceeded) when a share cannot cover one call's worst case."""
    from ai_jobs.claude.settings import ClaudeSettings
    from ai_jobs.claude.spend import call_cost_bound, job_cap, model_price
    from ai_jobs.failures import FatalJobError

    cap = job_cap(ctx)
    if cap is None:
        return None
    share = math.floor(max(0.0, cap - ctx.spent_usd) / count * 1e6) / 1e6  # the row keeps 6 decimals
    price = model_price(data.model or ClaudeSettings.from_env().model)
    largest = max(sum(utf8_bytes(i) + 3 for i in batch) for batch in data.batches())
    worst = 0.0 if price is None else call_cost_bound(
        price, utf8_bytes(data.instructions, data.document) + largest, data.max_tokens, cache_write=True)
    if share < worst:
        raise FatalJobError(
            "budget_exceeded",
            f"This job's cap leaves ${share:.4f} for each of its {count} remaining batches, less than one Claude "
            f"call could cost (${worst:.4f}); it was stopped before spawning them. Finished steps are kept. "
            "Submit a smaller job (less input, fewer items, a lower max_tokens) to go on.",
        )
    return share


def run(data: MapBatchesInput, ctx: JobContext, ttl: CacheTTL | None,
        first: BatchMappings) -> MapBatchesOutput:
    """Batches 2..n as children (batch 1 is `first`, run by the caller); their
    mappings in order, their usage added to this job's once."""
    from ai_jobs.workflows import Child

    batches = data.batches()
    rest = list(enumerate(batches, start=1))[1:]
    share = _children_budget(ctx, data, len(rest)) if "spawned" not in ctx.checkpoints else None
    options = {"max_tokens": data.max_tokens, "model": data.model, "effort": data.effort}
    key = f"map:{ctx.job.id}"
    children = [
        Child(CHILD_TYPE, {"document": data.document, "items": batch, "instructions": data.instructions,
                           "cache_ttl": ttl, "index": index, **{k: v for k, v in options.items() if v is not None}},
              f"batch-{index}", concurrency_key=key, key_limit=settings().parallelism, cost_cap_usd=share)
        for index, batch in rest
    ]
    if "spawned" not in ctx.checkpoints:
        ctx.progress(100 / len(batches), f"Analyzing {len(rest)} batches in parallel")
        for start in range(0, len(children), 1000):  # spawn_many takes at most 1000 per call
            ctx.spawn_many(children[start : start + 1000])
        ctx.step("spawned", lambda: len(children))
    done = ctx.wait_for_children([c.key for c in children])
    ctx.step(USAGE_STEP, lambda: _add_children_usage(ctx))
    mappings: list[ItemMapping] = list(first.mappings)
    for child in done:
        mappings.extend(BatchMappings.model_validate(child.result).mappings)
    return MapBatchesOutput(mappings=mappings, batches=len(batches))


def _add_children_usage(ctx: JobContext) -> float:
    """Add every child's recorded usage to this job's (dollars as children_cost_usd)."""
    total: dict[str, Any] = {}
    from ai_jobs.context import add_usage

    cursor: str | None = None
    while True:
        page = ctx.store.children(ctx.job.id, limit=100, cursor=cursor)
        for child in page.jobs:
            add_usage(total, child.usage or {})
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    dollars = float(total.pop("cost_usd", 0.0) or 0.0)
    total["children_cost_usd"] = dollars
    ctx.add_usage(total)
    return dollars
