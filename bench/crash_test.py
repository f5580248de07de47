"""Crash test: example.countdown jobs run by several `ai-jobs worker` processes
that are SIGKILLed at random moments and restarted.

Checks: every job ends completed; none lost or duplicated; every step's
checkpoint is written exactly once per job (a test-only audit trigger logs
each checkpoint write), so no completed step ever ran again; only steps in
flight when a worker died were re-executed.

Full size: .venv/bin/python bench/crash_test.py            (1,000 jobs)
`make test` runs it reduced (tests/test_crash_and_load.py).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]

AUDIT = """
create schema if not exists crash_test;
revoke all on schema crash_test from public;
create table if not exists crash_test.audit (job_id uuid, step text, value jsonb, at timestamptz default clock_timestamp());
create or replace function crash_test.audit_checkpoints() returns trigger language plpgsql set search_path = '' as $$
begin
  insert into crash_test.audit (job_id, step, value)
  select new.id, k.key, k.value from jsonb_each(new.checkpoints) k
  where not (old.checkpoints ? k.key) or old.checkpoints -> k.key is distinct from k.value;
  return new;
end $$;
create or replace trigger crash_test_audit after update of checkpoints on public.ai_jobs
  for each row execute function crash_test.audit_checkpoints();
"""
CLEANUP = "drop trigger if exists crash_test_audit on public.ai_jobs; drop schema if exists crash_test cascade;"


@dataclass
class CrashReport:
    jobs: int
    steps: int
    workers: int
    kills: int
    seconds: float
    completed: int
    checkpoint_writes: int
    duplicate_checkpoints: int
    jobs_retried_after_kill: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _worker(database_url: str, lease: int, batch: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "PYTHONPATH": str(REPO),
           "AI_JOBS_DEMO_JOB_TYPES": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ai_jobs.cli", "worker", "--lease-seconds", str(lease), "--poll-interval", "0.05",
         "--batch", str(batch)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def run_crash_test(
    database_url: str,
    *,
    jobs: int = 1000,
    steps: int = 3,
    step_seconds: float = 0.02,
    workers: int = 4,
    kill_every: float = 1.0,
    max_kills: int = 20,
    lease: int = 2,
    timeout: float = 600,
    seed: int = 7,
    batch: int = 1,
) -> CrashReport:
    """`batch` > 1: workers claim that many jobs at once, and each batch's completions
    ride on the next claim (the fast path), so kills also land between a finished
    batch and its write."""
    rng = random.Random(seed)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(AUDIT)
        conn.execute("truncate crash_test.audit")
        user = conn.execute("insert into auth.users (id) values (gen_random_uuid()) returning id").fetchone()[0]
        conn.execute(
            "insert into public.ai_jobs (user_id, job_type, input, max_attempts) "
            "select %s, 'example.countdown', jsonb_build_object('steps', %s, 'step_seconds', %s), 100 "
            "from generate_series(1, %s)",
            (user, steps, step_seconds, jobs),
        )
    started = time.monotonic()
    procs = [_worker(database_url, lease, batch) for _ in range(workers)]
    kills = 0
    next_kill = started + kill_every * rng.uniform(0.5, 1.5)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while time.monotonic() - started < timeout:
                left = conn.execute(
                    "select count(*) from public.ai_jobs where user_id = %s and status <> 'completed'", (user,)
                ).fetchone()[0]
                if left == 0:
                    break
                now = time.monotonic()
                if kills < max_kills and now >= next_kill:
                    victim = rng.randrange(len(procs))
                    procs[victim].send_signal(signal.SIGKILL)
                    procs[victim].wait()
                    procs[victim] = _worker(database_url, lease, batch)
                    kills += 1
                    next_kill = now + kill_every * rng.uniform(0.5, 1.5)
                time.sleep(0.02)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    seconds = time.monotonic() - started

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "select status, count(*) from public.ai_jobs where user_id = %s group by 1", (user,)
        ).fetchall()
        by_status = dict(rows)
        writes, duplicates = conn.execute(
            """
            select coalesce(sum(n), 0), count(*) filter (where n > 1) from (
              select a.job_id, a.step, count(*) n from crash_test.audit a
              join public.ai_jobs j on j.id = a.job_id where j.user_id = %s group by 1, 2) t
            """,
            (user,),
        ).fetchone()
        missing = conn.execute(
            """
            select count(*) from public.ai_jobs j cross join generate_series(1, %s) s
            where j.user_id = %s and not (j.checkpoints ? ('step-' || s))
            """,
            (steps, user),
        ).fetchone()[0]
        retried = conn.execute(
            "select count(*) from public.ai_jobs where user_id = %s and attempts > 1", (user,)
        ).fetchone()[0]
        conn.execute("delete from public.ai_jobs where user_id = %s", (user,))
        conn.execute("delete from auth.users where id = %s", (user,))
        conn.execute(CLEANUP)

    problems = []
    total = sum(by_status.values())
    if total != jobs:
        problems.append(f"{total} jobs in the table, expected {jobs} (lost or duplicated)")
    if by_status.get("completed", 0) != jobs:
        problems.append(f"not all completed: {by_status}")
    if duplicates:
        problems.append(f"{duplicates} steps were checkpointed more than once (a completed step ran again)")
    if missing:
        problems.append(f"{missing} step checkpoints missing")
    if writes != jobs * steps:
        problems.append(f"{writes} checkpoint writes, expected {jobs * steps}")
    return CrashReport(
        jobs=jobs, steps=steps, workers=workers, kills=kills, seconds=round(seconds, 1),
        completed=by_status.get("completed", 0), checkpoint_writes=int(writes), duplicate_checkpoints=int(duplicates),
        jobs_retried_after_kill=int(retried), problems=problems,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.02)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=1, help="jobs each worker claims at once (`ai-jobs worker --batch`)")
    args = parser.parse_args()
    with ExitStack() as stack:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from bench._throwaway_db import throwaway_database

            database_url = stack.enter_context(throwaway_database("crash")).url
        report = run_crash_test(
            database_url, jobs=args.jobs, steps=args.steps, step_seconds=args.step_seconds, workers=args.workers,
            max_kills=args.kills, kill_every=args.kill_every, batch=args.batch,
        )
    for key, value in report.__dict__.items():
        print(f"{key:26} {value}")
    print("RESULT", "ok" if report.ok else "FAILED")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
