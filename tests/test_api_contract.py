"""The OpenAPI document is the contract: the server answers nothing it does not
list, and lists nothing it cannot answer.

(a) the app's routes are exactly the document's operations;
(b) a table of scenarios drives the real app (werkzeug test client, real
    PostgreSQL; a database that is down for the 503s) through every status of
    every operation, and each response must be declared for its operation with
    the right content type, its required headers and a body that validates
    against the declared schema (for problems: the declared `code` and `type`);
(c) every status the document declares is produced by at least one scenario.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import Client, TestResponse

from ai_jobs.claude.spend import SpendSettings
from ai_jobs.http.app import App, create_app
from ai_jobs.http.openapi import openapi_document
from ai_jobs.http.problems import PROBLEM_JSON
from ai_jobs.http.services import Services
from ai_jobs.models import JobError, NewJob
from ai_jobs.registry import load_job_modules
from ai_jobs.schedules import ScheduleSettings
from ai_jobs.settings import Settings
from ai_jobs.store.base import JobStore
from tests.conftest import JWT_SECRET, user_token, unused_port

WORKER_SECRET = "contract-worker-secret"
CRON_SECRET = "contract-cron-secret"
MAX_ACTIVE = 2
MAX_SCHEDULES = 2
MAX_BODY = 2048
BUDGET = 0.1
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()
FATAL = JobError(code="bad_request", message="prompt too long", retryable=False)
DOC = openapi_document()
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}



def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        store="postgres", jwt_secret=JWT_SECRET, worker_secret=WORKER_SECRET, cron_secret=CRON_SECRET,
        max_active_per_user=MAX_ACTIVE, max_body_bytes=MAX_BODY,
        worker_budget_seconds=6,  # enough to claim one short job (the runner keeps 5 s in reserve)
        # small spend limits, so the bodies that reach them fit in MAX_BODY: an ai.generate job
        # with the default max_tokens (4096) is estimated at ~$0.043 and reserves ~$0.086
        spend=SpendSettings(max_job_cost_usd=1, user_daily_budget_usd=BUDGET),
        schedules=ScheduleSettings(max_per_user=MAX_SCHEDULES),
    )
    return Settings(**{**base, **overrides})


# -- the apps ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_app(database_url: str) -> Iterator[App]:
    services = Services(settings=_settings(database_url=database_url), registry=load_job_modules())
    yield create_app(services)
    services.close()


@pytest.fixture(scope="module")
def down_app() -> Iterator[App]:
    """The database is down (nothing listens on its port): a store call fails after db_timeout_seconds."""
    url = f"postgresql://postgres@127.0.0.1:{unused_port()}/postgres"
    services = Services(settings=_settings(database_url=url, db_timeout_seconds=0.3), registry=load_job_modules())
    yield create_app(services)
    services.close()


@pytest.fixture(scope="module")
def keys_down_app() -> Iterator[App]:
    """A Supabase project on asymmetric keys whose JWKS endpoint cannot be reached."""
    jwks = f"http://127.0.0.1:{unused_port()}/auth/v1/.well-known/jwks.json"
    services = Services(settings=_settings(jwt_secret=None, jwks_url=jwks, database_url="postgresql:///unused"),
                        registry=load_job_modules())
    yield create_app(services)
    services.close()


@pytest.fixture(scope="module")
def no_job_types_app(database_url: str) -> Iterator[App]:
    """The job types' modules fail to import: no registry given, so each request that
    needs one loads it, while _without_job_types has AI_JOBS_JOB_MODULES name a module
    that does not exist."""
    services = Services(settings=_settings(database_url=database_url))
    yield create_app(services)
    services.close()


def _without_job_types(send: Send) -> Send:
    def wrapped(w: World) -> TestResponse:
        with mock.patch.dict(os.environ, {"AI_JOBS_JOB_MODULES": "no_such_module_for_ai_jobs_contract"}):
            return send(w)

    return wrapped


# -- the world a scenario runs in ------------------------------------------------


@dataclass
class World:
    client: Client
    store: JobStore
    alice: uuid.UUID
    bob: uuid.UUID
    made: dict[str, uuid.UUID] = field(default_factory=dict)
    made_at: dict[str, datetime] = field(default_factory=dict)  # updated_at before the request

    def auth(self, user: uuid.UUID | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {user_token(user or self.alice)}"}

    def job(self, state: str, *, owner: uuid.UUID | None = None) -> uuid.UUID:
        """A job of `owner` (alice) in `state`: pending (due tomorrow), running,
        flagged (running, cancel requested), completed, failed or cancelled; paused (pending,
        then paused), pause_requested (running, asked to pause), failed_parent (failed,
        with one pending child)."""
        owner = owner or self.alice
        due_now = state not in ("pending", "paused")
        new = NewJob(user_id=owner, job_type="example.countdown", input={"steps": 1, "step_seconds": 0},
                     run_at=None if due_now else datetime.fromisoformat(FUTURE))
        job_id = self.store.enqueue(new).job.id
        if due_now:
            assert [j.id for j in self.store.claim("contract", job_id=job_id)] == [job_id]
        if state == "flagged":
            self.store.request_cancel(job_id)
        elif state == "completed":
            self.store.complete(job_id, "contract", {"steps_completed": 1})
        elif state == "failed":
            self.store.fail(job_id, "contract", FATAL)
        elif state == "cancelled":
            self.store.request_cancel(job_id)
            self.store.mark_cancelled(job_id, "contract")
        elif state == "paused":  # pending (due tomorrow), then paused
            self.store.pause(job_id)
        elif state == "pause_requested":
            self.store.pause(job_id)  # running: asked to pause at its next step
        elif state == "failed_parent":  # failed, with one pending child (due tomorrow)
            self.store.spawn(job_id, "contract", [{"key": "k", "job_type": "example.countdown", "run_at": FUTURE,
                                                   "input": {"steps": 1, "step_seconds": 0}}])
            self.store.fail(job_id, "contract", FATAL)
        return job_id

    def schedule(self, *, owner: uuid.UUID | None = None, paused: bool = False) -> uuid.UUID:
        """An hourly example.countdown schedule of `owner` (alice)."""
        return self.store.create_schedule(
            owner or self.alice, name="contract", job_type="example.countdown", input={"steps": 1, "step_seconds": 0},
            cron="0 * * * *", timezone="UTC", next_run_at=datetime.now(UTC) + timedelta(hours=1), paused=paused,
        ).id

    def post_json(self, path: str, body: Any, **kw: Any) -> TestResponse:
        return self.client.post(path, data=json.dumps(body), content_type="application/json", **kw)


Send = Callable[[World], TestResponse]
Check = Callable[[World, TestResponse], None]


@dataclass(frozen=True)
class Scenario:
    method: str
    path: str  # as in the document
    status: int
    name: str
    send: Send
    check: Check | None = None
    app: str = "live"  # live | down | keys_down | no_job_types

    @property
    def id(self) -> str:
        return f"{self.method} {self.path} {self.status} {self.name}"


SCHEDULES = "/api/schedules"
SCHEDULE = "/api/schedules/{schedule_id}"


def hourly(**body: Any) -> dict[str, Any]:
    return {"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}, "cron": "0 * * * *",
            "timezone": "Europe/Berlin", **body}


def _schedule_created(w: World, r: TestResponse) -> None:
    body = r.json
    assert body["user_id"] == str(w.alice) and body["cron"] == "0 * * * *" and not body["paused"]
    assert datetime.fromisoformat(body["next_run_at"]).minute == 0


def _one_schedule_no_cursor(w: World, r: TestResponse) -> None:
    assert [s["user_id"] for s in r.json["schedules"]] == [str(w.alice)] and r.json["next_cursor"] is None


def _schedule_gone(w: World, r: TestResponse) -> None:
    assert w.client.get(SCHEDULES, headers=w.auth()).json["schedules"] == []


def _schedule_paused(paused: bool) -> Check:
    def check(w: World, r: TestResponse) -> None:
        assert r.json["paused"] is paused
        if not paused:
            assert datetime.fromisoformat(r.json["next_run_at"]) > datetime.now(UTC)

    return check


def countdown(**body: Any) -> dict[str, Any]:
    return {"type": "example.countdown", "input": {"steps": 1, "step_seconds": 0}, "run_at": FUTURE, **body}


def rs256_token() -> str:
    """Well-formed, RS256 in its header; never verified, because the keys cannot be fetched."""
    part = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'RS256', 'typ': 'JWT', 'kid': 'k1'})}.{part({'sub': str(uuid.uuid4())})}.c2ln"


def generate(**body: Any) -> dict[str, Any]:
    return {"type": "ai.generate", "input": {"prompt": "Say hello"}, "run_at": FUTURE, **body}


def _over_budget(w: World) -> TestResponse:
    """The first ai.generate job reserves its cap (~$0.086 of the $0.10 budget); a second does not fit."""
    assert w.post_json("/api/jobs", generate(), headers=w.auth()).status_code == 202
    return w.post_json("/api/jobs", generate(), headers=w.auth())


def _retry_over_budget(w: World) -> TestResponse:
    """A failed ai.generate job whose cap no longer fits next to a pending one."""
    cost = {"cost_estimate_usd": 0.04, "cost_cap_usd": 0.08}
    w.store.enqueue(NewJob(user_id=w.alice, job_type="ai.generate", input={"prompt": "a"},
                           run_at=datetime.fromisoformat(FUTURE), **cost))
    failed = w.store.enqueue(NewJob(user_id=w.alice, job_type="ai.generate", input={"prompt": "b"}, **cost)).job.id
    assert [j.id for j in w.store.claim("contract", job_id=failed)] == [failed]
    w.store.fail(failed, "contract", FATAL)
    return w.client.post(f"/api/jobs/{failed}/retry", headers=w.auth())


def _budget_problem(w: World, r: TestResponse) -> None:
    assert r.json["code"] == "budget_exceeded", r.json
    assert r.headers["Retry-After"] == "60" and r.json["retry_after_seconds"] == 60  # active jobs hold the budget
    assert r.json["daily_budget_usd"] == BUDGET and r.json["spent_usd"] == 0 and r.json["reserved_usd"] > 0.07


def _fill_active(w: World) -> None:
    for _ in range(MAX_ACTIVE):
        w.job("pending")


def _check_created(w: World, r: TestResponse) -> None:
    assert r.json["status"] == "pending" and r.headers["Location"] == f"/api/jobs/{r.json['id']}"


def _repeat_create(w: World) -> TestResponse:
    first = w.post_json("/api/jobs", countdown(), headers={**w.auth(), "Idempotency-Key": "order-42"})
    assert first.status_code == 202
    w.made["first"] = uuid.UUID(first.json["id"])
    return w.post_json("/api/jobs", countdown(), headers={**w.auth(), "Idempotency-Key": "order-42"})


def _idempotency_conflict(w: World) -> TestResponse:
    assert w.post_json("/api/jobs", countdown(idempotency_key="k"), headers=w.auth()).status_code == 202
    return w.post_json("/api/jobs", countdown(idempotency_key="k", input={"steps": 2}), headers=w.auth())


def _second_page(w: World) -> TestResponse:
    for _ in range(3):
        w.job("completed")
    first = w.client.get("/api/jobs?limit=2", headers=w.auth())
    assert first.status_code == 200 and len(first.json["jobs"]) == 2 and first.json["next_cursor"]
    return w.client.get(f"/api/jobs?limit=2&cursor={first.json['next_cursor']}", headers=w.auth())


def _run_due_job(w: World) -> TestResponse:
    job_id = w.store.enqueue(NewJob(user_id=w.alice, job_type="example.countdown",
                                    input={"steps": 1, "step_seconds": 0})).job.id
    w.made["due"] = job_id
    return w.post_json("/api/internal/work", {"job_id": str(job_id)},
                       headers={"Authorization": f"Bearer {WORKER_SECRET}"})


def _job_route(method: str, suffix: str, status: int, name: str, state: str | None, check: Check | None = None,
               *, job_id: str | None = None, owner: str = "alice", auth: bool = True, app: str = "live") -> Scenario:
    """A call on /api/jobs/{job_id}[suffix] for a job in `state` (or the literal `job_id`)."""

    def send(w: World) -> TestResponse:
        target = job_id or str(w.job(state or "pending", owner=w.bob if owner == "bob" else w.alice))
        if state is not None:
            w.made["job"] = uuid.UUID(target)
            w.made_at["job"] = w.store.get(w.made["job"]).updated_at
        headers = w.auth() if auth else {}
        return w.client.open(f"/api/jobs/{target}{suffix}", method=method, headers=headers)

    return Scenario(method, "/api/jobs/{job_id}" + suffix, status, name, send, check, app)


def _status_is(expected: str, *, unchanged: bool = False, **present: bool) -> Check:
    """The job in the body is the scenario's, in `expected` status; `present` says which
    fields are set; `unchanged`: the request did not write the row."""

    def check(w: World, r: TestResponse) -> None:
        assert r.json["id"] == str(w.made["job"]) and r.json["status"] == expected, r.json
        for key, want in present.items():
            assert (r.json[key] is not None) == want, (key, r.json[key])
        if unchanged:
            assert datetime.fromisoformat(r.json["updated_at"]) == w.made_at["job"]

    return check


def _problem_code(code: str, *, field: str | None = None, retry_after: str | None = None) -> Check:
    def check(w: World, r: TestResponse) -> None:
        assert r.json["code"] == code, r.json
        if field is not None:
            assert r.json["errors"][0]["field"] == field, r.json
        if retry_after is not None:
            assert r.headers["Retry-After"] == retry_after

    return check


def _check_repeat(w: World, r: TestResponse) -> None:
    _check_created(w, r)
    assert r.json["id"] == str(w.made["first"])


def _one_child(w: World, r: TestResponse) -> None:
    [child] = r.json["jobs"]
    assert child["parent_id"] == str(w.made["job"]) and child["spawn_key"] == "k" and child["depth"] == 1
    assert r.json["next_cursor"] is None


def _no_children(w: World, r: TestResponse) -> None:
    assert r.json == {"jobs": [], "next_cursor": None}


def _one_job_no_cursor(w: World, r: TestResponse) -> None:
    assert len(r.json["jobs"]) == 1 and r.json["next_cursor"] is None, r.json


def _gone(w: World, r: TestResponse) -> None:
    assert r.data == b"" and r.mimetype is None
    assert w.store.list(user_id=w.alice).jobs == []


def _lists_countdown(w: World, r: TestResponse) -> None:
    assert "example.countdown" in {t["type"] for t in r.json["job_types"]}
    assert r.headers["Cache-Control"] == "public, max-age=60"


def _health(status: str) -> Check:
    def check(w: World, r: TestResponse) -> None:
        assert r.json["status"] == status, r.json

    return check


def _is_the_doc(w: World, r: TestResponse) -> None:
    assert r.json == DOC


def _ran_due_job(w: World, r: TestResponse) -> None:
    assert [o["outcome"] for o in r.json["outcomes"]] == ["completed"], r.json
    assert w.store.get(w.made["due"]).status.value == "completed"


WORK = "/api/internal/work"
SWEEP = "/api/internal/sweep"
WORKER = {"Authorization": f"Bearer {WORKER_SECRET}"}
NOT_A_UUID = "not-a-uuid"
SOMEONE = str(uuid.UUID(int=42))

def _cut_short(w: World, path: str, headers: dict[str, str]) -> TestResponse:
    """A body that ends (the connection closes) before its Content-Length."""
    return w.client.post(path, content_type="application/json", headers=headers,
                         environ_overrides={"wsgi.input": io.BytesIO(b'{"type": "exa'), "CONTENT_LENGTH": "100"})


SCENARIOS: list[Scenario] = [
    # POST /api/jobs
    Scenario("POST", "/api/jobs", 202, "created", lambda w: w.post_json("/api/jobs", countdown(), headers=w.auth()),
             _check_created),
    Scenario("POST", "/api/jobs", 200, "idempotent repeat", _repeat_create, _check_repeat),
    Scenario("POST", "/api/jobs", 202, "no Content-Type: read as JSON",
             lambda w: w.client.post("/api/jobs", data=json.dumps(countdown()), headers=w.auth()), _check_created),
    Scenario("POST", "/api/jobs", 400, "malformed JSON",
             lambda w: w.client.post("/api/jobs", data='{"type": ', content_type="application/json", headers=w.auth()),
             _problem_code("invalid_json")),
    Scenario("POST", "/api/jobs", 400, "NaN is not JSON",
             lambda w: w.client.post("/api/jobs", data='{"type": "example.countdown", "metadata": {"a": NaN}}',
                                     content_type="application/json", headers=w.auth()),
             _problem_code("invalid_json")),
    Scenario("POST", "/api/jobs", 400, "empty body",
             lambda w: w.client.post("/api/jobs", data="", content_type="application/json", headers=w.auth()),
             _problem_code("empty_body")),
    Scenario("POST", "/api/jobs", 400, "body cut short", lambda w: _cut_short(w, "/api/jobs", w.auth()),
             _problem_code("malformed_body")),
    Scenario("POST", "/api/jobs", 400, "blank Idempotency-Key",
             lambda w: w.post_json("/api/jobs", countdown(), headers={**w.auth(), "Idempotency-Key": "  "}),
             _problem_code("invalid_idempotency_key")),
    Scenario("POST", "/api/jobs", 400, "Idempotency-Key not ASCII",
             lambda w: w.post_json("/api/jobs", countdown(idempotency_key="clé-2"),
                                   headers={**w.auth(), "Idempotency-Key": "clé-2"}),
             _problem_code("invalid_idempotency_key")),
    Scenario("POST", "/api/jobs", 500, "job types fail to import",
             _without_job_types(lambda w: w.post_json("/api/jobs", countdown(), headers=w.auth())),
             _problem_code("job_types_unavailable"), app="no_job_types"),
    Scenario("POST", "/api/jobs", 401, "no token", lambda w: w.post_json("/api/jobs", countdown())),
    Scenario("POST", "/api/jobs", 401, "token signed with another secret",
             lambda w: w.post_json("/api/jobs", countdown(),
                                   headers={"Authorization": f"Bearer {user_token(w.alice, _secret='x' * 40)}"})),
    Scenario("POST", "/api/jobs", 413, "body over the limit",
             lambda w: w.post_json("/api/jobs", countdown(metadata={"pad": "x" * MAX_BODY}), headers=w.auth()),
             _problem_code("body_too_large")),
    Scenario("POST", "/api/jobs", 415, "text/plain",
             lambda w: w.client.post("/api/jobs", data=json.dumps(countdown()), content_type="text/plain",
                                     headers=w.auth()),
             _problem_code("unsupported_media_type")),
    Scenario("POST", "/api/jobs", 422, "unknown type",
             lambda w: w.post_json("/api/jobs", countdown(type="no.such_type"), headers=w.auth()),
             _problem_code("unknown_job_type")),
    Scenario("POST", "/api/jobs", 422, "input fails the type's schema",
             lambda w: w.post_json("/api/jobs", countdown(input={"steps": "many"}), headers=w.auth()),
             _problem_code("invalid_input", field="input.steps")),
    Scenario("POST", "/api/jobs", 422, "unknown field",
             lambda w: w.post_json("/api/jobs", countdown(colour="red"), headers=w.auth()),
             _problem_code("invalid_body")),
    Scenario("POST", "/api/jobs", 422, "body is not an object",
             lambda w: w.post_json("/api/jobs", [countdown()], headers=w.auth()), _problem_code("invalid_body")),
    Scenario("POST", "/api/jobs", 422, "NUL in a string",
             lambda w: w.post_json("/api/jobs", countdown(metadata={"a": "\x00"}), headers=w.auth()),
             _problem_code("invalid_json_value")),
    Scenario("POST", "/api/jobs", 422, "number overflows a double",
             lambda w: w.client.post("/api/jobs", data='{"type": "example.countdown", "metadata": {"a": 1e400}}',
                                     content_type="application/json", headers=w.auth()),
             _problem_code("invalid_json_value")),
    Scenario("POST", "/api/jobs", 422, "lone surrogate",
             lambda w: w.client.post("/api/jobs", data='{"type": "example.countdown", "metadata": {"a": "\\ud800"}}',
                                     content_type="application/json", headers=w.auth()),
             _problem_code("invalid_json_value")),
    Scenario("POST", "/api/jobs", 422, "idempotency key reused for another job", _idempotency_conflict,
             _problem_code("idempotency_conflict")),
    Scenario("POST", "/api/jobs", 422, "header and body keys differ",
             lambda w: w.post_json("/api/jobs", countdown(idempotency_key="a"), headers={**w.auth(), "Idempotency-Key": "b"}),
             _problem_code("idempotency_key_mismatch")),
    Scenario("POST", "/api/jobs", 422, "priority above 0 (only the job type raises it)",
             lambda w: w.post_json("/api/jobs", countdown(priority=5), headers=w.auth()),
             _problem_code("invalid_body", field="priority")),
    Scenario("POST", "/api/jobs", 422, "run_at a year and a day ahead",
             lambda w: w.post_json("/api/jobs", countdown(run_at=(datetime.now(UTC) + timedelta(days=366)).isoformat()),
                                   headers=w.auth()),
             _problem_code("invalid_body", field="run_at")),
    Scenario("POST", "/api/jobs", 422, "malformed concurrency_key",
             lambda w: w.post_json("/api/jobs", countdown(concurrency_key="a key; drop"), headers=w.auth()),
             _problem_code("invalid_body", field="concurrency_key")),
    Scenario("POST", "/api/jobs", 422, "model not on the allowlist",
             lambda w: w.post_json("/api/jobs", generate(input={"prompt": "x", "model": "claude-opus-5-5"}),
                                   headers=w.auth()),
             _problem_code("model_not_allowed", field="input.model")),
    Scenario("POST", "/api/jobs", 422, "max_tokens over the type's cap",
             lambda w: w.post_json("/api/jobs", generate(input={"prompt": "x", "max_tokens": 8193}), headers=w.auth()),
             _problem_code("max_tokens_too_large", field="input.max_tokens")),
    Scenario("POST", "/api/jobs", 422, "more Claude calls than allowed per job",
             lambda w: w.post_json("/api/jobs", {"type": "ai.map_batches", "input": {
                 "document": "D", "items": ["i"] * 101, "batch_size": 1}}, headers=w.auth()),
             _problem_code("too_many_calls", field="input.items")),
    Scenario("POST", "/api/jobs", 422, "cost estimate over the per-job cap",
             lambda w: w.post_json("/api/jobs", {"type": "ai.map_batches", "input": {
                 "document": "D", "items": ["i"] * 30, "batch_size": 1}}, headers=w.auth()),
             _problem_code("job_cost_too_high")),
    Scenario("POST", "/api/jobs", 429, "per-user cap",
             lambda w: (_fill_active(w), w.post_json("/api/jobs", countdown(), headers=w.auth()))[1],
             _problem_code("active_job_limit", retry_after="10")),
    Scenario("POST", "/api/jobs", 429, "daily Claude budget", _over_budget, _budget_problem),
    Scenario("POST", "/api/jobs", 503, "database down",
             lambda w: w.post_json("/api/jobs", countdown(), headers=w.auth()), _problem_code("store_unavailable"),
             app="down"),
    Scenario("POST", "/api/jobs", 503, "signing keys unreachable",
             lambda w: w.post_json("/api/jobs", countdown(), headers={"Authorization": f"Bearer {rs256_token()}"}),
             _problem_code("auth_keys_unavailable"), app="keys_down"),
    # GET /api/jobs
    Scenario("GET", "/api/jobs", 200, "first page",
             lambda w: (w.job("pending"), w.job("pending", owner=w.bob), w.client.get("/api/jobs", headers=w.auth()))[2],
             _one_job_no_cursor),
    Scenario("GET", "/api/jobs", 200, "last page after a cursor", _second_page, _one_job_no_cursor),
    Scenario("GET", "/api/jobs", 400, "limit out of range", lambda w: w.client.get("/api/jobs?limit=0", headers=w.auth()),
             _problem_code("invalid_query", field="limit")),
    Scenario("GET", "/api/jobs", 400, "forged cursor", lambda w: w.client.get("/api/jobs?cursor=abc", headers=w.auth()),
             _problem_code("invalid_query")),
    Scenario("GET", "/api/jobs", 400, "repeated parameter",
             lambda w: w.client.get("/api/jobs?status=failed&status=pending", headers=w.auth()),
             _problem_code("invalid_query")),
    Scenario("GET", "/api/jobs", 400, "unknown parameter", lambda w: w.client.get("/api/jobs?sort=asc", headers=w.auth()),
             _problem_code("invalid_query")),
    Scenario("GET", "/api/jobs", 401, "no token", lambda w: w.client.get("/api/jobs")),
    Scenario("GET", "/api/jobs", 503, "database down", lambda w: w.client.get("/api/jobs", headers=w.auth()),
             app="down"),
    # GET /api/jobs/{job_id}
    _job_route("GET", "", 200, "own job", "running", _status_is("running")),
    _job_route("GET", "", 400, "not a UUID", None, _problem_code("invalid_job_id"), job_id=NOT_A_UUID),
    _job_route("GET", "", 401, "no token", "pending", auth=False),
    _job_route("GET", "", 404, "no such job", None, _problem_code("job_not_found"), job_id=SOMEONE),
    _job_route("GET", "", 404, "another user's job", "pending", _problem_code("job_not_found"), owner="bob"),
    _job_route("GET", "", 503, "database down", None, job_id=SOMEONE, app="down"),
    # DELETE /api/jobs/{job_id}
    _job_route("DELETE", "", 204, "cancelled job", "cancelled", _gone),
    _job_route("DELETE", "", 204, "failed job", "failed"),
    _job_route("DELETE", "", 400, "not a UUID", None, job_id=NOT_A_UUID),
    _job_route("DELETE", "", 401, "no token", "completed", auth=False),
    _job_route("DELETE", "", 404, "another user's job", "completed", owner="bob"),
    _job_route("DELETE", "", 409, "pending job", "pending", _problem_code("invalid_state")),
    _job_route("DELETE", "", 409, "running job", "running", _problem_code("invalid_state")),
    _job_route("DELETE", "", 503, "database down", None, job_id=SOMEONE, app="down"),
    # POST /api/jobs/{job_id}/cancel
    _job_route("POST", "/cancel", 200, "pending: cancelled at once", "pending",
               _status_is("cancelled", cancel_requested_at=True, finished_at=True)),
    _job_route("POST", "/cancel", 200, "running: cancel requested", "running",
               _status_is("running", cancel_requested_at=True, finished_at=False)),
    _job_route("POST", "/cancel", 200, "running, already requested: unchanged", "flagged",
               _status_is("running", cancel_requested_at=True, unchanged=True)),
    _job_route("POST", "/cancel", 200, "already cancelled: unchanged", "cancelled",
               _status_is("cancelled", unchanged=True)),
    _job_route("POST", "/cancel", 400, "not a UUID", None, _problem_code("invalid_job_id"), job_id=NOT_A_UUID),
    _job_route("POST", "/cancel", 401, "no token", "running", auth=False),
    _job_route("POST", "/cancel", 404, "another user's job", "running", owner="bob"),
    _job_route("POST", "/cancel", 409, "completed job", "completed", _problem_code("invalid_state")),
    _job_route("POST", "/cancel", 409, "failed job", "failed", _problem_code("invalid_state")),
    _job_route("POST", "/cancel", 503, "database down", None, job_id=SOMEONE, app="down"),
    # POST /api/jobs/{job_id}/retry
    _job_route("POST", "/retry", 202, "failed job", "failed", _status_is("pending", finished_at=False)),
    _job_route("POST", "/retry", 202, "cancelled job", "cancelled", _status_is("pending", cancel_requested_at=False)),
    _job_route("POST", "/retry", 400, "not a UUID", None, _problem_code("invalid_job_id"), job_id=NOT_A_UUID),
    _job_route("POST", "/retry", 401, "no token", "failed", auth=False),
    _job_route("POST", "/retry", 404, "another user's job", "failed", owner="bob"),
    _job_route("POST", "/retry", 409, "pending job", "pending", _problem_code("invalid_state")),
    _job_route("POST", "/retry", 409, "completed job", "completed", _problem_code("invalid_state")),
    Scenario("POST", "/api/jobs/{job_id}/retry", 429, "per-user cap",
             lambda w: (_fill_active(w), w.client.post(f"/api/jobs/{w.job('failed')}/retry", headers=w.auth()))[1],
             _problem_code("active_job_limit")),
    Scenario("POST", "/api/jobs/{job_id}/retry", 429, "daily Claude budget", _retry_over_budget, _budget_problem),
    _job_route("POST", "/retry", 503, "database down", None, job_id=SOMEONE, app="down"),
    # workflows: pause, resume, children, and the tree rules
    _job_route("DELETE", "", 409, "a child job is still pending", "failed_parent", _problem_code("invalid_state")),
    _job_route("POST", "/cancel", 200, "paused: cancelled at once", "paused",
               _status_is("cancelled", cancel_requested_at=True, finished_at=True)),
    _job_route("POST", "/pause", 200, "pending: paused at once", "pending", _status_is("paused")),
    _job_route("POST", "/pause", 200, "running: pause requested", "running",
               _status_is("running", pause_requested_at=True)),
    _job_route("POST", "/pause", 200, "already paused: unchanged", "paused", _status_is("paused", unchanged=True)),
    _job_route("POST", "/pause", 400, "not a UUID", None, _problem_code("invalid_job_id"), job_id=NOT_A_UUID),
    _job_route("POST", "/pause", 401, "no token", "pending", auth=False),
    _job_route("POST", "/pause", 404, "another user's job", "pending", _problem_code("job_not_found"), owner="bob"),
    _job_route("POST", "/pause", 409, "completed job", "completed", _problem_code("invalid_state")),
    _job_route("POST", "/pause", 409, "being cancelled", "flagged", _problem_code("invalid_state")),
    _job_route("POST", "/pause", 503, "database down", None, job_id=SOMEONE, app="down"),
    _job_route("POST", "/resume", 200, "paused: pending again", "paused",
               _status_is("pending", pause_requested_at=False)),
    _job_route("POST", "/resume", 200, "running with a pause request: withdrawn", "pause_requested",
               _status_is("running", pause_requested_at=False)),
    _job_route("POST", "/resume", 200, "pending: unchanged", "pending", _status_is("pending", unchanged=True)),
    _job_route("POST", "/resume", 400, "not a UUID", None, _problem_code("invalid_job_id"), job_id=NOT_A_UUID),
    _job_route("POST", "/resume", 401, "no token", "paused", auth=False),
    _job_route("POST", "/resume", 404, "another user's job", "paused", _problem_code("job_not_found"), owner="bob"),
    _job_route("POST", "/resume", 409, "cancelled job", "cancelled", _problem_code("invalid_state")),
    _job_route("POST", "/resume", 503, "database down", None, job_id=SOMEONE, app="down"),
    _job_route("GET", "/children", 200, "a parent's children", "failed_parent", _one_child),
    _job_route("GET", "/children", 200, "no children", "completed", _no_children),
    _job_route("GET", "/children", 400, "not a UUID", None, _problem_code("invalid_job_id"), job_id=NOT_A_UUID),
    Scenario("GET", "/api/jobs/{job_id}/children", 400, "limit out of range",
             lambda w: w.client.get(f"/api/jobs/{w.job('completed')}/children?limit=0", headers=w.auth()),
             _problem_code("invalid_query", field="limit")),
    _job_route("GET", "/children", 401, "no token", "failed_parent", auth=False),
    _job_route("GET", "/children", 404, "another user's job", "failed_parent", _problem_code("job_not_found"),
               owner="bob"),
    _job_route("GET", "/children", 503, "database down", None, job_id=SOMEONE, app="down"),
    # /api/schedules
    Scenario("POST", SCHEDULES, 201, "created", lambda w: w.post_json(SCHEDULES, hourly(), headers=w.auth()),
             _schedule_created),
    Scenario("POST", SCHEDULES, 400, "malformed JSON",
             lambda w: w.client.post(SCHEDULES, data="{", content_type="application/json", headers=w.auth()),
             _problem_code("invalid_json")),
    Scenario("POST", SCHEDULES, 400, "body cut short", lambda w: _cut_short(w, SCHEDULES, w.auth()),
             _problem_code("malformed_body")),
    Scenario("POST", SCHEDULES, 500, "job types fail to import",
             _without_job_types(lambda w: w.post_json(SCHEDULES, hourly(), headers=w.auth())),
             _problem_code("job_types_unavailable"), app="no_job_types"),
    Scenario("POST", SCHEDULES, 401, "no token", lambda w: w.post_json(SCHEDULES, hourly())),
    Scenario("POST", SCHEDULES, 409, "per-user schedule cap",
             lambda w: ([w.schedule() for _ in range(MAX_SCHEDULES)],
                        w.post_json(SCHEDULES, hourly(), headers=w.auth()))[1], _problem_code("schedule_limit")),
    Scenario("POST", SCHEDULES, 413, "body over the limit",
             lambda w: w.post_json(SCHEDULES, hourly(input={"pad": "x" * MAX_BODY}), headers=w.auth()),
             _problem_code("body_too_large")),
    Scenario("POST", SCHEDULES, 415, "text/plain",
             lambda w: w.client.post(SCHEDULES, data=json.dumps(hourly()), content_type="text/plain",
                                     headers=w.auth()), _problem_code("unsupported_media_type")),
    Scenario("POST", SCHEDULES, 422, "invalid cron",
             lambda w: w.post_json(SCHEDULES, hourly(cron="61 * * * *"), headers=w.auth()),
             _problem_code("invalid_schedule", field="cron")),
    Scenario("POST", SCHEDULES, 422, "fires more often than the minimum interval",
             lambda w: w.post_json(SCHEDULES, hourly(cron="*/10 * * * * *"), headers=w.auth()),
             _problem_code("invalid_schedule", field="cron")),
    Scenario("POST", SCHEDULES, 422, "unknown time zone",
             lambda w: w.post_json(SCHEDULES, hourly(timezone="Mars/Olympus"), headers=w.auth()),
             _problem_code("invalid_schedule", field="timezone")),
    Scenario("POST", SCHEDULES, 422, "input fails the type's schema",
             lambda w: w.post_json(SCHEDULES, hourly(input={"steps": "many"}), headers=w.auth()),
             _problem_code("invalid_input", field="input.steps")),
    Scenario("POST", SCHEDULES, 503, "database down",
             lambda w: w.post_json(SCHEDULES, hourly(), headers=w.auth()), _problem_code("store_unavailable"),
             app="down"),
    Scenario("GET", SCHEDULES, 200, "own schedules only",
             lambda w: (w.schedule(), w.schedule(owner=w.bob), w.client.get(SCHEDULES, headers=w.auth()))[2],
             _one_schedule_no_cursor),
    Scenario("GET", SCHEDULES, 400, "forged cursor", lambda w: w.client.get(f"{SCHEDULES}?cursor=abc", headers=w.auth()),
             _problem_code("invalid_query")),
    Scenario("GET", SCHEDULES, 401, "no token", lambda w: w.client.get(SCHEDULES)),
    Scenario("GET", SCHEDULES, 503, "database down", lambda w: w.client.get(SCHEDULES, headers=w.auth()), app="down"),
    *[scenario for method, suffix, ok, check in (
        ("DELETE", "", 204, _schedule_gone),
        ("POST", "/pause", 200, _schedule_paused(True)),
        ("POST", "/resume", 200, _schedule_paused(False)),
      ) for scenario in (
        Scenario(method, SCHEDULE + suffix, ok, "own schedule",
                 lambda w, m=method, x=suffix: w.client.open(f"{SCHEDULES}/{w.schedule(paused=x == '/resume')}{x}",
                                                           method=m, headers=w.auth()), check),
        Scenario(method, SCHEDULE + suffix, 400, "not a UUID",
                 lambda w, m=method, x=suffix: w.client.open(f"{SCHEDULES}/{NOT_A_UUID}{x}", method=m,
                                                           headers=w.auth()), _problem_code("invalid_schedule_id")),
        Scenario(method, SCHEDULE + suffix, 401, "no token",
                 lambda w, m=method, x=suffix: w.client.open(f"{SCHEDULES}/{w.schedule()}{x}", method=m)),
        Scenario(method, SCHEDULE + suffix, 404, "another user's schedule",
                 lambda w, m=method, x=suffix: w.client.open(f"{SCHEDULES}/{w.schedule(owner=w.bob)}{x}", method=m,
                                                           headers=w.auth()), _problem_code("schedule_not_found")),
        Scenario(method, SCHEDULE + suffix, 503, "database down",
                 lambda w, m=method, x=suffix: w.client.open(f"{SCHEDULES}/{SOMEONE}{x}", method=m, headers=w.auth()),
                 _problem_code("store_unavailable"), app="down"),
    )],
    # the rest
    Scenario("GET", "/api/job-types", 200, "registered types", lambda w: w.client.get("/api/job-types"), _lists_countdown),
    Scenario("GET", "/api/job-types", 500, "job types fail to import",
             _without_job_types(lambda w: w.client.get("/api/job-types")), _problem_code("job_types_unavailable"),
             app="no_job_types"),
    Scenario("GET", "/api/health", 200, "database up", lambda w: w.client.get("/api/health"), _health("ok")),
    Scenario("GET", "/api/health", 503, "database down", lambda w: w.client.get("/api/health"), _health("degraded"),
             app="down"),
    Scenario("GET", "/api/openapi.json", 200, "the document", lambda w: w.client.get("/api/openapi.json"), _is_the_doc),
    Scenario("POST", WORK, 200, "runs the hand-off's job", _run_due_job, _ran_due_job),
    Scenario("POST", WORK, 200, "empty body", lambda w: w.client.post(WORK, headers=WORKER)),
    Scenario("POST", WORK, 400, "malformed JSON",
             lambda w: w.client.post(WORK, data="{", content_type="application/json", headers=WORKER),
             _problem_code("invalid_json")),
    Scenario("POST", WORK, 400, "body cut short", lambda w: _cut_short(w, WORK, WORKER),
             _problem_code("malformed_body")),
    Scenario("POST", WORK, 500, "job types fail to import",
             _without_job_types(lambda w: w.client.post(WORK, headers=WORKER)),
             _problem_code("job_types_unavailable"), app="no_job_types"),
    Scenario("POST", WORK, 401, "wrong secret", lambda w: w.post_json(WORK, {}, headers={"Authorization": "Bearer nope"})),
    Scenario("POST", WORK, 401, "a user's token", lambda w: w.post_json(WORK, {}, headers=w.auth())),
    Scenario("POST", WORK, 413, "body over 4096 bytes",
             lambda w: w.post_json(WORK, {"job_id": "x" * 5000}, headers=WORKER), _problem_code("body_too_large")),
    Scenario("POST", WORK, 415, "text/plain",
             lambda w: w.client.post(WORK, data="{}", content_type="text/plain", headers=WORKER)),
    Scenario("POST", WORK, 422, "job_id not a UUID", lambda w: w.post_json(WORK, {"job_id": "x"}, headers=WORKER),
             _problem_code("invalid_body")),
    Scenario("POST", WORK, 422, "nested too deep", lambda w: w.post_json(WORK, {"a": [[[[1]]]]}, headers=WORKER),
             _problem_code("invalid_json_value")),
    Scenario("POST", WORK, 503, "database down", lambda w: w.client.post(WORK, headers=WORKER),
             _problem_code("store_unavailable"), app="down"),
    Scenario("GET", SWEEP, 200, "sweeps", lambda w: w.client.get(SWEEP, headers={"Authorization": f"Bearer {CRON_SECRET}"})),
    Scenario("GET", SWEEP, 401, "wrong secret", lambda w: w.client.get(SWEEP, headers=WORKER)),
    Scenario("GET", SWEEP, 500, "job types fail to import",
             _without_job_types(lambda w: w.client.get(SWEEP, headers={"Authorization": f"Bearer {CRON_SECRET}"})),
             _problem_code("job_types_unavailable"), app="no_job_types"),
    Scenario("GET", SWEEP, 503, "database down",
             lambda w: w.client.get(SWEEP, headers={"Authorization": f"Bearer {CRON_SECRET}"}),
             _problem_code("store_unavailable"), app="down"),
]


def _anonymous(method: str, path: str) -> Scenario:
    """A Supabase anonymous sign-in's token (role authenticated, is_anonymous true): 403."""

    def send(w: World) -> TestResponse:
        token = user_token(w.alice, is_anonymous=True)
        body = {"json": countdown()} if (method, path) == ("POST", "/api/jobs") else {}
        return w.client.open(path.replace("{job_id}", SOMEONE), method=method,
                             headers={"Authorization": f"Bearer {token}"}, **body)

    return Scenario(method, path, 403, "anonymous user", send, _problem_code("anonymous_not_allowed"))


