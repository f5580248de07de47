"""The Claude call (ai_jobs.claude.calls.ask_claude) against a real local server that
speaks the Messages API wire format: SSE events with the message_start usage
placeholder, thinking blocks, cumulative usage in message_delta (cache fields
included), `error` events, a stream that stalls and a connection dropped mid-body.
Jobs run through the real Runner on a real PostgreSQL; nothing of ours is mocked.

One group per behaviour: 1 billed tokens, 2 structured output, 3 cancel and
deadlines, 4 transport errors, 5 effort."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest

from ai_jobs.claude.client import reset_clients
from ai_jobs.models import Job, JobStatus
from ai_jobs.registry import InputValidationError, load_job_modules
from ai_jobs.runner import Outcome, Runner
from ai_jobs.store.postgres import PostgresStore
from tests.anthropic_wire import ErrorReply, FakeAnthropicServer, _event, paced, sse_events

M = 1_000_000  # prices are per million tokens; Sonnet 5.5: $2 in, $10 out, $2.50 5 m write, $0.20 read


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropicServer]:
    server = FakeAnthropicServer().start()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    for name in ("AI_JOBS_MODEL", "AI_JOBS_CLAUDE_TIMEOUT", "AI_JOBS_RATE_LIMITS", "AI_JOBS_CLAUDE_TOKENS_PER_SECOND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")  # one plain user turn per call, whatever the batch count
    reset_clients()
    yield server
    server.stop()
    reset_clients()


def enqueue(store: PostgresStore, user: UUID, job_type: str, data: dict[str, Any]) -> UUID:
    return store.enqueue(load_job_modules().new_job(user, job_type, data)).job.id


def run(store: PostgresStore, user: UUID, job_type: str, data: dict[str, Any], **runner: Any) -> tuple[Job, list[Outcome]]:
    job_id = enqueue(store, user, job_type, data)
    clock = runner.pop("clock", time.monotonic)
    outcomes = Runner(store, load_job_modules(), clock=clock).run_available(job_id=job_id, max_jobs=1, **runner)
    return store.get(job_id), outcomes


def stream(text: str, **kw: Any) -> list[Any]:
    return list(sse_events(text, **kw))


# -- 1. every billed token is recorded ---------------------------------------------------------


def test_completed_call_records_the_final_cumulative_usage_with_cache_tiers(pg_store, make_user, fake) -> None:
    cache = {"cache_creation_input_tokens": 200, "cache_read_input_tokens": 300}
    fake.replies = [stream(
        "Hello", input_tokens=1000, output_tokens=480,
        start_usage={**cache, "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 0},
                     "service_tier": "standard"},
        delta_usage={"input_tokens": 1000, **cache},
    )]
    job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "hi"})
    assert job.status is JobStatus.COMPLETED, job.error
    assert len(fake.requests) == 1
    usage = job.usage
    assert usage["output_tokens"] == 480  # message_delta's cumulative count, not message_start's placeholder 1
    assert usage["input_tokens"] == 1000 and usage["cache_creation_5m_input_tokens"] == 200
    assert usage["cache_read_input_tokens"] == 300 and usage["requests"] == 1 and "estimated" not in usage
    assert usage["cost_usd"] == pytest.approx((1000 * 2 + 480 * 10 + 200 * 2.5 + 300 * 0.2) / M)


@pytest.mark.parametrize(
    ("job_type", "data", "reply", "code"),
    [
        ("ai.generate", {"prompt": "x"}, {"stop_reason": "refusal", "output_tokens": 9}, "claude_refusal"),
        ("ai.match", {"requirement": "R", "document": "D", "max_tokens": 1024},
         {"stop_reason": "max_tokens", "output_tokens": 1024}, "output_truncated"),
    ],
)
def test_refused_and_truncated_calls_are_billed(pg_store, make_user, fake, job_type, data, reply, code) -> None:
    fake.replies = [stream('{"score": 72, "rationale": "Cov', input_tokens=700, **reply)]
    job, _ = run(pg_store, make_user(), job_type, data)
    assert job.status is JobStatus.FAILED and job.error.code == code and not job.error.retryable
    assert len(fake.requests) == 1  # neither is asked again
    assert job.usage["input_tokens"] == 700 and job.usage["output_tokens"] == reply["output_tokens"]
    assert job.usage["requests"] == 1
    assert job.usage["cost_usd"] == pytest.approx((700 * 2 + reply["output_tokens"] * 10) / M)


def test_stream_error_event_records_input_and_an_estimated_output(pg_store, make_user, fake) -> None:
    fake.replies = [stream("abcdefgh" * 4, input_tokens=500, error_after_chunks={"type": "overloaded_error",
                                                                                  "message": "Overloaded"})]
    job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "x"})
    assert job.status is JobStatus.PENDING and job.error.code == "claude_overloaded_error" and job.error.retryable
    # no message_delta came: 8 characters arrived, but what was billed is unknown (omitted
    # thinking, dense text), so the most it can be, the max_tokens sent, is recorded, flagged
    sent = fake.requests[0].body["max_tokens"]
    assert sent == 4096 and job.usage["input_tokens"] == 500 and job.usage["output_tokens"] == sent
    assert job.usage["estimated"] is True and job.usage["output_tokens_estimated"] == sent
    assert job.usage["requests"] == 1 and job.usage["cost_usd"] == pytest.approx((500 * 2 + sent * 10) / M)


def test_an_http_error_counts_as_a_request_with_no_tokens(pg_store, make_user, fake) -> None:
    fake.replies = [ErrorReply(529, "overloaded_error", "Overloaded")]
    job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "x"})
    assert job.status is JobStatus.PENDING and job.error.code == "claude_overloaded"
    assert len(fake.requests) == 1
    assert job.usage["requests"] == 1 and job.usage["input_tokens"] == 0 and job.usage["cost_usd"] == 0


# -- 2. structured output ------------------------------------------------------------------------

PERSON = {  # an everyday schema the API would reject as is: minimum, maxLength, no additionalProperties
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def test_extract_sends_the_transformed_schema_and_validates_against_the_original(pg_store, make_user, fake) -> None:
    fake.replies = [stream('{"name": "Ada", "age": -3}', input_tokens=300, output_tokens=12),
                    stream('{"name": "Ada", "age": 36}', input_tokens=300, output_tokens=11)]
    job, _ = run(pg_store, make_user(), "ai.extract", {"text": "Ada, 36", "schema": PERSON})
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result["data"] == {"name": "Ada", "age": 36}
    sent = fake.requests[0].body["output_config"]["format"]
    assert sent["type"] == "json_schema" and sent["schema"]["additionalProperties"] is False
    age = sent["schema"]["properties"]["age"]
    assert "minimum" not in age and "minimum: 0" in age["description"]  # as anthropic.transform_schema moves it
    # -3 broke the ORIGINAL schema's minimum: asked once more, both calls billed
    assert len(fake.requests) == 2
    assert job.usage["requests"] == 2 and job.usage["input_tokens"] == 600 and job.usage["output_tokens"] == 23


def test_unparsable_twice_fails_as_invalid_output_with_both_calls_billed(pg_store, make_user, fake) -> None:
    fake.replies = [stream("Sure! Here is the JSON you asked for", input_tokens=300, output_tokens=10)]
    job, _ = run(pg_store, make_user(), "ai.extract", {"text": "Ada", "schema": PERSON})
    assert job.status is JobStatus.FAILED and job.error.code == "invalid_output" and not job.error.retryable
    assert "not JSON" in job.error.message and "2 times" in job.error.message
    assert len(fake.requests) == 2 and job.usage["requests"] == 2 and job.usage["output_tokens"] == 20


def test_structured_refusal_is_not_retried(pg_store, make_user, fake) -> None:
    fake.replies = [stream("I can't help with that.", stop_reason="refusal", output_tokens=7)]
    job, _ = run(pg_store, make_user(), "ai.extract", {"text": "Ada", "schema": PERSON})
    assert job.status is JobStatus.FAILED and job.error.code == "claude_refusal"
    assert len(fake.requests) == 1 and job.usage["output_tokens"] == 7


def test_pydantic_output_cut_at_max_tokens_says_so_instead_of_a_raw_validation_error(pg_store, make_user, fake) -> None:
    # The SDK would parse this at content_block_stop, before stop_reason arrives, and raise
    # pydantic's ValidationError mid-stream; parsed after the final message it is a truncation.
    fake.replies = [stream('{"mappings": [{"item": "a", "mapp', stop_reason="max_tokens", output_tokens=2000)]
    job, _ = run(pg_store, make_user(), "ai.map_batches", {"document": "D", "items": ["a"], "max_tokens": 2000})
    assert job.status is JobStatus.FAILED and job.error.code == "output_truncated"
    assert "max_tokens=2000" in job.error.message and "raise max_tokens" in job.error.message
    assert len(fake.requests) == 1 and job.usage["output_tokens"] == 2000


def test_match_after_thinking_parses_the_text_block(pg_store, make_user, fake) -> None:
    reply = {"score": 81, "rationale": "Covers it", "recommendations": ["More numbers"]}
    fake.replies = [stream(json.dumps(reply), thinking="Let me weigh the document against the requirement.",
                           output_tokens=350)]
    job, _ = run(pg_store, make_user(), "ai.match", {"requirement": "R", "document": "D"})
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result == {**reply, "model": "claude-sonnet-5-5"}
    assert job.usage["output_tokens"] == 350  # thinking bills as output
    schema = fake.requests[0].body["output_config"]["format"]["schema"]
    assert schema["additionalProperties"] is False and "maximum: 100" in schema["properties"]["score"]["description"]


# -- 3. cancel and deadlines ---------------------------------------------------------------------


def _thinking_forever() -> list[Any]:
    head = sse_events("", thinking="x")[:2]  # message_start, thinking content_block_start
    delta = sse_events("", thinking="hmm ", chunks=1)[2]
    return [*head, ("mark", "phase"), *paced([delta] * 200, 0.2)]


def _silent_thinking() -> list[Any]:  # display "omitted": a thinking block, then nothing for a long while
    return [*sse_events("", thinking="x")[:2], ("mark", "phase"), ("stall", 60)]


def _text_forever() -> list[Any]:
    head = sse_events("x")[:2]  # message_start, text content_block_start
    delta = sse_events("word ", chunks=1)[2]
    return [*head, ("mark", "phase"), *paced([delta] * 200, 0.2)]


def _signature_then_stall() -> list[Any]:
    events = sse_events("", thinking="short thought", chunks=1)
    return [*events[:4], ("mark", "phase"), ("stall", 60)]  # thinking delta + signature_delta, then silence


def _stalled_before_any_event() -> list[Any]:
    return [("mark", "phase"), ("stall", 60)]


def _no_answer_yet() -> list[Any]:  # the request is sent; the response headers take 2.5 s
    return [("headers_after", 2.5), *_text_forever()]


@pytest.mark.parametrize(
    "script",
    [_thinking_forever, _silent_thinking, _text_forever, _signature_then_stall, _stalled_before_any_event, _no_answer_yet],
    ids=["thinking", "silent-thinking", "text", "after-signature", "before-message-start", "before-headers"],
)
def test_cancel_is_noticed_within_a_second_in_every_phase(pg_store, make_user, fake, script) -> None:
    fake.replies = [script()]
    job_id = enqueue(pg_store, make_user(), "ai.generate", {"prompt": "think hard"})
    runner = Runner(pg_store, load_job_modules())  # default lease: heartbeats only every 10 s
    worker = threading.Thread(target=runner.run_available, kwargs={"job_id": job_id, "max_jobs": 1})
    worker.start()
    if script is _no_answer_yet:
        deadline = time.monotonic() + 10
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        assert fake.marks["phase"].wait(10)
    time.sleep(0.6)  # well inside the phase
    asked = time.monotonic()
    pg_store.request_cancel(job_id)
    worker.join(5)
    noticed = time.monotonic() - asked
    assert not worker.is_alive()
    job = pg_store.get(job_id)
    assert job.status is JobStatus.CANCELLED
    print(f"cancel noticed after {noticed:.3f} s")  # shown with -s
    assert noticed < 1.0, f"cancel took {noticed:.2f} s"
    # closed at once (before the headers came, as soon as they do)
    assert fake.disconnected.wait(4 if script is _no_answer_yet else 2), "the stream was not closed"
    assert len(fake.requests) == 1
    if script is _no_answer_yet:  # no response had come: nothing known to be billed
        assert "requests" not in job.usage
    elif script is _stalled_before_any_event:  # the API answered but no message began
        assert job.usage["requests"] == 1 and job.usage["input_tokens"] == 0
    else:  # message_start came: its input tokens were billed, the output is an estimate
        assert job.usage["requests"] == 1 and job.usage["input_tokens"] == 100 and job.usage["estimated"] is True


def fast_clock(speed: float) -> Callable[[], float]:
    """The runner's clock running `speed` times faster: budgets of minutes pass in seconds."""
    start = time.monotonic()
    return lambda: start + (time.monotonic() - start) * speed


