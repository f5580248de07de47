"""Queue throughput with finished rows retained, and what the retention purge does.

    .venv/bin/python bench/retention.py [--retained 1000000] [--jobs 10000] [--workers 4] [--repeat 3]

One throwaway embedded PostgreSQL (the `pgserver` wheel), the ai-jobs schema, and
the harness of bench/throughput.py (same workers, start gate and steady-state
window). Three phases, each measured --repeat times (median, min-max):

1. **empty**: no finished rows in `ai_jobs`.
2. **retained**: --retained completed jobs inserted and ANALYZEd: finished evenly
   over the last 60 days (so half are past the 30-day retention), 1,000 users,
   input and result as small JSON objects (a 200-character string in the result).
3. **after purge**: `ai_jobs_purge_v1` called with its default limit (1,000 rows per
   call, what one sweep does) until it deletes nothing (the half past retention),
   then a plain VACUUM ANALYZE.
4. **churn, no vacuum**: the same runs with autovacuum off for `ai_jobs` and no
   VACUUM between them, so the dead row versions of every run stay (the worst
   case of autovacuum falling behind).

Between runs the benchmark's own no-op jobs are deleted and the table VACUUMed, as
in bench/throughput.py. Also reported: table and index sizes, dead tuples (the
statistics' estimate), the share of HOT updates, the database server's CPU time
per job (all its processes, from /proc: enqueue, claim, completion and the
harness's sampling), WAL written per job (enqueue,
claim, completion, and the full-page images after the harness's CHECKPOINT, so an
upper bound), the purge's time per call and in total, and the VACUUM.
About 2 to 4 minutes here. Results: a summary on stdout and bench/results/retention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import throughput as tp  # noqa: E402 - the shared harness

USERS = 1000
INSERT_CHUNK = 100_000


class RetainedAiJobs(tp.AiJobs):
    """ai-jobs as bench/throughput.py runs it, except that only the benchmark's own
    no-op jobs are counted and cleaned: the retained rows stay."""

    succeeded_sql = "select count(*) from public.ai_jobs where status = 'completed' and job_type = 'bench.noop'"

    def clean(self) -> None:
        self.sql("delete from public.ai_jobs where job_type = 'bench.noop'")


def table_stats(uri: str) -> dict[str, Any]:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("select pg_stat_force_next_flush()")
        row = conn.execute(
            "select pg_relation_size('public.ai_jobs'), pg_indexes_size('public.ai_jobs'), "
            "pg_total_relation_size('public.ai_jobs'), s.n_live_tup, s.n_dead_tup, s.n_tup_upd, s.n_tup_hot_upd, "
            "s.autovacuum_count, s.vacuum_count "
            "from pg_stat_user_tables s where s.relid = 'public.ai_jobs'::regclass"
        ).fetchone()
        live = conn.execute("select count(*) from public.ai_jobs").fetchone()[0]  # type: ignore[index]
        indexes = dict(conn.execute(
            "select indexrelname, pg_relation_size(indexrelid) from pg_stat_user_indexes "
            "where relid = 'public.ai_jobs'::regclass order by 1"
        ).fetchall())
    assert row is not None
    keys = ("heap_bytes", "index_bytes", "total_bytes", "live_tuples", "dead_tuples", "updates", "hot_updates",
            "autovacuums", "vacuums")
    return {**dict(zip(keys, row)), "live_tuples": live, "index_bytes_each": indexes}


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class ServerCpu:
    """CPU seconds used by one PostgreSQL server: the postmaster, its live children
    and (through cutime/cstime) the backends that have exited. Linux /proc only."""

    def __init__(self, data_dir: Path) -> None:
        self.postmaster = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
        self.tick = os.sysconf("SC_CLK_TCK")

    def _stat(self, pid: int) -> list[str] | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    def seconds(self) -> float:
        total = 0
        main = self._stat(self.postmaster)
        if main is None:
            return float("nan")
        total += sum(int(v) for v in main[11:15])  # utime, stime, cutime, cstime
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = self._stat(int(entry.name))
                if fields is not None and int(fields[1]) == self.postmaster:
                    total += int(fields[11]) + int(fields[12])
        return total / self.tick


def insert_retained(uri: str, count: int) -> float:
    """`count` completed jobs finished evenly over the last 60 days, in chunks; returns seconds."""
    started = time.perf_counter()
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("create temporary table bench_users as "
                     "select gen_random_uuid() as id from generate_series(1, %s)", (USERS,))
        conn.execute("insert into auth.users (id) select id from bench_users")
        users = [r[0] for r in conn.execute("select id from bench_users").fetchall()]
        for start in range(0, count, INSERT_CHUNK):
            n = min(INSERT_CHUNK, count - start)
            conn.execute(
                """
                insert into public.ai_jobs (user_id, job_type, status, input, result, attempts, created_at,
                                            started_at, finished_at, updated_at)
                select (%(users)s::uuid[])[1 + (i %% %(nusers)s::int)], 'bench.retained', 'completed',
                       jsonb_build_object('n', i), jsonb_build_object('n', i, 'summary', repeat('x', 200)), 1,
                       t, t, t + interval '2 seconds', t + interval '2 seconds'
                from (select i, now() - interval '60 days' + (i::float8 / %(count)s::int) * interval '59 days' as t
                      from generate_series(%(lo)s::int, %(hi)s::int) i) g
                """,
                {"users": users, "nusers": USERS, "count": count, "lo": start + 1, "hi": start + n},
            )
            print(f"  retained rows: {start + n:,}", flush=True)
        conn.execute("vacuum analyze public.ai_jobs")
    return time.perf_counter() - started


def purge_all(uri: str) -> dict[str, Any]:
    """ai_jobs_purge_v1 with its defaults (1,000 rows a call) until nothing is left."""
    calls: list[float] = []
    deleted = 0
    with psycopg.connect(uri, autocommit=True) as conn:
        started = time.perf_counter()
        while True:
            t = time.perf_counter()
            n = conn.execute("select public.ai_jobs_purge_v1()").fetchone()[0]  # type: ignore[index]
            calls.append(time.perf_counter() - t)
            deleted += n
            if n == 0:
                break
        total = time.perf_counter() - started
    per_call = sorted(calls[:-1]) or [0.0]
    return {"deleted": deleted, "calls": len(calls) - 1, "total_s": round(total, 2),
            "per_call_ms_p50": round(statistics.median(per_call) * 1000, 1),
            "per_call_ms_p95": round(per_call[int(0.95 * (len(per_call) - 1))] * 1000, 1),
            "rows_per_s": round(deleted / total) if total else None}


def vacuum(uri: str) -> float:
    with psycopg.connect(uri, autocommit=True) as conn:
        t = time.perf_counter()
        conn.execute("vacuum analyze public.ai_jobs")
        return time.perf_counter() - t


def measure(system: RetainedAiJobs, phase: str, args: argparse.Namespace, tp_args: argparse.Namespace,
            log_dir: Path, cpu: ServerCpu, *, vacuum_between: bool = True) -> list[dict[str, Any]]:
    runs = []
    for repeat in range(args.repeat):
        for n in args.workers:
            with psycopg.connect(system.uri, autocommit=True) as conn:
                lsn = conn.execute("select pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            cpu_before = cpu.seconds()
            r = tp.run_once(system, n, args.jobs, tp_args, log_dir, repeat)
            cpu_used = cpu.seconds() - cpu_before
            with psycopg.connect(system.uri, autocommit=True) as conn:
                wal = conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()[0]  # type: ignore[index]
            runs.append({"phase": phase, "workers": n, "repeat": repeat, "status": r.status,
                         "jobs_per_s": r.steady_jobs_per_s, "enqueue_s": r.enqueue_s, "succeeded": r.succeeded,
                         "wal_bytes_per_job": round(float(wal) / args.jobs),
                         "db_cpu_us_per_job": round(cpu_used / args.jobs * 1e6),
                         "load_avg_before": r.load_avg_before, "error": r.error})
            print(f"  {phase}, {n} worker(s), run {repeat + 1}: {r.status}, steady {tp.fmt(r.steady_jobs_per_s)} "
                  f"jobs/s, enqueue of {args.jobs:,} {r.enqueue_s:.2f} s, WAL {float(wal) / args.jobs:,.0f} B/job, "
                  f"database CPU {cpu_used / args.jobs * 1e6:,.0f} µs/job, load {os.getloadavg()[0]:.2f}"
                  + (f" — {r.error}" if r.error else ""), flush=True)
            system.clean()
            if vacuum_between:
                system.vacuum()
            else:
                runs[-1]["dead_tuples_after"] = table_stats(system.uri)["dead_tuples"]
    return runs


def summary(runs: list[dict[str, Any]], phase: str, workers: int) -> str:
    values = [r["jobs_per_s"] for r in runs if r["phase"] == phase and r["workers"] == workers and r["jobs_per_s"]]
    enq = [r["enqueue_s"] for r in runs if r["phase"] == phase and r["workers"] == workers and r["enqueue_s"]]
    wal = [r["wal_bytes_per_job"] for r in runs if r["phase"] == phase and r["workers"] == workers]
    cpu = [r["db_cpu_us_per_job"] for r in runs if r["phase"] == phase and r["workers"] == workers]
    loads = [r["load_avg_before"][0] for r in runs if r["phase"] == phase and r["workers"] == workers]
    if not values:
        return f"| {phase} | {workers} | — | — | — | — | — |"
    return (f"| {phase} | {workers} | {statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f}) "
            f"| {statistics.median(enq):.2f} | {statistics.median(wal):,.0f} | {statistics.median(cpu):,.0f} "
            f"| {min(loads):.2f}–{max(loads):.2f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--retained", type=int, default=1_000_000, help="finished rows kept in ai_jobs")
    p.add_argument("--jobs", type=int, default=10_000, help="no-op jobs per throughput run")
    p.add_argument("--workers", type=int, nargs="+", default=[4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "retention.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tp_args = tp.parse_args(["--jobs", str(args.jobs)])  # the harness defaults (gate, sampling, timeouts)
    from bench._throwaway_db import throwaway_database

    stack = ExitStack()
    database = stack.enter_context(throwaway_database("rt", migrated=False))  # the harness's install migrates
    log_dir = Path(tempfile.mkdtemp(prefix="rtlogs", dir="/tmp"))
    started = time.perf_counter()
    out: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    try:
        uri = database.url
        with psycopg.connect(uri, autocommit=True) as conn:
            out["postgres"] = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
            out["autovacuum"] = conn.execute("show autovacuum").fetchone()[0]  # type: ignore[index]
        system = RetainedAiJobs(uri, tp.Options(tp_args.ai_jobs_batch, tp_args.ai_jobs_poll_interval,
                                                tp_args.pgq_batch_size, tp_args.procrastinate_concurrency))
        system.install()
        print(f"embedded PostgreSQL {out['postgres']}; ai-jobs worker {json.dumps(system.settings)}", flush=True)

        cpu = ServerCpu(database.data_dir)
        runs = measure(system, "empty", args, tp_args, log_dir, cpu)
        out["stats_empty"] = table_stats(uri)

        print(f"inserting {args.retained:,} finished jobs ...", flush=True)
        out["insert_retained_s"] = round(insert_retained(uri, args.retained), 1)
        out["stats_retained"] = table_stats(uri)
        runs += measure(system, "retained", args, tp_args, log_dir, cpu)
        out["stats_retained_after_runs"] = table_stats(uri)

        print("purging (ai_jobs_purge_v1 defaults, until it deletes nothing) ...", flush=True)
        out["purge"] = purge_all(uri)
        out["stats_after_purge"] = table_stats(uri)
        out["vacuum_after_purge_s"] = round(vacuum(uri), 2)
        out["stats_after_purge_vacuum"] = table_stats(uri)
        runs += measure(system, "after purge", args, tp_args, log_dir, cpu)
        out["stats_end"] = table_stats(uri)

        print("churn with autovacuum off for ai_jobs and no VACUUM between runs ...", flush=True)
        system.sql("alter table public.ai_jobs set (autovacuum_enabled = false)")
        runs += measure(system, "churn, no vacuum", args, tp_args, log_dir, cpu, vacuum_between=False)
        out["stats_churn"] = table_stats(uri)
        system.sql("alter table public.ai_jobs reset (autovacuum_enabled)")
        out["vacuum_after_churn_s"] = round(vacuum(uri), 2)
        out["runs"] = runs
    finally:
        stack.close()
        shutil.rmtree(log_dir, ignore_errors=True)
    out["total_s"] = round(time.perf_counter() - started, 1)

    print()
    print(f"| phase | workers | jobs/s, median of {args.repeat} (min–max) | enqueue {args.jobs:,} s (median) "
          "| WAL B/job | database CPU µs/job | load before runs |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for phase in ("empty", "retained", "after purge", "churn, no vacuum"):
        for n in args.workers:
            print(summary(out["runs"], phase, n))
    print()
    print("| state | heap | indexes | live rows | dead rows |")
    print("|---|---:|---:|---:|---:|")
    for key in ("stats_empty", "stats_retained", "stats_after_purge", "stats_after_purge_vacuum", "stats_end",
                "stats_churn"):
        s = out[key]
        print(f"| {key.removeprefix('stats_')} | {mb(s['heap_bytes'])} | {mb(s['index_bytes'])} | "
              f"{s['live_tuples']:,} | {s['dead_tuples']:,} |")
    s = out["stats_empty"]
    print()
    print(f"inserting {args.retained:,} rows: {out['insert_retained_s']} s; purge: {json.dumps(out['purge'])}; "
          f"VACUUM after purge: {out['vacuum_after_purge_s']} s")
    print(f"HOT updates in the empty phase: {s['hot_updates']:,} of {s['updates']:,}")
    churn = [r.get("dead_tuples_after") for r in out["runs"] if r["phase"] == "churn, no vacuum"]
    print(f"dead tuples after each churn run: {churn}; VACUUM then: {out['vacuum_after_churn_s']} s")
    print("index sizes with the rows retained: " + ", ".join(f"{k} {mb(v)}" for k, v in
                                                            out["stats_retained"]["index_bytes_each"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"raw results: {args.json} ({out['total_s']} s)")
    return 0 if all(r["status"] == "ok" for r in out["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
