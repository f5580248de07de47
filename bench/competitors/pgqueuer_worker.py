"""One PgQueuer worker process for bench/throughput.py.

    BENCH_PG_DSN=... python -m bench.competitors.pgqueuer_worker --batch-size 10

This is what `pgq run bench.competitors.pgqueuer_app:create_pgqueuer --batch-size 10`
does: `pgqueuer.run()` is the supervisor behind that command (SIGINT/SIGTERM stop
it), driven by uvloop when it is installed, as the CLI does. The CLI itself is not
used because `pgq run` in PgQueuer 1.6.0 with typer 0.29 fails at start-up
(its --log-level parser hands a str to setup_fancy_logger, which wants the enum).
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

import pgqueuer
from pgqueuer.core import logconfig

from bench.competitors.pgqueuer_app import create_pgqueuer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--dequeue-timeout", type=float, default=30.0)
    args = p.parse_args()
    logconfig.setup_fancy_logger(logconfig.LogLevel.INFO)  # the `pgq run` default
    coro = pgqueuer.run(
        create_pgqueuer,
        batch_size=args.batch_size,
        dequeue_timeout=timedelta(seconds=args.dequeue_timeout),
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
