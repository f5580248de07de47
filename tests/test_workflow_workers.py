"""Workflows with real worker processes (`ai-jobs worker`, no HTTP server at all):
SIGKILL during spawn_many, a waiting parent that holds no lease or worker and
resumes within seconds of its last child, and a parent whose worker dies while it
waits."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ai_jobs.models import JobStatus, NewJob
from ai_jobs.store.postgres import PostgresStore

REPO = Path(__file__).resolve().parents[1]


class Workers:
    """Worker processes this test started (and ends, by pid)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *, lease: int = 1) -> subprocess.Popen[bytes]:
        env = {**os.environ, "DATABASE_URL": self.database_url, "AI_JOBS_STORE": "postgres",
               "PYTHONPATH": str(REPO), "AI_JOBS_JOB_MODULES": "tests.workflow_jobs_global",
               "AI_JOBS_USER_CONCURRENCY": "0", "AI_JOBS_WORKER_URL": "", "WORKER_SECRET": ""}
        proc = subprocess.Popen(
            [sys.executable, "-m", "ai_jobs.cli", "worker", "--lease-seconds", str(lease), "--poll-interval", "0.05"],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()


@pytest.fixture()
def workers(database_url: str) -> Iterator[Workers]:
    pool = Workers(database_url)
    try:
        yield pool
    finally:
        pool.stop_all()


def wait_until(predicate, timeout: float, step: float = 0.01):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


def row(db: psycopg.Connection, job_id: uuid.UUID) -> tuple:
    return db.execute(
        "select status, locked_by, lease_expires_at, wait_reason, finished_at, started_at from public.ai_jobs"
        " where id = %s", (job_id,)).fetchone()


def create_parent(store: PostgresStore, user: uuid.UUID, **data: object) -> uuid.UUID:
    return store.enqueue(NewJob(user_id=user, job_type="test.wf_parent", input=data, max_attempts=5)).job.id


def test_sigkill_during_spawn_many_of_200_children_ten_times(database_url: str, db, make_user,
                                                             pg_store: PostgresStore, workers: Workers) -> None:
    rng = random.Random(16)
    seen_at_kill: list[int] = []
    in_statement: list[bool] = []
    for run in range(10):
        user = make_user()
        parent = create_parent(pg_store, user, children=200)
        first = workers.start()
        wait_until(lambda: row(db, parent)[0] == "running", 30, 0.002)
        if run % 2:  # while the spawn statement runs (about 0.2 s for 200 children here)
            wait_until(lambda: spawning(db), 30, 0.002)
            time.sleep(rng.uniform(0, 0.06))
        else:  # anywhere from the start of the handler (building the children's requests) on
            time.sleep(rng.uniform(0, 0.4))
        in_statement.append(spawning(db))
        workers.kill(first)
        seen_at_kill.append(db.execute("select count(*) from public.ai_jobs where parent_id = %s",
                                       (parent,)).fetchone()[0])
        for _ in range(3):
            workers.start()
        wait_until(lambda: row(db, parent)[0] in ("completed", "failed"), 120, 0.05)
        status = row(db, parent)[0]
        count, keys = db.execute("select count(*), count(distinct spawn_key) from public.ai_jobs"
                                 " where parent_id = %s", (parent,)).fetchone()
        result = pg_store.get(parent).result
        assert (status, count, keys) == ("completed", 200, 200), (run, status, count, keys, pg_store.get(parent).error,
                                                                  pg_store.get(parent).attempts)
        assert result["results"] == [{"n": i} for i in range(200)]
        workers.stop_all()
    # all or nothing: at the kill a parent had either no children or all 200, never part
    assert set(seen_at_kill) <= {0, 200}, seen_at_kill
    assert sum(in_statement) >= 3  # several kills landed inside the spawn statement (checked just before)
    print(f"children present at each kill: {seen_at_kill}; spawn statement running at the kill: {in_statement}")


def spawning(db: psycopg.Connection) -> bool:
    return bool(db.execute("select count(*) from pg_stat_activity where state = 'active'"
                           " and query like %s", ("%ai_jobs_spawn_v1%",)).fetchone()[0])


def test_waiting_parent_holds_nothing_and_resumes_within_5_s_of_its_last_child(
    database_url: str, db, make_user, pg_store: PostgresStore, workers: Workers
) -> None:
    parent = create_parent(pg_store, make_user(), children=3, child_seconds=1.0)
    workers.start(lease=5)  # one worker: the children can only run if the waiting parent let it go
    wait_until(lambda: db.execute("select count(*) from public.ai_jobs where parent_id = %s and status = 'running'",
                                  (parent,)).fetchone()[0] > 0, 30)
    status, locked_by, lease, reason, _, _ = row(db, parent)
    assert (status, locked_by, lease, reason) == ("pending", None, None, "waiting_for_children")
    wait_until(lambda: row(db, parent)[0] == "completed", 60, 0.05)
    last_child = db.execute("select max(finished_at) from public.ai_jobs where parent_id = %s", (parent,)).fetchone()[0]
    resumed = pg_store.get(parent).finished_at
    gap = (resumed - last_child).total_seconds()
    print(f"parent finished {gap:.3f} s after its last child")
    assert 0 <= gap < 5


def test_parent_whose_worker_dies_while_waiting_is_woken_normally(
    database_url: str, db, make_user, pg_store: PostgresStore, workers: Workers
) -> None:
    parent = create_parent(pg_store, make_user(), children=4, child_seconds=0.5)
    first = workers.start()
    wait_until(lambda: row(db, parent)[3] == "waiting_for_children", 30)
    workers.kill(first)  # nothing of the parent's was on it: it holds no lease while waiting
    assert row(db, parent)[1] is None
    workers.start()
    wait_until(lambda: row(db, parent)[0] == "completed", 60, 0.05)
    assert pg_store.get(parent).result["results"] == [{"n": i} for i in range(4)]
