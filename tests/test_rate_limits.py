"""Claude rate limits shared through PostgreSQL: the SQL's sliding window,
reservations and settling, concurrent acquires from many connections, and
ask_claude's use of it (sleep in place, or defer without spending an attempt),
with the Anthropic API faked at the HTTP layer (respx on httpcore2)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import respx

from ai_jobs.claude.client import reset_clients
from ai_jobs.claude.ratelimits import RateLimits, estimate_input_tokens
from ai_jobs.errors import InvalidArgumentError
from ai_jobs.models import JobStatus
from ai_jobs.registry import load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.settings import Settings
from ai_jobs.store.postgres import PostgresStore
from tests.anthropic_wire import MESSAGES_URL, error_response, stream_response


def bucket() -> str:
    """A bucket of this test only: the reservations table outlives each test."""
    return f"model:test-{uuid.uuid4().hex[:12]}"


def rows(db: psycopg.Connection, name: str) -> list[tuple[int, int, int]]:
    return db.execute(
        "select requests, input_tokens, output_tokens from public.ai_jobs_rate_reservations"
        " where bucket = %s order by at", (name,),
    ).fetchall()


# -- the SQL ---------------------------------------------------------------------------------


def test_acquire_reserves_up_to_the_limit_then_says_how_long(pg_store: PostgresStore, db) -> None:
    b = bucket()
    limits = {b: {"rpm": 3, "otpm": 1000}}
    started = time.monotonic()
    got = [pg_store.rate_acquire(limits, input_tokens=10, output_tokens=100) for _ in range(3)]
    assert all(g.reservation is not None and g.wait_seconds is None for g in got)
    assert len({g.reservation for g in got}) == 3
    full = pg_store.rate_acquire(limits, input_tokens=10, output_tokens=100)
    assert full.reservation is None and full.bucket == b and full.limit == "rpm" and (full.used, full.max) == (3, 3)
    # the oldest reservation leaves the window 60 s after it was made
    assert 60 - (time.monotonic() - started) - 1 <= full.wait_seconds <= 60.1
    assert rows(db, b) == [(1, 10, 100)] * 3  # the refused call reserved nothing


def test_the_window_slides(pg_store: PostgresStore, db) -> None:
    """Capacity comes back as each reservation turns 2 s old (window 2 s here),
    not all at once at a boundary."""
    b = bucket()
    limits = {b: {"rpm": 2}}
    assert pg_store.rate_acquire(limits, input_tokens=0, output_tokens=0, window_seconds=2).reservation
    time.sleep(1.0)
    assert pg_store.rate_acquire(limits, input_tokens=0, output_tokens=0, window_seconds=2).reservation
    wait = pg_store.rate_acquire(limits, input_tokens=0, output_tokens=0, window_seconds=2).wait_seconds
    assert 0.7 <= wait <= 1.1  # the first one expires 2 s after it was made
    time.sleep(wait)
    assert pg_store.rate_acquire(limits, input_tokens=0, output_tokens=0, window_seconds=2).reservation
    # the second one is still in the window: full again, for about 1 s more
    wait = pg_store.rate_acquire(limits, input_tokens=0, output_tokens=0, window_seconds=2).wait_seconds
    assert 0 < wait <= 1.1


def test_wait_is_until_enough_of_the_oldest_tokens_expire(pg_store: PostgresStore, db) -> None:
    b = bucket()
    limits = {b: {"itpm": 1000}}
    first = time.monotonic()
    for tokens in (400, 400, 200):
        assert pg_store.rate_acquire(limits, input_tokens=tokens, output_tokens=0, window_seconds=10).reservation
        time.sleep(0.5)
    # 1000 used, 500 wanted: the first 400 expiring is not enough, the second 400 is
    answer = pg_store.rate_acquire(limits, input_tokens=500, output_tokens=0, window_seconds=10)
    second_expires = 0.5 + 10 - (time.monotonic() - first)
    assert answer.limit == "itpm" and answer.used == 1000
    assert second_expires - 0.3 <= answer.wait_seconds <= second_expires + 0.1


def test_settle_corrects_the_reservation_to_the_billed_usage(pg_store: PostgresStore, db) -> None:
    b = bucket()
    limits = {b: {"itpm": 2000, "otpm": 1000}}
    first = pg_store.rate_acquire(limits, input_tokens=1500, output_tokens=800)
    assert pg_store.rate_acquire(limits, input_tokens=100, output_tokens=500).limit == "otpm"
    assert pg_store.rate_settle(first.reservation, input_tokens=1200, output_tokens=120) is True
    assert rows(db, b) == [(1, 1200, 120)]
    assert pg_store.rate_acquire(limits, input_tokens=100, output_tokens=500).reservation
    assert pg_store.rate_settle(uuid.uuid4(), input_tokens=0, output_tokens=0) is False  # gone: nothing to correct


def test_a_call_larger_than_a_limit_runs_alone(pg_store: PostgresStore, db) -> None:
    b = bucket()
    limits = {b: {"otpm": 1000}}
    assert pg_store.rate_acquire(limits, input_tokens=0, output_tokens=4000).reservation  # empty window: it runs
    assert pg_store.rate_acquire(limits, input_tokens=0, output_tokens=1).limit == "otpm"
    other = bucket()
    assert pg_store.rate_acquire({other: {"otpm": 1000}}, input_tokens=0, output_tokens=10).reservation
    assert pg_store.rate_acquire({other: {"otpm": 1000}}, input_tokens=0, output_tokens=4000).limit == "otpm"


def test_all_buckets_or_none(pg_store: PostgresStore, db) -> None:
    model, job_type = bucket(), f"type:t{uuid.uuid4().hex[:8]}"
    assert pg_store.rate_acquire({model: {"rpm": 1}}, input_tokens=0, output_tokens=0).reservation
    answer = pg_store.rate_acquire({model: {"rpm": 1}, job_type: {"rpm": 5}}, input_tokens=0, output_tokens=0)
    assert answer.bucket == model and answer.reservation is None
    assert rows(db, job_type) == []  # nothing reserved in the bucket that had room
    both = pg_store.rate_acquire({job_type: {"rpm": 5}, bucket(): {"rpm": 5}}, input_tokens=1, output_tokens=2)
    assert db.execute(
        "select count(*) from public.ai_jobs_rate_reservations where id = %s", (both.reservation,)
    ).fetchone()[0] == 2


def test_old_reservations_are_purged_by_acquire(pg_store: PostgresStore, db) -> None:
    b = bucket()
    db.execute(
        "insert into public.ai_jobs_rate_reservations (id, bucket, at) values (gen_random_uuid(), %s, now() - interval '61 seconds')",
        (b,),
    )
    assert pg_store.rate_acquire({b: {"rpm": 1}}, input_tokens=0, output_tokens=0).reservation
    assert rows(db, b) == [(1, 0, 0)]


@pytest.mark.parametrize(
    ("limits", "kw"),
    [
        ({}, {}),
        ({"model:x": {"rpm": 0}}, {}),
        ({"model:x": {"rpm": 1.5}}, {}),
        ({"model:x": {"rpm": "5"}}, {}),
        ({"model:x": {"tpm": 5}}, {}),
        ({"model:x": [1]}, {}),
        ({"model:x": {"rpm": 1}}, {"input_tokens": -1}),
        ({"model:x": {"rpm": 1}}, {"window_seconds": 0.5}),
        ({"model:x": {"rpm": 1}}, {"window_seconds": 61}),
    ],
)
def test_bad_arguments_are_invalid(store, limits, kw) -> None:
    args = {"input_tokens": 1, "output_tokens": 1, **kw}
    with pytest.raises(InvalidArgumentError):
        store.rate_acquire(limits, **args)


def test_settle_and_defer_refuse_bad_values(store, make_user) -> None:
    with pytest.raises(InvalidArgumentError):
        store.rate_settle(uuid.uuid4(), input_tokens=-1, output_tokens=0)
    job = store.enqueue(load_job_modules().new_job(make_user(), "example.countdown", {})).job
    store.claim("w-defer", job_id=job.id)
    for kw in ({"delay_seconds": -1, "reason": "rate_limited"}, {"delay_seconds": 1, "reason": "Not A Word"}):
        with pytest.raises(InvalidArgumentError):
            store.defer(job.id, "w-defer", **kw)


def test_concurrent_acquires_never_exceed_the_limit(database_url: str) -> None:
    """8 threads, each with its own connection (as separate workers would be), race
    for a fresh bucket in each of 30 rounds: never more than the limit is granted,
    by requests (even rounds) or by tokens (odd rounds). Without the per-bucket
    lock nearly every round overshoots."""
    stores = [PostgresStore(database_url, min_size=1, max_size=1) for _ in range(8)]
    overshoots: list[tuple[int, int, int]] = []
    try:
        for round_no in range(30):
            b = bucket()
            tokens = 0 if round_no % 2 == 0 else 300
            limits = {b: {"rpm": 4, "itpm": 1000}}  # 4 requests, or 3 calls of 300 tokens
            barrier = threading.Barrier(len(stores))

            def worker(store: PostgresStore, limits: dict = limits, tokens: int = tokens) -> None:
                barrier.wait()
                for _ in range(2):
                    store.rate_acquire(limits, input_tokens=tokens, output_tokens=0)

            threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with psycopg.connect(database_url) as conn:
                requests, used = conn.execute(
                    "select count(*), coalesce(sum(input_tokens), 0) from public.ai_jobs_rate_reservations"
                    " where bucket = %s", (b,),
                ).fetchone()
            if requests != (4 if tokens == 0 else 3) or used > 1000:
                overshoots.append((round_no, requests, used))
    finally:
        for store in stores:
            store.close()
    assert overshoots == []


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_browsers_cannot_read_or_reserve(database_url: str, role: str) -> None:
    """Reservations name models and job types of every tenant: not for browsers."""
    from tests.rls import act_as

    with psycopg.connect(database_url) as conn:
        for statement in (
            "select count(*) from public.ai_jobs_rate_reservations",
            "select public.ai_jobs_rate_acquire_v1('{\"model:x\": {\"rpm\": 1}}', 0, 0)",
            "insert into public.ai_jobs_rate_reservations (id, bucket) values (gen_random_uuid(), 'model:x')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                act_as(conn, {"role": role, "sub": str(uuid.uuid4())})
                conn.execute(statement)


def test_setting_is_validated_at_startup() -> None:
    assert Settings.from_env({}).rate_limits == RateLimits()
    ok = Settings.from_env({"AI_JOBS_RATE_LIMITS": '{"model:claude-sonnet-5-5": {"rpm": 50, "itpm": 30000}}'})
    assert ok.rate_limits.for_call("claude-sonnet-5-5", "ai.generate") == {
        "model:claude-sonnet-5-5": {"rpm": 50, "itpm": 30000}
    }
    family = RateLimits.parse('{"model:claude-opus-5*": {"rpm": 5}, "type:*": {"rpm": 9}, "type:ai.match": {"rpm": 1}}')
    assert family.for_call("claude-opus-5-5", "ai.generate") == {"model:claude-opus-5*": {"rpm": 5}, "type:*": {"rpm": 9}}
    assert family.for_call("claude-sonnet-5-5", "ai.match") == {"type:*": {"rpm": 9}, "type:ai.match": {"rpm": 1}}
    for bad, says in [
        ('{"model:claude*opus": {"rpm": 5}}', "is not a bucket"),
        ('{"sonnet": {"rpm": 5}}', "'sonnet' is not a bucket"),
        ('{"model:x": {"rpm": 0}}', "model:x.rpm"),
        ('{"model:x": {"tpm": 5}}', "model:x.tpm"),
        ('{"model:x": {}}', "at least one of rpm, itpm, otpm"),
        ("rpm=5", "Invalid JSON"),
    ]:
        with pytest.raises(ValueError, match="AI_JOBS_RATE_LIMITS is not valid") as err:
            Settings.from_env({"AI_JOBS_RATE_LIMITS": bad})
        assert says in str(err.value)


def test_input_estimate_is_conservative() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 100  # ~1000 tokens as billed
    assert estimate_input_tokens(text) >= len(text) / 3
    assert estimate_input_tokens("a", "b", extra={"type": "object"}) > estimate_input_tokens("a", "b")


# -- ask_claude with limits ---------------------------------------------------------------


@pytest.fixture()
def claude_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    reset_clients()
    yield monkeypatch
    reset_clients()


@pytest.fixture()
def api(httpx2_mock: respx.Router) -> respx.Route:
    return httpx2_mock.post(MESSAGES_URL)


def limited_model(monkeypatch: pytest.MonkeyPatch, **limit: int) -> str:
    model = f"claude-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("AI_JOBS_RATE_LIMITS", json.dumps({f"model:{model}": limit}))
    return model


def enqueue(store: PostgresStore, user: uuid.UUID, job_type: str, data: dict) -> uuid.UUID:
    return store.enqueue(load_job_modules().new_job(user, job_type, data)).job.id


def test_call_reserves_and_settles_to_billed_usage(pg_store, make_user, db, api, claude_env) -> None:
    model = limited_model(claude_env, rpm=10, itpm=100_000, otpm=10_000)
    api.mock(return_value=stream_response("hi", model=model, input_tokens=700, output_tokens=40))
    job_id = enqueue(pg_store, make_user(), "ai.generate", {"prompt": "x" * 3000, "model": model, "max_tokens": 900})
    Runner(pg_store, load_job_modules()).run_available()
    assert pg_store.get(job_id).status is JobStatus.COMPLETED
    assert rows(db, f"model:{model}") == [(1, 700, 40)]


def test_failed_calls_settle_to_what_was_billed(pg_store, make_user, db, api, claude_env) -> None:
    model = limited_model(claude_env, otpm=10_000)
    api.mock(side_effect=[
        error_response(429, "rate_limit_error", "slow down"),  # nothing billed
        stream_response("partial", model=model, input_tokens=321,  # cut after message_start
                        error_after_chunks={"type": "overloaded_error", "message": "Overloaded"}),
    ])
    user = make_user()
    first = enqueue(pg_store, user, "ai.generate", {"prompt": "x", "model": model, "max_tokens": 900})
    Runner(pg_store, load_job_modules()).run_available(job_id=first, max_jobs=1)
    second = enqueue(pg_store, user, "ai.generate", {"prompt": "y", "model": model, "max_tokens": 900})
    Runner(pg_store, load_job_modules()).run_available(job_id=second, max_jobs=1)
    assert pg_store.get(first).error.code == "claude_rate_limited"
    assert pg_store.get(second).error.code == "claude_overloaded_error"
    # the cut call settles to what it may have been billed: its input and the max_tokens sent
    assert rows(db, f"model:{model}") == [(1, 0, 0), (1, 321, 900)]


def test_full_limit_defers_the_job_without_spending_an_attempt(pg_store, make_user, db, api, claude_env) -> None:
    model = limited_model(claude_env, otpm=1000)
    pg_store.rate_acquire({f"model:{model}": {"otpm": 1000}}, input_tokens=0, output_tokens=1000)  # another worker's call
    api.mock(return_value=stream_response("never", model=model))
    job_id = enqueue(pg_store, make_user(), "ai.generate", {"prompt": "x", "model": model, "max_tokens": 500})
    before = datetime.now(UTC)
    outcomes = Runner(pg_store, load_job_modules()).run_available(budget_seconds=60, wait_for_due=False)
    assert [o.kind for o in outcomes] == ["deferred"]
    job = pg_store.get(job_id)
    assert job.status is JobStatus.PENDING and job.attempts == 0 and job.error is None
    assert before + timedelta(seconds=55) <= job.run_at <= datetime.now(UTC) + timedelta(seconds=61)
    assert job.wait_reason == "rate_limited"
    assert "rate limit" in job.progress_message and "otpm" in job.progress_message
    assert not api.called
    # the worker that holds it next finds room and runs it (attempt 1)
    db.execute("delete from public.ai_jobs_rate_reservations where bucket = %s", (f"model:{model}",))
    db.execute("update public.ai_jobs set run_at = now() where id = %s", (job_id,))
    Runner(pg_store, load_job_modules()).run_available()
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED and job.attempts == 1 and api.call_count == 1
    assert job.wait_reason is None  # cleared when it started


def test_deferred_batch_keeps_finished_batches(pg_store, make_user, db, api, claude_env) -> None:
    model = limited_model(claude_env, rpm=1)

    def reply(request):  # type: ignore[no-untyped-def]
        content = json.loads(request.content)["messages"][0]["content"]
        prompt = content if isinstance(content, str) else content[-1]["text"]  # cached document block first
        items = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        return stream_response(json.dumps({"mappings": [{"item": i, "mapping": "m", "confidence": 1} for i in items]}),
                               model=model)

    api.mock(side_effect=reply)
    job_id = enqueue(pg_store, make_user(), "ai.map_batches",
                     {"document": "D", "items": ["a", "b"], "batch_size": 1, "model": model})
    outcomes = Runner(pg_store, load_job_modules()).run_available(budget_seconds=60, wait_for_due=False)
    assert [o.kind for o in outcomes] == ["deferred"]
    job = pg_store.get(job_id)
    assert job.status is JobStatus.PENDING and list(job.checkpoints) == ["batch-1"] and job.attempts == 0
    assert job.usage["requests"] == 1  # the first batch's usage was saved with its checkpoint


def test_short_wait_is_slept_in_place(pg_store, make_user, db, api, claude_env) -> None:
    model = limited_model(claude_env, rpm=1)
    # another worker's call, 57.5 s ago: room again in about 2.5 s
    db.execute(
        "insert into public.ai_jobs_rate_reservations (id, bucket, at)"
        " values (gen_random_uuid(), %s, clock_timestamp() - interval '57.5 seconds')", (f"model:{model}",),
    )
    api.mock(return_value=stream_response("after a short wait", model=model))
    job_id = enqueue(pg_store, make_user(), "ai.generate", {"prompt": "x", "model": model})
    started = time.monotonic()
    outcomes = Runner(pg_store, load_job_modules()).run_available(budget_seconds=60)
    assert [o.kind for o in outcomes] == ["completed"]
    assert 2.0 <= time.monotonic() - started <= 6
    job = pg_store.get(job_id)
    assert job.attempts == 1 and job.result["text"] == "after a short wait"


@pytest.mark.httpx2(assert_all_called=False)
def test_cancel_during_an_in_place_wait_stops_the_job(pg_store, make_user, db, api, claude_env) -> None:
    model = limited_model(claude_env, rpm=1)
    db.execute(
        "insert into public.ai_jobs_rate_reservations (id, bucket, at)"
        " values (gen_random_uuid(), %s, clock_timestamp() - interval '56 seconds')", (f"model:{model}",),
    )
    api.mock(return_value=stream_response("never", model=model))
    job_id = enqueue(pg_store, make_user(), "ai.generate", {"prompt": "x", "model": model})
    runner = Runner(pg_store, load_job_modules(), lease_seconds=3)  # heartbeats every second carry the cancel
    threading.Timer(1.0, lambda: pg_store.request_cancel(job_id)).start()
    started = time.monotonic()
    outcomes = runner.run_available(budget_seconds=60)
    assert [o.kind for o in outcomes] == ["cancelled"] and time.monotonic() - started < 3.9
    assert not api.called


def test_fanned_out_children_count_against_the_parents_type(pg_store, make_user, db, api, claude_env) -> None:
    """type:ai.map_batches bounds the whole map: the Claude calls of the ai.map_batch
    children it fans out to count against it, not only the call of batch 1 it runs itself."""
    from ai_jobs import workflows

    claude_env.setenv("AI_JOBS_RATE_LIMITS", json.dumps({"type:ai.map_batches": {"rpm": 100}}))
    claude_env.setenv("AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "2")
    claude_env.setenv("AI_JOBS_USER_CONCURRENCY", "0")
    workflows._settings_from_env.cache_clear()
    db.execute("delete from public.ai_jobs_rate_reservations where bucket like 'type:ai.map_batch%'")

    def reply(request):  # type: ignore[no-untyped-def]
        content = json.loads(request.content)["messages"][0]["content"]
        prompt = content if isinstance(content, str) else content[-1]["text"]
        items = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        return stream_response(json.dumps({"mappings": [{"item": i, "mapping": "m", "confidence": 1} for i in items]}),
                               input_tokens=50, output_tokens=7)

    api.mock(side_effect=reply)
    try:
        job_id = enqueue(pg_store, make_user(), "ai.map_batches",
                         {"document": "D", "items": ["a", "b", "c"], "batch_size": 1, "use_batch_api": False})
        Runner(pg_store, load_job_modules(), lease_seconds=5).run_available(wait_for_due=False)
        job = pg_store.get(job_id)
        assert job.status is JobStatus.COMPLETED, job.error
        kids = db.execute("select job_type, status from public.ai_jobs where parent_id = %s", (job_id,)).fetchall()
        assert kids == [("ai.map_batch", "completed")] * 2
        assert api.call_count == 3
        # batch 1 (the parent's own call) and both children's calls, each settled to its usage
        assert rows(db, "type:ai.map_batches") == [(1, 50, 7)] * 3
        assert rows(db, "type:ai.map_batch") == []  # no bucket of that name is configured
    finally:
        db.execute("delete from public.ai_jobs_rate_reservations where bucket like 'type:ai.map_batch%'")
        workflows._settings_from_env.cache_clear()
