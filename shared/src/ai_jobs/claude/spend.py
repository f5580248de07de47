"""Spend control: no single request or user can cause unbounded Claude cost.

At create (the request path; this module imports only pydantic and the price table):
  - the model must be on the allowlist (AI_JOBS_MODEL plus AI_JOBS_MODELS) and priced
    (AI_JOBS_ALLOW_UNPRICED_MODELS lets an operator accept unpriced ones);
  - `max_tokens` must be within the type's cap (AI_JOBS_MAX_TOKENS overrides the
    defaults in DEFAULT_MAX_TOKENS);
  - the job's Claude calls (a map job: one per batch) must be at most
    AI_JOBS_MAX_CALLS_PER_JOB;
  - its cost estimate (input at one token per BYTES_PER_TOKEN bytes of UTF-8, every
    call answering with its full max_tokens, at the exact model's prices) must be at
    most AI_JOBS_MAX_JOB_COST_USD.
The job row then carries the estimate and its cap (`cost_cap_usd`: up to
CAP_HEADROOM x the estimate, never over AI_JOBS_MAX_JOB_COST_USD), and the enqueue
function reserves the cap against the user's rolling 24 h budget
(AI_JOBS_USER_DAILY_BUDGET_USD; SQL, under the per-user enqueue lock).

While the job runs (`guard_call`): before each Claude call, a call whose worst case
would take the job's recorded cost over its cap is not started; the job fails with
`budget_exceeded`, keeping its finished steps.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ai_jobs.claude.pricing import ModelPrice, PriceConfigError, price_table
from ai_jobs.claude.settings import DEFAULT_MODEL
from ai_jobs.errors import AiJobsError
from ai_jobs.models import MAX_COST_USD

if TYPE_CHECKING:
    from ai_jobs.context import JobContext

# Tokens are bounded as one per 3 bytes of UTF-8 (>= one per 3 characters): prose and
# code run at about 4 characters per token, so this over-counts them by a third.
BYTES_PER_TOKEN = 3
# Per call, on top of the text: the API's framing, a structured-output format, the job
# type's fixed wording.
CALL_OVERHEAD_BYTES = 3_000
# A job may spend up to this many times its estimate (one full retry of every call),
# never more than AI_JOBS_MAX_JOB_COST_USD.
CAP_HEADROOM = 2
# max_tokens caps per job type (AI_JOBS_MAX_TOKENS overrides or adds, by type; "*":
# every other type that declares its Claude calls).
DEFAULT_MAX_TOKENS: dict[str, int] = {
    "ai.generate": 8192,
    "ai.extract": 4096,
    "ai.match": 4096,
    "ai.map_batches": 4096,
    "*": 8192,
}
# A type without its own max_tokens cap that takes another's: the child type of a
# fanned-out map is creatable on its own, and must not get round the map's cap.
MAX_TOKENS_CAP_OF: dict[str, str] = {"ai.map_batch": "ai.map_batches"}
# Sent when the budget is held by active jobs (no recorded spend leaving the window frees enough).
BUDGET_RETRY_AFTER_SECONDS = 60


class SpendLimitError(AiJobsError):
    """A create refused by a spend limit (422): `code` names the limit, `field` the
    input field at fault, `facts` the figures (extension members of the problem)."""

    code = "spend_limit"

    def __init__(self, code: str, message: str, *, field: str | None = None, facts: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.facts = dict(facts or {})


@dataclass(frozen=True)
class ClaudeWork:
    """What a job's input asks of Claude, declared by its input model
    (`claude_work()`): the bound used for the estimate at create."""

    model: str | None  # None: AI_JOBS_MODEL
    max_tokens: int  # per call
    calls: int
    input_bytes_per_call: int  # UTF-8 bytes of text sent by the largest call
    cached_prefix_bytes: int = 0  # a prefix written once to the prompt cache (billed above the input price)


@runtime_checkable
class DeclaresClaudeWork(Protocol):
    def claude_work(self) -> ClaudeWork: ...


def utf8_bytes(*texts: str | None) -> int:
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if t)


def tokens_bound(input_bytes: int) -> int:
    return math.ceil(input_bytes / BYTES_PER_TOKEN)


class SpendSettings(BaseModel):
    """AI_JOBS_MODELS, AI_JOBS_MAX_TOKENS, AI_JOBS_MAX_CALLS_PER_JOB,
    AI_JOBS_MAX_JOB_COST_USD, AI_JOBS_USER_DAILY_BUDGET_USD,
    AI_JOBS_ALLOW_UNPRICED_MODELS. Checked at start-up (ai_jobs.settings); workers
    read the same variables."""

    model_config = ConfigDict(frozen=True)

    default_model: str | None = Field(default=None, max_length=200, description="AI_JOBS_MODEL; None: read it when needed")
    models: tuple[str, ...] = ()
    max_tokens: dict[str, int] = Field(default_factory=dict)
    max_calls_per_job: int = Field(default=100, ge=1, le=100_000)
    # 0: no limit.
    max_job_cost_usd: float = Field(default=5.0, ge=0, le=100_000, allow_inf_nan=False)
    user_daily_budget_usd: float = Field(default=20.0, ge=0, le=100_000, allow_inf_nan=False)
    allow_unpriced_models: bool = False

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, (list, tuple)):
            models = [str(m) for m in value if str(m).strip()]
            for model in models:
                if len(model) > 200 or any(c.isspace() or not c.isprintable() for c in model):
                    raise ValueError(f"{model[:50]!r} is not a model id (exact ids, comma-separated)")
            return tuple(dict.fromkeys(models))
        return value

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _parse_max_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"AI_JOBS_MAX_TOKENS is not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ValueError('AI_JOBS_MAX_TOKENS must be a JSON object of job type to cap, e.g. {"ai.generate": 16000}')
        for job_type, cap in value.items():
            if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 1_000_000:
                raise ValueError(f"AI_JOBS_MAX_TOKENS[{job_type!r}] must be an integer from 1 to 1000000")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SpendSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, name in {
            "default_model": "AI_JOBS_MODEL",
            "models": "AI_JOBS_MODELS",
            "max_tokens": "AI_JOBS_MAX_TOKENS",
            "max_calls_per_job": "AI_JOBS_MAX_CALLS_PER_JOB",
            "max_job_cost_usd": "AI_JOBS_MAX_JOB_COST_USD",
            "user_daily_budget_usd": "AI_JOBS_USER_DAILY_BUDGET_USD",
            "allow_unpriced_models": "AI_JOBS_ALLOW_UNPRICED_MODELS",
        }.items():
            if env.get(name, "").strip():
                values[field] = env[name].strip()
        return cls.model_validate(values)

    def resolved_default_model(self) -> str:
        return self.default_model or os.environ.get("AI_JOBS_MODEL", "").strip() or DEFAULT_MODEL

    def allowed_models(self) -> list[str]:
        return list(dict.fromkeys([self.resolved_default_model(), *self.models]))

    def max_tokens_cap(self, job_type: str) -> int:
        caps = {**DEFAULT_MAX_TOKENS, **self.max_tokens}
        if job_type not in caps and MAX_TOKENS_CAP_OF.get(job_type) in caps:
            return caps[MAX_TOKENS_CAP_OF[job_type]]
        return caps.get(job_type, caps["*"])

    def daily_budget(self) -> float | None:
        return self.user_daily_budget_usd or None


# -- prices and bounds --------------------------------------------------------------


def model_price(model: str, prices: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The model's price from `prices`, else from the built-in table plus AI_JOBS_PRICES
    (what the worker prices its calls with)."""
    if prices is not None:
        return prices.get(model)
    try:
        return price_table().get(model)
    except PriceConfigError:  # stopped at start-up; an unpriced model here
        return None


