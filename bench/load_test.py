"""Load test: hundreds of concurrent creates against the local server
(loopback only, bounded). Every user has a small active-job cap, so some 429s
are intended; anything else non-2xx is an error. Then the database is checked:
every 202 is a job, nothing lost, nothing duplicated, idempotent repeats
return the original job.

Full size: .venv/bin/python bench/load_test.py        (2,000 creates, 50 clients)
`make test` runs it reduced (tests/test_crash_and_load.py)."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import httpx
import psycopg

# Due tomorrow, so no job runs during the test (run_at may be at most a year ahead).
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    seconds: float
    statuses: dict[int, int]
    p50_ms: float
    p95_ms: float
    created: int
    in_database: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def run_load_test(
    base_url: str, database_url: str, tokens: dict[UUID, str], *, requests: int, concurrency: int, cap: int, seed: int = 3
) -> LoadReport:
    rng = random.Random(seed)
    users = list(tokens)
    plan = []
    for i in range(requests):
        user = users[i % len(users)]
        # a quarter of the requests repeat an earlier idempotency key of the same user
        key = f"k-{user.hex[:6]}-{rng.randrange(max(1, i // len(users) + 1))}" if rng.random() < 0.25 else f"u-{i}"
        plan.append((user, key))
    results: list[tuple[UUID, str, int, str | None, float]] = []
    lock = threading.Lock()
    local = threading.local()

    def send(item: tuple[UUID, str]) -> None:
        user, key = item
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=60)
        started = time.perf_counter()
        r = local.client.post(
            "/api/jobs",
            json={"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}, "run_at": FUTURE},
            headers={"authorization": f"Bearer {tokens[user]}", "idempotency-key": key},
        )
        elapsed = (time.perf_counter() - started) * 1000
        job_id = r.json().get("id") if r.status_code in (200, 202) else None
        with lock:
            results.append((user, key, r.status_code, job_id, elapsed))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, plan))
    seconds = time.perf_counter() - started

    statuses = Counter(status for _, _, status, _, _ in results)
    latencies = sorted(ms for *_, ms in results)
    problems = []
    unexpected = {s: n for s, n in statuses.items() if s not in (200, 202, 429)}
    if unexpected:
        problems.append(f"unexpected statuses: {unexpected}")
    created = {job_id for _, _, status, job_id, _ in results if status == 202}
    if len(created) != statuses.get(202, 0):
        problems.append("two 202 responses carried the same job id")
    by_key: dict[tuple[UUID, str], set[str]] = {}
    for user, key, status, job_id, _ in results:
        if job_id:
            by_key.setdefault((user, key), set()).add(job_id)
    if any(len(ids) > 1 for ids in by_key.values()):
        problems.append("an idempotency key returned different jobs")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select id::text, user_id, idempotency_key from public.ai_jobs where user_id = any(%s)", (users,)
        ).fetchall()
    in_db = {r[0] for r in rows}
    if in_db != created:
        problems.append(f"{len(created - in_db)} created jobs missing, {len(in_db - created)} unexpected jobs")
    per_user = Counter(r[1] for r in rows)
    if any(n > cap for n in per_user.values()):
        problems.append(f"the per-user cap of {cap} was exceeded: {max(per_user.values())}")
    if statuses.get(429, 0) == 0:
        problems.append("no 429s: the cap was never reached, so the test did not exercise it")
    return LoadReport(
        requests=len(results), concurrency=concurrency, seconds=round(seconds, 2), statuses=dict(statuses),
        p50_ms=round(statistics.median(latencies), 1), p95_ms=round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        created=len(created), in_database=len(in_db), problems=problems,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--cap", type=int, default=30)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _local_stack import start_dev

    from ai_jobs.devtools import dev_secrets, ensure_user, mint_token

    stack = start_dev({"AI_JOBS_MAX_ACTIVE_PER_USER": str(args.cap)})
    try:
        secret = dev_secrets(stack.data_dir).jwt_secret
        tokens = {}
        for i in range(args.users):
            user = ensure_user(stack.database_url, f"load-{i}@example.com")
            tokens[user] = mint_token(secret, user)
        report = run_load_test(
            stack.url, stack.database_url, tokens, requests=args.requests, concurrency=args.concurrency, cap=args.cap
        )
    finally:
        stack.stop()
    for key, value in report.__dict__.items():
        print(f"{key:12} {value}")
    print("RESULT", "ok" if report.ok else "FAILED")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
