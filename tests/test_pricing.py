"""Claude prices: every model in the SDK's list, every tier, from usage shaped as the
API returns it; unknown models and tiers record a null cost with a warning; the
AI_JOBS_PRICES override; job totals summed on both adapters; the README table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
from anthropic.types import Model, Usage
from pydantic import ValidationError

from ai_jobs.claude.client import reset_clients
from ai_jobs.claude.pricing import BUILT_IN, UNPRICED_SDK_MODELS, markdown_table, price_table, usage_record
from ai_jobs.context import add_usage
from ai_jobs.models import JobStatus, NewJob
from ai_jobs.registry import load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.settings import Settings
from ai_jobs.store.base import JobStore
from ai_jobs.store.postgres import PostgresStore
from tests.anthropic_wire import MESSAGES_URL, sse_message

M = 1_000_000
ROOT = Path(__file__).resolve().parent.parent

# The figures as the model pages state them (USD per MTok: input, output, 5 m write,
# 1 h write, cache read; None: not published in the stored docs). Written out here,
# not read from the code, so a wrong figure in the table fails a test.
PAGE_PRICES: dict[str, tuple[float, float, float | None, float | None, float | None]] = {
    "claude-fable-5-2": (8, 40, None, None, None),
    "claude-haiku-5-5": (0.10, 0.50, 0.125, 0.20, 0.01),
    "claude-sonnet-5-5": (2, 10, 2.50, 4, 0.20),
    "claude-fable-5-1": (10, 50, 12.50, 20, 0.25),
    "claude-opus-5-5": (4, 20, 5, 8, 0.20),
    "claude-mythos-5-1": (10, 50, 12.50, 20, 0.25),
    "claude-sonnet-5": (2, 10, 2.50, 4, 0.20),
    "claude-fable-5": (10, 50, 12.50, 20, 1),
    "claude-mythos-5": (10, 50, 12.50, 20, 1),
    "claude-opus-5": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-8": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-7": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-6": (5, 25, 6.25, 10, 0.50),
    "claude-sonnet-4-6": (3, 15, 3.75, 6, 0.30),
    "claude-haiku-4-5": (1, 5, 1.25, 2, 0.10),
    "claude-haiku-4-5-20251001": (1, 5, 1.25, 2, 0.10),
    "claude-opus-4-5": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-5-20251101": (5, 25, 6.25, 10, 0.50),
    "claude-sonnet-4-5": (3, 15, 3.75, 6, 0.30),
    "claude-sonnet-4-5-20250929": (3, 15, 3.75, 6, 0.30),
}
TIERS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
US_GEO_MODELS = {m for m in PAGE_PRICES if not m.startswith(("claude-haiku-4-5", "claude-opus-4-5", "claude-sonnet-4-5"))}


def api_usage(*, input_tokens: int = 0, output_tokens: int = 0, write_5m: int = 0, write_1h: int = 0,
              cache_read: int = 0, thinking: int | None = None, breakdown: bool = True, **extra: Any) -> dict[str, Any]:
    """A usage object as the SDK parses it from the API, dumped as calls.py does."""
    fields: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": write_5m + write_1h,
        "cache_read_input_tokens": cache_read,
        "service_tier": "standard",
        **extra,
    }
    if breakdown:
        fields["cache_creation"] = {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h}
    if thinking is not None:
        fields["output_tokens_details"] = {"thinking_tokens": thinking}
    return Usage.model_validate(fields).model_dump()


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AI_JOBS_PRICES", raising=False)


def test_every_model_in_the_sdk_list_is_priced_or_named_unpriced() -> None:
    sdk_ids = set(typing.get_args(typing.get_args(Model)[0]))
    assert set(BUILT_IN) | set(UNPRICED_SDK_MODELS) == sdk_ids  # a new SDK model fails here until checked
    assert set(BUILT_IN) == set(PAGE_PRICES)
    assert not set(BUILT_IN) & set(UNPRICED_SDK_MODELS)
    for model in UNPRICED_SDK_MODELS:
        assert usage_record(model, api_usage(input_tokens=10))["cost_usd"] is None


@pytest.mark.parametrize("model", sorted(PAGE_PRICES))
@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_of_each_model_costs_its_page_price(model: str, tier: str) -> None:
    """One million tokens in one tier costs that tier's price; tiers the docs do not give are unpriced."""
    usage = api_usage(**{
        "input": {"input_tokens": M}, "output": {"output_tokens": M}, "cache_write_5m": {"write_5m": M},
        "cache_write_1h": {"write_1h": M}, "cache_read": {"cache_read": M},
    }[tier])
    expected = PAGE_PRICES[model][TIERS.index(tier)]
    if model == "claude-haiku-5-5" and tier != "output":  # a million prompt tokens is over Haiku 5.5's 100k tier
        usage = api_usage(**{"input": {"input_tokens": 100_000}, "cache_write_5m": {"write_5m": 100_000},
                             "cache_write_1h": {"write_1h": 100_000}, "cache_read": {"cache_read": 100_000}}[tier])
        expected = expected / 10
    record = usage_record(model, usage)
    if expected is None:
        assert record["cost_usd"] is None and tier in record["cost_warning"]
        assert record["cost_complete"] is False and record["unpriced_requests"] == 1
    else:
        assert record["cost_usd"] == pytest.approx(expected, rel=1e-12)
        assert "cost_warning" not in record and "cost_complete" not in record