def test_a_call_still_streaming_at_the_deadline_stops_inside_the_invocation(pg_store, make_user, fake) -> None:
    fake.replies = [_text_forever()]
    started = time.monotonic()
    job, outcomes = run(pg_store, make_user(), "ai.generate", {"prompt": "x", "max_tokens": 1024},
                        budget_seconds=60, clock=fast_clock(20), wait_for_due=False)
    spent = (time.monotonic() - started) * 20  # in the runner's (fast) seconds
    assert spent < 60, f"the call outlived the invocation ({spent:.0f} of 60 s)"
    assert job.status is JobStatus.PENDING and job.error.code == "claude_timeout" and job.error.retryable
    assert fake.disconnected.wait(2)
    sent_timeout = float(fake.requests[0].headers["x-stainless-timeout"])
    assert sent_timeout <= 55  # the per-request read timeout fits the budget too (60 - 5 s margin)
    assert job.usage["requests"] == 1 and job.usage["estimated"] is True and job.usage["output_tokens"] > 0


def test_a_call_that_cannot_fit_releases_the_job_before_it_starts(pg_store, make_user, fake) -> None:
    batch = json.dumps({"mappings": [{"item": "a", "mapping": "m", "confidence": 90}]})
    fake.replies = [[("sleep", 3.0), *stream(batch, output_tokens=30)], stream(batch)]
    # 200 s budget at 20x; batch 1 takes 3 s (60 runner-seconds); batch 2's 4096 tokens
    # at 30 tokens/s plus margins need ~147 s of the ~140 left: a new invocation runs it
    job, outcomes = run(pg_store, make_user(), "ai.map_batches",
                        {"document": "D", "items": ["a", "b"], "batch_size": 1},
                        budget_seconds=200, clock=fast_clock(20), wait_for_due=False)
    assert [o.kind for o in outcomes] == ["continued"]
    assert job.status is JobStatus.PENDING and job.attempts == 0 and job.error is None  # no attempt spent
    assert list(job.checkpoints) == ["batch-1"] and len(fake.requests) == 1
    assert job.usage["requests"] == 1 and job.usage["output_tokens"] == 30


