"""One pgmq consumer process for bench/throughput.py and bench/latency.py.

    BENCH_PG_DSN=... python -m bench.competitors.pgmq_worker --batch-size 10

pgmq (the extension behind Supabase Queues) is a message queue, not a job runner:
a consumer reads a batch with a visibility timeout (`pgmq.read`), processes it and
archives it (`pgmq.archive`, which keeps the message in `pgmq.a_<queue>` as a record,
as ai-jobs keeps finished rows), as its documentation shows. When the queue is
empty it long-polls with `pgmq.read_with_poll` (the client's default 100 ms interval
is lowered to 10 ms, like the other systems' idle polling here). One connection
per process, through the official Python client (`pgmq` on PyPI).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from pgmq import PGMQueue
from psycopg_pool import ConnectionPool

QUEUE = "bench"


def open_queue(dsn: str) -> PGMQueue:
    """The client over one pooled connection, as its own pool would make it (the
    client's conn_string parser drops a URI's ?host=, which the benchmark's socket
    needs, so the pool is passed in)."""
    return PGMQueue(pool=ConnectionPool(dsn, min_size=1, max_size=1, open=True), init_extension=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--vt", type=int, default=30, help="visibility timeout (s), the lease")
    p.add_argument("--latency-table", default="", help="record start times here (bench/latency.py)")
    args = p.parse_args()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    queue = open_queue(os.environ["BENCH_PG_DSN"])
    try:
        while not stop:
            messages = queue.read_batch(QUEUE, vt=args.vt, batch_size=args.batch_size)
            if not messages:
                messages = queue.read_with_poll(QUEUE, vt=args.vt, qty=args.batch_size, max_poll_seconds=1,
                                                poll_interval_ms=10)
            if not messages:
                continue
            if args.latency_table:
                started = time.time()
                with queue.pool.connection() as conn:
                    conn.cursor().executemany(
                        f"insert into {args.latency_table} (tag, started) values (%s, to_timestamp(%s))",
                        [(m.message.get("tag"), started) for m in messages],
                    )
            queue.archive_batch(QUEUE, [m.msg_id for m in messages])
    finally:
        queue.pool.close()


if __name__ == "__main__":
    main()