def test_a_realistic_call_sums_every_tier_and_keeps_the_counts() -> None:
    usage = api_usage(input_tokens=1_200, output_tokens=3_000, thinking=2_400, write_5m=2_000, write_1h=8_000,
                      cache_read=40_000)
    record = usage_record("claude-sonnet-5-5", usage)
    assert record == {
        "input_tokens": 1_200, "output_tokens": 3_000, "cache_creation_input_tokens": 10_000,
        "cache_creation_5m_input_tokens": 2_000, "cache_creation_1h_input_tokens": 8_000,
        "cache_read_input_tokens": 40_000, "requests": 1, "model": "claude-sonnet-5-5",
        "service_tier": "standard", "cost_usd": pytest.approx(
            (1_200 * 2 + 3_000 * 10 + 2_000 * 2.5 + 8_000 * 4 + 40_000 * 0.20) / M, rel=1e-12),
    }


def test_thinking_tokens_bill_as_output_once() -> None:
    """output_tokens already holds the thinking tokens; the breakdown is not billed again."""
    with_thinking = usage_record("claude-opus-5-5", api_usage(input_tokens=100, output_tokens=5_000, thinking=4_000))
    assert with_thinking["cost_usd"] == pytest.approx((100 * 4 + 5_000 * 20) / M)


def test_without_a_breakdown_cache_writes_are_5_minute_ones() -> None:
    usage = api_usage(write_5m=10_000, breakdown=False)
    assert usage["cache_creation"] is None
    record = usage_record("claude-opus-5", usage)
    assert (record["cache_creation_5m_input_tokens"], record["cache_creation_1h_input_tokens"]) == (10_000, 0)
    assert record["cost_usd"] == pytest.approx(10_000 * 6.25 / M)
    # the bare dict a handler might pass, without any of the newer fields
    assert usage_record("claude-opus-5", {"cache_creation_input_tokens": 10_000})["cost_usd"] == pytest.approx(0.0625)


@pytest.mark.parametrize("how", ["service_tier", "flag"])
def test_batch_is_half_price_on_every_tier(how: str) -> None:
    kw = {"input_tokens": 1_000, "output_tokens": 2_000, "write_5m": 3_000, "write_1h": 4_000, "cache_read": 5_000}
    full = usage_record("claude-fable-5-1", api_usage(**kw))["cost_usd"]
    if how == "service_tier":
        record = usage_record("claude-fable-5-1", api_usage(**kw, service_tier="batch"))
    else:
        record = usage_record("claude-fable-5-1", api_usage(**kw), batch=True)
    assert record["cost_usd"] == pytest.approx(full / 2, rel=1e-12)
    assert full == pytest.approx((1_000 * 10 + 2_000 * 50 + 3_000 * 12.5 + 4_000 * 20 + 5_000 * 0.25) / M)
    assert record["service_tier"] == ("batch" if how == "service_tier" else "standard")
    assert usage_record("claude-fable-5-1", {"input_tokens": 1_000}, batch=True)["service_tier"] == "batch"