def call_cost_bound(price: ModelPrice, input_bytes: int, max_tokens: int, *, cache_write: bool = False,
                    batch: bool = False) -> float:
    """The most one call can cost if its input tokenizes within the bound and it answers
    with all of `max_tokens` (thinking included): US dollars. `cache_write`: its input
    may be written to the prompt cache (priced at the dearer write rate)."""
    tokens = tokens_bound(input_bytes + CALL_OVERHEAD_BYTES)
    long = price.long_context
    rates = long if long is not None and tokens > long.above_prompt_tokens else price
    input_rate = rates.input
    if cache_write:
        input_rate = max(input_rate, rates.cache_write_5m or 0.0, rates.cache_write_1h or 0.0)
    cost = (tokens * input_rate + max_tokens * rates.output) / 1_000_000
    return cost * (price.batch_multiplier if batch else 1.0) * geo_bound(price)


def geo_bound(price: ModelPrice) -> float:
    """The dearest `inference_geo` multiplier the model may be billed at: a request names
    none, so the workspace's default geo applies (US-only inference is x1.1)."""
    return max([1.0, *price.inference_geo.values()])


def estimate_usd(work: ClaudeWork, price: ModelPrice) -> float:
    """Every call at its bound, plus the cache-write premium once on a cached prefix."""
    per_call = call_cost_bound(price, work.input_bytes_per_call, work.max_tokens)
    premium = 0.0
    if work.cached_prefix_bytes:
        tokens = tokens_bound(work.cached_prefix_bytes)
        long = price.long_context
        rates = long if long is not None and tokens > long.above_prompt_tokens else price
        write = max(rates.cache_write_5m or 0.0, rates.cache_write_1h or 0.0)
        premium = max(0.0, write - rates.input) * tokens / 1_000_000 * geo_bound(price)
    return work.calls * per_call + premium