def _huge_authorization(method: str, path: str) -> Scenario:
    """An Authorization header over 8 KiB: 431 before the token, the path or the body is looked at."""

    def send(w: World) -> TestResponse:
        return w.client.open(path.replace("{job_id}", SOMEONE), method=method,
                             headers={"Authorization": "Bearer " + "x" * 9000})

    return Scenario(method, path, 431, "oversized Authorization", send, _problem_code("header_too_large"))


USER_OPERATIONS = [("POST", "/api/jobs"), ("GET", "/api/jobs"), ("GET", "/api/jobs/{job_id}"),
                   ("DELETE", "/api/jobs/{job_id}"), ("POST", "/api/jobs/{job_id}/cancel"),
                   ("POST", "/api/jobs/{job_id}/retry")]
USER_OPERATIONS += [("POST", "/api/jobs/{job_id}/pause"), ("POST", "/api/jobs/{job_id}/resume"),
                    ("GET", "/api/jobs/{job_id}/children")]
USER_OPERATIONS += [("POST", SCHEDULES), ("GET", SCHEDULES), ("DELETE", SCHEDULE), ("POST", SCHEDULE + "/pause"),
                    ("POST", SCHEDULE + "/resume")]
SCENARIOS += [_anonymous(method, path) for method, path in USER_OPERATIONS]
SCENARIOS += [_huge_authorization(method.upper(), path) for path, ops in DOC["paths"].items() for method in ops
              if method in HTTP_METHODS]


