"""Latency and cost per job, on a throwaway embedded PostgreSQL.

1. enqueue -> start, p50/p95: (a) the serverless path, POST /api/jobs with the
   hand-off to the local worker endpoint (`ai-jobs dev`), measured as started_at -
   created_at; (b) a long-lived `ai-jobs worker` polling every 0.1 s
   (AI_JOBS_WORKER_WAKEUP=poll); (c) the same worker woken by LISTEN/NOTIFY
   (AI_JOBS_WORKER_WAKEUP=listen, 1 s safety poll); (d) PgQueuer 1.6 (its worker
   LISTENs too; batch 10, asyncpg). (b)-(d): from the wall clock just before the
   enqueue call to the job's start (ai-jobs: the claim's started_at; PgQueuer: the
   first line of the handler), jobs enqueued one at a time 50 ms apart, on the same
   database, one after the other.
2. Database writes per job: SQL function calls for one example.countdown job,
   with and without a chatty handler (progress coalescing).
3. Recovery: SIGKILL a worker holding a job (default 30 s lease); time until a
   second worker has the job running again.

Run: .venv/bin/python bench/latency.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _local_stack import start_dev  # noqa: E402


def short(function: str) -> str:
    return function.removeprefix("ai_jobs_").removesuffix("_v1")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_latencies(database_url: str, ids: list[str]) -> list[float]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select extract(epoch from started_at - created_at) * 1000 from public.ai_jobs where id = any(%s::uuid[])",
            (ids,),
        ).fetchall()
    return [float(r[0]) for r in rows if r[0] is not None]


def handoff_path(jobs: int) -> tuple[float, float]:
    stack = start_dev({"AI_JOBS_MAX_ACTIVE_PER_USER": "100000"})
    try:
        ids = []
        with httpx.Client(base_url=stack.url, headers={"authorization": f"Bearer {stack.token}"}, timeout=30) as client:
            for _ in range(jobs):
                r = client.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}})
                ids.append(r.json()["id"])
                time.sleep(0.02)  # jobs arrive one by one, the worker is idle when each lands
        time.sleep(1)
        values = start_latencies(stack.database_url, ids)
    finally:
        stack.stop()
    return statistics.median(values), pct(values, 0.95)


def _worker(database_url: str, *extra: str, wakeup: str = "auto") -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "PYTHONPATH": str(REPO),
           "AI_JOBS_WORKER_WAKEUP": wakeup}
    return subprocess.Popen([sys.executable, "-m", "ai_jobs.cli", "worker", *extra], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def worker_path(database_url: str, user: str, jobs: int, wakeup: str, poll: float) -> tuple[float, float]:
    """enqueue -> start for a long-lived worker, from the wall clock before each enqueue."""
    worker = _worker(database_url, "--poll-interval", str(poll), wakeup=wakeup)
    time.sleep(3)  # imports done, the worker is waiting
    sent: dict[str, float] = {}
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for _ in range(jobs):
                t0 = time.time()
                job_id = str(conn.execute(
                    "select (public.ai_jobs_enqueue_v3(p_user_id => %s, p_job_type => 'example.countdown',"
                    " p_input => '{\"steps\": 1, \"step_seconds\": 0}') -> 'job' ->> 'id')", (user,)).fetchone()[0])
                sent[job_id] = t0
                time.sleep(0.05)
            time.sleep(1)
            rows = conn.execute("select id::text, extract(epoch from started_at) from public.ai_jobs "
                                "where id = any(%s::uuid[])", (list(sent),)).fetchall()
    finally:
        worker.terminate()
        worker.wait(timeout=10)
    values = [(float(started) - sent[job_id]) * 1000 for job_id, started in rows if started is not None]
    if len(values) < jobs:
        print(f"  warning: {jobs - len(values)} of {jobs} jobs had not started", flush=True)
    return statistics.median(values), pct(values, 0.95)


def pgqueuer_path(database_url: str, jobs: int) -> tuple[float, float]:
    """The same measurement for PgQueuer (installed with `pgq install`), whose
    worker is woken by LISTEN/NOTIFY."""
    import asyncio

    subprocess.run([sys.executable, "-m", "pgqueuer", "--pg-dsn", database_url, "install"], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("create table if not exists bench_pgq_latency (tag text primary key, started double precision)")
    env = {**os.environ, "BENCH_PG_DSN": database_url, "BENCH_LATENCY_TABLE": "bench_pgq_latency",
           "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen([sys.executable, "-m", "bench.competitors.pgqueuer_worker", "--batch-size", "10"],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    sent: dict[str, float] = {}

    async def enqueue_all() -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        from bench.competitors.pgqueuer_app import ENTRYPOINT

        conn = await asyncpg.connect(database_url)
        try:
            queries = Queries(AsyncpgDriver(conn))
            for i in range(jobs):
                tag = f"j{i}"
                sent[tag] = time.time()
                await queries.enqueue(ENTRYPOINT, tag.encode(), 0)
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    try:
        asyncio.run(enqueue_all())
        time.sleep(1)
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute("select tag, started from bench_pgq_latency").fetchall()
    finally:
        worker.terminate()
        worker.wait(timeout=10)
    values = [(started - sent[tag]) * 1000 for tag, started in rows if tag in sent]
    if len(values) < jobs:
        print(f"  warning: {jobs - len(values)} of {jobs} PgQueuer jobs had not started", flush=True)
    return statistics.median(values), pct(values, 0.95)


def writes_per_job(database_url: str, user: str) -> dict[str, object]:
    from ai_jobs.context import JobContext
    from ai_jobs.models import NewJob
    from ai_jobs.registry import JobRegistry, load_job_modules
    from ai_jobs.runner import Runner
    from ai_jobs.store.postgres import PostgresStore
    from tests.counting_store import CountingStore

    from pydantic import BaseModel

    class Empty(BaseModel):
        pass

    chatty = JobRegistry()

    @chatty.job("bench.chatty", input=Empty, output=Empty)
    def chatty_job(_: Empty, ctx: JobContext) -> Empty:
        for step in range(5):
            for i in range(100):  # 100 progress calls per 1 s step
                ctx.progress(step * 20 + i / 5, f"step {step}")
                time.sleep(0.01)
            ctx.step(f"s{step}", lambda: None)
        return Empty()

    results: dict[str, object] = {}
    with PostgresStore(database_url) as base:
        for label, registry, job_type, data in (
            ("example.countdown, 5 steps of 0.2 s", load_job_modules(), "example.countdown", {"steps": 5, "step_seconds": 0.2}),
            ("handler calling progress() 500 times over 5 s, 5 steps", chatty, "bench.chatty", {}),
        ):
            store = CountingStore(base)
            base.enqueue(NewJob(user_id=user, job_type=job_type, input=data))
            Runner(store, registry, lease_seconds=30).run_available(max_jobs=1)
            results[label] = {"total": sum(store.calls.values()), **dict(store.calls)}
    return results


def recovery(database_url: str, user: str) -> float:
    with psycopg.connect(database_url, autocommit=True) as conn:
        job_id = conn.execute(
            "select (public.ai_jobs_enqueue_v1(p_user_id => %s, p_job_type => 'example.countdown',"
            " p_input => '{\"steps\": 60, \"step_seconds\": 1}') -> 'job' ->> 'id')", (user,)).fetchone()[0]
        first = _worker(database_url)  # default 30 s lease, heartbeat every 10 s
        while conn.execute("select status from public.ai_jobs where id = %s", (job_id,)).fetchone()[0] != "running":
            time.sleep(0.05)
        time.sleep(3)
        owner = conn.execute("select locked_by from public.ai_jobs where id = %s", (job_id,)).fetchone()[0]
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait()
        second = _worker(database_url, "--poll-interval", "0.5")
        try:
            while True:
                status, locked_by = conn.execute("select status, locked_by from public.ai_jobs where id = %s",
                                                 (job_id,)).fetchone()
                if status == "running" and locked_by != owner:
                    return time.monotonic() - killed_at
                if time.monotonic() - killed_at > 120:
                    raise RuntimeError("job was not recovered within 120 s")
                time.sleep(0.05)
        finally:
            second.terminate()
            second.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--skip-pgqueuer", action="store_true", help="without PgQueuer (not installed)")
    args = parser.parse_args()
    from bench._throwaway_db import throwaway_database

    with throwaway_database("lat") as database:
        measure(database.url, database.add_user(), args)


def measure(database_url: str, user: str, args: argparse.Namespace) -> None:
    load_start = os.getloadavg()
    p50, p95 = handoff_path(args.jobs)
    print("| enqueue -> start | p50 ms | p95 ms |\n|---|---|---|")
    print(f"| POST /api/jobs with hand-off to the worker endpoint (ai-jobs dev) | {p50:.1f} | {p95:.1f} |", flush=True)
    p50, p95 = worker_path(database_url, user, args.jobs, "poll", 0.1)
    print(f"| ai-jobs worker polling every 0.1 s (AI_JOBS_WORKER_WAKEUP=poll) | {p50:.1f} | {p95:.1f} |", flush=True)
    p50, p95 = worker_path(database_url, user, args.jobs, "listen", 1.0)
    print(f"| ai-jobs worker woken by LISTEN/NOTIFY (AI_JOBS_WORKER_WAKEUP=listen) | {p50:.1f} | {p95:.1f} |",
          flush=True)
    if not args.skip_pgqueuer:
        p50, p95 = pgqueuer_path(database_url, args.jobs)
        print(f"| PgQueuer 1.6 worker (LISTEN/NOTIFY, batch 10, asyncpg) | {p50:.1f} | {p95:.1f} |", flush=True)
    load_end = os.getloadavg()
    print(f"\n1-minute load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} after the latency runs")
    print("\n| job | SQL calls | breakdown |\n|---|---|---|")
    for label, calls in writes_per_job(database_url, user).items():
        total = calls.pop("total")  # type: ignore[union-attr]
        breakdown = ", ".join(f"{short(k)} {v}" for k, v in calls.items())  # type: ignore[union-attr]
        print(f"| {label} | {total} | {breakdown} |")
    seconds = recovery(database_url, user)
    print(f"\nrecovery after SIGKILL (30 s lease, heartbeat every 10 s): job running again after {seconds:.1f} s")


if __name__ == "__main__":
    main()
