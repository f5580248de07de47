"""Side-by-side queue throughput: ai-jobs vs PgQueuer, Procrastinate, pgmq and DBOS.

    .venv/bin/python bench/throughput.py --jobs 20000 --workers 1 2 4
    .venv/bin/python bench/throughput.py --ai-jobs-variant before=/tmp/old/shared/src ...

One throwaway embedded PostgreSQL (the `pgserver` wheel) holds every system's
schema. First, enqueue throughput: --enqueue-jobs jobs one call each (single) and
through each system's bulk API (bulk), timed from this process. Then, round by
round, for every worker count N and, back to back, every system (so the runs whose
ratio is reported ran seconds apart on a machine whose load drifts):

1. M no-op jobs are enqueued in bulk (not timed), then the table is ANALYZEd
   and a CHECKPOINT is taken so that no run inherits the previous run's I/O.
2. A start gate: the benchmark holds an ACCESS EXCLUSIVE lock on the system's
   queue table while N worker processes start. Once every worker has a backend
   waiting on that lock (matched by application_name), or after --gate-timeout,
   the lock is released, so all N workers begin together and interpreter
   start-up is not mixed into the measurement.
3. From this process, the number of unfinished jobs is sampled every
   --sample-interval seconds. Steady-state throughput is the number of jobs
   finished between the first sample below 95 % of M and the first sample
   below 5 % of M, divided by the time between those two samples.
4. Workers get SIGTERM, then SIGKILL after a grace period; the queue tables are
   emptied and VACUUMed.

Each worker is a separate OS process: `python -m ai_jobs.cli worker`,
`python -m procrastinate worker`, for PgQueuer `bench/competitors/pgqueuer_worker.py`,
which calls `pgqueuer.run()` exactly as `pgq run` does (that CLI fails to start
with the typer release installed here), for pgmq `bench/competitors/pgmq_worker.py`
(read a batch, archive it) and for DBOS `bench/competitors/dbos_app.py`.
pgmq's SQL is installed from the `pgmq` PyPI package (it ships the extension's SQL
as package data: `pgmq.install.install_pgmq_from_sql`), no extension build needed.

`--ai-jobs-variant NAME=SRC` adds "ai-jobs@NAME": the same worker run from another
copy of the package (SRC is the folder holding `ai_jobs`, e.g. `git archive`d from an
older commit), so before/after figures come from the same run and database.
The load average (`os.getloadavg()`) is recorded before and after every run.

Results: a markdown table on stdout, bench/results/throughput.json (raw, with
the samples) and bench/throughput.png (needs matplotlib; skipped without it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PY = sys.executable

MIN_INTERVALS = 10  # fewer sample intervals in the steady-state window: coarse figure
SYSTEMS = ("ai-jobs", "pgqueuer", "procrastinate", "pgmq", "dbos")
LABELS = {"ai-jobs": "ai-jobs", "pgqueuer": "PgQueuer", "procrastinate": "Procrastinate", "pgmq": "pgmq",
          "dbos": "DBOS"}


# -- helpers -----------------------------------------------------------------------------


def with_params(uri: str, **params: str) -> str:
    """Add query parameters (e.g. application_name) to a postgresql:// URI."""
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def base_env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AI_JOBS_", "DATABASE_URL", "PROCRASTINATE_"))}
    pythonpath = [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update({"PYTHONPATH": os.pathsep.join(pythonpath), "BENCH_PG_DSN": uri, "PYTHONUNBUFFERED": "1"})
    return env


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# -- the three systems -------------------------------------------------------------------


@dataclass
class Options:
    ai_jobs_batch: int
    ai_jobs_poll_interval: float
    pgq_batch_size: int
    procrastinate_concurrency: int
    pgmq_batch_size: int = 10
    dbos_worker_concurrency: int = 100
    dbos_polling_interval: float = 0.01
    ai_jobs_concurrency: int = 1


class System:
    key = ""
    queue_table = ""  # locked by the start gate; also ANALYZEd / VACUUMed
    extra_tables: tuple[str, ...] = ()
    remaining_sql = ""
    succeeded_sql = ""  # checked after each run: every job really ran

    def __init__(self, uri: str, opts: Options) -> None:
        self.uri = uri
        self.opts = opts
        self.settings: dict[str, Any] = {}

    def install(self) -> None: ...

    def enqueue(self, m: int) -> None: ...

    def enqueue_single(self, m: int) -> None:
        """m jobs, one client call (and commit) each, through the system's own API."""
        raise NotImplementedError

    def enqueue_bulk(self, m: int) -> None:
        """m jobs through the system's bulk API."""
        raise NotImplementedError

    def clean(self) -> None: ...

    def worker_argv(self) -> list[str]:
        raise NotImplementedError

    def worker_env(self, app_uri: str) -> dict[str, str]:
        return base_env(app_uri)

    def sql(self, statement: str, params: Any = None) -> None:
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(statement, params)

    def vacuum(self, full: bool = False) -> None:
        with psycopg.connect(self.uri, autocommit=True) as conn:
            for table in (self.queue_table, *self.extra_tables):
                conn.execute(f"vacuum {'full ' if full else ''}analyze {table}")


class AiJobs(System):
    key = "ai-jobs"
    source = ""  # another copy of the package to run (a variant), else this checkout
    concurrency: int | None = None  # loops per process (--concurrency), else Options.ai_jobs_concurrency
    queue_table = "public.ai_jobs"
    remaining_sql = "select count(*) from public.ai_jobs where status in ('pending', 'running')"
    succeeded_sql = "select count(*) from public.ai_jobs where status = 'completed'"

    def install(self) -> None:
        from ai_jobs.database.migrations import migrate

        migrate(self.uri)  # idempotent: variants share the schema
        with psycopg.connect(self.uri, autocommit=True) as conn:
            row = conn.execute("insert into auth.users (id) values (gen_random_uuid()) returning id").fetchone()
        assert row is not None
        self.user_id = row[0]
        help_text = subprocess.run(
            [PY, "-m", "ai_jobs.cli", "worker", "--help"],
            cwd=REPO, env=self.worker_env(self.uri), capture_output=True, text=True, timeout=60,
        ).stdout
        self.batch_supported = "--batch" in help_text
        self.concurrency_supported = "--concurrency" in help_text
        self.settings = {
            "command": "python -m ai_jobs.cli worker",
            "source": self.source or "this checkout",
            "poll_interval": self.opts.ai_jobs_poll_interval,
            "batch": self.opts.ai_jobs_batch if self.batch_supported else None,
            "batch_option_available": self.batch_supported,
            "concurrency": self.loops if self.concurrency_supported else None,
        }

    def enqueue(self, m: int) -> None:
        self.sql(
            "insert into public.ai_jobs (user_id, job_type, input) "
            "select %s, 'bench.noop', jsonb_build_object('n', i) from generate_series(1, %s) i",
            (self.user_id, m),
        )

    def _new_jobs(self, m: int) -> list[Any]:
        from ai_jobs.models import NewJob

        return [NewJob(user_id=self.user_id, job_type="bench.noop", input={"n": i}) for i in range(m)]

    def enqueue_single(self, m: int) -> None:
        from ai_jobs.store.postgres import PostgresStore

        with PostgresStore(self.uri, max_size=1) as store:
            for job in self._new_jobs(m):
                store.enqueue(job)

    def enqueue_bulk(self, m: int) -> None:
        from ai_jobs.store.postgres import PostgresStore

        jobs = self._new_jobs(m)
        with PostgresStore(self.uri, max_size=1) as store:
            for start in range(0, m, 1000):
                store.enqueue_many(jobs[start:start + 1000])

    def clean(self) -> None:
        self.sql("delete from public.ai_jobs")

    @property
    def loops(self) -> int:
        return self.concurrency if self.concurrency is not None else self.opts.ai_jobs_concurrency

    def worker_argv(self) -> list[str]:
        argv = [PY, "-m", "ai_jobs.cli", "worker", "--poll-interval", str(self.opts.ai_jobs_poll_interval)]
        if self.batch_supported:
            argv += ["--batch", str(self.opts.ai_jobs_batch)]
        if self.loops != 1:
            if not self.concurrency_supported:
                raise RuntimeError(f"{self.source or 'this checkout'}: ai-jobs worker has no --concurrency")
            argv += ["--concurrency", str(self.loops)]
        return argv

    def worker_env(self, app_uri: str) -> dict[str, str]:
        env = base_env(app_uri)
        if self.source:
            env["PYTHONPATH"] = os.pathsep.join([self.source, env["PYTHONPATH"]])
        env.update({
            "DATABASE_URL": app_uri,
            "AI_JOBS_STORE": "postgres",
            "AI_JOBS_JOB_MODULES": "bench.noop_jobs",
            "AI_JOBS_DEMO_JOB_TYPES": "1",  # bench.noop is a demo type
        })
        return env


class PgQueuerSystem(System):
    key = "pgqueuer"
    queue_table = "pgqueuer"
    extra_tables = ("pgqueuer_log", "pgqueuer_statistics")
    # Finished jobs are moved to pgqueuer_log; 'failed' rows stay held in the queue table.
    remaining_sql = "select count(*) from pgqueuer where status in ('queued', 'picked')"
    succeeded_sql = "select count(distinct job_id) from pgqueuer_log where status = 'successful'"

    def install(self) -> None:
        # PgQueuer's documented installer: `pgq install` (default durability: durable,
        # i.e. logged tables like the other two systems).
        subprocess.run([PY, "-m", "pgqueuer", "--pg-dsn", self.uri, "install"],
                       cwd=REPO, env=base_env(self.uri), check=True, capture_output=True, text=True, timeout=120)
        self.settings = {
            "command": "python -m bench.competitors.pgqueuer_worker (pgqueuer.run(), what `pgq run` calls)",
            "driver": "asyncpg (AsyncpgDriver, one connection per worker)",
            "batch_size": self.opts.pgq_batch_size,
            "event_loop": "uvloop" if _has("uvloop") else "asyncio",
            "durability": "durable (default)",
        }

    async def _queries(self) -> tuple[Any, Any]:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(self.uri)
        return conn, Queries(AsyncpgDriver(conn))

    def enqueue(self, m: int) -> None:
        from bench.competitors.pgqueuer_app import ENTRYPOINT

        async def go() -> None:
            conn, queries = await self._queries()
            try:
                for start in range(0, m, 5000):
                    k = min(5000, m - start)
                    await queries.enqueue([ENTRYPOINT] * k, [str(start + i).encode() for i in range(k)], [0] * k)
            finally:
                await conn.close()

        asyncio.run(go())

    def enqueue_single(self, m: int) -> None:
        from bench.competitors.pgqueuer_app import ENTRYPOINT

        async def go() -> None:
            conn, queries = await self._queries()
            try:
                for i in range(m):
                    await queries.enqueue(ENTRYPOINT, str(i).encode(), 0)
            finally:
                await conn.close()

        asyncio.run(go())

    def enqueue_bulk(self, m: int) -> None:
        self.enqueue(m)

    def clean(self) -> None:
        async def go() -> None:
            conn, queries = await self._queries()
            try:
                await queries.clear_queue()
                await queries.clear_queue_log()
                await queries.clear_statistics_log()
            finally:
                await conn.close()

        asyncio.run(go())

    def worker_argv(self) -> list[str]:
        return [PY, "-m", "bench.competitors.pgqueuer_worker", "--batch-size", str(self.opts.pgq_batch_size)]


class ProcrastinateSystem(System):
    key = "procrastinate"
    queue_table = "procrastinate_jobs"
    extra_tables = ("procrastinate_events",)
    remaining_sql = "select count(*) from procrastinate_jobs where status in ('todo', 'doing')"
    succeeded_sql = "select count(*) from procrastinate_jobs where status = 'succeeded'"

    APP = "bench.competitors.procrastinate_app.app"

    def pool_size(self) -> int:
        # every sub-worker can hold a connection, plus LISTEN and side tasks
        return self.opts.procrastinate_concurrency + 2

    def install(self) -> None:
        # Procrastinate's documented installer: `procrastinate schema --apply`.
        subprocess.run([PY, "-m", "procrastinate", "--app", self.APP, "schema", "--apply"],
                       cwd=REPO, env=self.worker_env(self.uri), check=True, capture_output=True, text=True,
                       timeout=120)
        self.settings = {
            "command": f"python -m procrastinate --app {self.APP} worker",
            "connector": "PsycopgConnector (psycopg_pool.AsyncConnectionPool)",
            "pool_max_size": self.pool_size(),
            "concurrency": self.opts.procrastinate_concurrency,
            "listen_notify": True,
            "delete_jobs": "never (default)",
            "task": "async def",
        }

    def enqueue(self, m: int) -> None:
        os.environ["BENCH_PG_DSN"] = self.uri
        from bench.competitors.procrastinate_app import app, bench_noop

        async def go() -> None:
            async with app.open_async():
                for start in range(0, m, 5000):
                    await bench_noop.batch_defer_async(*({"n": start + i} for i in range(min(5000, m - start))))

        asyncio.run(go())

    def enqueue_single(self, m: int) -> None:
        os.environ["BENCH_PG_DSN"] = self.uri
        from bench.competitors.procrastinate_app import app, bench_noop

        async def go() -> None:
            async with app.open_async():
                for i in range(m):
                    await bench_noop.defer_async(n=i)

        asyncio.run(go())

    def enqueue_bulk(self, m: int) -> None:
        self.enqueue(m)

    def clean(self) -> None:
        # events go with their jobs (ON DELETE CASCADE); SIGKILLed workers may leave rows behind
        self.sql("delete from procrastinate_jobs")
        self.sql("delete from procrastinate_workers")

    def worker_argv(self) -> list[str]:
        return [PY, "-m", "procrastinate", "--app", self.APP, "worker",
                "--concurrency", str(self.opts.procrastinate_concurrency)]

    def worker_env(self, app_uri: str) -> dict[str, str]:
        env = base_env(app_uri)
        env["BENCH_PROCRASTINATE_POOL"] = str(self.pool_size())
        return env


class PgmqSystem(System):
    key = "pgmq"
    queue_table = "pgmq.q_bench"
    extra_tables = ("pgmq.a_bench",)
    remaining_sql = "select count(*) from pgmq.q_bench"
    succeeded_sql = "select count(*) from pgmq.a_bench"

    def _queue(self) -> Any:
        from bench.competitors.pgmq_worker import open_queue

        return open_queue(self.uri)

    def install(self) -> None:
        # pgmq as plain SQL, from the SQL file its PyPI package ships (no extension build)
        from pgmq.install import get_embedded_sql_version, install_pgmq_from_sql

        with psycopg.connect(self.uri) as conn:  # the client parses URIs without ?host= (our socket)
            install_pgmq_from_sql(conn=conn)
            conn.commit()
        queue = self._queue()
        try:
            queue.create_queue("bench")
        finally:
            queue.pool.close()
        self.settings = {
            "command": "python -m bench.competitors.pgmq_worker (read batch, archive batch)",
            "sql": f"pgmq {get_embedded_sql_version()} from the pgmq {version_of('pgmq')} package (plain SQL)",
            "batch_size": self.opts.pgmq_batch_size,
            "visibility_timeout_s": 30,
            "idle": "read_with_poll, 10 ms interval",
        }

    def enqueue(self, m: int) -> None:
        self.enqueue_bulk(m)

    def enqueue_single(self, m: int) -> None:
        queue = self._queue()
        try:
            for i in range(m):
                queue.send("bench", {"n": i})
        finally:
            queue.pool.close()

    def enqueue_bulk(self, m: int) -> None:
        queue = self._queue()
        try:
            for start in range(0, m, 1000):
                queue.send_batch("bench", [{"n": start + i} for i in range(min(1000, m - start))])
        finally:
            queue.pool.close()

    def clean(self) -> None:
        self.sql("select pgmq.purge_queue('bench')")
        self.sql("truncate pgmq.a_bench")

    def worker_argv(self) -> list[str]:
        return [PY, "-m", "bench.competitors.pgmq_worker", "--batch-size", str(self.opts.pgmq_batch_size)]


class DbosSystem(System):
    key = "dbos"
    queue_table = "dbos.workflow_status"
    remaining_sql = ("select count(*) from dbos.workflow_status "
                     "where queue_name = 'bench' and status in ('ENQUEUED', 'PENDING')")
    succeeded_sql = "select count(*) from dbos.workflow_status where queue_name = 'bench' and status = 'SUCCESS'"

    def install(self) -> None:
        subprocess.run([PY, "-m", "bench.competitors.dbos_app", "--install",
                        "--worker-concurrency", str(self.opts.dbos_worker_concurrency),
                        "--polling-interval", str(self.opts.dbos_polling_interval)],
                       cwd=REPO, env=base_env(self.uri), check=True, capture_output=True, text=True, timeout=120)
        self.settings = {
            "command": "python -m bench.competitors.dbos_app (DBOS.launch(), queue 'bench')",
            "workflow": "no-op @DBOS.workflow, no steps",
            "worker_concurrency": self.opts.dbos_worker_concurrency,
            "polling_interval_sec": self.opts.dbos_polling_interval,
            "executor_id": "one per process",
        }

    def _client(self) -> Any:
        from dbos import DBOSClient

        return DBOSClient(system_database_url=self.uri)

    def _options(self) -> dict[str, Any]:
        from bench.competitors.dbos_app import APP, QUEUE, VERSION

        return {"queue_name": QUEUE, "workflow_name": "bench_noop", "app_version": VERSION, "application_name": APP}

    def enqueue(self, m: int) -> None:
        self.enqueue_bulk(m)

    def enqueue_single(self, m: int) -> None:
        client = self._client()
        try:
            options = self._options()
            for i in range(m):
                client.enqueue(options, i)  # type: ignore[arg-type]
        finally:
            client.destroy()

    def enqueue_bulk(self, m: int) -> None:
        # DBOS has no bulk enqueue: many enqueues in one transaction is its closest form
        client = self._client()
        try:
            options = self._options()
            engine = client._sys_db.engine
            for start in range(0, m, 1000):
                with engine.begin() as conn:
                    for i in range(start, min(start + 1000, m)):
                        client.enqueue_in_transaction(conn, options, i)  # type: ignore[arg-type]
        finally:
            client.destroy()

    def clean(self) -> None:
        self.sql("delete from dbos.workflow_status where queue_name = 'bench'")

    def worker_argv(self) -> list[str]:
        return [PY, "-m", "bench.competitors.dbos_app",
                "--worker-concurrency", str(self.opts.dbos_worker_concurrency),
                "--polling-interval", str(self.opts.dbos_polling_interval)]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def make_system(key: str, uri: str, opts: Options) -> System:
    classes = {"ai-jobs": AiJobs, "pgqueuer": PgQueuerSystem, "procrastinate": ProcrastinateSystem,
               "pgmq": PgmqSystem, "dbos": DbosSystem}
    return classes[key](uri, opts)


def make_variant(name: str, source: str, uri: str, opts: Options) -> AiJobs:
    system = AiJobs(uri, opts)
    system.key = f"ai-jobs@{name}"
    system.source = str(Path(source).resolve())
    LABELS[system.key] = system.key
    return system


def make_concurrency_variant(loops: int, uri: str, opts: Options) -> AiJobs:
    """This checkout's worker with --concurrency `loops`, as its own system in the run."""
    system = AiJobs(uri, opts)
    system.key = f"ai-jobs-c{loops}"  # ASCII: it goes into application_name
    system.concurrency = loops
    LABELS[system.key] = f"ai-jobs --concurrency {loops}"
    return system


# -- one run -----------------------------------------------------------------------------


@dataclass
class RunResult:
    system: str
    workers: int
    jobs: int
    repeat: int = 0
    status: str = "ok"  # ok | timeout | error
    steady_jobs_per_s: float | None = None
    steady_window_s: float | None = None
    steady_jobs: int | None = None
    steady_intervals: int | None = None  # sampling intervals inside the window (precision)
    wall_s: float | None = None  # spawning the workers -> last job finished
    drain_s: float | None = None  # gate opened -> last job finished
    startup_s: float | None = None  # spawning the workers -> gate opened
    gate_all_ready: bool = False
    enqueue_s: float | None = None
    # CPU time (user + system) from the gate opening to the last job, per job: the worker
    # processes (with their children) and every process of the PostgreSQL server
    worker_cpu_us_per_job: float | None = None
    db_cpu_us_per_job: float | None = None
    remaining_at_end: int | None = None
    succeeded: int | None = None  # jobs the system recorded as successfully run
    worker_exit_codes: list[int | None] = field(default_factory=list)
    error: str | None = None
    load_avg_before: tuple[float, float, float] | None = None  # other load on the host skews results
    load_avg_after: tuple[float, float, float] | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since gate opened, remaining)


