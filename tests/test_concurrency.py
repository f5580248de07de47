"""Exactly-once claiming under contention: 8 threads, 2,000 jobs."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter

import psycopg

from ai_jobs.store.postgres import PostgresStore

JOBS = 2000
THREADS = 8


def test_every_job_claimed_exactly_once(database_url: str, db: psycopg.Connection, make_user) -> None:
    users = [make_user() for _ in range(4)]
    db.execute(
        "insert into public.ai_jobs (user_id, job_type, priority, input) "
        "select (%s::uuid[])[1 + i %% 4], 'example.countdown', i %% 3, jsonb_build_object('i', i) "
        "from generate_series(1, %s) i",
        (users, JOBS),
    )
    expected = {r[0] for r in db.execute("select id from public.ai_jobs")}
    assert len(expected) == JOBS

    claims: dict[str, list[uuid.UUID]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(name: str) -> None:
        store = PostgresStore(database_url, max_size=1)
        mine: list[uuid.UUID] = []
        rng = random.Random(name)
        try:
            start.wait()
            while True:
                batch = store.claim(name, limit=rng.randint(1, 10), lease_seconds=60)
                if not batch:
                    break
                for job in batch:
                    assert job.locked_by == name and job.attempts == 1
                    store.complete(job.id, name, {"by": name})
                    mine.append(job.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            claims[name] = mine
            store.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    counts = Counter(job_id for ids in claims.values() for job_id in ids)
    assert set(counts) == expected  # none lost
    assert max(counts.values()) == 1  # none claimed twice
    assert sum(1 for ids in claims.values() if ids) >= 2  # contention really happened
    claimer = {job_id: name for name, ids in claims.items() for job_id in ids}
    rows = db.execute("select id, status, attempts, result->>'by' from public.ai_jobs").fetchall()
    assert all(status == "completed" and attempts == 1 for _, status, attempts, _ in rows)
    assert all(by == claimer[job_id] for job_id, _, _, by in rows)