def _unknown_cache_tiers(price: ModelPrice) -> list[str]:
    """The cache prices a cached call could be billed at that the table does not know
    (the long-prompt tier's too): such a call would record `cost_usd: null`."""
    tiers = ("cache_write_5m", "cache_write_1h", "cache_read")
    missing = [t for t in tiers if getattr(price, t) is None]
    if price.long_context is not None:
        missing += [f"long-prompt {t}" for t in tiers if getattr(price.long_context, t) is None]
    return missing


def _prompt_cache_on() -> bool:
    from ai_jobs.claude.caching import PromptCacheSettings

    try:
        return PromptCacheSettings.from_env().mode != "off"
    except ValidationError:  # stopped at start-up; assume the cache is on
        return True


@dataclass(frozen=True)
class SpendPlan:
    """What a create stores on the row: the estimate and the job's cap (None: unpriced)."""

    model: str
    estimate_usd: float | None
    cap_usd: float | None


def _usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:.2f}"


def plan_new_job(
    job_type: str, parsed: BaseModel, settings: SpendSettings, prices: Mapping[str, ModelPrice] | None = None
) -> SpendPlan | None:
    """Check a new job's Claude work against the limits (SpendLimitError, 422); None
    for a type that declares no Claude calls. `prices`: the price table (default: the
    built-in one plus AI_JOBS_PRICES from the environment)."""
    if not isinstance(parsed, DeclaresClaudeWork):
        return None
    work = parsed.claude_work()
    allowed = settings.allowed_models()
    model = work.model or settings.resolved_default_model()
    if model not in allowed:
        raise SpendLimitError(
            "model_not_allowed",
            f"model {model[:100]!r} is not allowed here; allowed: {', '.join(allowed)}",
            field="input.model", facts={"allowed_models": allowed},
        )
    cap = settings.max_tokens_cap(job_type)
    if work.max_tokens > cap:
        raise SpendLimitError(
            "max_tokens_too_large",
            f"max_tokens {work.max_tokens} is over the {cap} allowed for {job_type}",
            field="input.max_tokens", facts={"max_tokens_cap": cap},
        )
    if work.calls > settings.max_calls_per_job:
        raise SpendLimitError(
            "too_many_calls",
            f"this job would make {work.calls} Claude calls (one per batch), over the {settings.max_calls_per_job} "
            "allowed per job; raise batch_size or send fewer items",
            field="input.items", facts={"calls": work.calls, "max_calls": settings.max_calls_per_job},
        )
    price = model_price(model, prices)
    if price is None:
        if settings.allow_unpriced_models:
            return SpendPlan(model, None, None)
        raise SpendLimitError(
            "model_not_priced",
            f"model {model!r} has no price, so its cost cannot be bounded; the operator can add it to AI_JOBS_PRICES",
            field="input.model", facts={"model": model},
        )
    missing = _unknown_cache_tiers(price) if work.cached_prefix_bytes and _prompt_cache_on() else []
    if missing:
        if settings.allow_unpriced_models:
            return SpendPlan(model, None, None)
        raise SpendLimitError(
            "model_not_priced",
            f"this job writes its repeated input to the prompt cache, and model {model!r} has no "
            f"{' / '.join(missing)} price, so its cost cannot be bounded; the operator can add the cache prices to "
            "AI_JOBS_PRICES, or turn the prompt cache off (AI_JOBS_PROMPT_CACHE=off)",
            field="input.model", facts={"model": model, "unknown_prices": missing},
        )
    estimate = round(estimate_usd(work, price), 6)
    # even with every operator cap off, a job's costs must fit the cost columns
    limit = min(settings.max_job_cost_usd or math.inf, MAX_COST_USD / CAP_HEADROOM)
    if estimate > limit:
        raise SpendLimitError(
            "job_cost_too_high",
            f"this job could cost up to {_usd(estimate)} ({work.calls} call(s) to {model}, input at "
            f"{BYTES_PER_TOKEN} bytes per token, max_tokens={work.max_tokens} each), over the {_usd(limit)} "
            "allowed per job; send less input, fewer items or a lower max_tokens, or choose a cheaper model",
            facts={"estimated_cost_usd": estimate, "max_job_cost_usd": limit},
        )
    budget = settings.daily_budget()
    if budget is not None and estimate > budget:
        raise SpendLimitError(
            "job_cost_too_high",
            f"this job could cost up to {_usd(estimate)}, over the daily budget of {_usd(budget)} per user",
            facts={"estimated_cost_usd": estimate, "daily_budget_usd": budget},
        )
    cap_usd = round(min(limit, CAP_HEADROOM * estimate, budget if budget is not None else math.inf), 6)
    return SpendPlan(model, estimate, max(cap_usd, estimate))


