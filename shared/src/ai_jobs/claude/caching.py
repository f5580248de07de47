"""Prompt caching: where the cache breakpoint goes and how long the cache lives.

A job that sends the same large context in several calls (ai.map_batches sends its
document with every batch of items) marks the end of that repeated prefix with
`cache_control: {"type": "ephemeral"}`. The API then bills the prefix once as a cache
write (1.25x the input price for the 5-minute cache, 2x for the 1-hour one) and later
identical prefixes as cache reads (0.1x). Only a byte-identical prefix hits: the order
is system prompt (a list of text blocks), then the repeated context (with the
breakpoint), then what changes from call to call. A prefix shorter than the model's
minimum cacheable length is not cached and costs the plain input price.

TTL: the 5-minute cache is refreshed by every read, so it lasts as long as calls
follow each other within 5 minutes; a job that can span longer (many batches, a retry
backoff, a continuation) writes the 1-hour cache instead.

Settings (checked at start-up through ai_jobs.settings):
  AI_JOBS_PROMPT_CACHE                 auto (default) | 5m | 1h | off
  AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS    auto: this many calls or more share the prefix
                                       -> 1-hour TTL (default 5); 2 to that - 1 -> 5 m;
                                       a single call gets no breakpoint (a write that
                                       is never read only costs more); requests sent
                                       through the Batch API get the 1-hour TTL
This module imports only pydantic: the request path loads it with the settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CacheTTL = Literal["5m", "1h"]
CacheMode = Literal["auto", "5m", "1h", "off"]


class PromptCacheSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: CacheMode = "auto"
    one_hour_min_calls: int = Field(default=5, ge=2, le=100_000)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PromptCacheSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("AI_JOBS_PROMPT_CACHE"):
            values["mode"] = env["AI_JOBS_PROMPT_CACHE"].strip().lower()
        if env.get("AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS"):
            values["one_hour_min_calls"] = env["AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS"]
        return cls.model_validate(values)

    def ttl_for(self, calls: int, *, long_running: bool = False) -> CacheTTL | None:
        """The TTL for a prefix that `calls` calls of one job will send; None: no
        breakpoint. `long_running`: the calls may be spread over more than 5 minutes
        whatever their number (a Message Batch), so auto picks the 1-hour cache."""
        if self.mode == "off":
            return None
        if self.mode != "auto":
            return self.mode
        if calls < 2:
            return None
        return "1h" if long_running or calls >= self.one_hour_min_calls else "5m"


@dataclass(frozen=True)
class PromptCache:
    """A cache breakpoint for one call. With `context`, that text is sent first in the
    user turn and carries the breakpoint (system prompt + context are the cached
    prefix); without it the breakpoint goes on the system prompt."""

    ttl: CacheTTL
    context: str | None = None


def cache_control(ttl: CacheTTL) -> dict[str, str]:
    """The block marker; the 5-minute TTL is the API's default and is left implicit."""
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": "1h"}


def request_parts(system: str | None, prompt: str, cache: PromptCache | None) -> tuple[Any, Any]:
    """(system, user content) for a Messages request: plain strings without `cache`,
    else text blocks with the breakpoint after the repeated prefix. The same inputs
    always give the same JSON, so the prefix is byte-identical from call to call."""
    if cache is None:
        return system, prompt
    marker = cache_control(cache.ttl)
    system_blocks: list[dict[str, Any]] | None = [{"type": "text", "text": system}] if system else None
    if cache.context is None:
        if system_blocks:
            system_blocks[-1]["cache_control"] = marker
        return system_blocks, prompt
    content = [
        {"type": "text", "text": cache.context, "cache_control": marker},
        {"type": "text", "text": prompt},
    ]
    return system_blocks, content
