"""Claude job types end to end on a real database, with the Anthropic API
mocked at the HTTP layer (respx on httpcore2, the transport under httpx2)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
import respx

from ai_jobs.claude.client import reset_clients
from ai_jobs.models import JobStatus
from ai_jobs.registry import load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.store.postgres import PostgresStore
from tests.anthropic_wire import MESSAGES_URL, error_response, stream_response


@pytest.fixture(autouse=True)
def claude_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.delenv("AI_JOBS_MODEL", raising=False)
    reset_clients()
    yield
    reset_clients()


@pytest.fixture()
def api(httpx2_mock: respx.Router) -> respx.Route:
    return httpx2_mock.post(MESSAGES_URL)


def run_job(store: PostgresStore, user: UUID, job_type: str, data: dict) -> UUID:
    registry = load_job_modules()
    job_id = store.enqueue(registry.new_job(user, job_type, data)).job.id
    Runner(store, registry).run_available()
    return job_id


def test_generate_streams_text_and_records_usage(pg_store, make_user, api) -> None:
    api.mock(return_value=stream_response("Hello from Claude", input_tokens=1000, output_tokens=500))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "Say hello", "system": "Be brief"}))
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result == {"text": "Hello from Claude", "model": "claude-sonnet-5-5", "stop_reason": "end_turn"}
    assert api.call_count == 1
    sent = json.loads(api.calls.last.request.content)
    assert sent["model"] == "claude-sonnet-5-5" and sent["system"] == "Be brief" and sent["stream"] is True
    assert api.calls.last.request.headers["authorization"] == "Bearer sk-ant-test"
    assert api.calls.last.request.headers["x-stainless-retry-count"] == "0"
    assert job.usage["input_tokens"] == 1000 and job.usage["output_tokens"] == 500 and job.usage["requests"] == 1
    assert job.usage["cost_usd"] == pytest.approx(1000 * 2e-6 + 500 * 10e-6)  # Sonnet 5.5: $2 / $10 per MTok


def test_model_is_configurable(pg_store, make_user, api, monkeypatch) -> None:
    monkeypatch.setenv("AI_JOBS_MODEL", "claude-haiku-5-5")
    api.mock(return_value=stream_response("ok", model="claude-haiku-5-5"))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert json.loads(api.calls.last.request.content)["model"] == "claude-haiku-5-5"
    assert job.usage["cost_usd"] == pytest.approx(100 * 0.1e-6 + 50 * 0.5e-6)  # Haiku 5.5: $0.10 / $0.50 per MTok


def test_429_retry_after_sets_run_at(pg_store, make_user, api) -> None:
    api.mock(return_value=error_response(429, "rate_limit_error", "Too many requests", headers={"retry-after": "120"}))
    before = datetime.now(UTC)
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.PENDING and job.error.code == "claude_rate_limited" and job.error.retryable
    assert before + timedelta(seconds=119) <= job.run_at <= datetime.now(UTC) + timedelta(seconds=121)
    assert api.call_count == 1  # no SDK retry sleeping inside the invocation


def test_529_overloaded_is_retried(pg_store, make_user, api) -> None:
    api.mock(return_value=error_response(529, "overloaded_error", "Overloaded"))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.PENDING and job.error.code == "claude_overloaded" and job.attempts == 1
    assert api.call_count == 1


def test_mid_stream_overload_is_retried(pg_store, make_user, api) -> None:
    api.mock(return_value=stream_response(
        "partial answer that never finishes", error_after_chunks={"type": "overloaded_error", "message": "Overloaded"}
    ))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.PENDING and job.error.code == "claude_overloaded_error" and job.error.retryable


def test_429_without_retry_after_waits_for_the_exhausted_limits_reset(pg_store, make_user, api) -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=300)).strftime("%Y-%m-%dT%H:%M:%SZ")
    soon = (datetime.now(UTC) + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.mock(return_value=error_response(429, "rate_limit_error", "Too many tokens", headers={
        "anthropic-ratelimit-output-tokens-remaining": "0", "anthropic-ratelimit-output-tokens-reset": reset,
        "anthropic-ratelimit-requests-remaining": "40", "anthropic-ratelimit-requests-reset": soon}))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.PENDING and job.error.code == "claude_rate_limited"
    assert datetime.now(UTC) + timedelta(seconds=290) <= job.run_at <= datetime.now(UTC) + timedelta(seconds=301)


@pytest.mark.parametrize(("status", "kind", "should_retry", "retryable"), [
    (500, "api_error", "false", False),  # the API says a retry would fail the same way
    (400, "invalid_request_error", "true", True),
])
def test_x_should_retry_is_followed(pg_store, make_user, api, status, kind, should_retry, retryable) -> None:
    api.mock(return_value=error_response(status, kind, "nope", headers={"x-should-retry": should_retry}))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.error.retryable is retryable and api.call_count == 1
    assert job.status is (JobStatus.PENDING if retryable else JobStatus.FAILED)


def test_400_fails_at_once(pg_store, make_user, api) -> None:
    api.mock(return_value=error_response(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000"))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.FAILED and job.attempts == 1 and not job.error.retryable
    assert job.error.code == "claude_bad_request" and "prompt is too long" in job.error.message
    assert "Check the job input" in job.error.message
    assert api.call_count == 1


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [(401, "authentication_error", "claude_auth"), (403, "permission_error", "claude_forbidden"),
     (404, "not_found_error", "claude_not_found"), (413, "request_too_large", "claude_too_large")],
)
def test_other_client_errors_are_fatal(pg_store, make_user, api, status, kind, code) -> None:
    api.mock(return_value=error_response(status, kind, "nope"))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.FAILED and job.error.code == code


def test_spend_limit_429_is_fatal(pg_store, make_user, api) -> None:
    api.mock(return_value=error_response(429, "rate_limit_error", "spend limit reached",
                                         error_code="enforced_spend_limit_reached", headers={"retry-after": "5"}))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.FAILED and job.error.code == "claude_spend_limit"
    assert "Anthropic Console" in job.error.message


@pytest.mark.httpx2(assert_all_called=False)
def test_missing_api_key_fails_clearly_without_calling(pg_store, make_user, api, monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    api.mock(return_value=stream_response("never"))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.FAILED and job.attempts == 1 and job.error.code == "missing_api_key"
    assert "ANTHROPIC_API_KEY" in job.error.message
    assert not api.called


def test_match_returns_validated_structured_output(pg_store, make_user, api) -> None:
    reply = {"score": 72, "rationale": "Covers most points", "recommendations": ["Add metrics"]}
    api.mock(return_value=stream_response(json.dumps(reply)))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.match", {"requirement": "R", "document": "D"}))
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result == {**reply, "model": "claude-sonnet-5-5"}
    sent = json.loads(api.calls.last.request.content)
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert "score" in sent["output_config"]["format"]["schema"]["properties"]


def test_structured_output_that_fails_validation_fails_clearly(pg_store, make_user, api) -> None:
    api.mock(return_value=stream_response(json.dumps({"score": 150, "rationale": "x", "recommendations": []})))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.match", {"requirement": "R", "document": "D"}))
    assert job.status is JobStatus.FAILED and job.error.code == "invalid_output" and not job.error.retryable
    assert "did not match the expected schema" in job.error.message
    # asked once more; both rejected replies were paid for
    assert api.call_count == 2 and job.usage["input_tokens"] == 200 and job.usage["requests"] == 2


def test_truncated_structured_output_fails_with_advice(pg_store, make_user, api) -> None:
    api.mock(return_value=stream_response('{"score": 72, "rationale": "Cov', stop_reason="max_tokens"))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.match", {"requirement": "R", "document": "D", "max_tokens": 20}))
    assert job.status is JobStatus.FAILED and job.error.code in ("invalid_output", "output_truncated")
    assert "max_tokens" in job.error.message and "20" in job.error.message


def test_refusal_is_fatal_and_still_billed(pg_store, make_user, api) -> None:
    api.mock(return_value=stream_response("I can't help with that.", stop_reason="refusal", output_tokens=9))
    job = pg_store.get(run_job(pg_store, make_user(), "ai.generate", {"prompt": "x"}))
    assert job.status is JobStatus.FAILED and job.error.code == "claude_refusal"
    assert job.usage["output_tokens"] == 9 and job.usage["cost_usd"] > 0


def test_extract_validates_against_the_json_schema(pg_store, make_user, api) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    api.mock(side_effect=[stream_response('{"name": "Ada", "age": 36}'), stream_response('{"name": "Ada"}'),
                          stream_response('{"name": "Ada"}')])
    user = make_user()
    good = pg_store.get(run_job(pg_store, user, "ai.extract", {"text": "Ada, 36", "schema": schema}))
    assert good.status is JobStatus.COMPLETED and good.result["data"] == {"name": "Ada", "age": 36}
    sent = json.loads(api.calls[0].request.content)["output_config"]
    assert sent["format"]["schema"]["required"] == ["name", "age"] and sent["effort"] == "low"
    bad = pg_store.get(run_job(pg_store, user, "ai.extract", {"text": "Ada", "schema": schema}))
    assert bad.status is JobStatus.FAILED and bad.error.code == "invalid_output" and "'age' is a required" in bad.error.message


def test_extract_rejects_an_invalid_schema_before_enqueue() -> None:
    from ai_jobs.registry import InputValidationError

    registry = load_job_modules()
    with pytest.raises(InputValidationError) as err:
        registry.new_job(UUID(int=1), "ai.extract", {"text": "x", "schema": {"type": "nonsense"}})
    assert "not a valid JSON Schema" in str(err.value.errors)


def test_extract_schema_size_is_counted_in_characters_of_compact_json() -> None:
    """README: at most 64,000 characters of JSON. An "é" is one character (not its
    6-character \\u escape) and separators add no spaces."""
    from ai_jobs.jobs.ai import MAX_SCHEMA_CHARS
    from ai_jobs.registry import InputValidationError

    registry = load_job_modules()
    accented = {"type": "object", "description": "é" * 11_000}
    registry.new_job(UUID(int=1), "ai.extract", {"text": "x", "schema": accented})
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2_400)}}
    compact = len(json.dumps(wide, ensure_ascii=False, separators=(",", ":")))
    assert compact <= MAX_SCHEMA_CHARS < len(json.dumps(wide))
    registry.new_job(UUID(int=1), "ai.extract", {"text": "x", "schema": wide})
    over = {"type": "object", "description": "é" * MAX_SCHEMA_CHARS}
    with pytest.raises(InputValidationError) as err:
        registry.new_job(UUID(int=1), "ai.extract", {"text": "x", "schema": over})
    assert f"larger than {MAX_SCHEMA_CHARS} characters" in str(err.value.errors)


def test_map_batches_checkpoints_each_batch_and_sums_usage(pg_store, make_user, api) -> None:
    def reply(request):  # type: ignore[no-untyped-def]
        content = json.loads(request.content)["messages"][0]["content"]
        prompt = content if isinstance(content, str) else content[-1]["text"]  # cached document block first
        items = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        body = {"mappings": [{"item": it, "mapping": f"covered: {it}", "confidence": 80} for it in items]}
        return stream_response(json.dumps(body), input_tokens=200, output_tokens=40)

    api.mock(side_effect=reply)
    items = [f"item {i}" for i in range(7)]
    store = pg_store
    registry = load_job_modules()
    user = make_user()
    job_id = store.enqueue(registry.new_job(user, "ai.map_batches", {"document": "Doc", "items": items, "batch_size": 3})).job.id
    messages: list[str | None] = []
    original = store.checkpoint

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        messages.append(kw.get("message"))
        return original(*args, **kw)

    store.checkpoint = spy  # type: ignore[method-assign]
    try:
        Runner(store, registry).run_available()
    finally:
        del store.checkpoint
    job = store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert [m["item"] for m in job.result["mappings"]] == items and job.result["batches"] == 3
    assert sorted(job.checkpoints) == ["batch-1", "batch-2", "batch-3"] and api.call_count == 3
    assert job.usage["input_tokens"] == 600 and job.usage["requests"] == 3
    assert any(m and m.startswith("Analyzing batch 3 of 3") for m in messages)


def test_retry_does_not_repeat_finished_batches(pg_store, make_user, api) -> None:
    calls = {"n": 0}

    def reply(request):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            return error_response(529, "overloaded_error", "Overloaded")
        content = json.loads(request.content)["messages"][0]["content"]
        prompt = content if isinstance(content, str) else content[-1]["text"]  # cached document block first
        items = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        return stream_response(json.dumps({"mappings": [{"item": i, "mapping": "m", "confidence": 1} for i in items]}))

    api.mock(side_effect=reply)
    registry = load_job_modules()
    job_id = pg_store.enqueue(registry.new_job(make_user(), "ai.map_batches", {"document": "D", "items": ["a", "b"], "batch_size": 1})).job.id
    Runner(pg_store, registry).run_available()
    assert pg_store.get(job_id).status is JobStatus.PENDING
    from psycopg import connect  # local: only this test moves run_at

    Runner(pg_store, registry).run_available(job_id=job_id)  # not due yet: nothing runs
    assert calls["n"] == 2
    with connect(pg_store._pool.conninfo, autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute("update public.ai_jobs set run_at = now() where id = %s", (job_id,))
    Runner(pg_store, registry).run_available()
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED and calls["n"] == 3  # batch 1 was not asked again


def test_request_path_does_not_import_anthropic(tmp_path) -> None:
    """The module that validates and enqueues loads no anthropic (nor supabase)."""
    code = "import ai_jobs.service, ai_jobs.jobs, ai_jobs.store.postgres"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "ai_jobs.jobs.ai" in imported and "ai_jobs.service" in imported
    assert not any(name == "anthropic" or name.startswith("anthropic.") for name in imported)
    assert not any(name == "supabase" or name.startswith("supabase.") for name in imported)
