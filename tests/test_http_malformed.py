"""Bad input of every kind gets a useful 4xx problem+json, never a 5xx, and
never creates or corrupts a job."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.api_server import WORKER_SECRET, ApiServer, start_server
from tests.conftest import user_token


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ApiServer]:
    srv = start_server(database_url, AI_JOBS_MAX_BODY_BYTES="65536")
    yield srv
    srv.stop()


def deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


JSON = {"content-type": "application/json"}
CASES: list[tuple[str, str, str, bytes | None, dict[str, str]]] = [
    # (id, method, path, body, headers)
    ("not-json", "POST", "/api/jobs", b"{nope", JSON),
    ("empty-body", "POST", "/api/jobs", b"", JSON),
    ("json-array", "POST", "/api/jobs", b"[1, 2]", JSON),
    ("json-string", "POST", "/api/jobs", b'"x"', JSON),
    ("json-null", "POST", "/api/jobs", b"null", JSON),
    ("not-utf8", "POST", "/api/jobs", b'{"type": "\xff\xfe"}', JSON),
    ("wrong-content-type", "POST", "/api/jobs", b'{"type": "example.countdown"}', {"content-type": "text/plain"}),
    ("form-encoded", "POST", "/api/jobs", b"type=example.countdown", {"content-type": "application/x-www-form-urlencoded"}),
    ("missing-type", "POST", "/api/jobs", b'{"input": {}}', JSON),
    ("type-not-string", "POST", "/api/jobs", b'{"type": 42}', JSON),
    ("unknown-type", "POST", "/api/jobs", b'{"type": "no.such.type"}', JSON),
    ("unknown-field", "POST", "/api/jobs", b'{"type": "example.countdown", "surprise": 1}', JSON),
    ("input-not-object", "POST", "/api/jobs", b'{"type": "example.countdown", "input": [1]}', JSON),
    ("input-wrong-type", "POST", "/api/jobs", b'{"type": "example.countdown", "input": {"steps": "many"}}', JSON),
    ("input-out-of-range", "POST", "/api/jobs", b'{"type": "example.countdown", "input": {"steps": 100000}}', JSON),
    ("input-negative", "POST", "/api/jobs", b'{"type": "example.countdown", "input": {"step_seconds": -1}}', JSON),
    ("generate-empty-prompt", "POST", "/api/jobs", b'{"type": "ai.generate", "input": {"prompt": ""}}', JSON),
    ("extract-bad-schema", "POST", "/api/jobs", b'{"type": "ai.extract", "input": {"text": "x", "schema": {"type": 5}}}', JSON),
    ("priority-too-high", "POST", "/api/jobs", b'{"type": "example.countdown", "priority": 5000}', JSON),
    ("priority-float", "POST", "/api/jobs", b'{"type": "example.countdown", "priority": 1.5}', JSON),
    ("run-at-garbage", "POST", "/api/jobs", b'{"type": "example.countdown", "run_at": "tomorrow"}', JSON),
    ("run-at-naive", "POST", "/api/jobs", b'{"type": "example.countdown", "run_at": "2030-01-01T00:00:00"}', JSON),
    ("idempotency-key-empty", "POST", "/api/jobs", b'{"type": "example.countdown", "idempotency_key": ""}', JSON),
    ("idempotency-key-huge", "POST", "/api/jobs", json.dumps({"type": "example.countdown", "idempotency_key": "k" * 300}).encode(), JSON),
    ("idempotency-header-huge", "POST", "/api/jobs", b'{"type": "example.countdown"}', {**JSON, "idempotency-key": "k" * 300}),
    ("idempotency-mismatch", "POST", "/api/jobs", b'{"type": "example.countdown", "idempotency_key": "a"}', {**JSON, "idempotency-key": "b"}),
    ("metadata-not-object", "POST", "/api/jobs", b'{"type": "example.countdown", "metadata": "x"}', JSON),
    ("huge-body", "POST", "/api/jobs", json.dumps({"type": "ai.generate", "input": {"prompt": "x" * 100_000}}).encode(), JSON),
    ("deeply-nested-input", "POST", "/api/jobs", json.dumps({"type": "example.countdown", "metadata": deep(60)}).encode(), JSON),
    ("pathologically-nested", "POST", "/api/jobs", b'{"type": "x", "input": ' + b"[" * 30000 + b"]" * 30000 + b"}", JSON),
    ("nul-in-string", "POST", "/api/jobs", b'{"type": "ai.generate", "input": {"prompt": "a\\u0000b"}}', JSON),
    ("bad-uuid-get", "GET", "/api/jobs/not-a-uuid", None, {}),
    ("bad-uuid-cancel", "POST", "/api/jobs/12345/cancel", None, {}),
    ("bad-uuid-retry", "POST", "/api/jobs/%27%3B--/retry", None, {}),
    ("bad-uuid-delete", "DELETE", "/api/jobs/zzz", None, {}),
    ("missing-job", "GET", f"/api/jobs/{uuid.uuid4()}", None, {}),
    ("list-bad-status", "GET", "/api/jobs?status=exploded", None, {}),
    ("list-bad-limit", "GET", "/api/jobs?limit=abc", None, {}),
    ("list-limit-zero", "GET", "/api/jobs?limit=0", None, {}),
    ("list-limit-huge", "GET", "/api/jobs?limit=100000", None, {}),
    ("list-bad-type", "GET", "/api/jobs?type=DROP%20TABLE", None, {}),
    ("list-bad-cursor", "GET", "/api/jobs?cursor=!!!", None, {}),
    ("list-forged-cursor", "GET", "/api/jobs?cursor=eyJjIjogIm5vdC1hLWRhdGUiLCAiaSI6ICJ4In0", None, {}),
    ("list-repeated-param", "GET", "/api/jobs?limit=1&limit=2", None, {}),
    ("list-unknown-param", "GET", "/api/jobs?colour=red", None, {}),
    ("wrong-method", "PUT", "/api/jobs", b"{}", JSON),
    ("unknown-route", "GET", "/api/nothing-here", None, {}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_requests_are_useful_4xx(server: ApiServer, make_user, database_url: str, method, path, body, headers) -> None:
    token = user_token(make_user())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.request(method, path, content=body, headers={**headers, "authorization": f"Bearer {token}"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == r.status_code and problem["detail"] and problem["code"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0  # nothing half-created


def test_field_errors_point_at_the_field(server: ApiServer, make_user) -> None:
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {user_token(make_user())}"}) as client:
        r = client.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": "many", "step_seconds": -1}})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"input.steps", "input.step_seconds"}


def test_internal_work_rejects_bad_bodies(server: ApiServer) -> None:
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {WORKER_SECRET}"}) as client:
        for body in (b"{x", b'{"job_id": "nope"}', b'{"job_id": 1}', b'{"extra": 1}', b"[]"):
            r = client.post("/api/internal/work", content=body, headers=JSON)
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