def test_a_job_started_late_in_an_invocation_waits_for_a_fresh_one_instead_of_being_shortened(
    pg_store, make_user, fake, monkeypatch
) -> None:
    """Only a fresh invocation shortens a first call: a job claimed after another ran
    (or after waiting for a due job) would get a shrunken max_tokens, and ai.extract a
    permanent output_truncated, where a new invocation has room for the whole call."""
    monkeypatch.setenv("AI_JOBS_USER_CONCURRENCY", "0")
    user = make_user()
    first = enqueue(pg_store, user, "ai.generate", {"prompt": "first", "max_tokens": 1000})
    second = enqueue(pg_store, user, "ai.extract", {"text": "Ada", "schema": PERSON})
    fake.replies = [[("sleep", 3.0), *stream("ok")], stream('{"name": "Ada", "age": 36}')]
    # 200 s budget at 20x: the first job takes 60 runner-seconds; the second's 4096
    # tokens need ~147 s of the ~140 left. Before, it went out with max_tokens ~3,900.
    outcomes = Runner(pg_store, load_job_modules(), clock=fast_clock(20)).run_available(
        job_id=first, budget_seconds=200, wait_for_due=False)
    assert [(o.job_id, o.kind) for o in outcomes] == [(first, "completed"), (second, "continued")]
    assert len(fake.requests) == 1
    later = pg_store.get(second)
    assert later.status is JobStatus.PENDING and later.attempts == 0 and later.error is None
    # the fresh invocation sends the whole call
    Runner(pg_store, load_job_modules()).run_available(job_id=second, budget_seconds=200, wait_for_due=False)
    assert fake.requests[1].body["max_tokens"] == 4096
    assert pg_store.get(second).status is JobStatus.COMPLETED


