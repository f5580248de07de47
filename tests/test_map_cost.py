"""ai.map_batches cost: prompt caching of the document and the Message Batches API,
end to end on a real database against a local HTTP fake of the Anthropic API that
bills as the API does (tests/claude_api_fake.py: cache writes and reads by TTL, the
minimum cacheable length, the batch tier)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
import pytest

from ai_jobs.claude.client import reset_clients
from ai_jobs.claude.pricing import usage_record
from ai_jobs.models import JobStatus
from ai_jobs.registry import InputValidationError, load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.store.postgres import PostgresStore
from tests.claude_api_fake import ClaudeApiFake, count_tokens

MODEL = "claude-sonnet-5-5"  # $2 in, $10 out, $2.50 5-min write, $4 1-hour write, $0.20 read per MTok
INSTRUCTIONS = "For each item, say where and how the document addresses it."
DOCUMENT = "The service keeps every uploaded file encrypted at rest and in transit. " * 600  # ~10.8k tokens
DOC_BLOCK = f"<document>\n{DOCUMENT}\n</document>"
PREFIX = count_tokens(INSTRUCTIONS) + count_tokens(DOC_BLOCK)  # the cached prefix: system + document


@pytest.fixture()
def claude(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClaudeApiFake]:
    with ClaudeApiFake(polls_until_ended=3, outcomes={"batch-2": "errored"}) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        for name in ("AI_JOBS_MODEL", "AI_JOBS_PROMPT_CACHE", "AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS",
                     "AI_JOBS_MAP_BATCH_API_MIN_ITEMS", "AI_JOBS_MAP_BATCH_API_POLL_SECONDS", "AI_JOBS_RATE_LIMITS"):
            monkeypatch.delenv(name, raising=False)
        reset_clients()
        yield fake
        reset_clients()


def enqueue(store: PostgresStore, user: UUID, **data: object) -> UUID:
    registry = load_job_modules()
    return store.enqueue(registry.new_job(user, "ai.map_batches", {"document": DOCUMENT, **data})).job.id


def run(store: PostgresStore) -> None:
    Runner(store, load_job_modules()).run_available()


def make_due(db: psycopg.Connection, job_id: UUID) -> None:
    db.execute("update public.ai_jobs set run_at = now() where id = %s", (job_id,))


def cost(billed: list) -> float:
    """What the fake billed, priced by hand at Sonnet 5.5's rates (the Batch API: half)."""
    total = 0.0
    for b in billed:
        u, split = b.usage, b.usage["cache_creation"]
        dollars = (u["input_tokens"] * 2 + u["output_tokens"] * 10 + split["ephemeral_5m_input_tokens"] * 2.5
                   + split["ephemeral_1h_input_tokens"] * 4 + u["cache_read_input_tokens"] * 0.2) / 1e6
        total += dollars * (0.5 if b.batch else 1)
    return total


def test_three_batches_write_the_document_once_then_read_it(pg_store, make_user, claude) -> None:
    items = [f"requirement {i}" for i in range(9)]
    job_id = enqueue(pg_store, make_user(), items=items, batch_size=3)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert [m["item"] for m in job.result["mappings"]] == items

    # the cached prefix (system + document) is byte-identical; only the items differ
    sent = claude.message_requests
    assert len(sent) == 3
    assert all(r["system"] == [{"type": "text", "text": INSTRUCTIONS}] for r in sent)
    assert all(r["messages"][0]["content"][0] == {"type": "text", "text": DOC_BLOCK,
                                                  "cache_control": {"type": "ephemeral"}} for r in sent)
    assert len({json.dumps(r["messages"][0]["content"][1]) for r in sent}) == 3

    # billed: one 5-minute write of the prefix, then two reads
    usages = [b.usage for b in claude.billed]
    assert [u["cache_creation_input_tokens"] for u in usages] == [PREFIX, 0, 0]
    assert [u["cache_read_input_tokens"] for u in usages] == [0, PREFIX, PREFIX]
    assert usages[0]["cache_creation"] == {"ephemeral_5m_input_tokens": PREFIX, "ephemeral_1h_input_tokens": 0}

    # recorded on the job, and priced: write $2.50, reads $0.20, the rest $2 / $10 per MTok
    fresh = sum(u["input_tokens"] for u in usages)
    out = sum(u["output_tokens"] for u in usages)
    assert job.usage["requests"] == 3
    assert job.usage["cache_creation_input_tokens"] == job.usage["cache_creation_5m_input_tokens"] == PREFIX
    assert job.usage["cache_read_input_tokens"] == 2 * PREFIX
    assert job.usage["input_tokens"] == fresh and job.usage["output_tokens"] == out
    expected = (PREFIX * 2.5 + 2 * PREFIX * 0.2 + fresh * 2 + out * 10) / 1e6
    assert job.usage["cost_usd"] == pytest.approx(expected, rel=1e-9)
    uncached = (3 * PREFIX * 2 + fresh * 2 + out * 10) / 1e6
    assert job.usage["cost_usd"] < 0.5 * uncached


