"""What a Claude call cost, priced per exact model id from the usage the API returns.

Every tier is priced: base input and output, 5-minute and 1-hour cache writes
(`usage.cache_creation`; without it, `cache_creation_input_tokens` count as
5-minute writes), cache reads, a long-prompt tier where a model's page has one
(the prompt is input + cache writes + cache reads, and the higher rates then
price every token of that request), the Batch API (`service_tier: "batch"` or
`batch=True`: every figure x 0.5) and US-only inference (`inference_geo: "us"`,
x 1.1 on the models that offer it). Thinking tokens are part of `output_tokens`.

A call we cannot price exactly (a model missing from the table, fast mode,
Priority Tier, an unknown `inference_geo`, or a tier whose price is unknown)
records `cost_usd: None` with a `cost_warning`, never a zero or a guess.

`AI_JOBS_PRICES` adds or replaces models by exact id with the same shape, e.g.
'{"claude-sonnet-5-5": {"input": 2, "output": 10, "cache_write_5m": 2.5,
"cache_write_1h": 4, "cache_read": 0.1}}'. A malformed value fails at start-up
(Settings). `python -m ai_jobs.claude.pricing --markdown` prints the README table.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError

log = logging.getLogger(__name__)

PRICES_ENV = "AI_JOBS_PRICES"
CHECKED = "2026-11-30"
# Geos billed at the base price: the default global routing, and older models that report none.
STANDARD_GEOS = frozenset({"global", "not_available"})


class Rates(BaseModel):
    """US dollars per million tokens. A cache tier left unset is unknown, not free."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    input: NonNegativeFloat
    output: NonNegativeFloat
    cache_write_5m: NonNegativeFloat | None = None
    cache_write_1h: NonNegativeFloat | None = None
    cache_read: NonNegativeFloat | None = None


class LongPromptRates(Rates):
    """Rates for a request whose prompt (input + cache writes + cache reads) exceeds the threshold."""

    above_prompt_tokens: PositiveInt


class ModelPrice(Rates):
    long_context: LongPromptRates | None = None
    # Multiplier per `inference_geo` other than global (e.g. {"us": 1.1}); a geo not listed is unpriced.
    inference_geo: dict[str, PositiveFloat] = Field(default_factory=dict)
    # Share of the price paid on the Batch API (all tiers).
    batch_multiplier: float = Field(default=0.5, gt=0, le=1)
    source: str = Field(default=PRICES_ENV, max_length=300)


def _price(source: str, inp: float, out: float, w5: float | None, w1: float | None, read: float | None,
           *, us: bool = True, long_context: LongPromptRates | None = None) -> ModelPrice:
    return ModelPrice(
        input=inp, output=out, cache_write_5m=w5, cache_write_1h=w1, cache_read=read,
        long_context=long_context, inference_geo={"us": 1.1} if us else {}, source=f"{source}, checked {CHECKED}",
    )


# Figures per million tokens from platform.claude.com (stored docs), checked 2026-11-30.
# "Pricing" is the pricing page (platform.claude.com/docs/en/about-claude/pricing): its
# "Model pricing" table, "Long context pricing" (only Haiku 5.5 has a prompt-length tier;
# "Claude 4.6 and later models ... include the full 1M token context window at standard
# pricing") and "Data residency" (inference_geo "us": 1.1x on every token category for
# Claude 4.6 and later; earlier models reject the parameter). Batch: 50 % off.
_HAIKU_4_5 = _price("Claude Haiku 4.5; Pricing", 1, 5, 1.25, 2, 0.10, us=False)
_OPUS_4_5 = _price("Claude Opus 4.5; Pricing", 5, 25, 6.25, 10, 0.50, us=False)
_SONNET_4_5 = _price("Claude Sonnet 4.5; Pricing", 3, 15, 3.75, 6, 0.30, us=False)
_FABLE_5_1 = _price("Claude Fable 5.1; Pricing", 10, 50, 12.50, 20, 0.25)
_FABLE_5 = _price("Claude Fable 5; Pricing", 10, 50, 12.50, 20, 1)

