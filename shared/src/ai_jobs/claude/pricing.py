"""Estimated cost of a Claude call from its token usage.

Prices are US dollars per million tokens (input, output), matched by model
name prefix; cache writes cost 1.25x input, cache reads 0.1x input. Override
or extend with AI_JOBS_PRICES='{"claude-sonnet": [3, 15]}'. Unknown models
record tokens without a cost rather than a made-up one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus": (5.0, 25.0),
    "claude-sonnet": (3.0, 15.0),
    "claude-haiku-3": (0.25, 1.25),
    "claude-haiku": (1.0, 5.0),
}
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1


def price_table() -> dict[str, tuple[float, float]]:
    table = dict(PRICES_PER_MTOK)
    override = os.environ.get("AI_JOBS_PRICES")
    if override:
        table.update({k: (float(v[0]), float(v[1])) for k, v in json.loads(override).items()})
    return table


def prices_for(model: str) -> tuple[float, float] | None:
    table = price_table()
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


def usage_record(model: str, usage: Mapping[str, Any]) -> dict[str, Any]:
    """Token counts plus `cost_usd` (when the model's price is known) for one call."""
    tokens = {
        key: int(usage.get(key) or 0)
        for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    }
    record: dict[str, Any] = {**tokens, "requests": 1, "model": model}
    prices = prices_for(model)
    if prices is not None:
        per_in, per_out = prices[0] / 1e6, prices[1] / 1e6
        record["cost_usd"] = round(
            tokens["input_tokens"] * per_in
            + tokens["output_tokens"] * per_out
            + tokens["cache_creation_input_tokens"] * per_in * CACHE_WRITE_FACTOR
            + tokens["cache_read_input_tokens"] * per_in * CACHE_READ_FACTOR,
            8,
        )
    return record
