"""The HTTP API over real HTTP: `ai-jobs serve` as a subprocess, a real
database, real hand-off to the local worker endpoint."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from tests.api_server import CRON_SECRET, WORKER_SECRET, ApiServer, start_server
from tests.conftest import user_token

FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ApiServer]:
    srv = start_server(database_url, AI_JOBS_MAX_ACTIVE_PER_USER="6")
    yield srv
    srv.stop()


@pytest.fixture()
def alice(make_user, server: ApiServer) -> httpx.Client:
    return server.client(user_token(make_user()))


@pytest.fixture()
def bob(make_user, server: ApiServer) -> httpx.Client:
    return server.client(user_token(make_user()))


def wait_until(client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30) -> list[dict[str, Any]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        seen.append(job)
        if done(job):
            return seen
        time.sleep(0.05)
    pytest.fail(f"job {job_id} stuck: {seen[-1]['status']} {seen[-1].get('error')}")


def create(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("type", "example.countdown")
    return client.post("/api/jobs", json=body)


def test_lifecycle_create_handoff_progress_complete(alice: httpx.Client) -> None:
    r = create(alice, input={"steps": 4, "step_seconds": 0.4})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}" and job["status"] == "pending"
    seen = wait_until(alice, job["id"], lambda j: j["status"] == "completed")
    progress = [j["progress"] for j in seen]
    assert progress == sorted(progress), "progress went backwards"
    assert any(0 < p < 100 for p in progress), f"no intermediate progress seen: {set(progress)}"
    assert any(j["progress_message"] == "Step 3 of 4" for j in seen)
    final = seen[-1]
    assert final["result"]["steps_completed"] == 4 and final["progress"] == 100 and final["attempts"] == 1


def test_idempotent_create(alice: httpx.Client) -> None:
    first = alice.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}},
                       headers={"Idempotency-Key": "order-42"})
    again = alice.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}},
                       headers={"Idempotency-Key": "order-42"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    other = alice.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": 2}},
                       headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 422 and other.json()["code"] == "idempotency_conflict"


def test_cancel_running_job(alice: httpx.Client) -> None:
    job = create(alice, input={"steps": 50, "step_seconds": 0.1}).json()
    wait_until(alice, job["id"], lambda j: j["status"] == "running" and len(j["checkpoints"]) >= 1)
    r = alice.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested_at"]
    final = wait_until(alice, job["id"], lambda j: j["status"] == "cancelled", timeout=10)[-1]
    assert len(final["checkpoints"]) < 50
    assert alice.post(f"/api/jobs/{job['id']}/cancel").status_code == 200  # already cancelled: idempotent


def test_cancel_pending_and_conflicts(alice: httpx.Client) -> None:
    job = create(alice, run_at=FUTURE).json()
    assert alice.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    done = create(alice, input={"steps": 1, "step_seconds": 0}).json()
    wait_until(alice, done["id"], lambda j: j["status"] == "completed")
    r = alice.post(f"/api/jobs/{done['id']}/cancel")
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert alice.post(f"/api/jobs/{done['id']}/retry").status_code == 409


def test_retry_keeps_finished_steps(alice: httpx.Client) -> None:
    job = create(alice, input={"steps": 3, "step_seconds": 0, "fail_at_step": 2}).json()
    failed = wait_until(alice, job["id"], lambda j: j["status"] == "failed")[-1]
    assert failed["error"]["code"] == "countdown_failure" and failed["attempts"] == 1
    step_one = failed["checkpoints"]["step-1"]
    r = alice.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 202 and r.json()["status"] in ("pending", "running")
    again = wait_until(alice, job["id"], lambda j: j["status"] == "failed" and j["attempts"] == 1 and j["updated_at"] > failed["updated_at"])[-1]
    assert again["checkpoints"]["step-1"] == step_one  # step 1 was not run again


def test_delete(alice: httpx.Client) -> None:
    job = create(alice, run_at=FUTURE).json()
    assert alice.delete(f"/api/jobs/{job['id']}").status_code == 409
    alice.post(f"/api/jobs/{job['id']}/cancel")
    r = alice.delete(f"/api/jobs/{job['id']}")
    assert r.status_code == 204 and r.content == b""
    assert alice.get(f"/api/jobs/{job['id']}").status_code == 404


def test_list_paginates_newest_first_with_filters(alice: httpx.Client) -> None:
    ids = [create(alice, run_at=FUTURE, input={"steps": i + 1}).json()["id"] for i in range(5)]
    pages, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = alice.get("/api/jobs", params=params).json()
        pages.append([j["id"] for j in body["jobs"]])
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for page in pages for i in page] == list(reversed(ids))
    alice.post(f"/api/jobs/{ids[0]}/cancel")
    cancelled = alice.get("/api/jobs", params={"status": "cancelled"}).json()["jobs"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert alice.get("/api/jobs", params={"type": "ai.generate"}).json()["jobs"] == []


def test_per_user_cap_is_429_with_retry_after(alice: httpx.Client, bob: httpx.Client) -> None:
    for _ in range(6):
        assert create(alice, run_at=FUTURE).status_code == 202
    r = create(alice, run_at=FUTURE)
    assert r.status_code == 429 and r.json()["code"] == "active_job_limit" and int(r.headers["retry-after"]) > 0
    assert create(bob, run_at=FUTURE).status_code == 202  # per user


def test_other_users_get_404_everywhere(alice: httpx.Client, bob: httpx.Client) -> None:
    job = create(alice, run_at=FUTURE).json()
    jid = job["id"]
    for method, path in (("GET", f"/api/jobs/{jid}"), ("POST", f"/api/jobs/{jid}/cancel"),
                         ("POST", f"/api/jobs/{jid}/retry"), ("DELETE", f"/api/jobs/{jid}")):
        r = bob.request(method, path)
        assert r.status_code == 404, (method, path, r.status_code)
        assert r.json()["detail"] == "job not found"
    # and it looks exactly like a job that does not exist
    assert bob.get(f"/api/jobs/{uuid.uuid4()}").json() == bob.get(f"/api/jobs/{jid}").json()
    assert bob.get("/api/jobs").json()["jobs"] == []
    assert alice.get(f"/api/jobs/{jid}").json()["status"] == "pending"  # untouched


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda u: user_token(u, exp=int(time.time()) - 3600), id="expired"),
        pytest.param(lambda u: user_token(u, exp=int(time.time()) - 1), id="expired-1s-ago"),  # no leeway on exp
        pytest.param(lambda u: user_token(u, nbf=int(time.time()) + 90), id="not-valid-yet"),
        pytest.param(lambda u: user_token(u, _secret="another-secret-that-is-long-enough-123"), id="wrong-signature"),
        pytest.param(lambda u: jwt.encode({"sub": str(u), "role": "authenticated", "aud": "authenticated",
                                           "exp": int(time.time()) + 600}, None, algorithm="none"), id="alg-none"),
        pytest.param(lambda u: user_token(u, aud="other-app"), id="wrong-audience"),
        pytest.param(lambda u: user_token(u, role="anon"), id="anon-role"),
        pytest.param(lambda u: user_token(u, role="service_role"), id="service-role-key"),
        pytest.param(lambda u: user_token(u, sub="not-a-uuid"), id="bad-subject"),
        pytest.param(lambda u: user_token(u, exp=None), id="no-expiry"),
        pytest.param(lambda u: "garbage", id="garbage"),
        pytest.param(lambda u: "", id="empty"),
    ],
)
def test_bad_tokens_get_401(server: ApiServer, make_user, token) -> None:
    value = token(make_user())
    with server.client(value or None) as client:
        for method, path in (("POST", "/api/jobs"), ("GET", "/api/jobs"), ("GET", f"/api/jobs/{uuid.uuid4()}")):
            r = client.request(method, path, json={"type": "example.countdown"} if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_nbf_and_iat_may_be_a_little_ahead(server: ApiServer, make_user) -> None:
    """The issuer's clock may run up to 30 s ahead of ours: nbf/iat 10 s in the future pass."""
    ahead = int(time.time()) + 10
    with server.client(user_token(make_user(), nbf=ahead, iat=ahead)) as client:
        r = client.get("/api/jobs")
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("method", "path", "secret"),
    [("POST", "/api/internal/work", WORKER_SECRET), ("GET", "/api/internal/sweep", CRON_SECRET)],
)
def test_internal_endpoints_need_their_secret(server: ApiServer, method: str, path: str, secret: str) -> None:
    with server.client() as anonymous:
        assert anonymous.request(method, path).status_code == 401
    for wrong in ("nope", CRON_SECRET if secret == WORKER_SECRET else WORKER_SECRET, secret + "x"):
        with server.client(wrong) as client:
            assert client.request(method, path).status_code == 401
    with server.client(secret) as client:
        r = client.request(method, path)
        assert r.status_code == 200, r.text


