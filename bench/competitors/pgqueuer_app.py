"""PgQueuer side of bench/throughput.py: a no-op entrypoint and a worker factory.

Workers run through bench/competitors/pgqueuer_worker.py, which calls
`pgqueuer.run()` as `pgq run bench.competitors.pgqueuer_app:create_pgqueuer` would.

The factory uses the asyncpg driver over a single connection, the set-up PgQueuer's
documentation recommends for throughput (asyncpg measured about twice psycopg).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.models import Job

ENTRYPOINT = "bench_noop"


def dsn() -> str:
    return os.environ["BENCH_PG_DSN"]


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(dsn())
    pgq = PgQueuer.from_asyncpg_connection(connection)
    # bench/latency.py: record when each job's handler starts (wall clock, taken
    # first thing; written on a second connection so PgQueuer's own is not shared)
    latency_table = os.environ.get("BENCH_LATENCY_TABLE")
    recorder = await asyncpg.connect(dsn()) if latency_table else None

    @pgq.entrypoint(ENTRYPOINT)
    async def bench_noop(job: Job) -> None:
        if recorder is not None:
            started = time.time()
            await recorder.execute(f"insert into {latency_table} (tag, started) values ($1, $2)",
                                   (job.payload or b"").decode(), started)
        return None

    try:
        yield pgq
    finally:
        await connection.close()
        if recorder is not None:
            await recorder.close()
