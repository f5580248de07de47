"""Claim throughput with concurrency limits on and off (ai_jobs_claim_v2).

    .venv/bin/python bench/claim_limits.py [--jobs 4000] [--workers 2 4] [--users 100] [--repeat R]

One throwaway embedded PostgreSQL (the `pgserver` wheel). For every scenario and
worker count N: M no-op jobs (`bench.noop`) are inserted spread over --users owners,
then N worker processes (each a Runner over a PostgresStore, the loop `ai-jobs
worker --batch 10` runs) start together behind a start file, and the number of
unfinished jobs is sampled; steady-state throughput = jobs finished between 90 %
and 10 % of M left, per second. Scenarios:

- `v1, no limits`: the old claim (priority, then run_at; no fairness), the baseline;
- `no limits`: ai_jobs_claim_v2 with null limits (fair walk over owners, no locks);
- `huge limits`: user/org/key limits of 10,000 (every scope locked and counted,
  never binding): the cost of enforcing limits;
- `1,000 keys, limit 2`: each job has one of 1,000 concurrency keys (key limit 2,
  huge user limit): many scopes;
- `one hot key, huge limit`: every job has the same key (limit 10,000): all
  claimers contend for one advisory lock;
- `one hot key, limit 2`: the same key with its real limit: at most 2 jobs run
  at once, whatever the worker count.

Everything runs on the same machine (database, workers, sampler); run it with
nothing else busy. Takes under a minute with the defaults.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BATCH = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    claim: str  # ai_jobs_claim_v1 or ai_jobs_claim_v2
    user_limit: int | None = None
    org_limit: int | None = None
    key_limit: int | None = None
    keys: int = 0  # distinct concurrency keys (0: none)
    orgs: int = 0  # users are spread over this many organizations (0: none); keys are shared per organization
    share: float = 1.0  # of --jobs: a scenario held to 2 running jobs needs fewer to measure


SCENARIOS = [
    Scenario("v1, no limits", "ai_jobs_claim_v1"),
    Scenario("no limits", "ai_jobs_claim_v2"),
    Scenario("huge limits", "ai_jobs_claim_v2", 10000, 10000, 10000, keys=1000, orgs=10),
    Scenario("1,000 keys, limit 2", "ai_jobs_claim_v2", 10000, None, 2, keys=1000, orgs=10),
    Scenario("one hot key, huge limit", "ai_jobs_claim_v2", 10000, None, 10000, keys=1, orgs=1),
    Scenario("one hot key, limit 2", "ai_jobs_claim_v2", 10000, None, 2, keys=1, orgs=1, share=0.2),
]


def worker_main(database_url: str, claim: str, go: Path) -> None:
    """One worker process: wait for the start file, then claim/run/complete until stopped."""
    import threading

    import bench.noop_jobs  # noqa: F401 - registers bench.noop
    from ai_jobs.registry import registry
    from ai_jobs.runner import Runner
    from ai_jobs.store import base
    from ai_jobs.store.postgres import PostgresStore

    base.CLAIM = base.SqlFunction(claim)  # the scenario's claim function
    stop = threading.Event()
    with PostgresStore(database_url, max_size=2) as store:
        runner = Runner(store, registry, lease_seconds=60, stopping=stop)
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.005)
        while True:  # until the benchmark kills it, once every job is done
            if not runner.run_available(max_jobs=BATCH, batch=BATCH):
                time.sleep(0.005)  # nothing claimable: as `ai-jobs worker --poll-interval` would, but shorter


def enqueue(conn: psycopg.Connection, scenario: Scenario, users: list[str], jobs: int) -> None:
    conn.execute(
        "insert into public.ai_jobs (user_id, job_type, input, org_id, concurrency_key, user_limit, org_limit, key_limit) "
        "select (%(users)s::uuid[])[1 + i %% %(n)s], 'bench.noop', jsonb_build_object('n', i), "
        "case when %(orgs)s > 0 then 'org-' || ((i %% %(n)s) %% greatest(%(orgs)s, 1)) end, "
        "case when %(keys)s > 0 then 'key:' || (i %% %(keys)s) end, %(ul)s, %(ol)s, %(kl)s "
        "from generate_series(1, %(jobs)s) i",
        {"users": users, "n": len(users), "orgs": scenario.orgs, "keys": scenario.keys, "ul": scenario.user_limit,
         "ol": scenario.org_limit if scenario.orgs else None, "kl": scenario.key_limit if scenario.keys else None,
         "jobs": jobs},
    )
    conn.execute("analyze public.ai_jobs")


def run(database_url: str, scenario: Scenario, workers: int, users: list[str], jobs: int, tmp: Path) -> dict[str, float]:
    jobs = max(100, int(jobs * scenario.share))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from public.ai_jobs")
        conn.execute("vacuum analyze public.ai_jobs")
        enqueue(conn, scenario, users, jobs)
        go = tmp / f"go-{time.monotonic_ns()}"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'shared' / 'src'}"}
        procs = [
            subprocess.Popen([PY, __file__, "--worker", database_url, scenario.claim, str(go)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(workers)
        ]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        start = time.monotonic()
        samples: list[tuple[float, int]] = []
        max_running = 0
        while True:
            left, running = conn.execute(
                "select count(*) filter (where status in ('pending', 'running')), "
                "count(*) filter (where status = 'running') from public.ai_jobs").fetchone()
            samples.append((time.monotonic() - start, left))
            max_running = max(max_running, running)
            if left == 0 or time.monotonic() - start > 120:
                break
            time.sleep(0.02)
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
        done = conn.execute("select count(*) from public.ai_jobs where status = 'completed'").fetchone()[0]
        over = conn.execute("select count(*) from public.ai_jobs where status <> 'completed'").fetchone()[0]
    hi = next(s for s in samples if s[1] <= 0.9 * jobs)
    lo = next(s for s in samples if s[1] <= 0.1 * jobs)
    rate = (hi[1] - lo[1]) / max(lo[0] - hi[0], 1e-6)
    return {"jobs_per_s": rate, "wall_s": samples[-1][0], "completed": done, "not_completed": over,
            "max_running_sampled": max_running, "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=4000)
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker[0], args.worker[1], Path(args.worker[2]))
        return 0

    from bench._throwaway_db import throwaway_database

    with throwaway_database("cl") as database, tempfile.TemporaryDirectory(prefix="ai-jobs-claim-bench-") as tmp:
        url = database.url
        with psycopg.connect(url, autocommit=True) as conn:
            users = [str(r[0]) for r in conn.execute(
                "insert into auth.users (id) select gen_random_uuid() from generate_series(1, %s) returning id",
                (args.users,))]
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(args.repeat):
            for scenario in SCENARIOS:
                for workers in args.workers:
                    r = run(url, scenario, workers, users, args.jobs, Path(tmp))
                    results.setdefault((scenario.name, workers), []).append(r)
                    print(f"{scenario.name:26} {workers} workers: {r['jobs_per_s']:7.0f} jobs/s "
                          f"(max running sampled {r['max_running_sampled']:.0f}, completed {r['completed']:.0f}"
                          f"/{r['jobs']:.0f})", file=sys.stderr, flush=True)
    print(f"\n{args.jobs} no-op jobs ({max(100, int(args.jobs * 0.2))} for the limit-2 hot key) over {args.users} "
          f"users, batch {BATCH}, "
          f"median of {args.repeat}\n")
    print("| scenario | workers | jobs/s, median (min–max) | vs `no limits`, same round (median) | max running seen |")
    print("|---|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        for workers in args.workers:
            rates = [r["jobs_per_s"] for r in results[(scenario.name, workers)]]
            # the machine is noisy: compare with the baseline measured in the same round
            ratios = [r / b["jobs_per_s"] for r, b in zip(rates, results[("no limits", workers)])]
            seen = max(r["max_running_sampled"] for r in results[(scenario.name, workers)])
            print(f"| {scenario.name} | {workers} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) "
                  f"| {statistics.median(ratios):.2f}× | {seen:.0f} |")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(REPO), str(REPO / "shared" / "src")]
    sys.exit(main())
