"""Delayed work starts on time with no traffic and no cron (issue: a Hobby
deployment's only Vercel cron is daily).

The real `ai-jobs serve` runs with its local sweep off. A job created with
`run_at` 3 s ahead is handed off at create; the worker invocation waits for it.
A Claude job answered with 429 `retry-after: 4` by a real local HTTP fake of
the Anthropic API goes back to pending with run_at = now + 4 s, and the same
invocation waits and runs it again. Both start within 5 s of their due time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from tests.anthropic_wire import sse_message
from tests.api_server import ApiServer, start_server
from tests.conftest import user_token


class FakeAnthropic(ThreadingHTTPServer):
    """POST /v1/messages as the Messages API answers it: first a 429
    rate_limit_error with `retry-after: 4` (the JSON error body and headers of
    the API's errors page), then a streamed message (SSE events as
    anthropic's `_streaming.py` parses them). Records when each call came."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        super().__init__(("127.0.0.1", 0), _FakeHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(BaseHTTPRequestHandler):
    server: FakeAnthropic

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.calls.append(time.time())
        if len(self.server.calls) == 1:
            body = json.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}).encode()
            self.send_response(429)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after", "4")
            self.send_header("request-id", "req_fake_429")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = sse_message("hello after the wait").encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def fake_anthropic() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def server(database_url: str, fake_anthropic: FakeAnthropic) -> Iterator[ApiServer]:
    srv = start_server(
        database_url,
        sweep_interval=0,  # no cron of any kind
        ANTHROPIC_API_KEY="sk-ant-test",
        ANTHROPIC_BASE_URL=fake_anthropic.url,
        AI_JOBS_WORKER_BUDGET_SECONDS="60",
    )
    yield srv
    srv.stop()


def _connections(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Who holds the database's connections (for a failure message)."""
    return db.execute(
        "select application_name, state, count(*) from pg_stat_activity group by 1, 2 order by 3 desc"
    ).fetchall()


def _row(db: psycopg.Connection, job_id: str) -> tuple[Any, ...]:
    return db.execute(
        "select status, run_at, started_at, attempts, updated_at from public.ai_jobs where id = %s", (job_id,)
    ).fetchone()


def _wait_terminal(db: psycopg.Connection, job_id: str, timeout: float) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _row(db, job_id)
        if row[0] in ("completed", "failed", "cancelled"):
            return row
        time.sleep(0.05)
    pytest.fail(f"job {job_id} still {_row(db, job_id)[0]}")


def test_future_run_at_starts_on_time_without_cron(server: ApiServer, db: psycopg.Connection, make_user) -> None:
    client = server.client(user_token(make_user()))
    run_at = datetime.now(UTC) + timedelta(seconds=3)
    r = client.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0},
                                       "run_at": run_at.isoformat()})
    assert r.status_code == 202, (r.text, _connections(db))
    job = r.json()
    assert _row(db, job["id"])[0] == "pending"  # not started early
    status, due, started, attempts, _ = _wait_terminal(db, job["id"], timeout=15)
    assert status == "completed" and attempts == 1
    lateness = (started - due).total_seconds()
    assert 0 <= lateness <= 5, f"started {lateness:.2f} s after due"


def test_retry_after_429_runs_again_on_time_without_cron(
    server: ApiServer, db: psycopg.Connection, make_user, fake_anthropic: FakeAnthropic
) -> None:
    client = server.client(user_token(make_user()))
    r = client.post("/api/jobs", json={"type": "ai.generate", "input": {"prompt": "hi"}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    status, _, _, attempts, _ = _wait_terminal(db, job_id, timeout=20)
    assert status == "completed", client.get(f"/api/jobs/{job_id}").json()
    assert attempts == 2 and len(fake_anthropic.calls) == 2
    # the second call came when retry-after said, and no later than 5 s after it
    gap = fake_anthropic.calls[1] - fake_anthropic.calls[0]
    assert 4 - 0.5 <= gap <= 4 + 5, f"second call {gap:.2f} s after the 429"
    result = client.get(f"/api/jobs/{job_id}").json()["result"]
    assert result["text"] == "hello after the wait"