def steady_state(samples: list[tuple[float, int]], m: int) -> tuple[float, float, int, int] | None:
    """(jobs/s, window s, jobs, sample intervals) between the first sample < 95 % and the first < 5 % of m."""
    hi = next((i for i, (_, r) in enumerate(samples) if r < 0.95 * m), None)
    lo = next((i for i, (_, r) in enumerate(samples) if r < 0.05 * m), None)
    if hi is None or lo is None or lo <= hi:
        return None
    (t0, r0), (t1, r1) = samples[hi], samples[lo]
    if t1 <= t0:
        return None
    return (r0 - r1) / (t1 - t0), t1 - t0, r0 - r1, lo - hi


def stop_workers(procs: list[subprocess.Popen[bytes]], grace: float) -> list[int | None]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    return [p.returncode for p in procs]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cpu_seconds(processes: list[Any]) -> float:
    """User + system CPU seconds of these psutil processes (gone ones count 0)."""
    import psutil

    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _server_processes(conn: psycopg.Connection) -> list[Any]:
    """The PostgreSQL server's processes: the postmaster and all its children (backends,
    WAL writer, checkpointer...), found from this connection's backend."""
    import psutil

    backend = psutil.Process(conn.execute("select pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    postmaster = backend.parent()
    return [postmaster, *postmaster.children()] if postmaster is not None else []


def _worker_processes(procs: list[subprocess.Popen[bytes]]) -> list[Any]:
    import psutil

    out: list[Any] = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            out += [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
    return out


def run_once(system: System, n: int, m: int, args: argparse.Namespace, log_dir: Path, repeat: int) -> RunResult:
    result = RunResult(system=system.key, workers=n, jobs=m, repeat=repeat)
    result.load_avg_before = os.getloadavg()
    t = time.perf_counter()
    system.enqueue(m)
    with psycopg.connect(system.uri, autocommit=True) as conn:
        conn.execute(f"analyze {system.queue_table}")
        conn.execute("checkpoint")
        queued = conn.execute(system.remaining_sql).fetchone()[0]  # type: ignore[index]
    result.enqueue_s = time.perf_counter() - t
    if queued != m:
        raise RuntimeError(f"{system.key}: expected {m} queued jobs, found {queued}")

    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    names = [f"bench-{system.key}-{n}-{repeat}-{i}" for i in range(n)]
    gate = psycopg.connect(system.uri)  # holds the start gate (a transaction)
    monitor = psycopg.connect(system.uri, autocommit=True)
    try:
        gate.execute(f"lock table {system.queue_table} in access exclusive mode")
        t_spawn = time.perf_counter()
        for name in names:
            log_path = log_dir / f"{name}.log"
            logs.append(log_path)
            app_uri = with_params(system.uri, application_name=name)
            with open(log_path, "wb") as log_file:
                procs.append(subprocess.Popen(
                    system.worker_argv(), cwd=REPO, env=system.worker_env(app_uri),
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                ))

        # wait until every worker has a backend blocked on the gate
        gate_deadline = time.perf_counter() + args.gate_timeout
        waiting_sql = (
            "select count(distinct a.application_name) from pg_stat_activity a "
            "join pg_locks l on l.pid = a.pid "
            "where not l.granted and l.relation = %s::regclass and a.application_name = any(%s)"
        )
        while time.perf_counter() < gate_deadline:
            ready = monitor.execute(waiting_sql, (system.queue_table, names)).fetchone()[0]  # type: ignore[index]
            if ready >= n:
                result.gate_all_ready = True
                break
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        workers_ps = _worker_processes(procs)
        cpu_workers_0 = _cpu_seconds(workers_ps)
        cpu_db_0 = _cpu_seconds(_server_processes(monitor))
        gate.commit()  # open the gate
        t_open = time.perf_counter()
        result.startup_s = t_open - t_spawn
        if not result.gate_all_ready:
            print(f"  warning: only some workers reached the start gate within {args.gate_timeout}s", flush=True)

        deadline = t_open + args.timeout
        samples: list[tuple[float, int]] = []
        remaining = m
        while True:
            q0 = time.perf_counter()
            remaining = monitor.execute(system.remaining_sql).fetchone()[0]  # type: ignore[index]
            q1 = time.perf_counter()
            samples.append((round((q0 + q1) / 2 - t_open, 4), remaining))
            if remaining == 0:
                t_done = (q0 + q1) / 2
                result.drain_s = t_done - t_open
                result.wall_s = t_done - t_spawn
                # backends of this run that have ended since are not counted: none end
                # before the workers are stopped, after this
                result.worker_cpu_us_per_job = (_cpu_seconds(workers_ps) - cpu_workers_0) / m * 1e6
                result.db_cpu_us_per_job = (_cpu_seconds(_server_processes(monitor)) - cpu_db_0) / m * 1e6
                break
            if q1 > deadline:
                result.status = "timeout"
                result.error = f"timed out after {args.timeout}s with {remaining} of {m} jobs unfinished"
                break
            if all(p.poll() is not None for p in procs):
                result.status = "error"
                result.error = "all workers exited early"
                break
            time.sleep(max(0.0, args.sample_interval - (time.perf_counter() - q0)))
        result.samples = samples
        result.remaining_at_end = remaining
        steady = steady_state(samples, m)
        if steady:
            result.steady_jobs_per_s, result.steady_window_s, result.steady_jobs, result.steady_intervals = steady
            if result.steady_intervals < MIN_INTERVALS:
                print(f"  note: the steady-state window spans only {result.steady_intervals} sample intervals; "
                      "use more --jobs for a precise figure", flush=True)
    finally:
        gate.close()
        monitor.close()
        result.worker_exit_codes = stop_workers(procs, args.stop_grace)
        result.load_avg_after = os.getloadavg()

    with psycopg.connect(system.uri, autocommit=True) as conn:
        result.succeeded = conn.execute(system.succeeded_sql).fetchone()[0]  # type: ignore[index]
    if result.status == "ok" and result.succeeded != m:
        print(f"  warning: {result.succeeded} of {m} jobs recorded as succeeded", flush=True)

    if result.status != "ok":
        for path in logs[:2]:
            print(f"  --- {path.name} (tail) ---\n{tail(path)}", flush=True)
    return result


# -- reporting ---------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Summary:
    system: str
    workers: int
    jobs: int
    runs: int
    ok_runs: int
    steady_jobs_per_s: float | None  # median over the runs that reached the 5 % mark
    steady_min: float | None
    steady_max: float | None
    wall_s: float | None  # median over finished runs
    drain_s: float | None
    worker_cpu_us: float | None = None  # medians of the CPU per job
    db_cpu_us: float | None = None


def summarize(results: list[RunResult], systems: list[str], workers: list[int]) -> list[Summary]:
    out = []
    for key in systems:
        for n in workers:
            rs = [r for r in results if r.system == key and r.workers == n]
            if not rs:
                continue
            steady = [r.steady_jobs_per_s for r in rs if r.steady_jobs_per_s is not None]
            out.append(Summary(
                system=key, workers=n, jobs=rs[0].jobs, runs=len(rs), ok_runs=sum(r.status == "ok" for r in rs),
                steady_jobs_per_s=median(steady), steady_min=min(steady, default=None), steady_max=max(steady, default=None),
                wall_s=median([r.wall_s for r in rs if r.wall_s is not None]),
                drain_s=median([r.drain_s for r in rs if r.drain_s is not None]),
                worker_cpu_us=median([r.worker_cpu_us_per_job for r in rs if r.worker_cpu_us_per_job is not None]),
                db_cpu_us=median([r.db_cpu_us_per_job for r in rs if r.db_cpu_us_per_job is not None]),
            ))
    return out


def table(summaries: list[Summary]) -> str:
    repeated = any(s.runs > 1 for s in summaries)
    head = "steady-state jobs/s" + (" (median, min–max)" if repeated else "")
    rows = [f"| system | workers | jobs | {head} | wall s | drain s | CPU µs per job: workers | CPU µs per job: "
            "PostgreSQL | ok runs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        steady = fmt(s.steady_jobs_per_s)
        if repeated and s.steady_min is not None:
            steady += f" ({fmt(s.steady_min)}–{fmt(s.steady_max)})"
        rows.append(f"| {LABELS[s.system]} | {s.workers} | {s.jobs} | {steady} | "
                    f"{fmt(s.wall_s, 2)} | {fmt(s.drain_s, 2)} | {fmt(s.worker_cpu_us)} | {fmt(s.db_cpu_us)} | "
                    f"{s.ok_runs}/{s.runs} |")
    return "\n".join(rows)


def ratios(results: list[RunResult], systems: list[str], workers: list[int], ours: str = "ai-jobs") -> str:
    """ours / each other system, per round (runs of the same round ran back to back):
    the median over rounds, with min–max when there are several."""
    others = [k for k in systems if k != ours]
    rows = ["| workers | " + " | ".join(f"{LABELS.get(ours, ours)} / {LABELS[o]}" for o in others) + " |",
            "|---:|" + "---:|" * len(others)]
    for n in workers:
        cells = []
        for other in others:
            per_round = []
            for r in results:
                if r.system != ours or r.workers != n or r.steady_jobs_per_s is None:
                    continue
                theirs = next((x for x in results if x.system == other and x.workers == n and x.repeat == r.repeat
                               and x.steady_jobs_per_s), None)
                if theirs is not None:
                    per_round.append(r.steady_jobs_per_s / theirs.steady_jobs_per_s)  # type: ignore[operator]
            if not per_round:
                cells.append("—")
            elif len(per_round) == 1:
                cells.append(f"{per_round[0]:.2f}×")
            else:
                cells.append(f"{statistics.median(per_round):.2f}× ({min(per_round):.2f}–{max(per_round):.2f})")
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def load_line(results: list[RunResult]) -> str:
    before = [r.load_avg_before[0] for r in results if r.load_avg_before]
    after = [r.load_avg_after[0] for r in results if r.load_avg_after]
    if not before:
        return "load average: —"
    return (f"1-minute load average (2 = both cores busy): before each run {min(before):.2f}–{max(before):.2f}, "
            f"after each run {min(after, default=0):.2f}–{max(after, default=0):.2f}")


@dataclass
class EnqueueResult:
    system: str
    mode: str  # single | bulk
    jobs: int
    seconds: float
    jobs_per_s: float


def measure_enqueue(system: System, single: int, bulk: int) -> list[EnqueueResult]:
    out = []
    for mode, m, fn in (("single", single, system.enqueue_single), ("bulk", bulk, system.enqueue_bulk)):
        if m <= 0:
            continue
        t = time.perf_counter()
        fn(m)
        seconds = time.perf_counter() - t
        out.append(EnqueueResult(system.key, mode, m, round(seconds, 3), round(m / seconds, 1)))
        system.clean()
    return out


def enqueue_table(rows: list[EnqueueResult]) -> str:
    by = {(r.system, r.mode): r for r in rows}
    keys = list(dict.fromkeys(r.system for r in rows))
    lines = ["| system | single: jobs/s (one call each) | bulk: jobs/s | bulk API |", "|---|---:|---:|---|"]
    api = {"ai-jobs": "`enqueue_many` (1,000 per call)", "pgqueuer": "`Queries.enqueue([...])` (5,000 per call)",
           "procrastinate": "`batch_defer_async` (5,000 per call)", "pgmq": "`send_batch` (1,000 per call)",
           "dbos": "no bulk API: 1,000 `enqueue_in_transaction` per transaction"}
    for k in keys:
        single, bulk = by.get((k, "single")), by.get((k, "bulk"))
        lines.append(f"| {LABELS.get(k, k)} | {fmt(single.jobs_per_s) if single else '—'} | "
                     f"{fmt(bulk.jobs_per_s) if bulk else '—'} | {api.get(k, '')} |")
    return "\n".join(lines)


def chart(summaries: list[Summary], workers: list[int], systems: list[str], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", flush=True)
        return False
    by = {(s.system, s.workers): s.steady_jobs_per_s or 0.0 for s in summaries}
    spans = {(s.system, s.workers): (s.steady_min, s.steady_max) for s in summaries if s.steady_min is not None}
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for k, key in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(workers))]
        ys = [by.get((key, n), 0.0) for n in workers]
        spread = [spans.get((key, n), (y, y)) for n, y in zip(workers, ys)]
        yerr = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, spread)], [max(0.0, hi - y) for y, (_, hi) in zip(ys, spread)]]
        bars = ax.bar(xs, ys, width=width * 0.95, label=LABELS[key],
                      yerr=yerr if any(s.runs > 1 for s in summaries) else None, capsize=3)
        ax.bar_label(bars, labels=[f"{y:,.0f}" if y else "—" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(range(len(workers)), [f"{n} worker{'s' if n != 1 else ''}" for n in workers])
    ax.set_ylabel("steady-state jobs/s (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000, help="jobs enqueued per run (M)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker process counts")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--repeat", type=int, default=1, help="rounds over all systems; the table shows medians")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run after the gate opens")
    p.add_argument("--gate-timeout", type=float, default=60.0, help="seconds to wait for all workers at the gate")
    p.add_argument("--stop-grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--sample-interval", type=float, default=0.05, help="seconds between remaining-job samples")
    p.add_argument("--ai-jobs-batch", type=int, default=10, help="passed as --batch if the ai-jobs worker has it")
    p.add_argument("--ai-jobs-poll-interval", type=float, default=0.05)
    p.add_argument("--ai-jobs-concurrency", type=int, nargs="+", default=[1],
                   help="passed as --concurrency (loops per ai-jobs worker process, each its own connection); "
                        "the first value is ai-jobs' (and its variants'), each further one adds this checkout's "
                        "worker with that value as another system in the same run")
    p.add_argument("--pgq-batch-size", type=int, default=10, help="PgQueuer dequeue batch size (its default)")
    p.add_argument("--procrastinate-concurrency", type=int, default=10, help="Procrastinate sub-workers per process")
    p.add_argument("--pgmq-batch-size", type=int, default=10, help="pgmq messages read per call")
    p.add_argument("--dbos-worker-concurrency", type=int, default=100, help="DBOS workflows per process at once")
    p.add_argument("--dbos-polling-interval", type=float, default=0.01, help="DBOS queue polling interval (s)")
    p.add_argument("--ai-jobs-variant", action="append", default=[], metavar="NAME=SRC",
                   help="also run the ai-jobs worker from SRC (a folder holding the ai_jobs package) as ai-jobs@NAME")
    p.add_argument("--enqueue-single", type=int, default=1000, help="jobs enqueued one call each (0: skip)")
    p.add_argument("--enqueue-bulk", type=int, default=10000, help="jobs enqueued through the bulk API (0: skip)")
    p.add_argument("--json", type=Path, default=BENCH / "results" / "throughput.json")
    p.add_argument("--png", type=Path, default=BENCH / "throughput.png")
    p.add_argument("--keep-logs", action="store_true", help="keep worker logs (printed path)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench._throwaway_db import throwaway_database

    opts = Options(args.ai_jobs_batch, args.ai_jobs_poll_interval, args.pgq_batch_size, args.procrastinate_concurrency,
                   args.pgmq_batch_size, args.dbos_worker_concurrency, args.dbos_polling_interval,
                   args.ai_jobs_concurrency[0])
    load_at_start = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="tplogs", dir="/tmp"))
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    results: list[RunResult] = []
    enqueues: list[EnqueueResult] = []
    systems: list[System] = []
    stack = ExitStack()
    database = stack.enter_context(throwaway_database("tp", migrated=False))  # each system installs its schema
    try:
        uri = database.url
        with psycopg.connect(uri, autocommit=True) as conn:
            pg_version = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
            pg_settings = {name: conn.execute(f"show {name}").fetchone()[0]  # type: ignore[index]
                           for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")}
        print(f"embedded PostgreSQL {pg_version} at {database.data_dir}", flush=True)
        for key in args.systems:
            system = make_system(key, uri, opts)
            system.install()
            systems.append(system)
            if key == "ai-jobs":
                for spec in args.ai_jobs_variant:
                    name, _, source = spec.partition("=")
                    variant = make_variant(name, source, uri, opts)
                    variant.install()
                    systems.append(variant)
                for loops in args.ai_jobs_concurrency[1:]:
                    variant = make_concurrency_variant(loops, uri, opts)
                    variant.install()
                    systems.append(variant)
        print("schemas installed: " + ", ".join(LABELS[s.key] for s in systems), flush=True)
        for s in systems:
            print(f"  {LABELS[s.key]}: {json.dumps(s.settings)}", flush=True)

        for system in systems:
            if system.key not in SYSTEMS:
                continue  # variants: the same enqueue
            print(f"{LABELS[system.key]}: enqueue {args.enqueue_single} single, {args.enqueue_bulk} bulk ...", flush=True)
            try:
                enqueues.extend(measure_enqueue(system, args.enqueue_single, args.enqueue_bulk))
            except Exception as exc:  # noqa: BLE001
                print(f"  enqueue measurement failed: {exc!r}", flush=True)
                system.clean()

        # systems back to back per worker count, so the runs compared ran within seconds of
        # each other (the load of a shared machine drifts over minutes)
        for repeat in range(args.repeat):
            for n in args.workers:
                for system in systems:
                    round_note = f" (round {repeat + 1}/{args.repeat})" if args.repeat > 1 else ""
                    print(f"{LABELS[system.key]}, {n} worker(s), {args.jobs} jobs{round_note} ...", flush=True)
                    try:
                        r = run_once(system, n, args.jobs, args, log_dir, repeat)
                    except Exception as exc:  # noqa: BLE001 - record and go on with the next run
                        r = RunResult(system=system.key, workers=n, jobs=args.jobs, repeat=repeat,
                                      status="error", error=repr(exc))
                    results.append(r)
                    print(f"  {r.status}: steady {fmt(r.steady_jobs_per_s)} jobs/s, CPU per job "
                          f"{fmt(r.worker_cpu_us_per_job)} µs workers + {fmt(r.db_cpu_us_per_job)} µs PostgreSQL, "
                          f"wall {fmt(r.wall_s, 2)} s, "
                          f"drain {fmt(r.drain_s, 2)} s, start-up {fmt(r.startup_s, 2)} s, "
                          f"all at gate: {r.gate_all_ready}" + (f" — {r.error}" if r.error else ""), flush=True)
                    try:
                        system.clean()
                        system.vacuum()
                    except Exception as exc:  # noqa: BLE001
                        print(f"  cleanup failed: {exc!r}", flush=True)
    finally:
        stack.close()

    summaries = summarize(results, [s.key for s in systems], args.workers)
    print()
    print(table(summaries))
    print()
    load_at_end = os.getloadavg()
    keys = [s.key for s in systems]
    print("Ratio of steady-state throughput per round (ai-jobs divided by the other; > 1 means ai-jobs is faster):")
    print()
    print(ratios(results, keys, args.workers))
    print()
    for key in keys:
        if key.startswith("ai-jobs-c"):
            print(f"The same for {LABELS[key]} (one process per worker, {key.removeprefix('ai-jobs-c')} loops each):")
            print()
            print(ratios(results, [k for k in keys if not k.startswith("ai-jobs")], args.workers, ours=key))
            print()
    print(load_line(results) + f"; at start {load_at_start[0]:.2f}, at end {load_at_end[0]:.2f}")
    print()
    if enqueues:
        print("Enqueue throughput, from one client process:")
        print()
        print(enqueue_table(enqueues))
        print()

    meta = {
        "started_at": started.isoformat(timespec="seconds"),
        "total_s": round(time.perf_counter() - t_start, 1),
        "command": " ".join([Path(PY).name, *sys.argv]) if argv is None else None,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "load_avg_at_start": load_at_start, "load_avg_at_end": load_at_end},
        "postgres": {"version": pg_version, **pg_settings},
        "versions": {d: version_of(d) for d in ("ai-jobs", "pgqueuer", "procrastinate", "pgmq", "dbos", "asyncpg",
                                                 "psycopg", "pgserver")},
        "systems": {s.key: s.settings for s in systems},
        "method": ("steady-state jobs/s = jobs finished between the first sample with remaining < 95% of M "
                   "and the first with remaining < 5% of M, divided by the time between them; "
                   "workers start behind a table-lock gate; wall = worker spawn to last job finished"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    # one line per run (each carries its samples) keeps the file readable
    runs = ",\n  ".join(json.dumps(asdict(r)) for r in results)
    args.json.write_text(
        "{\n" + f'"meta": {json.dumps(meta, indent=1)},\n'
        f'"summary": {json.dumps([asdict(s) for s in summaries], indent=1)},\n'
        f'"enqueue": {json.dumps([asdict(e) for e in enqueues], indent=1)},\n'
        f'"runs": [\n  {runs}\n]\n' + "}\n"
    )
    print(f"raw results: {args.json}")
    title = f"Queue throughput, no-op jobs, M={args.jobs}, {os.cpu_count()} CPUs, embedded PostgreSQL {pg_version}"
    if chart(summaries, args.workers, [s.key for s in systems], args.png, title):
        print(f"chart: {args.png}")
    if args.keep_logs:
        print(f"worker logs: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
