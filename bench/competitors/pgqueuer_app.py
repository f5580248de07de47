"""PgQueuer side of bench/throughput.py: a no-op entrypoint and a worker factory.

Workers run through bench/competitors/pgqueuer_worker.py, which calls
`pgqueuer.run()` as `pgq run bench.competitors.pgqueuer_app:create_pgqueuer` would.

The factory uses the asyncpg driver over a single connection, the set-up PgQueuer's
documentation recommends for throughput (asyncpg measured about twice psycopg).
"""

from __future__ import annotations

import os
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

    @pgq.entrypoint(ENTRYPOINT)
    async def bench_noop(job: Job) -> None:
        return None

    try:
        yield pgq
    finally:
        await connection.close()
