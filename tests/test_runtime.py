"""The job runtime on a real database: steps, continuation, progress
coalescing, cancellation, failure classification, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from pydantic import BaseModel

from ai_jobs.context import JobContext
from ai_jobs.models import JobStatus, NewJob
from ai_jobs.registry import JobRegistry, load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.store.base import PROGRESS
from ai_jobs.store.postgres import PostgresStore
from tests.counting_store import CountingStore

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Empty(BaseModel):
    pass


class Count(BaseModel):
    steps: int


def enqueue(store: PostgresStore, registry: JobRegistry, user: UUID, job_type: str, data: dict) -> UUID:
    return store.enqueue(registry.new_job(user, job_type, data)).job.id


def test_countdown_completes_with_checkpoints(pg_store: PostgresStore, make_user) -> None:
    registry = load_job_modules()
    job_id = enqueue(pg_store, registry, make_user(), "example.countdown", {"steps": 4, "step_seconds": 0})
    [outcome] = Runner(pg_store, registry).run_available()
    assert outcome.kind == "completed"
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED and job.progress == 100
    assert sorted(job.checkpoints) == ["step-1", "step-2", "step-3", "step-4"]
    assert job.result["steps_completed"] == 4 and job.attempts == 1


def test_six_steps_over_several_invocations_each_step_once(pg_store: PostgresStore, make_user) -> None:
    """Budget fits two 1-second steps per invocation: the job continues in new
    invocations, completes, and every step's side effect happens exactly once."""
    registry = JobRegistry()
    clock = FakeClock()
    effects: Counter[int] = Counter()

    @registry.job("test.six_steps", input=Empty, output=Count, max_attempts=1)
    def six_steps(_: Empty, ctx: JobContext) -> Count:
        for i in range(1, 7):

            def work(i: int = i) -> int:
                effects[i] += 1
                clock.advance(1.0)
                return i

            ctx.step(f"step-{i}", work, estimate=1.0)
        return Count(steps=6)

    job_id = enqueue(pg_store, registry, make_user(), "test.six_steps", {})
    continuations: list[UUID] = []
    invocations = 0
    while pg_store.get(job_id).status is JobStatus.PENDING:
        invocations += 1
        assert invocations <= 10, "job never finished"
        runner = Runner(pg_store, registry, clock=clock, request_continuation=continuations.append)
        runner.run_available(budget_seconds=2.5, min_remaining_seconds=0)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert invocations == 3 and continuations == [job_id, job_id]
    assert effects == Counter({i: 1 for i in range(1, 7)})
    assert job.attempts == 1  # continuations spend no attempt (max_attempts=1 would forbid it)