# -- inside the job -----------------------------------------------------------------


def worker_settings() -> SpendSettings:
    from ai_jobs.failures import FatalJobError

    try:
        return SpendSettings.from_env()
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0] if e['loc'] else 'value'}: {e['msg']}" for e in exc.errors())
        raise FatalJobError("claude_config", f"The worker's spend settings are invalid ({problems}).") from None


def job_cap(ctx: JobContext, settings: SpendSettings | None = None) -> float | None:
    """The job's cap: the one stored at create, else AI_JOBS_MAX_JOB_COST_USD (a job
    enqueued without an estimate); None: no cap."""
    stored = getattr(ctx.job, "cost_cap_usd", None)
    if stored is not None:
        return float(stored)
    return (settings or worker_settings()).max_job_cost_usd or None


def guard_call(
    ctx: JobContext,
    model: str,
    *,
    input_bytes: int,
    max_tokens: int,
    calls: int = 1,
    cache_write: bool = False,
    batch: bool = False,
) -> float | None:
    """Refuse to start Claude work whose worst case would take the job's recorded cost
    over its cap: the job fails with `budget_exceeded` (fatal), its finished steps kept.
    Returns that worst case in US dollars (None: an unpriced model), cap or no cap."""
    from ai_jobs.failures import FatalJobError

    price = model_price(model)
    worst = None if price is None else calls * call_cost_bound(
        price, input_bytes, max_tokens, cache_write=cache_write, batch=batch)
    cap = job_cap(ctx)
    if cap is None:
        return worst
    spent = ctx.spent_usd
    unpriced = ctx.unpriced_calls
    if price is not None and unpriced:
        # The model is priced, yet a call came back billed in a way the table cannot
        # price (Priority Tier, fast mode, another inference_geo, an unknown cache tier):
        # its cost is not in spent_usd, so the cap no longer bounds the job. Stop here
        # (retries too: the count is kept on the row) rather than spend on unmeasured.
        raise FatalJobError(
            "budget_exceeded",
            f"{unpriced} Claude call{'s' if unpriced > 1 else ''} of this job could not be priced (see "
            "usage.cost_warning), so its cost can no longer be held to its cap of "
            f"{_usd(cap)}; it was stopped before calling Claude again. Finished steps are kept. The operator "
            "can add the missing price to AI_JOBS_PRICES.",
        )
    if spent <= cap and (worst is None or spent + worst <= cap):
        return worst  # within the cap (an unpriced model is bounded by nothing but its recorded cost)
    if spent > cap:
        why = f"This job has recorded {_usd(spent)} of Claude usage, over its cap of {_usd(cap)}"
    else:
        why = (f"This job has recorded {_usd(spent)} of Claude usage and its next Claude "
               f"call{'s' if calls > 1 else ''} could cost up to {_usd(worst or 0.0)}, which would pass its cap "
               f"of {_usd(cap)}")
    raise FatalJobError(
        "budget_exceeded",
        f"{why}; it was stopped before calling Claude again. Finished steps are kept. Submit a smaller job "
        "(less input, fewer items, a lower max_tokens) to go on.",
    )