def test_a_long_job_writes_the_one_hour_cache(pg_store, make_user, claude) -> None:
    job_id = enqueue(pg_store, make_user(), items=[f"r{i}" for i in range(6)], batch_size=1)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    marks = {json.dumps(r["messages"][0]["content"][0]["cache_control"]) for r in claude.message_requests}
    assert marks == {json.dumps({"type": "ephemeral", "ttl": "1h"})}  # 6 batches >= 5: may outlive 5 minutes
    assert job.usage["cache_creation_1h_input_tokens"] == PREFIX and job.usage["cache_read_input_tokens"] == 5 * PREFIX
    first = claude.billed[0].usage
    assert first["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": PREFIX}
    assert job.usage["cost_usd"] == pytest.approx(cost(claude.billed), rel=1e-9)
    assert usage_record(MODEL, first)["cost_usd"] == pytest.approx(
        (PREFIX * 4 + first["input_tokens"] * 2 + first["output_tokens"] * 10) / 1e6, rel=1e-9)


def test_one_batch_or_caching_off_sends_no_breakpoint(pg_store, make_user, claude, monkeypatch) -> None:
    user = make_user()
    single = enqueue(pg_store, user, items=["a", "b"], batch_size=5)
    run(pg_store)
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    off = enqueue(pg_store, user, items=["a", "b"], batch_size=1)
    run(pg_store)
    assert pg_store.get(single).status is pg_store.get(off).status is JobStatus.COMPLETED
    assert all(isinstance(r["messages"][0]["content"], str) for r in claude.message_requests)
    assert all(b.usage["cache_creation_input_tokens"] == b.usage["cache_read_input_tokens"] == 0 for b in claude.billed)


def test_a_document_below_the_minimum_is_billed_as_plain_input(pg_store, make_user, claude) -> None:
    registry = load_job_modules()
    data = {"document": "A short policy.", "items": ["x", "y"], "batch_size": 1}
    job_id = pg_store.enqueue(registry.new_job(make_user(), "ai.map_batches", data)).job.id
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED
    assert "cache_control" in claude.message_requests[0]["messages"][0]["content"][0]  # marked, but too short
    assert job.usage["cache_creation_input_tokens"] == job.usage["cache_read_input_tokens"] == 0
    assert job.usage["cost_usd"] == pytest.approx(cost(claude.billed), rel=1e-9)