# -- reading the document --------------------------------------------------------


def document_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in DOC["paths"].items() for method in ops if method in HTTP_METHODS}


def declared(method: str, path: str) -> dict[str, Any]:
    return DOC["paths"][path][method.lower()]["responses"]


DOC_URI = "urn:ai-jobs:openapi"
REGISTRY = Registry().with_resource(DOC_URI, Resource.from_contents(DOC, default_specification=DRAFT202012))


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def assert_conforms(scenario: Scenario, response: TestResponse) -> None:
    responses = declared(scenario.method, scenario.path)
    status = str(response.status_code)
    assert status in responses, f"{scenario.id}: answered {status}, the document declares {sorted(responses)}"
    spec = responses[status]
    content = spec.get("content", {})
    if not content:
        assert response.data == b"", f"{scenario.id}: declared without a body, sent {response.data[:200]!r}"
    else:
        assert response.mimetype in content, f"{scenario.id}: sent {response.mimetype}, declared {sorted(content)}"
        schema = {"$ref": f"{DOC_URI}#/{_pointer('paths', scenario.path, scenario.method.lower(), 'responses', status, 'content', response.mimetype, 'schema')}"}
        errors = [e.message for e in Draft202012Validator(schema, registry=REGISTRY).iter_errors(response.json)]
        assert not errors, f"{scenario.id}: body does not match the declared schema: {errors[:3]}"
    for name, header in spec.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{scenario.id}: declared header {name} missing"