def test_a_first_call_too_long_for_any_invocation_is_shortened_to_fit(pg_store, make_user, fake) -> None:
    fake.replies = [stream("long text", stop_reason="max_tokens")]
    job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "x", "max_tokens": 64_000},
                 budget_seconds=270, wait_for_due=False)
    assert job.status is JobStatus.COMPLETED and job.result["stop_reason"] == "max_tokens"
    sent = fake.requests[0]
    # (270 - 5 s to finish - 5 s to first token) x 30 tokens/s
    assert 7_700 <= sent.body["max_tokens"] <= 7_800
    assert float(sent.headers["x-stainless-timeout"]) <= 265


# -- 4. transport errors -------------------------------------------------------------------------


def test_a_connection_dropped_mid_stream_is_retryable_and_logged_once(pg_store, make_user, fake, caplog) -> None:
    events = sse_events("abcdefgh" * 4, input_tokens=400, chunks=4)
    fake.replies = [[*events[:4], ("drop",)]]  # message_start, block start, two text deltas, then the socket closes
    with caplog.at_level(logging.INFO):
        job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "x"})
    assert job.status is JobStatus.PENDING and job.error.code == "claude_stream_interrupted" and job.error.retryable
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None and "cut" in warnings[0].getMessage()
    # 16 characters arrived; the max_tokens sent is recorded, flagged as an estimate
    assert job.usage["input_tokens"] == 400 and job.usage["output_tokens"] == fake.requests[0].body["max_tokens"]
    assert job.usage["estimated"] is True and job.usage["requests"] == 1


