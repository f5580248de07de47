"""Acceptance: a tokens-per-minute limit shared by parallel workers holds.

4 workers (threads, each with its own connection pool, as separate invocations
would have) run 45 `ai.generate` jobs against a real local HTTP fake of the
Messages API that streams real SSE (usage in message_start, the final
cumulative output_tokens in message_delta) and logs when each call arrived and
what it billed. The limits are 6,000 output and 20,000 input tokens per
minute: the jobs need about 1.7 minutes' worth of output, so about half of them
have to wait. From the fake's log, the tokens in any 60 s window stay within
10 % of the limits; every job completes with one attempt and no error.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from ai_jobs.claude.client import reset_clients
from ai_jobs.models import JobStatus
from ai_jobs.registry import load_job_modules
from ai_jobs.runner import Outcome, Runner
from ai_jobs.store.postgres import PostgresStore
from tests.anthropic_wire import sse_message

OTPM = 6_000
ITPM = 20_000
MAX_TOKENS = 300
JOBS = 45
WORKERS = 4


class FakeMessagesApi(ThreadingHTTPServer):
    """POST /v1/messages: bills ceil(chars / 4) input tokens and between half and
    all of max_tokens output, streamed over 0.3-1.0 s."""

    daemon_threads = True

    def __init__(self) -> None:
        self.log: list[tuple[float, int, int]] = []  # (arrived, input_tokens, output_tokens)
        self.lock = threading.Lock()
        self.rng = random.Random(12)
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeMessagesApi

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        arrived = time.time()
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        chars = len(request["messages"][0]["content"]) + len(request.get("system") or "")
        with self.server.lock:
            output_tokens = self.server.rng.randint(request["max_tokens"] // 2, request["max_tokens"])
            duration = self.server.rng.uniform(0.3, 1.0)
            input_tokens = math.ceil(chars / 4)
            self.server.log.append((arrived, input_tokens, output_tokens))
        body = sse_message("word " * 40, model=request["model"], input_tokens=input_tokens,
                           output_tokens=output_tokens, chunks=8).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        pieces = 4
        step = -(-len(body) // pieces)
        for i in range(pieces):
            self.wfile.write(body[i * step : (i + 1) * step])
            self.wfile.flush()
            time.sleep(duration / pieces)


@pytest.fixture()
def fake_api() -> Iterator[FakeMessagesApi]:
    server = FakeMessagesApi()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def max_in_any_window(log: list[tuple[float, int, int]], column: int, window: float = 60.0) -> int:
    """The most tokens billed by calls that arrived within `window` seconds of each other."""
    times = sorted((entry[0], entry[column]) for entry in log)
    best = 0
    for i, (start, _) in enumerate(times):
        best = max(best, sum(tokens for at, tokens in times[i:] if at < start + window))
    return best


@pytest.mark.slow
def test_token_limits_hold_across_parallel_workers(
    database_url: str, db: psycopg.Connection, make_user, fake_api: FakeMessagesApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = f"claude-load-{uuid.uuid4().hex[:8]}"  # its own bucket: earlier tests' reservations do not count
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_api.url)
    monkeypatch.setenv("AI_JOBS_RATE_LIMITS", json.dumps({f"model:{model}": {"itpm": ITPM, "otpm": OTPM}}))
    reset_clients()
    registry = load_job_modules()
    user = make_user()
    rng = random.Random(7)
    with PostgresStore(database_url, max_size=2) as store:
        job_ids = [
            store.enqueue(registry.new_job(user, "ai.generate", {
                "prompt": f"Summarize item {n}: " + "lorem ipsum dolor sit amet " * rng.randint(80, 100),
                "model": model, "max_tokens": MAX_TOKENS,
            }, max_active=JOBS)).job.id
            for n in range(JOBS)
        ]

    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with PostgresStore(database_url, max_size=3) as store:
                outcomes.extend(Runner(store, registry).run_available(budget_seconds=110))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=130)
    elapsed = time.monotonic() - started
    reset_clients()
    assert not errors, errors

    rows = db.execute(
        "select status, attempts, error, usage from public.ai_jobs where id = any(%s)", (job_ids,)
    ).fetchall()
    kinds = Counter(o.kind for o in outcomes)
    assert [r[0] for r in rows] == [JobStatus.COMPLETED.value] * JOBS, kinds
    assert all(attempts == 1 and error is None for _, attempts, error, _ in rows)  # waiting spent no attempt
    assert kinds["completed"] == JOBS and kinds["deferred"] > 0 and set(kinds) <= {"completed", "deferred"}
    assert len(fake_api.log) == JOBS  # one call per job: nothing was sent only to be refused

    peak_output = max_in_any_window(fake_api.log, 2)
    peak_input = max_in_any_window(fake_api.log, 1)
    total_output = sum(entry[2] for entry in fake_api.log)
    print(f"\n{JOBS} jobs, {WORKERS} workers, {elapsed:.1f} s; outcomes {dict(kinds)}; "
          f"output {total_output} tokens in all, peak {peak_output} per 60 s (limit {OTPM}); "
          f"input peak {peak_input} per 60 s (limit {ITPM})")
    assert total_output > 1.5 * OTPM  # more than a minute's worth: the limit had to bite
    assert peak_output <= 1.1 * OTPM
    assert peak_input <= 1.1 * ITPM
    assert peak_output >= 0.75 * OTPM  # and the capacity was used, not wasted
    assert elapsed < 100