def test_haiku_5_5_prices_the_whole_request_higher_above_100k_prompt_tokens() -> None:
    # prompt = input + cache writes + cache reads: exactly 100,000 is still the base tier
    at = usage_record("claude-haiku-5-5", api_usage(input_tokens=40_000, write_1h=10_000, cache_read=50_000,
                                                    output_tokens=1_000))
    assert at["cost_usd"] == pytest.approx((40_000 * 0.10 + 10_000 * 0.20 + 50_000 * 0.01 + 1_000 * 0.50) / M)
    over = usage_record("claude-haiku-5-5", api_usage(input_tokens=40_001, write_1h=10_000, cache_read=50_000,
                                                      output_tokens=1_000))
    assert over["cost_usd"] == pytest.approx((40_001 * 0.50 + 10_000 * 1 + 50_000 * 0.05 + 1_000 * 2.50) / M)
    # the other models have no long-context surcharge
    big = usage_record("claude-sonnet-5-5", api_usage(input_tokens=900_000))
    assert big["cost_usd"] == pytest.approx(900_000 * 2 / M)


def test_us_only_inference_costs_1_1x_where_offered_and_other_geos_are_unpriced() -> None:
    kw = {"input_tokens": 10_000, "output_tokens": 1_000, "cache_read": 20_000}
    base = usage_record("claude-sonnet-5-5", api_usage(**kw, inference_geo="global"))
    us = usage_record("claude-sonnet-5-5", api_usage(**kw, inference_geo="us"))
    assert us["cost_usd"] == pytest.approx(base["cost_usd"] * 1.1, rel=1e-12) and us["inference_geo"] == "us"
    for model in PAGE_PRICES:
        record = usage_record(model, api_usage(input_tokens=50_000, inference_geo="us"))
        if model in US_GEO_MODELS:
            assert record["cost_usd"] == pytest.approx(PAGE_PRICES[model][0] * 1.1 * 50_000 / M, rel=1e-12)
        else:  # Claude 4.5 models reject inference_geo: a "us" bill would be unexplained
            assert record["cost_usd"] is None and "inference_geo" in record["cost_warning"]
    eu = usage_record("claude-sonnet-5-5", api_usage(**kw, inference_geo="eu"))
    assert eu["cost_usd"] is None and "'eu'" in eu["cost_warning"]
    assert usage_record("claude-haiku-4-5", api_usage(**kw, inference_geo="not_available"))["cost_usd"] is not None


@pytest.mark.parametrize(("extra", "words"), [({"speed": "fast"}, "fast mode"), ({"service_tier": "priority"}, "priority")])
def test_fast_mode_and_priority_tier_are_not_guessed(extra: dict[str, str], words: str) -> None:
    record = usage_record("claude-opus-5-5", api_usage(input_tokens=1_000, output_tokens=100, **extra))
    assert record["cost_usd"] is None and words in record["cost_warning"]


@pytest.mark.parametrize("model", ["claude-unknown-9", "claude-sonnet", "claude-sonnet-5-5-20990101", "claude-mythos-preview"])
def test_unknown_model_records_null_cost_and_a_warning(model: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="ai_jobs.claude.pricing"):
        record = usage_record(model, api_usage(input_tokens=1_000, output_tokens=500))
    assert record["cost_usd"] is None  # never a zero, never the price of a model with a similar name
    assert record["cost_warning"] == f"no price for model {model!r}: add it to AI_JOBS_PRICES"
    assert record["unpriced_requests"] == 1 and record["cost_complete"] is False
    assert record["input_tokens"] == 1_000 and record["output_tokens"] == 500
    assert any(model in r.getMessage() and "cost not recorded" in r.getMessage() for r in caplog.records)


def test_job_totals_sum_priced_calls_and_flag_unpriced_ones() -> None:
    total: dict[str, Any] = {}
    add_usage(total, usage_record("claude-sonnet-5-5", api_usage(input_tokens=1_000, write_1h=500)))
    add_usage(total, usage_record("claude-unknown-9", api_usage(input_tokens=7, output_tokens=3)))
    add_usage(total, usage_record("claude-haiku-5-5", api_usage(output_tokens=2_000, service_tier="batch")))
    assert total["cost_usd"] == pytest.approx((1_000 * 2 + 500 * 4) / M + 2_000 * 0.5 / M / 2)
    assert total["unpriced_requests"] == 1 and total["cost_complete"] is False and total["requests"] == 3
    assert total["input_tokens"] == 1_007 and total["cache_creation_1h_input_tokens"] == 500
    assert total["model"] == "claude-haiku-5-5" and total["service_tier"] == "batch"
    assert "claude-unknown-9" in total["cost_warning"]
    only_unpriced: dict[str, Any] = {}
    add_usage(only_unpriced, usage_record("claude-unknown-9", api_usage(input_tokens=7)))
    assert "cost_usd" not in only_unpriced and only_unpriced["cost_complete"] is False  # no number, no silent zero