@pytest.mark.parametrize("ending", ["drop", "error event"])
def test_a_stream_that_breaks_after_its_final_message_delta_is_used_not_asked_again(
        pg_store, make_user, fake, ending) -> None:
    """The reply is whole and billed once message_delta has its stop_reason and final
    count; only message_stop was lost. Retrying would pay for it twice."""
    events = sse_events("Hello there", input_tokens=1000, output_tokens=4000)
    assert '"message_delta"' in events[-2] and '"message_stop"' in events[-1]
    tail: Any = ("drop",) if ending == "drop" else _event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    fake.replies = [[*events[:-1], tail], events]
    job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "x", "max_tokens": 4096})
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result["text"] == "Hello there" and len(fake.requests) == 1
    assert job.usage["output_tokens"] == 4000 and "estimated" not in job.usage and job.usage["requests"] == 1


def test_the_sdk_never_retries_a_billed_call(pg_store, make_user, fake, monkeypatch) -> None:
    """With AI_JOBS_CLAUDE_MAX_RETRIES set, the SDK would sleep out the retry-after in the
    reader thread and send the request again after the job had given up, unrecorded."""
    monkeypatch.setenv("AI_JOBS_CLAUDE_MAX_RETRIES", "2")
    reset_clients()
    fake.replies = [ErrorReply(529, "overloaded_error", "Overloaded", headers={"retry-after": "2"}), stream("hello")]
    job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "x"})
    assert job.status is JobStatus.PENDING and job.error.code == "claude_overloaded"
    time.sleep(3)  # past the retry-after: an SDK retry would have arrived by now
    assert len(fake.requests) == 1 and job.usage["requests"] == 1


def test_a_stalled_stream_times_out_retryably(pg_store, make_user, fake, monkeypatch, caplog) -> None:
    monkeypatch.setenv("AI_JOBS_CLAUDE_TIMEOUT", "1")
    fake.replies = [[*sse_events("x")[:2], ("stall", 30)]]
    with caplog.at_level(logging.INFO):
        job, _ = run(pg_store, make_user(), "ai.generate", {"prompt": "x"})
    assert job.status is JobStatus.PENDING and job.error.code == "claude_timeout" and job.error.retryable
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None and "stalled" in warnings[0].getMessage()
    assert job.usage["requests"] == 1 and job.usage["input_tokens"] == 100


