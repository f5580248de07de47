"""Create-endpoint latency on the local stack: POST /api/jobs over loopback,
including token verification, validation, the insert and the hand-off to the
live local worker. Run: .venv/bin/python bench/create_latency.py [N]"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _local_stack import start_dev  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(client: httpx.Client, n: int, body: dict) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.post("/api/jobs", json=body)
        times.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 202, r.text
    return times


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    stack = start_dev({"AI_JOBS_MAX_ACTIVE_PER_USER": "100000"})
    url, token = stack.url, stack.token
    try:
        headers = {"authorization": f"Bearer {token}"}
        body_now = {"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}}
        body_later = {**body_now, "run_at": (datetime.now(UTC) + timedelta(days=300)).isoformat()}  # at most 1 year ahead
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            run(client, 30, body_later)  # warm up pool and caches
            rows = []
            for label, body in (("scheduled (no hand-off)", body_later), ("due now (hand-off to local worker)", body_now)):
                times = run(client, n, body)
                rows.append((label, "1", n, statistics.median(times), percentile(times, 0.95)))
        with ThreadPoolExecutor(8) as pool:
            clients = [httpx.Client(base_url=url, headers=headers, timeout=30) for _ in range(8)]
            started = time.perf_counter()
            results = list(pool.map(lambda c: run(c, n // 8, body_later), clients))
            wall = time.perf_counter() - started
            times = [t for chunk in results for t in chunk]
            rows.append(("scheduled, 8 concurrent clients", "8", len(times), statistics.median(times), percentile(times, 0.95)))
            for c in clients:
                c.close()
        print("| case | clients | requests | p50 ms | p95 ms |")
        print("|---|---|---|---|---|")
        for label, clients_n, count, p50, p95 in rows:
            print(f"| {label} | {clients_n} | {count} | {p50:.1f} | {p95:.1f} |")
        print(f"\n8-client throughput: {len(times) / wall:.0f} creates/s")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
