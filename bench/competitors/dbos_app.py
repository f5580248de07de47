"""DBOS Transact side of bench/throughput.py: one worker process.

    BENCH_PG_DSN=... python -m bench.competitors.dbos_app --worker-concurrency 10

A no-op workflow (`bench_noop`, no steps) served from the queue `bench`, the way
the DBOS docs show queues: `DBOS.register_queue(...)`, `DBOS.launch()`, and a
`DBOSClient` enqueueing from another process. The system database is the
benchmark's PostgreSQL (schema `dbos`). Every worker process needs its own
`executor_id` for `worker_concurrency` to apply per process. DBOS dequeues by
polling each queue every `polling_interval_sec` (default 1 s), taking up to
`worker_concurrency` workflows; each runs in a thread.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import uuid
from urllib.parse import parse_qs, urlsplit

from dbos import DBOS, DBOSConfig

QUEUE = "bench"
APP = "ai-jobs-bench"
VERSION = "bench-1"


def config(executor_id: str | None = None) -> DBOSConfig:
    cfg: DBOSConfig = {
        "name": APP,
        "system_database_url": os.environ["BENCH_PG_DSN"],
        "application_version": VERSION,
        "log_level": "WARNING",
    }
    if executor_id:
        cfg["executor_id"] = executor_id
    # DBOS names its connections dbos_transact; keep the benchmark's name (its start
    # gate finds each worker by it). Only connect_args changes: the rest of DBOS's
    # engine defaults (pool of 20, pre-ping) stay as they are.
    name = parse_qs(urlsplit(cfg["system_database_url"]).query).get("application_name")
    if name:
        cfg["db_engine_kwargs"] = {"connect_args": {"application_name": name[0]}}
    return cfg


@DBOS.workflow(name="bench_noop")
def bench_noop(n: int) -> int:
    return n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker-concurrency", type=int, default=10)
    p.add_argument("--polling-interval", type=float, default=0.01)
    p.add_argument("--install", action="store_true", help="create the system database schema and the queue, then exit")
    args = p.parse_args()
    if args.install:
        DBOS(config=config())
        DBOS.launch()
        DBOS.register_queue(QUEUE, worker_concurrency=args.worker_concurrency,
                            polling_interval_sec=args.polling_interval)
        DBOS.destroy()
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    DBOS(config=config(f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"))
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=args.worker_concurrency,
                        polling_interval_sec=args.polling_interval)
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=0)


if __name__ == "__main__":
    main()