BUILT_IN: dict[str, ModelPrice] = {
    # Fable 5.2 (released 2026-11-09): $8 / $40 from "Models overview" (its comparison table).
    # Its own page and its pricing-page row are not in the stored docs, so its cache tiers
    # are left unknown: a call that writes or reads the cache records cost_usd null.
    "claude-fable-5-2": _price("Models overview", 8, 40, None, None, None),
    # "Claude Haiku 5.5" page, Pricing section: priced by prompt length, $0.10 / $0.50,
    # writes $0.125 / $0.20, reads $0.01 up to 100,000 prompt tokens; over that $0.50 / $2.50,
    # writes $0.625 / $1, reads $0.05 (the over-100k 1 h write and reads also on "Pricing").
    "claude-haiku-5-5": _price(
        "Claude Haiku 5.5; Pricing", 0.10, 0.50, 0.125, 0.20, 0.01,
        long_context=LongPromptRates(above_prompt_tokens=100_000, input=0.50, output=2.50,
                                     cache_write_5m=0.625, cache_write_1h=1, cache_read=0.05),
    ),
    # "Claude Sonnet 5.5" page: $2 / $10, writes $2.50 (5 m) and $4 (1 h), batch 50 % off.
    # Cache reads $0.20, as the model page says and as re-checked for this project in
    # November 2026 (some copies of "Pricing" show $0.10; override with AI_JOBS_PRICES if billed so).
    "claude-sonnet-5-5": _price("Claude Sonnet 5.5; Pricing", 2, 10, 2.50, 4, 0.20),
    # "Claude Fable 5.1" page: $10 / $50; "Pricing": writes $12.50 / $20, reads $0.25 (0.025x).
    "claude-fable-5-1": _FABLE_5_1,
    # "Claude Opus 5.5" page: $4 / $20, writes $5 / $8, reads $0.20 (0.05x), batch 50 % off.
    "claude-opus-5-5": _price("Claude Opus 5.5", 4, 20, 5, 8, 0.20),
    # "Pricing": the Claude Mythos 5.1 row equals Fable 5.1's.
    "claude-mythos-5-1": _FABLE_5_1.model_copy(update={"source": f"Pricing (Claude Mythos 5.1 row), checked {CHECKED}"}),
    # "Claude Sonnet 5" page: $2 / $10, writes $2.50 / $4, reads $0.20 ("Pricing": the
    # introductory $2 / $10 became the standard price; the $3 / $15 rise did not happen).
    "claude-sonnet-5": _price("Claude Sonnet 5", 2, 10, 2.50, 4, 0.20),
    # "Claude Fable 5" page: $10 / $50 ("Claude Mythos 5 ... shares Claude Fable 5's
    # specifications and pricing"); "Pricing": writes $12.50 / $20, reads $1.
    "claude-fable-5": _FABLE_5,
    "claude-mythos-5": _FABLE_5.model_copy(update={"source": f"Claude Fable 5 (Mythos 5 shares its pricing); Pricing, checked {CHECKED}"}),
    # "Claude Opus 5" page: $5 / $25, writes $6.25 / $10, reads $0.50, batch 50 % off.
    "claude-opus-5": _price("Claude Opus 5", 5, 25, 6.25, 10, 0.50),
    # "Claude Opus 4.8" page: $5 / $25; "Pricing": writes $6.25 / $10, reads $0.50.
    "claude-opus-4-8": _price("Claude Opus 4.8; Pricing", 5, 25, 6.25, 10, 0.50),
    # "Pricing": Claude Opus 4.7 and 4.6 rows, $5 / $25, writes $6.25 / $10, reads $0.50.
    "claude-opus-4-7": _price("Pricing (Claude Opus 4.7 row)", 5, 25, 6.25, 10, 0.50),
    "claude-opus-4-6": _price("Pricing (Claude Opus 4.6 row)", 5, 25, 6.25, 10, 0.50),
    # "Pricing": Claude Sonnet 4.6 row, $3 / $15, writes $3.75 / $6, reads $0.30.
    "claude-sonnet-4-6": _price("Pricing (Claude Sonnet 4.6 row)", 3, 15, 3.75, 6, 0.30),
    # "Claude Haiku 4.5" page (model id claude-haiku-4-5-20251001): $1 / $5, 200K context;
    # "Pricing": writes $1.25 / $2, reads $0.10. The alias and the dated id cost the same.
    "claude-haiku-4-5": _HAIKU_4_5,
    "claude-haiku-4-5-20251001": _HAIKU_4_5,
    # "Claude Opus 4.5" / "Pricing": $5 / $25, writes $6.25 / $10, reads $0.50.
    "claude-opus-4-5": _OPUS_4_5,
    "claude-opus-4-5-20251101": _OPUS_4_5,
    # "Claude Sonnet 4.5" page (deprecated, retires 2026-11-30; 200K context, so no
    # long-context tier): $3 / $15; "Pricing": writes $3.75 / $6, reads $0.30.
    "claude-sonnet-4-5": _SONNET_4_5,
    "claude-sonnet-4-5-20250929": _SONNET_4_5,
}
# In the SDK's model list (anthropic 2.14) but without a price in the stored docs: calls
# to these record cost_usd null until AI_JOBS_PRICES gives one.
UNPRICED_SDK_MODELS = ("claude-mythos-5-2", "claude-mythos-preview")