def test_job_totals_on_the_row_keep_the_priced_sum_and_the_flag(store: JobStore, make_user) -> None:
    """The SQL merge (numbers add, other values: newest wins) keeps the sum across an
    unpriced call between priced ones: that call's delta carries no cost_usd at all."""
    job = store.enqueue(NewJob(user_id=make_user(), job_type="example.countdown")).job
    [claimed] = store.claim("w-price", job_id=job.id)
    deltas = []
    for model, usage in (("claude-opus-5-5", api_usage(input_tokens=1_000, output_tokens=100)),
                         ("claude-unknown-9", api_usage(input_tokens=5)),
                         ("claude-opus-5-5", api_usage(cache_read=10_000))):
        delta: dict[str, Any] = {}
        add_usage(delta, usage_record(model, usage))
        deltas.append(delta)
    store.checkpoint(claimed.id, "w-price", "one", None, usage=deltas[0])
    store.checkpoint(claimed.id, "w-price", "two", None, usage=deltas[1])
    done = store.complete(claimed.id, "w-price", {"ok": True}, usage=deltas[2])
    assert done.status is JobStatus.COMPLETED
    assert done.usage["cost_usd"] == pytest.approx((1_000 * 4 + 100 * 20 + 10_000 * 0.2) / M)
    assert done.usage["cost_complete"] is False and done.usage["unpriced_requests"] == 1 and done.usage["requests"] == 3


def test_override_adds_and_replaces_models_by_exact_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_JOBS_PRICES", json.dumps({
        "claude-custom-1": {"input": 1, "output": 2, "cache_write_5m": 1.25, "cache_write_1h": 2, "cache_read": 0.1,
                            "long_context": {"above_prompt_tokens": 1_000, "input": 2, "output": 4, "cache_write_5m": 2.5,
                                             "cache_write_1h": 4, "cache_read": 0.2},
                            "inference_geo": {"us": 1.5}},
        "claude-sonnet-5-5": {"input": 3, "output": 15},
    }))
    assert usage_record("claude-custom-1", api_usage(input_tokens=1_000, output_tokens=10))["cost_usd"] == pytest.approx(
        (1_000 * 1 + 10 * 2) / M)
    assert usage_record("claude-custom-1", api_usage(input_tokens=1_001, inference_geo="us"))["cost_usd"] == pytest.approx(
        1_001 * 2 * 1.5 / M)
    replaced = usage_record("claude-sonnet-5-5", api_usage(input_tokens=M, output_tokens=M))
    assert replaced["cost_usd"] == pytest.approx(18)
    left_out = usage_record("claude-sonnet-5-5", api_usage(cache_read=100))  # a tier the override did not give
    assert left_out["cost_usd"] is None and "cache_read" in left_out["cost_warning"]
    assert usage_record("claude-opus-5-5", api_usage(input_tokens=M))["cost_usd"] == pytest.approx(4)  # others stay
    assert price_table()["claude-custom-1"].source == "AI_JOBS_PRICES"