def test_a_first_step_that_does_not_fit_late_in_an_invocation_waits_for_a_fresh_one(
    pg_store: PostgresStore, make_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 'first step always runs' rule is for a fresh invocation: a job claimed after
    another used most of the budget would start a step that cannot finish in it (on
    Vercel, killed at maxDuration and its attempt spent)."""
    monkeypatch.setenv("AI_JOBS_USER_CONCURRENCY", "0")
    registry = JobRegistry()
    clock = FakeClock()
    started: list[tuple[str, float]] = []

    class Work(BaseModel):
        name: str
        seconds: float

    @registry.job("test.timed_step", input=Work, output=Count, max_attempts=1)
    def timed_step(data: Work, ctx: JobContext) -> Count:
        def work() -> int:
            started.append((data.name, ctx.remaining() or 0.0))
            clock.advance(data.seconds)
            return 1

        ctx.step("work", work, estimate=data.seconds)
        return Count(steps=1)

    user = make_user()
    first = enqueue(pg_store, registry, user, "test.timed_step", {"name": "a", "seconds": 60})
    late = enqueue(pg_store, registry, user, "test.timed_step", {"name": "b", "seconds": 80})
    continued: list[UUID] = []
    outcomes = Runner(pg_store, registry, clock=clock, request_continuation=continued.append).run_available(
        job_id=first, budget_seconds=100, min_remaining_seconds=0)
    assert [(o.job_id, o.kind) for o in outcomes] == [(first, "completed"), (late, "continued")]
    assert started == [("a", 100.0)] and continued == [late]
    # a fresh invocation runs it, and a first step longer than a whole budget still runs there
    Runner(pg_store, registry, clock=clock).run_available(job_id=late, budget_seconds=50, min_remaining_seconds=0)
    assert started[1] == ("b", 50.0) and pg_store.get(late).status is JobStatus.COMPLETED


def test_progress_is_coalesced_and_the_last_value_lands(pg_store: PostgresStore, make_user) -> None:
    registry = JobRegistry()
    clock = FakeClock()

    @registry.job("test.chatty", input=Empty, output=Count)
    def chatty(_: Empty, ctx: JobContext) -> Count:
        for i in range(200):  # 200 updates over 2 simulated seconds
            clock.advance(0.01)
            ctx.progress(i / 2, f"tick {i}")
        ctx.flush_progress()
        return Count(steps=200)

    store = CountingStore(pg_store)
    job_id = enqueue(pg_store, registry, make_user(), "test.chatty", {})
    seen: list[tuple[int, str | None]] = []
    original = store.progress

    def spy(job_id, worker, progress, message=None, **kw):  # type: ignore[no-untyped-def]
        seen.append((progress, message))
        return original(job_id, worker, progress, message, **kw)

    store.progress = spy  # type: ignore[method-assign]
    Runner(store, registry, clock=clock).run_available()
    assert 4 <= store.calls[PROGRESS.name] <= 6  # ~2 a second, not 200
    assert seen[-1] == (100, "tick 199")  # 99.5 rounds to 100; the final flush always lands
    assert pg_store.get(job_id).status is JobStatus.COMPLETED


def test_cancel_while_running_stops_within_one_step(pg_store: PostgresStore, make_user) -> None:
    registry = load_job_modules()
    user = make_user()
    job_id = enqueue(pg_store, registry, user, "example.countdown", {"steps": 20, "step_seconds": 0.1})
    runner = Runner(pg_store, registry)
    thread = threading.Thread(target=runner.run_available)
    thread.start()
    deadline = time.monotonic() + 20
    while len(pg_store.get(job_id).checkpoints) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    done_at_request = len(pg_store.request_cancel(job_id, user_id=user).checkpoints)
    thread.join(timeout=20)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.CANCELLED and job.locked_by is None
    assert len(job.checkpoints) <= done_at_request + 1


def test_retryable_failure_keeps_finished_steps(pg_store: PostgresStore, make_user, db) -> None:
    registry = load_job_modules()
    data = {"steps": 4, "step_seconds": 0, "fail_at_step": 3, "fail_retryable": True}
    job_id = enqueue(pg_store, registry, make_user(), "example.countdown", data)
    [outcome] = Runner(pg_store, registry).run_available()
    job = pg_store.get(job_id)
    assert outcome.kind == "retrying" and job.status is JobStatus.PENDING
    assert job.error.code == "countdown_failure" and job.error.retryable
    assert sorted(job.checkpoints) == ["step-1", "step-2"]
    assert job.run_at > datetime.now(UTC)  # backed off, not due yet


def test_fatal_failure_and_bad_input_fail_at_once(pg_store: PostgresStore, make_user, db) -> None:
    registry = load_job_modules()
    user = make_user()
    fatal = enqueue(pg_store, registry, user, "example.countdown", {"steps": 2, "step_seconds": 0, "fail_at_step": 1})
    # input that skipped validation (written straight to the table)
    bad = pg_store.enqueue(NewJob(user_id=user, job_type="example.countdown", input={"steps": "many"})).job.id
    Runner(pg_store, registry).run_available()
    for job_id, code in ((fatal, "countdown_failure"), (bad, "invalid_input")):
        job = pg_store.get(job_id)
        assert job.status is JobStatus.FAILED and job.attempts == 1 and job.error.code == code


def test_handler_bug_is_retried_with_its_message(pg_store: PostgresStore, make_user) -> None:
    registry = JobRegistry()

    @registry.job("test.buggy", input=Empty, output=Count, max_attempts=2)
    def buggy(_: Empty, ctx: JobContext) -> Count:
        raise KeyError("missing")

    job_id = enqueue(pg_store, registry, make_user(), "test.buggy", {})
    [outcome] = Runner(pg_store, registry).run_available()
    job = pg_store.get(job_id)
    assert outcome.kind == "retrying" and job.error.code == "handler_error" and "KeyError" in job.error.message


def test_lost_lease_is_not_overwritten(pg_store: PostgresStore, make_user, database_url: str) -> None:
    registry = JobRegistry()

    @registry.job("test.slow_owner", input=Empty, output=Count)
    def slow(_: Empty, ctx: JobContext) -> Count:
        # meanwhile the lease expires and another worker takes the job over
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 s' where id = %s", (ctx.job.id,))
        assert pg_store.claim("usurper", job_id=ctx.job.id)
        ctx.step("one", lambda: 1)
        return Count(steps=1)

    job_id = enqueue(pg_store, registry, make_user(), "test.slow_owner", {})
    [outcome] = Runner(pg_store, registry).run_available()
    job = pg_store.get(job_id)
    assert outcome.kind == "lost"
    assert job.status is JobStatus.RUNNING and job.locked_by == "usurper" and job.checkpoints == {}


def _start_worker(database_url: str, lease: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "AI_JOBS_JOB_MODULES": "tests.jobs_for_workers",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ai_jobs.cli", "worker", "--lease-seconds", str(lease), "--poll-interval", "0.2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkilled_worker_job_resumes_from_last_checkpoint(
    pg_store: PostgresStore, make_user, database_url: str, tmp_path: Path
) -> None:
    import tests.jobs_for_workers  # noqa: F401 - registers test.file_steps here too

    registry = load_job_modules()
    log = tmp_path / "effects.log"
    log.touch()
    job_id = enqueue(pg_store, registry, make_user(), "test.file_steps", {"path": str(log), "steps": 5, "step_seconds": 0.4})
    first = _start_worker(database_url, lease=2)
    try:
        _wait_for(lambda: "start 3" in log.read_text(), 30, "step 3 to start")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed = pg_store.get(job_id)
        assert killed.status is JobStatus.RUNNING and sorted(killed.checkpoints) == ["step-1", "step-2"]
        second = _start_worker(database_url, lease=2)
        try:
            _wait_for(lambda: pg_store.get(job_id).status is JobStatus.COMPLETED, 60, "the job to complete")
        finally:
            second.terminate()
            second.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    lines = [line.split()[:2] for line in log.read_text().splitlines()]
    starts = Counter(int(n) for kind, n in lines if kind == "start")
    dones = Counter(int(n) for kind, n in lines if kind == "done")
    assert starts == Counter({1: 1, 2: 1, 3: 2, 4: 1, 5: 1})  # only the interrupted step ran again
    assert dones == Counter({i: 1 for i in range(1, 6)})
    job = pg_store.get(job_id)
    assert job.attempts == 2 and job.error is None and job.result == {"steps": 5}


def test_batch_claim_releases_unstarted_jobs_when_the_budget_ends(pg_store: PostgresStore, make_user) -> None:
    registry = JobRegistry()
    clock = FakeClock()

    @registry.job("test.one_second", input=Empty, output=Count, max_attempts=1)
    def one_second(_: Empty, ctx: JobContext) -> Count:
        clock.advance(1.0)
        return Count(steps=1)

    user = make_user()
    ids = [enqueue(pg_store, registry, user, "test.one_second", {}) for _ in range(5)]
    store = CountingStore(pg_store)
    outcomes = Runner(store, registry, clock=clock).run_available(budget_seconds=2.5, min_remaining_seconds=0.6, batch=5)
    assert [o.kind for o in outcomes] == ["completed", "completed"]
    assert store.calls["ai_jobs_claim_v2"] == 1  # one round trip for the whole batch
    jobs = [pg_store.get(i) for i in ids]
    assert sum(j.status is JobStatus.COMPLETED for j in jobs) == 2
    waiting = [j for j in jobs if j.status is JobStatus.PENDING]
    assert len(waiting) == 3 and all(j.attempts == 0 for j in waiting)  # released unrun, no attempt spent


def test_heartbeat_keeps_a_long_job_leased(pg_store: PostgresStore, make_user) -> None:
    """A 3 s handler with a 1 s lease is not reclaimed by an eager second worker."""
    registry = JobRegistry()

    @registry.job("test.long_call", input=Empty, output=Count)
    def long_call(_: Empty, ctx: JobContext) -> Count:
        time.sleep(3)
        return Count(steps=1)

    job_id = enqueue(pg_store, registry, make_user(), "test.long_call", {})
    holder = Runner(pg_store, registry, lease_seconds=1)
    thread = threading.Thread(target=holder.run_available)
    thread.start()
    _wait_for(lambda: pg_store.get(job_id).locked_by == holder.worker_id, 10, "the holder to claim the job")
    stolen = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        stolen += pg_store.claim("thief", lease_seconds=30)
        time.sleep(0.1)
    thread.join(timeout=10)
    job = pg_store.get(job_id)
    assert stolen == [] and job.status is JobStatus.COMPLETED and job.attempts == 1


def test_sigterm_releases_the_running_job_at_its_next_step(pg_store: PostgresStore, make_user, database_url: str) -> None:
    registry = load_job_modules()
    job_id = enqueue(pg_store, registry, make_user(), "example.countdown", {"steps": 40, "step_seconds": 0.3})
    worker = _start_worker(database_url, lease=30)
    try:
        _wait_for(lambda: len(pg_store.get(job_id).checkpoints) >= 2, 30, "two steps")
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        worker.wait(timeout=10)
        assert time.monotonic() - started < 3  # within about one step, not the whole job
    finally:
        if worker.poll() is None:
            worker.kill()
    job = pg_store.get(job_id)
    assert job.status is JobStatus.PENDING and job.attempts == 0 and job.locked_by is None
    assert 2 <= len(job.checkpoints) < 40


def test_logs_never_carry_job_data(pg_store: PostgresStore, make_user, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Inputs and exception messages can hold prompts and PII: logs get ids, types and stack frames."""
    registry = JobRegistry()

    class Secret(BaseModel):
        ssn: str

    @registry.job("test.leaky", input=Secret, output=Count, max_attempts=2)
    def leaky(data: Secret, ctx: JobContext) -> Count:
        raise ValueError(f"could not parse {data.ssn}")

    monkeypatch.delenv("AI_JOBS_LOG_SENSITIVE", raising=False)
    job_id = enqueue(pg_store, registry, make_user(), "test.leaky", {"ssn": "078-05-1120"})
    with caplog.at_level("DEBUG"):
        Runner(pg_store, registry).run_available()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in logged and "leaky" in logged  # still debuggable: type and stack frames
    assert "078-05-1120" not in logged
    assert "078-05-1120" in pg_store.get(job_id).error.message  # the owner still sees it on their row


def test_batched_completions_one_write_and_lost_leases_not_completed(pg_store: PostgresStore, make_user, database_url: str) -> None:
    registry = JobRegistry()
    stolen: list[UUID] = []

    @registry.job("test.quick", input=Empty, output=Count)
    def quick(_: Empty, ctx: JobContext) -> Count:
        if not stolen:  # the first job of the batch loses its lease while it runs
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 s' where id = %s", (ctx.job.id,))
            stolen.extend(j.id for j in pg_store.claim("usurper", job_id=ctx.job.id))
        return Count(steps=1)

    user = make_user()
    for _ in range(5):
        enqueue(pg_store, registry, user, "test.quick", {})
    store = CountingStore(pg_store)
    outcomes = Runner(store, registry).run_available(batch=5)
    # one write for the batch's completions: alone, or with the next claim (fast path)
    assert store.calls["ai_jobs_complete_many_v2"] + store.calls["ai_jobs_complete_claim_v2"] == 1
    assert store.calls["ai_jobs_complete_v1"] == 0
    kinds = {o.job_id: o.kind for o in outcomes}
    assert len(stolen) == 1 and kinds[stolen[0]] == "lost"
    assert sorted(kinds.values()) == ["completed"] * 4 + ["lost"]
    assert pg_store.get(stolen[0]).locked_by == "usurper"  # the batch write did not touch it


def test_an_idle_invocation_waits_for_another_users_job_past_one_held_back_by_its_limit(
    pg_store: PostgresStore, make_user, db
) -> None:
    """An idle invocation waits for a job due within its budget. One user's due job held
    back by that user's own full limit used to count as due now for everyone, so every
    idle invocation gave up after about 2.5 s instead of waiting for another user's job
    due seconds later (which then waited for the next wake-up or sweep)."""
    registry = load_job_modules(demo=True)
    busy, other = make_user(), make_user()
    countdown = {"steps": 1, "step_seconds": 0}
    pg_store.enqueue(registry.new_job(busy, "example.countdown", countdown, user_limit=1))
    [running] = pg_store.claim("someone-elses-worker", lease_seconds=120)  # keeps its lease
    held = pg_store.enqueue(registry.new_job(busy, "example.countdown", countdown, user_limit=1)).job
    assert pg_store.next_due_in() is None  # only the held job is pending: nothing to wait for
    run_at = db.execute("select now() + interval '4 seconds'").fetchone()[0]
    later = pg_store.enqueue(registry.new_job(other, "example.countdown", countdown, user_limit=1, run_at=run_at)).job
    assert 3 < pg_store.next_due_in() <= 4
    assert 3 < pg_store.next_due_in(job_types=["example.countdown"]) <= 4
    assert pg_store.next_due_in(job_types=["example.other"]) is None

    started = time.monotonic()
    outcomes = Runner(pg_store, registry).run_available(budget_seconds=20)
    assert [(o.job_id, o.kind) for o in outcomes] == [(later.id, "completed")]
    assert 3 < time.monotonic() - started < 15
    assert pg_store.get(held.id).status is JobStatus.PENDING
    # once the slot frees, the held job counts again
    pg_store.complete(running.id, "someone-elses-worker", {})
    assert pg_store.next_due_in() <= 0
