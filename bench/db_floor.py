"""Database time per no-op job on the worker's fast path, and what the table costs.

    .venv/bin/python bench/db_floor.py [--jobs 10000] [--repeat 3]

One throwaway embedded PostgreSQL (the `pgserver` wheel), migrated. One client
connection plays a worker with nothing to run: it sends the fused statement,
builds the next results from the rows it got, and sends the next, until the queue
is empty. So the time per job is the database's work plus one loopback round trip
per batch of 10, with almost no Python in between (a real worker adds its own, about
50-60 us per job, see bench/README.md). M jobs of one owner, batch 10, measured:

- `complete_claim_v1` and `complete_claim_v2`: the function the worker called
  before and calls now (v2 skips the usage merge for results that carry no usage);
- `raw pair`: the least any worker can do on this table and keep a lease: per batch,
  one transaction of `UPDATE ... status='completed' WHERE id = ANY(...)` then
  `UPDATE ... status='running' ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED
  LIMIT 10)`; no fairness, limits, reaping, validation or usage;
- `lease-table sketch`: the design that writes the job row once per run, as raw as
  the raw pair. The claim locks 10 pending rows (`FOR UPDATE SKIP LOCKED`, skipping
  those with a lease) and inserts their leases into a narrow table
  (`bench_leases`: job id, worker, expiry, start); the completion deletes the leases
  and updates each row once, from pending straight to completed. What a narrow lease
  table could save at best, before any of our SQL (fairness, limits, reaping) is on it;
- `one write per job, no lease`: per batch, a single `UPDATE` that takes 10 pending
  rows (`FOR UPDATE SKIP LOCKED`) straight to completed with their result. Not a
  worker (a crash loses the batch, nothing counts attempts): the floor of any design
  that stores each job's result in the row the browser follows;
- the same raw pair after removing, cumulatively, the row triggers, the CHECK
  constraints and all indexes but the primary key, the claim index and the
  idempotency key: what each part of the table's design costs per job.

The last three steps alter the table, so they run last, on this throwaway database.
Also printed: the serving backend's CPU time per job (psutil; no round trip, no
client) and WAL bytes per job for each step. Median (min-max) of --repeat runs.
Takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
BATCH = 10

RAW_COMPLETE = (
    "update public.ai_jobs set status = 'completed', result = '{\"n\": 1}', progress = 100, locked_by = null, "
    "lease_expires_at = null, finished_at = now() where id = any(%s)"
)
RAW_CLAIM = (
    "update public.ai_jobs set status = 'running', attempts = attempts + 1, locked_by = 'w', "
    "lease_expires_at = now() + interval '30 seconds', started_at = now() where id in ("
    "select id from public.ai_jobs where status = 'pending' and run_at <= now() "
    "order by priority desc, run_at, id limit 10 for update skip locked) returning id"
)

# The lease-table sketch: the lease lives in a narrow table, the job row is written once.
LEASE_TABLE = (
    "create table if not exists public.bench_leases (job_id uuid primary key, worker text not null, "
    "expires_at timestamptz not null, started_at timestamptz not null default now())"
)
LEASE_CLAIM = (
    "with picked as (select j.id from public.ai_jobs j where j.status = 'pending' and j.run_at <= now() "
    "and not exists (select 1 from public.bench_leases l where l.job_id = j.id) "
    "order by j.priority desc, j.run_at, j.id limit 10 for update of j skip locked) "
    "insert into public.bench_leases (job_id, worker, expires_at) "
    "select id, 'w', now() + interval '30 seconds' from picked returning job_id"
)
LEASE_COMPLETE = (
    "with done as (delete from public.bench_leases where job_id = any(%s) and worker = 'w' "
    "returning job_id, started_at) "
    "update public.ai_jobs j set status = 'completed', result = '{\"n\": 1}', progress = 100, "
    "attempts = j.attempts + 1, started_at = d.started_at, finished_at = now() from done d where j.id = d.job_id"
)

# The floor: each job's row written once, with no lease at all.
ONE_WRITE = (
    "update public.ai_jobs set status = 'completed', result = '{\"n\": 1}', progress = 100, "
    "attempts = attempts + 1, started_at = now(), finished_at = now() where id in ("
    "select id from public.ai_jobs where status = 'pending' and run_at <= now() "
    "order by priority desc, run_at, id limit 10 for update skip locked) returning id"
)


def fill(conn: psycopg.Connection, user_id: object, m: int) -> None:
    conn.execute("delete from public.ai_jobs")
    conn.execute("vacuum analyze public.ai_jobs")
    conn.execute(
        "insert into public.ai_jobs (user_id, job_type, input) "
        "select %s, 'bench.noop', jsonb_build_object('n', i) from generate_series(1, %s) i",
        (user_id, m),
    )
    conn.execute("analyze public.ai_jobs")
    conn.execute("checkpoint")


def fused(function: str) -> Callable[[psycopg.Connection], int]:
    def loop(conn: psycopg.Connection) -> int:
        results: list[dict[str, object]] = []
        done = 0
        while True:
            value = conn.execute(f"select public.{function}('w1', %s::jsonb, {BATCH}, 30, null)",
                                 (json.dumps(results),)).fetchone()[0]  # type: ignore[index]
            claimed = value["claimed"]
            if not claimed:
                return done
            results = [{"id": job["id"], "result": {"n": 1}} for job in claimed]
            done += len(claimed)
    return loop


def statement_pair(complete: str, claim: str) -> Callable[[psycopg.Connection], int]:
    """Per batch, one transaction: complete the last batch, claim the next."""
    def loop(conn: psycopg.Connection) -> int:
        ids: list[object] = []
        done = 0
        while True:
            with conn.transaction():
                if ids:
                    conn.execute(complete, (ids,))
                ids = [row[0] for row in conn.execute(claim).fetchall()]
            if not ids:
                return done
            done += len(ids)
    return loop


raw_pair = statement_pair(RAW_COMPLETE, RAW_CLAIM)
lease_pair = statement_pair(LEASE_COMPLETE, LEASE_CLAIM)


def one_write(conn: psycopg.Connection) -> int:
    """Per batch, one statement: 10 pending rows straight to completed."""
    done = 0
    while True:
        ids = conn.execute(ONE_WRITE).fetchall()
        if not ids:
            return done
        done += len(ids)


def add_lease_table(conn: psycopg.Connection) -> None:
    conn.execute(LEASE_TABLE)


def measure(uri: str, user_id: object, m: int, loop: Callable[[psycopg.Connection], int]) -> tuple[float, float, float]:
    """(us of database time per job, us of the backend's CPU per job, WAL bytes per job) for one drain of m jobs.

    The CPU is the serving backend process's own (psutil), so it leaves out the
    round trip and the client, which the database time includes.
    """
    import psutil

    with psycopg.connect(uri, autocommit=True) as conn:
        fill(conn, user_id, m)
        backend = psutil.Process(conn.info.backend_pid)
        wal_start = conn.execute("select pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        cpu_start = backend.cpu_times()
        started = time.perf_counter()
        done = loop(conn)
        elapsed = time.perf_counter() - started
        cpu_end = backend.cpu_times()
        wal = conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal_start,)).fetchone()[0]  # type: ignore[index]
    if done != m:
        raise SystemExit(f"expected {m} jobs drained, got {done}")
    cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    return elapsed / m * 1e6, cpu / m * 1e6, float(wal) / m


def strip_triggers(conn: psycopg.Connection) -> None:
    conn.execute("alter table public.ai_jobs disable trigger user")


def strip_checks(conn: psycopg.Connection) -> None:
    names = [r[0] for r in conn.execute(
        "select conname from pg_constraint where conrelid = 'public.ai_jobs'::regclass and contype = 'c'")]
    for name in names:
        conn.execute(f'alter table public.ai_jobs drop constraint "{name}"')


def strip_indexes(conn: psycopg.Connection) -> None:
    names = [r[0] for r in conn.execute(
        "select indexname from pg_indexes where schemaname = 'public' and tablename = 'ai_jobs' "
        "and indexname not in ('ai_jobs_pkey', 'ai_jobs_claim_idx', 'ai_jobs_idempotency_unique')")]
    for name in names:
        conn.execute(f'drop index public."{name}"')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench._throwaway_db import throwaway_database

    load_start = os.getloadavg()[0]
    rows: list[tuple[str, list[float], list[float], list[float]]] = []
    with throwaway_database("fl") as database:
        uri = database.url
        user_id = database.add_user()
        steps: list[tuple[str, Callable[[psycopg.Connection], int], Callable[[psycopg.Connection], None] | None]] = [
            ("complete_claim_v1 (the worker before)", fused("ai_jobs_complete_claim_v1"), None),
            ("complete_claim_v2 (the worker now)", fused("ai_jobs_complete_claim_v2"), None),
            ("raw pair: two plain UPDATEs per batch", raw_pair, None),
            ("lease-table sketch: the row written once, the lease in a narrow table", lease_pair, add_lease_table),
            ("one write per job, no lease (the floor; not a worker)", one_write, None),
            ("raw pair, row triggers disabled", raw_pair, strip_triggers),
            ("raw pair, + no CHECK constraints", raw_pair, strip_checks),
            ("raw pair, + only pkey/claim/idempotency indexes", raw_pair, strip_indexes),
        ]
        for label, loop, alter in steps:
            if alter is not None:
                with psycopg.connect(uri, autocommit=True) as conn:
                    alter(conn)
            times, cpus, wal = [], [], []
            for _ in range(args.repeat):
                us, cpu_us, wal_bytes = measure(uri, user_id, args.jobs, loop)
                times.append(us)
                cpus.append(cpu_us)
                wal.append(wal_bytes)
            rows.append((label, times, cpus, wal))
            print(f"  {label}: {statistics.median(times):.0f} us/job", flush=True)

    print()
    print(f"| step ({args.jobs:,} jobs, batch {BATCH}, one connection) | database time per job, us | jobs/s this implies "
          "| backend CPU per job, us | WAL per job, bytes |")
    print("|---|---:|---:|---:|---:|")
    for label, times, cpus, wal in rows:
        med = statistics.median(times)
        print(f"| {label} | {med:.0f} ({min(times):.0f}–{max(times):.0f}) | {1e6 / med:,.0f} "
              f"| {statistics.median(cpus):.0f} ({min(cpus):.0f}–{max(cpus):.0f}) | {statistics.median(wal):,.0f} |")
    print(f"\nmedian (min–max) of {args.repeat}; load average {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