def test_batch_api_waits_without_a_worker_and_bills_the_batch_tier(pg_store, make_user, claude, db) -> None:
    items = [f"requirement {i}" for i in range(10)]
    job_id = enqueue(pg_store, make_user(), items=items, batch_size=3, use_batch_api=True)
    before = datetime.now(UTC)
    run(pg_store)
    job = pg_store.get(job_id)
    # batch 1 ran directly and wrote the 1-hour cache; the other three went in one
    # Message Batch; then the job was released: pending, no attempt spent, due after
    # the poll interval
    assert job.status is JobStatus.PENDING and job.error is None and job.attempts == 0
    assert job.wait_reason == "claude_batch" and job.locked_by is None
    assert before + timedelta(seconds=59) <= job.run_at <= datetime.now(UTC) + timedelta(seconds=61)
    assert job.progress_message.startswith("Waiting for Claude's Message Batch: 3 requests")
    [batch] = claude.batches.values()
    assert job.checkpoints["claude-batch"]["id"] == batch.id and "batch-1" in job.checkpoints
    assert [r["custom_id"] for r in batch.requests] == ["batch-2", "batch-3", "batch-4"]
    params = batch.requests[0]["params"]
    assert params["model"] == MODEL and params["output_config"]["format"]["type"] == "json_schema"
    assert params["output_config"] == claude.message_requests[0]["output_config"]  # same schema and effort
    assert params["system"] == [{"type": "text", "text": INSTRUCTIONS}]
    assert params["messages"][0]["content"][0] == claude.message_requests[0]["messages"][0]["content"][0] == {
        "type": "text", "text": DOC_BLOCK, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    assert [b.batch for b in claude.billed] == [False]

    run(pg_store)  # not due: nothing happens
    assert batch.polls == 1
    make_due(db, job_id)
    run(pg_store)  # second poll: still in progress
    job = pg_store.get(job_id)
    assert job.status is JobStatus.PENDING and job.attempts == 0 and batch.polls == 2
    make_due(db, job_id)
    run(pg_store)  # third poll: ended; batch-2 errored and runs as a direct call
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert [m["item"] for m in job.result["mappings"]] == items and job.result["batches"] == 4
    assert len(claude.created) == 1 and len(claude.message_requests) == 2
    assert claude.deleted == [batch.id]  # every result checkpointed: not kept at Anthropic
    assert "requirement 3" in claude.message_requests[1]["messages"][0]["content"][1]["text"]

    # billed: the direct first batch writes the 1-hour cache; the batch's two results
    # (half price) and the direct retry of batch-2 read it
    assert [b.batch for b in claude.billed] == [False, True, True, False]
    assert [b.usage["cache_read_input_tokens"] for b in claude.billed] == [0, PREFIX, PREFIX, PREFIX]
    assert claude.billed[0].usage["cache_creation"]["ephemeral_1h_input_tokens"] == PREFIX
    assert job.usage["requests"] == 4 and job.usage["cache_creation_1h_input_tokens"] == PREFIX
    assert job.usage["cost_usd"] == pytest.approx(cost(claude.billed), rel=1e-9)
    read = claude.billed[1].usage
    assert usage_record(MODEL, read, batch=True)["cost_usd"] == pytest.approx(
        0.5 * (PREFIX * 0.2 + read["input_tokens"] * 2 + read["output_tokens"] * 10) / 1e6, rel=1e-9)


def test_batch_api_by_size_and_expired_or_canceled_requests(pg_store, make_user, claude, db, monkeypatch) -> None:
    monkeypatch.setenv("AI_JOBS_MAP_BATCH_API_MIN_ITEMS", "4")
    monkeypatch.setenv("AI_JOBS_MAP_BATCH_API_POLL_SECONDS", "5")
    claude.polls_until_ended = 1
    claude.outcomes = {"batch-2": "expired", "batch-3": "canceled"}
    user = make_user()
    small = enqueue(pg_store, user, items=["a", "b", "c"], batch_size=1)
    run(pg_store)
    assert pg_store.get(small).status is JobStatus.COMPLETED and not claude.created  # under the size: direct
    sent = len(claude.message_requests)
    large = enqueue(pg_store, user, items=["a", "b", "c", "d"], batch_size=1)
    run(pg_store)
    job = pg_store.get(large)
    assert job.status is JobStatus.COMPLETED, job.error  # ended at the first poll: collected at once
    [batch] = claude.created
    assert [r["custom_id"] for r in batch.requests] == ["batch-2", "batch-3", "batch-4"]
    assert len(claude.message_requests) - sent == 3  # batch-1 (the cache), batch-2 (expired), batch-3 (canceled)
    opted_out = enqueue(pg_store, user, items=["a", "b", "c", "d"], batch_size=1, use_batch_api=False)
    run(pg_store)
    assert pg_store.get(opted_out).status is JobStatus.COMPLETED and len(claude.created) == 1


def test_cancel_while_waiting_cancels_the_message_batch(pg_store, make_user, claude, db, monkeypatch) -> None:
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")  # no direct first batch: all three in the Message Batch
    claude.polls_until_ended = 100
    claude.outcomes = {}
    user = make_user()
    job_id = enqueue(pg_store, user, items=[f"r{i}" for i in range(6)], batch_size=2, use_batch_api=True)
    run(pg_store)
    [batch] = claude.batches.values()
    assert len(batch.requests) == 3 and claude.billed == []
    flagged = pg_store.request_cancel(job_id, user_id=user)
    # not cancelled at once: a worker has to stop the Message Batch first
    assert flagged.status is JobStatus.PENDING and flagged.cancel_requested_at is not None
    assert flagged.run_at <= datetime.now(UTC)
    run(pg_store)
    assert ("POST", f"/v1/messages/batches/{batch.id}/cancel") in claude.calls
    job = pg_store.get(job_id)
    assert job.status is JobStatus.PENDING and job.wait_reason == "claude_batch"  # waits for it to stop
    assert job.progress_message.startswith("Cancelling Claude's Message Batch")
    make_due(db, job_id)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.CANCELLED and job.finished_at is not None
    # the request finished before the cancel was billed: recorded, and kept for a retry
    assert [b.batch for b in claude.billed] == [True]
    assert job.usage["requests"] == 1 and job.usage["cost_usd"] == pytest.approx(cost(claude.billed), rel=1e-9)
    assert "batch-1" in job.checkpoints and "batch-2" not in job.checkpoints
    assert claude.message_requests == [] and claude.deleted == [batch.id]

    # a retry reuses the paid-for reply and asks for the two canceled ones directly
    pg_store.retry(job_id, user_id=user)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert len(claude.created) == 1 and len(claude.message_requests) == 2  # the deleted batch: asked directly
    assert job.usage["requests"] == 3 and job.usage["cost_usd"] == pytest.approx(cost(claude.billed), rel=1e-9)


def test_errors_while_waiting_for_the_batch_spend_no_attempt(pg_store, make_user, claude, db, monkeypatch) -> None:
    """A batch can run for 24 h: an API error asking about it is waited out (the batch
    is still running, and billing), not counted against the job's 3 attempts."""
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    claude.polls_until_ended = 3  # answered retrieves: at the submit, then two more
    claude.outcomes = {}
    job_id = enqueue(pg_store, make_user(), items=[f"r{i}" for i in range(6)], batch_size=2, use_batch_api=True)
    run(pg_store)  # submitted, first poll
    [batch] = claude.batches.values()
    claude.retrieve_errors = [(500, "api_error"), (529, "overloaded_error"), (500, "api_error"), (503, "api_error")]
    for _ in range(4):
        make_due(db, job_id)
        before = datetime.now(UTC)
        run(pg_store)
        job = pg_store.get(job_id)
        assert job.status is JobStatus.PENDING and job.attempts == 0 and job.error is None, job.error
        assert job.wait_reason == "claude_batch" and "Anthropic did not answer" in job.progress_message
        assert job.run_at >= before + timedelta(seconds=59)  # the poll interval
    assert claude.retrieve_errors == [] and batch.status == "in_progress"
    assert not any(path.endswith("/cancel") for _, path in claude.calls)
    for _ in range(2):
        make_due(db, job_id)
        run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED and job.attempts == 1, job.error
    assert job.usage["requests"] == 3 and claude.deleted == [batch.id]


def test_a_batch_whose_checkpoint_cannot_be_written_is_cancelled(pg_store, make_user, claude, db, monkeypatch) -> None:
    """The batch was made but the store failed writing its `claude-batch` step: no run
    of the job would ever see it, so it is cancelled rather than left to bill; the
    retry submits a new one."""
    from ai_jobs.errors import StoreUnavailableError

    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    claude.polls_until_ended = 1
    claude.outcomes = {}
    write = pg_store.checkpoint
    failed: list[str] = []

    def checkpoint(job_id, worker, step, value, **kwargs):  # type: ignore[no-untyped-def]
        if step == "claude-batch" and not failed:
            failed.append(step)
            raise StoreUnavailableError("the database went away")
        return write(job_id, worker, step, value, **kwargs)

    monkeypatch.setattr(pg_store, "checkpoint", checkpoint)
    job_id = enqueue(pg_store, make_user(), items=["a", "b"], batch_size=1, use_batch_api=True)
    run(pg_store)
    job = pg_store.get(job_id)
    [lost] = claude.created
    assert job.status is JobStatus.PENDING and job.error.code == "store_unavailable" and failed
    assert ("POST", f"/v1/messages/batches/{lost.id}/cancel") in claude.calls and lost.status == "canceling"
    assert job.usage == {}  # cancelled before any request ran: nothing charged
    make_due(db, job_id)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert len(claude.created) == 2 and job.checkpoints["claude-batch"]["id"] == claude.created[1].id


def test_an_error_that_fails_the_job_cancels_its_batch(pg_store, make_user, claude, db, monkeypatch) -> None:
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    claude.polls_until_ended = 100
    claude.outcomes = {}
    job_id = enqueue(pg_store, make_user(), items=["a", "b"], batch_size=1, use_batch_api=True)
    run(pg_store)
    [batch] = claude.batches.values()
    claude.retrieve_errors = [(403, "permission_error")]  # the key lost access: retrying cannot help
    make_due(db, job_id)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "claude_forbidden", job.error
    assert ("POST", f"/v1/messages/batches/{batch.id}/cancel") in claude.calls and batch.status == "canceling"


def test_a_cut_off_batch_reply_fails_the_job_after_every_billed_reply_is_recorded_once(
    pg_store, make_user, claude, db, monkeypatch
) -> None:
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    claude.polls_until_ended = 1
    claude.outcomes = {}
    claude.stop_reasons = {"batch-2": "max_tokens"}
    user = make_user()
    job_id = enqueue(pg_store, user, items=[f"r{i}" for i in range(8)], batch_size=2, use_batch_api=True)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "output_truncated", job.error
    [batch] = claude.created
    # all four replies were billed; all four are on the job, the batch is deleted
    assert [b.batch for b in claude.billed] == [True] * 4
    assert job.usage["requests"] == 4 and job.usage["cost_usd"] == pytest.approx(cost(claude.billed), rel=1e-9)
    assert claude.deleted == [batch.id]
    assert {"batch-1", "batch-3", "batch-4", "batch-2-batch-reply"} <= set(job.checkpoints)
    assert "batch-2" not in job.checkpoints

    # a retry records nothing twice: it asks Claude directly for batch 2 only
    pg_store.retry(job_id, user_id=user)
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert len(claude.created) == 1 and len(claude.message_requests) == 1
    content = claude.message_requests[0]["messages"][0]["content"]
    asked = content if isinstance(content, str) else content[-1]["text"]
    assert "- r2" in asked and "- r3" in asked and "- r0" not in asked
    assert [m["item"] for m in job.result["mappings"]] == [f"r{i}" for i in range(8)]
    assert job.usage["requests"] == 5 and job.usage["cost_usd"] == pytest.approx(cost(claude.billed), rel=1e-9)


def test_use_batch_api_refuses_a_batch_over_the_size_limit() -> None:
    registry = load_job_modules()
    with pytest.raises(InputValidationError) as err:
        registry.new_job(UUID(int=1), "ai.map_batches", {"document": "x" * 400_000, "items": ["a"] * 1000,
                                                          "batch_size": 1, "use_batch_api": True})
    assert "raise batch_size" in str(err.value.errors)
    ok = registry.new_job(UUID(int=1), "ai.map_batches", {"document": "x" * 400_000, "items": ["a"] * 1000,
                                                           "batch_size": 10, "use_batch_api": True})
    assert ok.input["use_batch_api"] is True


@pytest.mark.parametrize("env", [{"AI_JOBS_PROMPT_CACHE": "sometimes"}, {"AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS": "1"},
                                 {"AI_JOBS_MAP_BATCH_API_MIN_ITEMS": "-1"}, {"AI_JOBS_MAP_BATCH_API_POLL_SECONDS": "0"}])
def test_invalid_cache_or_batch_settings_stop_start_up(env: dict[str, str]) -> None:
    from pydantic import ValidationError

    from ai_jobs.settings import Settings

    with pytest.raises(ValidationError):
        Settings.from_env(env)
    ok = Settings.from_env({"AI_JOBS_PROMPT_CACHE": "1H", "AI_JOBS_MAP_BATCH_API_MIN_ITEMS": "500"})
    assert ok.prompt_cache.mode == "1h" and ok.batch_api.min_items == 500
