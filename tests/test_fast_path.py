"""The worker's fast path (issue 13): completions ride on the next claim, LISTEN/NOTIFY
wake-ups for `ai-jobs worker`, and the settings that choose between LISTEN and polling."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pydantic import BaseModel

from ai_jobs.models import JobStatus, NewJob
from ai_jobs.registry import JobRegistry
from ai_jobs.runner import Runner
from ai_jobs.settings import Settings
from ai_jobs.store.postgres import PostgresStore
from ai_jobs.wakeup import DueListener
from tests.counting_store import CountingStore

AI_JOBS = [sys.executable, "-m", "ai_jobs.cli"]


class Empty(BaseModel):
    pass


class Count(BaseModel):
    n: int


def test_each_batch_is_written_by_the_next_claim(pg_store: PostgresStore, make_user) -> None:
    """12 jobs in batches of 5: three fused statements (each writes the previous batch
    and claims the next; the last claims nothing), one plain claim, no separate
    completion write, and nothing left running when run_available returns."""
    registry = JobRegistry()

    @registry.job("test.fast", input=Empty, output=Count)
    def fast(_: Empty, ctx) -> Count:  # type: ignore[no-untyped-def]
        return Count(n=1)

    user = make_user()
    for _ in range(12):
        pg_store.enqueue(NewJob(user_id=user, job_type="test.fast"))
    store = CountingStore(pg_store)
    outcomes = Runner(store, registry).run_available(batch=5)
    assert [o.kind for o in outcomes] == ["completed"] * 12
    assert store.calls["ai_jobs_claim_v2"] == 1
    assert store.calls["ai_jobs_complete_claim_v2"] == 3
    assert store.calls["ai_jobs_complete_many_v2"] == 0 and store.calls["ai_jobs_complete_v1"] == 0
    jobs = pg_store.list(user_id=user, limit=50).jobs
    assert {j.status for j in jobs} == {JobStatus.COMPLETED} and all(j.attempts == 1 for j in jobs)
    assert all(j.result == {"n": 1} for j in jobs)


def test_completions_are_flushed_when_the_drain_stops(pg_store: PostgresStore, make_user) -> None:
    """max_jobs reached: the carried batch is written on its own before returning."""
    registry = JobRegistry()

    @registry.job("test.fast", input=Empty, output=Count)
    def fast(_: Empty, ctx) -> Count:  # type: ignore[no-untyped-def]
        return Count(n=2)

    user = make_user()
    for _ in range(8):
        pg_store.enqueue(NewJob(user_id=user, job_type="test.fast"))
    store = CountingStore(pg_store)
    outcomes = Runner(store, registry).run_available(batch=4, max_jobs=4)
    assert len(outcomes) == 4 and store.calls["ai_jobs_complete_many_v2"] == 1
    statuses = [j.status for j in pg_store.list(user_id=user, limit=50).jobs]
    assert statuses.count(JobStatus.COMPLETED) == 4 and statuses.count(JobStatus.PENDING) == 4


def test_inserting_a_due_job_notifies_listeners(pg_store: PostgresStore, database_url: str, make_user) -> None:
    user = make_user()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("listen ai_jobs_due")
        pg_store.enqueue(NewJob(user_id=user, job_type="example.countdown",
                                run_at=datetime.now(UTC) + timedelta(hours=1)))
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []  # not due: nobody to wake
        pg_store.enqueue(NewJob(user_id=user, job_type="example.countdown"))
        assert [n.channel for n in listener.notifies(timeout=2, stop_after=1)] == ["ai_jobs_due"]


def test_due_listener_wakes_on_enqueue_and_honours_stop(pg_store: PostgresStore, database_url: str, make_user) -> None:
    listener = DueListener(database_url)
    stop = threading.Event()
    try:
        assert listener.wait(0.2, stop) is False
        threading.Timer(0.3, lambda: pg_store.enqueue(NewJob(user_id=make_user(), job_type="example.countdown"))).start()
        t = time.monotonic()
        assert listener.wait(5, stop) is True
        assert time.monotonic() - t < 2
        stop.set()
        t = time.monotonic()
        assert listener.wait(5, stop) is False and time.monotonic() - t < 0.5
    finally:
        listener.close()
    assert not listener.active


def test_wakeup_setting_picks_listen_or_poll(pg_store: PostgresStore) -> None:
    from ai_jobs.cli import _due_listener

    assert _due_listener(Settings(worker_wakeup="poll"), pg_store) is None
    listener = _due_listener(Settings(worker_wakeup="auto"), pg_store)
    assert isinstance(listener, DueListener)
    listener.close()
    other = CountingStore(pg_store)  # not a direct PostgreSQL connection (as the REST store)
    assert _due_listener(Settings(worker_wakeup="auto"), other) is None
    with pytest.raises(SystemExit):
        _due_listener(Settings(worker_wakeup="listen"), other)
    assert Settings.from_env({"AI_JOBS_WORKER_WAKEUP": "poll"}).worker_wakeup == "poll"
    with pytest.raises(ValueError):
        Settings.from_env({"AI_JOBS_WORKER_WAKEUP": "sometimes"})


def _start_latency(database_url: str, user, wakeup: str) -> float | None:  # type: ignore[no-untyped-def]
    """Seconds from enqueue to start for an idle `ai-jobs worker` polling every 5 s."""
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "AI_JOBS_WORKER_WAKEUP": wakeup}
    worker = subprocess.Popen(AI_JOBS + ["worker", "--poll-interval", "5"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert worker.stdout is not None
        banner = worker.stdout.readline()  # printed once the worker is ready to claim
        assert ("LISTEN" in banner) == (wakeup == "listen"), banner
        time.sleep(1)  # idle: its first claim found nothing, it now waits
        with psycopg.connect(database_url, autocommit=True) as conn:
            t0 = time.time()
            job_id = conn.execute(
                "select (public.ai_jobs_enqueue_v3(p_user_id => %s, p_job_type => 'example.countdown',"
                " p_input => '{\"steps\": 1, \"step_seconds\": 0}') -> 'job' ->> 'id')::uuid", (user,)).fetchone()[0]
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                started = conn.execute("select extract(epoch from started_at) from public.ai_jobs where id = %s",
                                       (job_id,)).fetchone()[0]
                if started is not None:
                    return float(started) - t0
                time.sleep(0.02)
        return None
    finally:
        worker.terminate()
        worker.wait(timeout=10)


def test_a_listening_worker_starts_new_jobs_without_waiting_for_its_poll(database_url: str, make_user) -> None:
    user = make_user()
    listening = _start_latency(database_url, user, "listen")
    assert listening is not None and listening < 0.5, listening
    polling = _start_latency(database_url, user, "poll")  # the control: the 5 s poll is what starts it
    assert polling is None or polling > 0.5, polling


def test_worker_concurrency_runs_jobs_at_once_and_stops_cleanly(database_url: str, make_user) -> None:
    """`ai-jobs worker --concurrency 3`: three loops in one process, each its own lease
    holder, so three 2-second jobs run at the same time (the control, one loop, runs
    one at a time); one NOTIFY wakes the idle loops; SIGTERM ends the process promptly
    with nothing left running."""
    user = make_user()

    def enqueue(conn: psycopg.Connection, n: int) -> list[object]:
        return [conn.execute(
            "select (public.ai_jobs_enqueue_v3(p_user_id => %s, p_job_type => 'example.countdown',"
            " p_input => '{\"steps\": 2, \"step_seconds\": 1}') -> 'job' ->> 'id')::uuid", (user,)).fetchone()[0]
            for _ in range(n)]

    def most_running_at_once(concurrency: int) -> tuple[int, set[str]]:
        env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "AI_JOBS_DEMO_JOB_TYPES": "1",
               "AI_JOBS_WORKER_WAKEUP": "listen"}
        worker = subprocess.Popen(AI_JOBS + ["worker", "--poll-interval", "30", "--concurrency", str(concurrency)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert worker.stdout is not None
            banner = worker.stdout.readline()
            assert "LISTEN" in banner and (f"{concurrency} loops" in banner) == (concurrency > 1), banner
            time.sleep(1)  # every loop has claimed nothing and waits (a 30 s poll: only the NOTIFY wakes them)
            with psycopg.connect(database_url, autocommit=True) as conn:
                ids = enqueue(conn, 3)  # one statement each: the first NOTIFY must wake every idle loop
                most, holders = 0, set()
                deadline = time.monotonic() + 12
                while time.monotonic() < deadline:
                    rows = conn.execute("select status, locked_by from public.ai_jobs where id = any(%s)",
                                        (ids,)).fetchall()
                    running = [r[1] for r in rows if r[0] == "running"]
                    most, holders = max(most, len(running)), holders | set(running)
                    if all(r[0] == "completed" for r in rows):
                        break
                    time.sleep(0.05)
                assert all(r[0] == "completed" for r in rows), rows
            t0 = time.monotonic()
            worker.terminate()
            assert worker.wait(timeout=5) == 0
            assert time.monotonic() - t0 < 3  # idle loops wake on stop, not at their 30 s poll
            return most, holders
        finally:
            if worker.poll() is None:
                worker.kill()

    most, holders = most_running_at_once(3)
    assert most == 3 and len(holders) == 3, (most, holders)
    most, holders = most_running_at_once(1)
    assert most == 1 and len(holders) == 1, (most, holders)


def test_worker_concurrency_is_bounded_by_the_pool(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "AI_JOBS_POOL_MAX_SIZE": "4"}
    proc = subprocess.run(AI_JOBS + ["worker", "--concurrency", "5"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "usage: ai-jobs worker" in proc.stderr
    assert "argument --concurrency: Input should be at most AI_JOBS_POOL_MAX_SIZE (4), got '5'" in proc.stderr