# -- the tests -----------------------------------------------------------------


def test_routes_are_exactly_the_documented_operations(live_app: App) -> None:
    routes = set()
    for rule in live_app.url_map.iter_rules():
        path = rule.rule.replace("<", "{").replace(">", "}")
        routes |= {(method, path) for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    assert routes == document_operations()


def test_every_declared_status_has_a_scenario() -> None:
    produced = {(s.method, s.path, str(s.status)) for s in SCENARIOS}
    declared_statuses = {(m, p, status) for m, p in document_operations() for status in declared(m, p)}
    assert declared_statuses - produced == set(), "declared but never produced"
    assert produced - declared_statuses == set(), "produced but not declared"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario_answers_as_documented(scenario: Scenario, request: pytest.FixtureRequest, make_user) -> None:
    app: App = request.getfixturevalue(f"{scenario.app}_app")
    live: App = request.getfixturevalue("live_app")
    world = World(app.test_client(), live.services.store, make_user(), make_user())
    response = scenario.send(world)
    assert response.status_code == scenario.status, f"{scenario.id}: got {response.status_code} {response.data[:300]!r}"
    assert_conforms(scenario, response)
    if scenario.check is not None:
        scenario.check(world, response)


# One successful scenario per operation (the first in the table).
FIRST_SUCCESS = list({(s.method, s.path): s for s in reversed(SCENARIOS) if s.status < 300 and s.app == "live"}.values())


@pytest.mark.parametrize("scenario", FIRST_SUCCESS, ids=lambda s: s.id)
def test_exactly_the_operations_documented_with_job_types_unavailable_need_the_job_types(
        scenario: Scenario, request: pytest.FixtureRequest, make_user) -> None:
    """With the job types' modules failing to import, each operation's successful
    request answers 500 job_types_unavailable if, and only if, the document lists
    that 500 for the operation; the others answer as usual."""
    app: App = request.getfixturevalue("no_job_types_app")
    live: App = request.getfixturevalue("live_app")
    world = World(app.test_client(), live.services.store, make_user(), make_user())
    response = _without_job_types(scenario.send)(world)
    codes = declared(scenario.method, scenario.path).get("500", {}).get("content", {}).get(PROBLEM_JSON, {})
    if "job_types_unavailable" in json.dumps(codes):
        assert response.status_code == 500 and response.json["code"] == "job_types_unavailable", scenario.id
    else:
        assert response.status_code == scenario.status, f"{scenario.id}: {response.status_code} {response.data[:200]!r}"