@pytest.mark.parametrize(("raw", "says"), [
    ("{bad", "not valid JSON"),
    ('["claude-sonnet-5-5"]', "JSON object"),
    ('{"claude-sonnet": [3, 15]}', "ids are exact, not prefixes"),
    ('{"claude-x": {"input": 1}}', "output: Field required"),
    ('{"claude-x": {"input": -1, "output": 2}}', "greater than or equal to 0"),
    ('{"claude-x": {"input": 1, "output": NaN}}', "finite number"),
    ('{"claude-x": {"input": 1, "output": 2, "cache_reed": 0.1}}', "cache_reed: Extra inputs are not permitted"),
    ('{"claude-x": {"input": 1, "output": 2, "long_context": {"input": 1, "output": 2}}}', "above_prompt_tokens"),
    ('{"claude x": {"input": 1, "output": 2}}', "is not a model id"),
])
def test_malformed_override_is_a_startup_error(raw: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.from_env({"AI_JOBS_PRICES": raw})
    assert "AI_JOBS_PRICES" in str(caught.value) and says in str(caught.value)


def test_the_cli_refuses_to_start_with_a_malformed_override(tmp_path: Path) -> None:
    env = {**os.environ, "AI_JOBS_PRICES": '{"claude-sonnet": [3, 15]}', "AI_JOBS_DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "ai_jobs.cli", "worker", "--once"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "invalid configuration" in run.stderr and "AI_JOBS_PRICES" in run.stderr and "Traceback" not in run.stderr


def test_readme_price_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- prices:start -->\n", "<!-- prices:end -->"
    assert readme.count(start) == 1 and readme.count(end) == 1
    embedded = readme.split(start, 1)[1].split(end, 1)[0]
    assert embedded == markdown_table(), "regenerate with: python -m ai_jobs.claude.pricing --markdown"
    printed = subprocess.run([sys.executable, "-m", "ai_jobs.claude.pricing", "--markdown"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert printed == embedded


# -- end to end: a real streamed call through ask_claude, the API mocked at the HTTP layer --


@pytest.fixture()
def api(httpx2_mock: respx.Router, monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.Route]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.delenv("AI_JOBS_MODEL", raising=False)
    reset_clients()
    yield httpx2_mock.post(MESSAGES_URL)
    reset_clients()


def _stream_with_usage(model: str, usage: dict[str, Any], output_tokens: int) -> str:
    body = sse_message("Hello", model=model, input_tokens=usage["input_tokens"], output_tokens=output_tokens)
    plain = '"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}'
    assert body.count(plain) == 1
    return body.replace(plain, json.dumps({k: v for k, v in usage.items() if k != "input_tokens"})[1:])


def _run_generate(store: PostgresStore, user: uuid.UUID, model: str) -> Any:
    registry = load_job_modules()
    job_id = store.enqueue(registry.new_job(user, "ai.generate", {"prompt": "hi", "model": model})).job.id
    Runner(store, registry).run_available()
    return store.get(job_id)


def test_streamed_call_records_tiers_and_cost_on_the_job(pg_store: PostgresStore, make_user, api) -> None:
    import httpx

    usage = {"input_tokens": 1_000, "cache_creation_input_tokens": 5_000, "cache_read_input_tokens": 4_000,
             "cache_creation": {"ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 3_000},
             "service_tier": "standard"}
    api.mock(return_value=httpx.Response(200, headers={"content-type": "text/event-stream"},
                                         text=_stream_with_usage("claude-sonnet-5-5", usage, output_tokens=500)))
    job = _run_generate(pg_store, make_user(), "claude-sonnet-5-5")
    assert job.status is JobStatus.COMPLETED, job.error
    assert api.call_count == 1
    assert job.usage["cache_creation_5m_input_tokens"] == 2_000 and job.usage["cache_creation_1h_input_tokens"] == 3_000
    assert job.usage["service_tier"] == "standard" and job.usage["output_tokens"] == 500
    assert job.usage["cost_usd"] == pytest.approx((1_000 * 2 + 500 * 10 + 2_000 * 2.5 + 3_000 * 4 + 4_000 * 0.20) / M)
    assert "cost_complete" not in job.usage


def test_streamed_call_to_an_unpriced_model_completes_with_a_null_cost(pg_store: PostgresStore, make_user, api) -> None:
    import httpx

    api.mock(return_value=httpx.Response(200, headers={"content-type": "text/event-stream"},
                                         text=sse_message("Hello", model="claude-mythos-5-2", input_tokens=80)))
    job = _run_generate(pg_store, make_user(), "claude-mythos-5-2")
    assert job.status is JobStatus.COMPLETED, job.error
    assert api.call_count == 1
    assert "cost_usd" not in job.usage and job.usage["cost_complete"] is False
    assert job.usage["unpriced_requests"] == 1 and "claude-mythos-5-2" in job.usage["cost_warning"]
    assert job.usage["input_tokens"] == 80
