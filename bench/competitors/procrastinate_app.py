"""Procrastinate side of bench/throughput.py: an App with a no-op task.

Run a worker with Procrastinate's own CLI:

    BENCH_PG_DSN=... python -m procrastinate --app bench.competitors.procrastinate_app.app \
        worker --concurrency 10

The connector is the PsycopgConnector (an async psycopg_pool). Its pool is sized
from BENCH_PROCRASTINATE_POOL so that every concurrent sub-worker, plus the
LISTEN connection, can hold a connection at once.
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

TASK_NAME = "bench_noop"

_pool_size = int(os.environ.get("BENCH_PROCRASTINATE_POOL", "12"))

app = App(
    connector=PsycopgConnector(
        conninfo=os.environ.get("BENCH_PG_DSN", ""),
        min_size=min(4, _pool_size),
        max_size=_pool_size,
    )
)


@app.task(name=TASK_NAME)
async def bench_noop(n: int) -> None:
    return None