def test_job_types_openapi_and_health(server: ApiServer) -> None:
    with server.client() as client:
        types = {t["type"]: t for t in client.get("/api/job-types").json()["job_types"]}
        assert {"ai.generate", "ai.extract", "ai.match", "ai.map_batches", "example.countdown"} <= set(types)
        assert types["example.countdown"]["input_schema"]["properties"]["steps"]["maximum"] == 1000
        spec = client.get("/api/openapi.json").json()
        assert spec["openapi"].startswith("3.1") and "/api/jobs/{job_id}/cancel" in spec["paths"]
        assert "CreateJobRequest" in spec["components"]["schemas"]
        assert client.get("/api/health").json()["database"] == "ok"


def test_handoff_target_down_jobs_complete_after_sweep(database_url: str, make_user) -> None:
    dead = start_server(database_url, AI_JOBS_WORKER_URL="http://127.0.0.1:9")  # discard port: refused
    try:
        with dead.client(user_token(make_user())) as client:
            started = time.monotonic()
            r = create(client, input={"steps": 2, "step_seconds": 0})
            assert r.status_code == 202 and time.monotonic() - started < 2
            time.sleep(1.0)
            job_id = r.json()["id"]
            assert client.get(f"/api/jobs/{job_id}").json()["status"] == "pending"  # nobody ran it
            with dead.client(CRON_SECRET) as cron:
                report = cron.get("/api/internal/sweep").json()
            assert report["ran"].get("completed", 0) >= 1
            assert client.get(f"/api/jobs/{job_id}").json()["status"] == "completed"
    finally:
        dead.stop()


def test_server_killed_mid_job_restarts_and_completes(database_url: str, make_user) -> None:
    env = {"AI_JOBS_LEASE_SECONDS": "2"}
    first = start_server(database_url, **env)
    token = user_token(make_user())
    try:
        with first.client(token) as client:
            job_id = create(client, input={"steps": 8, "step_seconds": 0.3}).json()["id"]
            before = wait_until(client, job_id, lambda j: len(j["checkpoints"]) >= 2)[-1]
        first.kill()
    finally:
        first.kill()
    second = start_server(database_url, sweep_interval=0.5, **env)
    try:
        with second.client(token) as client:
            final = wait_until(client, job_id, lambda j: j["status"] == "completed", timeout=60)[-1]
    finally:
        second.stop()
    assert final["result"]["steps_completed"] == 8 and final["attempts"] == 2
    for step, value in before["checkpoints"].items():
        assert final["checkpoints"][step] == value  # finished steps were not redone