class PriceConfigError(ValueError):
    """AI_JOBS_PRICES is not a JSON object of exact model ids to price objects."""


@lru_cache(maxsize=8)
def parse_overrides(raw: str) -> dict[str, ModelPrice]:
    """Validate AI_JOBS_PRICES; the message says what to fix."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PriceConfigError(f"{PRICES_ENV} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise PriceConfigError(f"{PRICES_ENV} must be a JSON object of exact model ids to prices")
    prices: dict[str, ModelPrice] = {}
    for model, value in data.items():
        if not model or len(model) > 200 or model != model.strip() or any(c.isspace() for c in model):
            raise PriceConfigError(f"{PRICES_ENV}: {model!r} is not a model id")
        if not isinstance(value, dict):
            raise PriceConfigError(
                f"{PRICES_ENV}: {model!r} must be an object such as "
                '{"input": 2, "output": 10, "cache_write_5m": 2.5, "cache_write_1h": 4, "cache_read": 0.1} '
                "(US dollars per million tokens; ids are exact, not prefixes)"
            )
        try:
            prices[model] = ModelPrice.model_validate({"source": PRICES_ENV, **value})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
            raise PriceConfigError(f"{PRICES_ENV}: {model!r}: {problems}") from None
    return prices


def price_table(environ: Mapping[str, str] | None = None) -> dict[str, ModelPrice]:
    """The built-in table with AI_JOBS_PRICES applied (an override replaces a model's entry)."""
    raw = (os.environ if environ is None else environ).get(PRICES_ENV)
    return {**BUILT_IN, **parse_overrides(raw)} if raw and raw.strip() else dict(BUILT_IN)


def _tokens(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _cost(price: ModelPrice, counts: Mapping[str, int], multiplier: Decimal) -> tuple[float | None, str | None]:
    prompt = counts["input_tokens"] + counts["cache_creation_input_tokens"] + counts["cache_read_input_tokens"]
    long = price.long_context
    rates: Rates = long if long is not None and prompt > long.above_prompt_tokens else price
    total = Decimal(0)
    for tokens, field in (
        (counts["input_tokens"], "input"),
        (counts["output_tokens"], "output"),
        (counts["cache_creation_5m_input_tokens"], "cache_write_5m"),
        (counts["cache_creation_1h_input_tokens"], "cache_write_1h"),
        (counts["cache_read_input_tokens"], "cache_read"),
    ):
        if not tokens:
            continue
        rate = getattr(rates, field)
        if rate is None:
            return None, f"the {field} price is unknown for this model"
        total += tokens * Decimal(str(rate))
    return float(round(total * multiplier / 1_000_000, 10)), None


def usage_record(model: str, usage: Mapping[str, Any], *, batch: bool = False,
                 requested: str | None = None) -> dict[str, Any]:
    """Token counts per tier and `cost_usd` for one call (None, with `cost_warning`,
    when it cannot be priced exactly). `batch`: the call went through the Batch API.
    `requested`: the model id the request named. The reply names the model that ran,
    which may be a dated snapshot of the requested alias that the table does not list;
    the call is then priced as the requested id (`priced_as`), the price the create-time
    checks used, so a reply's id can never take a call out of the job's cap."""
    cache_creation = usage.get("cache_creation")
    counts = {key: _tokens(usage, key) for key in
              ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
    if isinstance(cache_creation, Mapping):
        counts["cache_creation_5m_input_tokens"] = _tokens(cache_creation, "ephemeral_5m_input_tokens")
        counts["cache_creation_1h_input_tokens"] = _tokens(cache_creation, "ephemeral_1h_input_tokens")
        split = counts["cache_creation_5m_input_tokens"] + counts["cache_creation_1h_input_tokens"]
        # Writes the breakdown leaves out are 5-minute ones (the default TTL).
        counts["cache_creation_5m_input_tokens"] += max(0, counts["cache_creation_input_tokens"] - split)
        counts["cache_creation_input_tokens"] = max(counts["cache_creation_input_tokens"], split)
    else:  # no breakdown: every cache write was a 5-minute one
        counts["cache_creation_5m_input_tokens"] = counts["cache_creation_input_tokens"]
        counts["cache_creation_1h_input_tokens"] = 0
    record: dict[str, Any] = {**counts, "requests": 1, "model": model}
    tier = usage.get("service_tier") or ("batch" if batch else None)
    geo, speed = usage.get("inference_geo"), usage.get("speed")
    for key, value in (("service_tier", tier), ("inference_geo", geo), ("speed", speed)):
        if isinstance(value, str) and value:
            record[key] = value

    cost: float | None = None
    try:
        table = price_table()
    except PriceConfigError as exc:  # normally caught at start-up; never fail a paid call over it
        price, warning = None, str(exc)
    else:
        price = table.get(model)
        if price is None and requested and requested != model and requested in table:
            price = table[requested]
            record["priced_as"] = requested
        warning = None if price is not None else f"no price for model {model!r}: add it to {PRICES_ENV}"
    if price is not None:
        multiplier = Decimal(str(price.batch_multiplier)) if tier == "batch" or batch else Decimal(1)
        if speed not in (None, "standard"):
            warning = f"{speed} mode prices are not in the table"
        elif tier not in (None, "standard", "batch"):
            warning = f"the {tier} service tier is billed outside the per-token table"
        elif geo not in (None, *STANDARD_GEOS) and geo not in price.inference_geo:
            warning = f"no price for inference_geo {geo!r} on this model"
        else:
            if geo in price.inference_geo:
                multiplier *= Decimal(str(price.inference_geo[geo]))
            cost, warning = _cost(price, counts, multiplier)
    record["cost_usd"] = cost
    if cost is None:
        record["cost_warning"] = warning
        record["unpriced_requests"] = 1
        record["cost_complete"] = False
        log.warning("cost not recorded for a Claude call to %s: %s", model[:100], warning)
    return record


# -- the README table ---------------------------------------------------------------


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value == int(value):
        return f"${int(value)}"
    return f"${value:.2f}" if round(value, 2) == value else f"${value:g}"


def markdown_table(table: Mapping[str, ModelPrice] | None = None) -> str:
    """The price table as Markdown (README.md embeds it between the `prices` markers)."""
    rows = [
        "| model id | input | output | 5 m cache write | 1 h cache write | cache read "
        "| prompt over the threshold (input / output / 5 m / 1 h / read) | US-only inference | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, p in (table or BUILT_IN).items():
        long = p.long_context
        long_cell = (
            f"over {long.above_prompt_tokens:,} tokens: " + " / ".join(
                _usd(v) for v in (long.input, long.output, long.cache_write_5m, long.cache_write_1h, long.cache_read))
            if long else "same rates at any length"
        )
        geo = f"×{p.inference_geo['us']:g}" if "us" in p.inference_geo else "—"
        rows.append(
            f"| `{model}` | {_usd(p.input)} | {_usd(p.output)} | {_usd(p.cache_write_5m)} | {_usd(p.cache_write_1h)} "
            f"| {_usd(p.cache_read)} | {long_cell} | {geo} | {p.source} |"
        )
    rows += [
        "",
        "US dollars per million tokens. Batch API calls (`service_tier: \"batch\"`, or "
        "`usage_record(..., batch=True)`) pay ×0.5 on every figure. Not priced (cost `null` plus a warning): "
        + ", ".join(f"`{m}`" for m in UNPRICED_SDK_MODELS)
        + ", any other id, fast mode, Priority Tier, and a tier shown as unknown.",
    ]
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # only the command line needs it

    parser = argparse.ArgumentParser(prog="python -m ai_jobs.claude.pricing", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the built-in price table as Markdown")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.print_help()
        return 2
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