# -- 5. effort -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_type", "data", "sent"),
    [
        ("ai.generate", {"prompt": "x"}, None),
        ("ai.generate", {"prompt": "x", "effort": "medium"}, "medium"),
        ("ai.extract", {"text": "Ada", "schema": PERSON}, "low"),
        ("ai.extract", {"text": "Ada", "schema": PERSON, "effort": "high"}, "high"),
        ("ai.match", {"requirement": "R", "document": "D"}, "low"),
        ("ai.map_batches", {"document": "D", "items": ["a"]}, "low"),
        ("ai.extract", {"text": "Ada", "schema": PERSON, "model": "claude-haiku-4-5"}, None),  # rejects effort
        ("ai.extract", {"text": "Ada", "schema": PERSON, "model": "claude-sonnet-4-5-20250929"}, None),  # rejects it
        ("ai.extract", {"text": "Ada", "schema": PERSON, "model": "claude-opus-4-5"}, "low"),  # the first to take it
        ("ai.match", {"requirement": "R", "document": "D", "model": "claude-opus-4-5-20251101"}, "low"),
    ],
)
def test_effort_defaults_per_type_and_can_be_raised(pg_store, make_user, fake, job_type, data, sent) -> None:
    replies = {"ai.generate": "ok", "ai.extract": '{"name": "Ada", "age": 36}',
               "ai.match": '{"score": 1, "rationale": "r", "recommendations": []}',
               "ai.map_batches": '{"mappings": [{"item": "a", "mapping": "m", "confidence": 1}]}'}
    fake.replies = [stream(replies[job_type])]
    job, _ = run(pg_store, make_user(), job_type, data)
    assert job.status is JobStatus.COMPLETED, job.error
    assert fake.requests[0].body.get("output_config", {}).get("effort") == sent
    assert "thinking" not in fake.requests[0].body  # effort steers adaptive thinking; no budget is sent


def test_effort_outside_low_medium_high_is_rejected_at_enqueue() -> None:
    with pytest.raises(InputValidationError):
        load_job_modules().new_job(UUID(int=1), "ai.generate", {"prompt": "x", "effort": "max"})


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "says"), [
    ("AI_JOBS_CLAUDE_MAX_RETRIES", "3", "less than or equal to 2"),
    ("AI_JOBS_CLAUDE_MAX_RETRIES", "-1", "greater than or equal to 0"),
    ("AI_JOBS_CLAUDE_TIMEOUT", "0", "greater than 0"),
    ("AI_JOBS_CLAUDE_TIMEOUT", "soon", "valid number"),
    ("AI_JOBS_CLAUDE_TOKENS_PER_SECOND", "0", "greater than 0"),
    ("AI_JOBS_CLAUDE_TOKENS_PER_SECOND", "20000", "less than or equal to 10000"),
])
def test_a_bad_claude_client_setting_is_a_start_up_error(name: str, value: str, says: str) -> None:
    """Not a `claude_config` failure of every ai.* job later: the settings refuse it."""
    from ai_jobs.settings import Settings

    with pytest.raises(ValueError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and says in str(err.value)


def test_claude_client_settings_at_their_bounds_start() -> None:
    from ai_jobs.settings import Settings

    Settings.from_env({"AI_JOBS_CLAUDE_MAX_RETRIES": "2", "AI_JOBS_CLAUDE_TIMEOUT": "0.5",
                       "AI_JOBS_CLAUDE_TOKENS_PER_SECOND": "10000"})
    Settings.from_env({"AI_JOBS_CLAUDE_MAX_RETRIES": "0", "AI_JOBS_CLAUDE_TOKENS_PER_SECOND": "0.1"})


def test_the_cli_refuses_to_start_with_a_bad_claude_client_setting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    env = {**os.environ, "AI_JOBS_CLAUDE_MAX_RETRIES": "3", "AI_JOBS_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "ai_jobs.cli", "worker", "--once"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == ("ai-jobs: invalid configuration: AI_JOBS_CLAUDE_MAX_RETRIES: Input should be less than "
                          "or equal to 2, got '3'\n")
