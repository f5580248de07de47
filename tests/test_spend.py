"""Spend control: the create-time limits (model allowlist, max_tokens caps, calls per
job, cost estimate per job) through the real HTTP app, the per-user rolling 24 h
budget in SQL (also under concurrent creates), and the in-job cap against local HTTP
fakes of the Anthropic API, all on a real PostgreSQL."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ai_jobs.claude.client import reset_clients
from ai_jobs.claude.pricing import usage_record
from ai_jobs.claude.spend import SpendSettings
from ai_jobs.errors import BudgetExceededError
from ai_jobs.http.app import App, create_app
from ai_jobs.http.services import Services
from ai_jobs.models import JobStatus, NewJob
from ai_jobs.registry import load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.service import submit_job
from ai_jobs.settings import Settings
from ai_jobs.store.postgres import PostgresStore
from tests.anthropic_wire import FakeAnthropicServer, sse_events
from tests.claude_api_fake import ClaudeApiFake
from tests.conftest import JWT_SECRET, user_token
from tests.rls import act_as

SONNET = "claude-sonnet-5-5"  # $2 / $10 per MTok
SPEND_ENV = ("AI_JOBS_MODEL", "AI_JOBS_MODELS", "AI_JOBS_MAX_TOKENS", "AI_JOBS_MAX_CALLS_PER_JOB",
             "AI_JOBS_MAX_JOB_COST_USD", "AI_JOBS_USER_DAILY_BUDGET_USD", "AI_JOBS_ALLOW_UNPRICED_MODELS",
             "AI_JOBS_PRICES", "AI_JOBS_RATE_LIMITS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SPEND_ENV:
        monkeypatch.delenv(name, raising=False)


def _settings(database_url: str, **env: str) -> Settings:
    """Settings as a deployment reads them, with these variables set."""
    base = {"DATABASE_URL": database_url, "SUPABASE_JWT_SECRET": JWT_SECRET, "AI_JOBS_MAX_ACTIVE_PER_USER": "50"}
    return Settings.from_env({**base, **env})


class Api:
    def __init__(self, database_url: str, **env: str) -> None:
        self.services = Services(settings=_settings(database_url, **env), registry=load_job_modules())
        self.app: App = create_app(self.services)

    def create(self, user: uuid.UUID, job_type: str, data: dict[str, Any], **body: Any) -> Any:
        return self.app.test_client().post(
            "/api/jobs", data=json.dumps({"type": job_type, "input": data, **body}),
            content_type="application/json", headers={"Authorization": f"Bearer {user_token(user)}"})

    def retry(self, user: uuid.UUID, job_id: uuid.UUID) -> Any:
        return self.app.test_client().post(f"/api/jobs/{job_id}/retry",
                                           headers={"Authorization": f"Bearer {user_token(user)}"})

    def close(self) -> None:
        self.services.close()


@pytest.fixture()
def api_factory(database_url: str) -> Iterator[Any]:
    made: list[Api] = []

    def make(**env: str) -> Api:
        made.append(Api(database_url, **env))
        return made[-1]

    yield make
    for api in made:
        api.close()


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.data[:500]
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["code"] == code and body["type"] == f"urn:ai-jobs:problem:{code}", body
    return body


# -- the limits at create -----------------------------------------------------------------


def test_model_allowlist(api_factory, make_user, db) -> None:
    alice, bob = make_user(), make_user()
    default_only = api_factory()
    body = _problem(default_only.create(alice, "ai.generate", {"prompt": "hi", "model": "claude-opus-5-5"}),
                    422, "model_not_allowed")
    assert body["allowed_models"] == [SONNET] and SONNET in body["detail"]
    assert body["errors"][0]["field"] == "input.model"
    assert default_only.create(alice, "ai.generate", {"prompt": "hi", "model": SONNET}).status_code == 202
    assert default_only.create(bob, "ai.generate", {"prompt": "hi"}).status_code == 202  # null: the default model

    listed = api_factory(AI_JOBS_MODEL="claude-haiku-5-5", AI_JOBS_MODELS="claude-opus-5-5, claude-sonnet-5-5")
    assert listed.create(alice, "ai.match", {"requirement": "r", "document": "d", "model": "claude-opus-5-5"}
                         ).status_code == 202
    refused = _problem(listed.create(alice, "ai.extract", {"text": "t", "schema": {"type": "object"},
                                                           "model": "claude-fable-5-1"}), 422, "model_not_allowed")
    assert refused["allowed_models"] == ["claude-haiku-5-5", "claude-opus-5-5", SONNET]
    # nothing was written for the refused creates
    assert db.execute("select count(*) from public.ai_jobs where input->>'model' in ('claude-fable-5-1')"
                      ).fetchone()[0] == 0


def test_unpriced_models_are_refused_unless_the_operator_allows_them(api_factory, make_user) -> None:
    user = make_user()
    env = {"AI_JOBS_MODELS": "claude-mythos-5-2"}  # in the SDK's list, no price known
    body = _problem(api_factory(**env).create(user, "ai.generate", {"prompt": "x", "model": "claude-mythos-5-2"}),
                    422, "model_not_priced")
    assert "AI_JOBS_PRICES" in body["detail"]
    allowed = api_factory(**env, AI_JOBS_ALLOW_UNPRICED_MODELS="1").create(
        user, "ai.generate", {"prompt": "x", "model": "claude-mythos-5-2"})
    assert allowed.status_code == 202
    assert allowed.json["cost_estimate_usd"] is None and allowed.json["cost_cap_usd"] is None
    priced = api_factory(**env, AI_JOBS_PRICES='{"claude-mythos-5-2": {"input": 1, "output": 2}}').create(
        user, "ai.generate", {"prompt": "x", "model": "claude-mythos-5-2"})
    assert priced.status_code == 202 and priced.json["cost_estimate_usd"] > 0


@pytest.mark.parametrize(("job_type", "data", "cap"), [
    ("ai.generate", {"prompt": "x"}, 8192),
    ("ai.extract", {"text": "x", "schema": {"type": "object"}}, 4096),
    ("ai.match", {"requirement": "r", "document": "d"}, 4096),
    ("ai.map_batches", {"document": "d", "items": ["a"]}, 4096),
])
def test_max_tokens_cap_per_type(api_factory, make_user, job_type, data, cap) -> None:
    user = make_user()
    api = api_factory()
    assert api.create(user, job_type, {**data, "max_tokens": cap}).status_code == 202
    body = _problem(api.create(user, job_type, {**data, "max_tokens": cap + 1}), 422, "max_tokens_too_large")
    assert body["max_tokens_cap"] == cap and body["errors"][0]["field"] == "input.max_tokens"
    assert str(cap) in body["detail"]
    raised = api_factory(AI_JOBS_MAX_TOKENS=json.dumps({job_type: cap * 2}))
    assert raised.create(user, job_type, {**data, "max_tokens": cap * 2}).status_code == 202


def test_calls_per_job_cap(api_factory, make_user) -> None:
    user = make_user()
    items = [f"item {i}" for i in range(201)]
    api = api_factory(AI_JOBS_MAX_JOB_COST_USD="0")  # only the call count here
    body = _problem(api.create(user, "ai.map_batches", {"document": "d", "items": items, "batch_size": 2,
                                                         "max_tokens": 16}), 422, "too_many_calls")
    assert body["calls"] == 101 and body["max_calls"] == 100 and "batch_size" in body["detail"]
    assert api.create(user, "ai.map_batches", {"document": "d", "items": items[:200], "batch_size": 2,
                                               "max_tokens": 16}).status_code == 202
    fewer = api_factory(AI_JOBS_MAX_CALLS_PER_JOB="10", AI_JOBS_MAX_JOB_COST_USD="0")
    assert _problem(fewer.create(user, "ai.map_batches", {"document": "d", "items": items[:22], "batch_size": 2,
                                                          "max_tokens": 16}), 422, "too_many_calls")["calls"] == 11


def test_cost_estimate_per_job(api_factory, make_user, pg_store) -> None:
    user = make_user()
    api = api_factory()
    document = "All customer data is encrypted at rest. " * 2_500  # 100,000 bytes
    data = {"document": document, "items": [f"requirement {i}" for i in range(60)], "batch_size": 1}
    body = _problem(api.create(user, "ai.map_batches", data), 422, "job_cost_too_high")
    # 60 calls, each: (instructions + document + its item + 3,000 bytes of framing) / 3 tokens at $2 and
    # 4,096 output tokens at $10 per MTok; plus, once, the document and instructions written to the
    # 1-hour prompt cache ($4 instead of $2 per MTok); all x1.1, as a workspace whose default
    # inference_geo is "us" is billed
    prefix = len("For each item, say where and how the document addresses it.") + 100_000
    per_call = (-(-(prefix + len("requirement 59") + 3 + 3_000) // 3) * 2 + 4096 * 10) / 1e6
    assert body["estimated_cost_usd"] == pytest.approx(1.1 * (60 * per_call + -(-prefix // 3) * 2 / 1e6), abs=1e-6)
    assert body["max_job_cost_usd"] == 5
    assert "$5.00" in body["detail"] and f"${body['estimated_cost_usd']:.2f}" in body["detail"]

    # the same job with fewer batches fits: the estimate and the cap are on the job
    created = api.create(user, "ai.map_batches", {**data, "batch_size": 10})
    assert created.status_code == 202, created.json
    job = pg_store.get(uuid.UUID(created.json["id"]))
    assert job.cost_estimate_usd == pytest.approx(created.json["cost_estimate_usd"]) and job.cost_estimate_usd > 0.5
    assert job.cost_cap_usd == pytest.approx(2 * job.cost_estimate_usd, abs=1e-6)  # under $5: twice the estimate
    # a generous per-job cap lets the first one through; a cheaper model too
    generous = api_factory(AI_JOBS_MAX_JOB_COST_USD="10", AI_JOBS_USER_DAILY_BUDGET_USD="50").create(
        user, "ai.map_batches", data)
    assert generous.status_code == 202
    assert generous.json["cost_estimate_usd"] == body["estimated_cost_usd"]
    assert generous.json["cost_cap_usd"] == 10  # twice the estimate would be over the per-job cap
    haiku = api_factory(AI_JOBS_MODELS="claude-haiku-5-5").create(user, "ai.map_batches",
                                                                  {**data, "model": "claude-haiku-5-5"})
    assert haiku.status_code == 202 and haiku.json["cost_estimate_usd"] < 1


def test_job_types_without_claude_calls_are_not_limited(api_factory, make_user, pg_store) -> None:
    created = api_factory(AI_JOBS_USER_DAILY_BUDGET_USD="0.01").create(
        make_user(), "example.countdown", {"steps": 1, "step_seconds": 0})
    assert created.status_code == 202
    assert created.json["cost_estimate_usd"] is None and created.json["cost_cap_usd"] is None


# -- the daily budget, in SQL -------------------------------------------------------------


def _record_spend(store: PostgresStore, user: uuid.UUID, usd: float) -> uuid.UUID:
    """A finished job that recorded `usd` of Claude cost."""
    job_id = store.enqueue(NewJob(user_id=user, job_type="ai.generate", input={"prompt": "x"})).job.id
    assert [j.id for j in store.claim("spender", job_id=job_id)] == [job_id]
    store.complete(job_id, "spender", {"text": "ok"}, usage={"cost_usd": usd, "requests": 1})
    return job_id


def test_daily_budget_counts_recorded_spend_and_active_caps(api_factory, make_user, pg_store, db) -> None:
    alice, bob = make_user(), make_user()
    api = api_factory(AI_JOBS_USER_DAILY_BUDGET_USD="1")
    one = {"prompt": "x", "max_tokens": 8192}  # ~$0.0829 estimate, ~$0.1658 cap
    first = api.create(alice, "ai.generate", one)
    assert first.status_code == 202
    cap = first.json["cost_cap_usd"]
    assert cap == pytest.approx(2 * first.json["cost_estimate_usd"], abs=1e-6)

    spent = _record_spend(pg_store, alice, 0.70)  # 0.70 recorded + 0.1658 held = 0.8658: no room for 0.1658 more
    body = _problem(api.create(alice, "ai.generate", one), 429, "budget_exceeded")
    assert body["daily_budget_usd"] == 1 and body["spent_usd"] == pytest.approx(0.70)
    assert body["reserved_usd"] == pytest.approx(cap) and body["job_cap_usd"] == pytest.approx(cap)
    # the 0.70 recorded just now frees the room when it leaves the window, 24 h from now
    retry_after = int(api.create(alice, "ai.generate", one).headers["Retry-After"])
    assert 86_400 - 60 <= retry_after <= 86_400 and body["retry_after_seconds"] <= 86_400
    assert "budget" in body["detail"]

    # another user is not affected
    assert api.create(bob, "ai.generate", one).status_code == 202
    # deleting the finished job does not give its spend back
    assert api.app.test_client().delete(f"/api/jobs/{spent}", headers={
        "Authorization": f"Bearer {user_token(alice)}"}).status_code == 204
    _problem(api.create(alice, "ai.generate", one), 429, "budget_exceeded")
    # cancelling the pending job releases its reservation
    assert api.app.test_client().post(f"/api/jobs/{first.json['id']}/cancel", headers={
        "Authorization": f"Bearer {user_token(alice)}"}).json["status"] == "cancelled"
    assert api.create(alice, "ai.generate", one).status_code == 202
    # and retrying the cancelled one needs its cap back: no room now
    _problem(api.retry(alice, uuid.UUID(first.json["id"])), 429, "budget_exceeded")
    # nothing refused was written: alice has the two accepted jobs and the cancelled one
    rows = db.execute("select status, count(*) from public.ai_jobs where user_id = %s group by 1 order by 1",
                      (alice,)).fetchall()
    assert rows == [("cancelled", 1), ("pending", 1)]


def test_retry_after_is_when_enough_spend_leaves_the_window(api_factory, make_user, pg_store, db) -> None:
    user = make_user()
    api = api_factory(AI_JOBS_USER_DAILY_BUDGET_USD="1")
    for hours_ago, usd in ((30, 5.0), (23, 0.30), (20, 0.30), (2, 0.30)):  # the first is out of the window
        job_id = _record_spend(pg_store, user, usd)
        db.execute("update public.ai_jobs_spend set at = now() - make_interval(hours => %s) where job_id = %s",
                   (hours_ago, job_id))
    # 0.90 recorded in the window; a job reserving ~0.166 needs ~0.066 freed: the row from 23 h ago (in ~1 h)
    body = _problem(api.create(user, "ai.generate", {"prompt": "x", "max_tokens": 8192}), 429, "budget_exceeded")
    assert body["spent_usd"] == pytest.approx(0.90) and body["reserved_usd"] == 0
    assert 3600 - 60 <= body["retry_after_seconds"] <= 3600
    # a smaller job fits
    assert api.create(user, "ai.generate", {"prompt": "x", "max_tokens": 256}).status_code == 202
    # and that create deleted the user's ledger rows older than 24 h
    assert db.execute("select count(*) from public.ai_jobs_spend where user_id = %s", (user,)).fetchone()[0] == 3


def test_budget_under_concurrent_creates(pg_store, make_user) -> None:
    """20 creates at once, each reserving $0.30 of a $1 budget: exactly 3 get in."""
    user, other = make_user(), make_user()
    gate = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        job = NewJob(user_id=user, job_type="ai.generate", input={"prompt": "x"}, cost_estimate_usd=0.15,
                     cost_cap_usd=0.30, daily_budget_usd=1.0)
        gate.wait()
        try:
            pg_store.enqueue(job)
            outcome = "created"
        except BudgetExceededError:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 17
    held = sum(j.cost_cap_usd or 0 for j in pg_store.list(user_id=user, limit=100).jobs)
    assert held == pytest.approx(0.90)
    # the other user's budget is their own
    assert pg_store.enqueue(NewJob(user_id=other, job_type="ai.generate", input={"prompt": "x"},
                                   cost_cap_usd=0.30, daily_budget_usd=1.0)).created


def test_owners_read_their_costs_but_not_the_ledger(database_url, pg_store, make_user) -> None:
    user = make_user()
    job_id = pg_store.enqueue(NewJob(user_id=user, job_type="ai.generate", input={"prompt": "x"},
                                     cost_estimate_usd=0.1, cost_cap_usd=0.2)).job.id
    _record_spend(pg_store, user, 0.05)
    claims = {"role": "authenticated", "sub": str(user)}
    with psycopg.connect(database_url) as conn, conn.transaction():
        act_as(conn, claims)
        row = conn.execute("select cost_estimate_usd, cost_cap_usd from public.ai_jobs where id = %s",
                           (job_id,)).fetchone()
    assert [float(v) for v in row] == [0.1, 0.2]
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        with conn.transaction():
            act_as(conn, claims)
            conn.execute("select * from public.ai_jobs_spend")


# -- the cap inside the job -----------------------------------------------------------------


@pytest.fixture()
def claude_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    for name in ("AI_JOBS_CLAUDE_TIMEOUT", "AI_JOBS_CLAUDE_TOKENS_PER_SECOND", "AI_JOBS_MAP_BATCH_API_MIN_ITEMS",
                 "AI_JOBS_MAP_BATCH_API_POLL_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    reset_clients()
    yield
    reset_clients()


def _mappings(*items: str) -> str:
    return json.dumps({"mappings": [{"item": i, "mapping": f"section on {i}", "confidence": 90} for i in items]})


def test_a_job_whose_recorded_cost_passes_its_cap_stops_keeping_finished_steps(
        pg_store, make_user, claude_env, monkeypatch) -> None:
    """Batch 2 is billed far more than its bound (1.5M input tokens, $3): the job stops
    before batch 3 with budget_exceeded; batches 1 and 2 stay checkpointed."""
    server = FakeAnthropicServer([
        sse_events(_mappings("a"), input_tokens=1_000, output_tokens=200),
        sse_events(_mappings("b"), input_tokens=1_500_000, output_tokens=200),
        sse_events(_mappings("c"), input_tokens=1_000, output_tokens=200),
    ]).start()
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        user = make_user()
        registry = load_job_modules()
        settings = Settings(store="postgres", database_url="unused")
        created = submit_job(pg_store, user, "ai.map_batches",
                             {"document": "The policy.", "items": ["a", "b", "c", "d"], "batch_size": 1},
                             settings=settings, registry=registry)
        cap = created.job.cost_cap_usd
        assert cap is not None and 0.1 < cap < 3  # 4 calls of ~$0.043 each, doubled
        Runner(pg_store, registry).run_available()
        job = pg_store.get(created.job.id)
    finally:
        server.stop()
    assert job.status is JobStatus.FAILED and job.error.code == "budget_exceeded" and not job.error.retryable
    assert "cap" in job.error.message and f"${cap:.4f}" in job.error.message
    assert len(server.requests) == 2  # batch 3 was never sent
    assert set(job.checkpoints) == {"batch-1", "batch-2"}
    assert job.checkpoints["batch-2"]["mappings"][0]["item"] == "b"
    billed = sum(usage_record(SONNET, {"input_tokens": n, "output_tokens": 200})["cost_usd"] for n in (1_000, 1_500_000))
    assert job.usage["cost_usd"] == pytest.approx(billed) and job.usage["cost_usd"] > cap
    assert job.usage["requests"] == 2


def test_a_call_whose_worst_case_would_pass_the_cap_is_not_started(pg_store, make_user, claude_env,
                                                                     monkeypatch, db) -> None:
    server = FakeAnthropicServer([sse_events("hello")]).start()
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        user = make_user()
        registry = load_job_modules()
        created = submit_job(pg_store, user, "ai.generate", {"prompt": "Say hello", "max_tokens": 8000},
                             settings=Settings(store="postgres", database_url="unused"), registry=registry)
        # the cap now sits just under what this one call could cost ($0.08 of output alone)
        db.execute("update public.ai_jobs set cost_cap_usd = 0.05 where id = %s", (created.job.id,))
        Runner(pg_store, registry).run_available()
        job = pg_store.get(created.job.id)
    finally:
        server.stop()
    assert job.status is JobStatus.FAILED and job.error.code == "budget_exceeded"
    assert "could cost up to" in job.error.message and "$0.0500" in job.error.message
    assert server.requests == [] and job.usage == {}


def test_jobs_without_a_stored_cap_use_the_per_job_setting(pg_store, make_user, claude_env, monkeypatch) -> None:
    server = FakeAnthropicServer([sse_events("hello")]).start()
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("AI_JOBS_MAX_JOB_COST_USD", "0.01")
        registry = load_job_modules()
        job_id = pg_store.enqueue(registry.new_job(make_user(), "ai.generate", {"prompt": "x"})).job.id
        Runner(pg_store, registry).run_available()
        job = pg_store.get(job_id)
    finally:
        server.stop()
    assert job.cost_cap_usd is None
    assert job.status is JobStatus.FAILED and job.error.code == "budget_exceeded" and server.requests == []


def test_a_message_batch_over_the_cap_is_not_submitted(pg_store, make_user, claude_env, monkeypatch, db) -> None:
    with ClaudeApiFake() as fake:
        registry, job_id = _submit_map(pg_store, make_user(), fake, monkeypatch)
        db.execute("update public.ai_jobs set cost_cap_usd = 0.01 where id = %s", (job_id,))
        Runner(pg_store, registry).run_available()
        job = pg_store.get(job_id)
        assert job.status is JobStatus.FAILED and job.error.code == "budget_exceeded"
        assert fake.created == [] and "claude-batch" not in job.checkpoints


MAP_INPUT = {"document": "The policy.", "items": ["a", "b", "c"], "batch_size": 1, "use_batch_api": True}


def _message_batch_bound(data: dict[str, Any]) -> float:
    """The spend guard's worst case for the job's Message Batch (every request writing
    the cache and answering with all of max_tokens, at the Batch API price)."""
    from ai_jobs.claude.spend import call_cost_bound, model_price, utf8_bytes
    from ai_jobs.jobs.ai import MapBatchesInput

    parsed = MapBatchesInput.model_validate(data)
    batches = parsed.batches()
    largest = max(sum(utf8_bytes(item) + 3 for item in batch) for batch in batches)
    price = model_price(SONNET)
    assert price is not None
    return len(batches) * call_cost_bound(price, utf8_bytes(parsed.instructions, parsed.document) + largest,
                                          parsed.max_tokens, cache_write=True, batch=True)


def _ledger(db: psycopg.Connection, job_id: uuid.UUID) -> float:
    total = db.execute("select sum(cost_usd) from public.ai_jobs_spend where job_id = %s", (job_id,)).fetchone()[0]
    return float(total or 0)


def _run_due(db: psycopg.Connection, store: PostgresStore, registry: Any, job_id: uuid.UUID, times: int) -> None:
    for _ in range(times):  # each retry backoff or batch poll, made due
        db.execute("update public.ai_jobs set run_at = now() where id = %s and status = 'pending'", (job_id,))
        Runner(store, registry).run_available()


def _submit_map(store: PostgresStore, user: uuid.UUID, fake: ClaudeApiFake,
                monkeypatch: pytest.MonkeyPatch) -> tuple[Any, uuid.UUID]:
    """An ai.map_batches job through the Message Batches API, against `fake`."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    registry = load_job_modules()
    created = submit_job(store, user, "ai.map_batches", MAP_INPUT,
                         settings=Settings(store="postgres", database_url="unused"), registry=registry)
    return registry, created.job.id


def test_a_lost_batch_create_reply_charges_the_worst_case_of_the_batch_it_may_have_left(
        pg_store, make_user, claude_env, monkeypatch, db) -> None:
    """The batch is created, then the connection drops before the reply: the API has
    no idempotency key, so the batch runs (and bills) unseen. The create is not resent
    by the SDK (its retries are on here), and the job is charged that batch's worst
    case at once, on the row and in the spend ledger, before it is retried."""
    monkeypatch.setenv("AI_JOBS_CLAUDE_MAX_RETRIES", "2")
    bound = _message_batch_bound(MAP_INPUT)
    with ClaudeApiFake() as fake:
        fake.lose_create_replies = 1
        registry, job_id = _submit_map(pg_store, make_user(), fake, monkeypatch)
        Runner(pg_store, registry).run_available()
        job = pg_store.get(job_id)
        assert len(fake.created) == 1 and fake.lost_create_replies == 1  # not resent by the SDK
        assert job.status is JobStatus.PENDING and job.error.code == "claude_unreachable" and job.error.retryable
        assert job.usage == {"requests": 0, "estimated": True, "orphan_batches": 1,
                             "cost_usd": pytest.approx(bound), "orphan_batch_cost_usd": pytest.approx(bound)}
        assert _ledger(db, job_id) == pytest.approx(bound)
        [unconfirmed] = job.checkpoints["claude-batch-unconfirmed"]
        assert unconfirmed["requests"] == 3 and unconfirmed["worst_case_usd"] == pytest.approx(bound)
        assert "claude-batch" not in job.checkpoints

        _run_due(db, pg_store, registry, job_id, 6)  # the retry submits again, then polls until it has ended
        job = pg_store.get(job_id)
        orphan, submitted = fake.created
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.checkpoints["claude-batch"]["id"] == submitted.id and orphan.status == "in_progress"
    billed = sum(usage_record(SONNET, b.usage, batch=True)["cost_usd"] for b in fake.billed)
    assert len(fake.billed) == 3 and job.usage["requests"] == 3 and job.usage["orphan_batches"] == 1
    assert job.usage["cost_usd"] == pytest.approx(bound + billed) and job.usage["estimated"] is True
    assert _ledger(db, job_id) == pytest.approx(bound + billed)


def test_lost_batch_create_replies_are_bounded_by_the_job_cap(pg_store, make_user, claude_env, monkeypatch,
                                                               db) -> None:
    """Every create's reply is lost: each retry may leave another batch running. Each
    one's worst case is on the job, so the cap stops the job before a batch it could not
    pay for (here room for two), however many attempts it has left."""
    bound = _message_batch_bound(MAP_INPUT)
    with ClaudeApiFake() as fake:
        fake.lose_create_replies = 100
        registry, job_id = _submit_map(pg_store, make_user(), fake, monkeypatch)
        db.execute("update public.ai_jobs set cost_cap_usd = %s, max_attempts = 10 where id = %s",
                   (round(2.5 * bound, 6), job_id))
        _run_due(db, pg_store, registry, job_id, 8)
        job = pg_store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "budget_exceeded", job.error
    assert len(fake.created) == fake.lost_create_replies == 2 and job.attempts == 3
    assert job.usage["orphan_batches"] == 2 and job.usage["requests"] == 0
    assert job.usage["cost_usd"] == pytest.approx(2 * bound) and _ledger(db, job_id) == pytest.approx(2 * bound)
    assert len(job.checkpoints["claude-batch-unconfirmed"]) == 2


@pytest.mark.parametrize(("status", "kind", "may_exist"), [
    (500, "api_error", True), (503, "api_error", True), (529, "overloaded_error", False),
    (429, "rate_limit_error", False),
])
def test_a_failed_batch_create_is_charged_only_when_the_batch_may_exist(
        pg_store, make_user, claude_env, monkeypatch, db, status, kind, may_exist) -> None:
    """A 5xx other than 529 may come after the batch was made; 429 and 529 mean it was not."""
    bound = _message_batch_bound(MAP_INPUT)
    with ClaudeApiFake() as fake:
        fake.create_errors = [(status, kind)]
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        registry = load_job_modules()
        created = submit_job(pg_store, make_user(), "ai.map_batches", MAP_INPUT,
                             settings=Settings(store="postgres", database_url="unused"), registry=registry)
        Runner(pg_store, registry).run_available()
        job = pg_store.get(created.job.id)
    assert job.status is JobStatus.PENDING and job.error.retryable and fake.create_errors == []
    if may_exist:
        assert job.usage["orphan_batches"] == 1 and job.usage["cost_usd"] == pytest.approx(bound)
        assert _ledger(db, job.id) == pytest.approx(bound)
    else:
        assert job.usage == {} and "claude-batch-unconfirmed" not in job.checkpoints and _ledger(db, job.id) == 0


def test_which_failed_batch_creates_may_have_created_the_batch() -> None:
    import anthropic
    import httpx2

    from ai_jobs.claude.batches import may_have_created

    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages/batches")

    def connection(
        cause: Exception, kind: type[anthropic.APIConnectionError] = anthropic.APIConnectionError
    ) -> Exception:
        exc = kind(request=request)
        exc.__cause__ = cause
        return exc

    def status(code: int) -> Exception:
        return anthropic.APIStatusError("error", response=httpx2.Response(code, request=request), body=None)

    assert may_have_created(connection(httpx2.RemoteProtocolError("Server disconnected")))
    assert may_have_created(connection(httpx2.ReadError("reset")))
    assert may_have_created(connection(httpx2.ReadTimeout("read"), anthropic.APITimeoutError))
    assert not may_have_created(connection(httpx2.ConnectError("refused")))
    assert not may_have_created(connection(httpx2.ConnectTimeout("connect"), anthropic.APITimeoutError))
    assert not may_have_created(connection(httpx2.PoolTimeout("pool"), anthropic.APITimeoutError))
    codes = (400, 401, 404, 409, 413, 429, 500, 502, 503, 504, 529)
    assert [code for code in codes if may_have_created(status(code))] == [500, 502, 503, 504]


SNAPSHOT = "claude-sonnet-5-5-20261120"  # a dated id the price table does not list


def test_a_reply_naming_an_unlisted_snapshot_is_priced_as_the_requested_model(
        pg_store, make_user, claude_env, monkeypatch, db, database_url) -> None:
    """The reply's `model` is the model that ran, which may be a dated snapshot of the
    requested alias. Each attempt is billed 1,000 in / 8,000 out and then cut by an
    overloaded error: priced, the cap stops the job after its first two attempts and
    the owner's retries send nothing more; unpriced (the bug), every retry was a new
    unbounded call."""
    reply = sse_events("hello world text here", model=SNAPSHOT,
                       error_after_chunks={"type": "overloaded_error", "message": "Overloaded"},
                       start_usage={"input_tokens": 1000, "output_tokens": 8000})
    server = FakeAnthropicServer([reply] * 20).start()
    api = Api(database_url, AI_JOBS_USER_DAILY_BUDGET_USD="1")
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        registry, user = load_job_modules(), make_user()
        created = api.create(user, "ai.generate", {"prompt": "Say hello", "max_tokens": 8000})
        assert created.status_code == 202, created.json
        job_id, cap = uuid.UUID(created.json["id"]), created.json["cost_cap_usd"]
        for _ in range(3):  # the owner retries the failed job
            for _ in range(4):
                db.execute("update public.ai_jobs set run_at = now() where id = %s and status = 'pending'", (job_id,))
                Runner(pg_store, registry).run_available()
            job = pg_store.get(job_id)
            assert job.status is JobStatus.FAILED and job.error.code == "budget_exceeded"
            assert api.retry(user, job_id).status_code == 202
        job = pg_store.get(job_id)
    finally:
        server.stop()
        api.close()
    one_call = usage_record(SONNET, {"input_tokens": 1000, "output_tokens": 8000})["cost_usd"]
    assert len(server.requests) == 2 and job.usage["requests"] == 2
    assert job.usage["cost_usd"] == pytest.approx(2 * one_call) and "unpriced_requests" not in job.usage
    assert job.usage["model"] == SNAPSHOT and job.usage["priced_as"] == SONNET
    assert job.usage["cost_usd"] <= cap + one_call  # the cap held, give or take the call that crossed it
    ledger = db.execute("select sum(cost_usd) from public.ai_jobs_spend where user_id = %s", (user,)).fetchone()[0]
    assert float(ledger) == pytest.approx(2 * one_call)


def test_a_call_billed_at_an_unpriced_tier_stops_a_capped_job(pg_store, make_user, claude_env, monkeypatch,
                                                               db) -> None:
    """A priced model whose reply is billed in a way the table cannot price (here
    Priority Tier): the call records cost_usd null, so the job's cap no longer bounds
    it; the next attempt is refused instead of calling again."""
    reply = sse_events("hello", error_after_chunks={"type": "overloaded_error", "message": "Overloaded"},
                       start_usage={"service_tier": "priority"})
    server = FakeAnthropicServer([reply] * 5).start()
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        registry = load_job_modules()
        created = submit_job(pg_store, make_user(), "ai.generate", {"prompt": "Say hello"},
                             settings=Settings(store="postgres", database_url="unused"), registry=registry)
        for _ in range(4):  # the retryable failure's backoff, made due each time
            db.execute("update public.ai_jobs set run_at = now() where id = %s and status = 'pending'",
                       (created.job.id,))
            Runner(pg_store, registry).run_available()
        job = pg_store.get(created.job.id)
    finally:
        server.stop()
    assert len(server.requests) == 1
    assert job.usage["unpriced_requests"] == 1 and "cost_usd" not in job.usage
    assert job.status is JobStatus.FAILED and job.error.code == "budget_exceeded" and not job.error.retryable
    assert "could not be priced" in job.error.message


def test_message_batch_replies_naming_a_snapshot_are_priced_as_requested(
        pg_store, make_user, claude_env, monkeypatch, db) -> None:
    with ClaudeApiFake() as fake:
        fake.reply_models[SONNET] = SNAPSHOT
        registry, job_id = _submit_map(pg_store, make_user(), fake, monkeypatch)
        _run_due(db, pg_store, registry, job_id, 6)  # submit, then polls until the batch has ended
        job = pg_store.get(job_id)
        billed = sum(usage_record(SONNET, b.usage)["cost_usd"] for b in fake.billed)
    assert job.status is JobStatus.COMPLETED, job.error
    assert len(fake.billed) == 3 and all(b.batch for b in fake.billed)
    assert job.usage["priced_as"] == SONNET and job.usage["model"] == SNAPSHOT
    assert job.usage["cost_usd"] == pytest.approx(billed) and "unpriced_requests" not in job.usage


@pytest.mark.parametrize("env", [
    {"AI_JOBS_PRICES": json.dumps({SONNET: {"input": 2, "output": 10}})},
    {"AI_JOBS_MODEL": "claude-fable-5-2"},  # built in without its cache prices
])
def test_cached_work_on_a_model_without_cache_prices_is_refused(api_factory, make_user, monkeypatch, env) -> None:
    """Several batches write the document to the prompt cache; with no cache price the
    calls would record cost_usd null and escape the cap and the budget."""
    monkeypatch.delenv("AI_JOBS_PROMPT_CACHE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    user = make_user()
    several = {"document": "The policy.", "items": ["a", "b", "c"], "batch_size": 1}
    body = _problem(api_factory(**env).create(user, "ai.map_batches", several), 422, "model_not_priced")
    assert body["unknown_prices"] == ["cache_write_5m", "cache_write_1h", "cache_read"]
    assert "AI_JOBS_PROMPT_CACHE=off" in body["detail"]
    one_call = {**several, "batch_size": 3}  # nothing repeats, nothing is cached
    assert api_factory(**env).create(user, "ai.map_batches", one_call).status_code == 202
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    assert api_factory(**env, AI_JOBS_PROMPT_CACHE="off").create(user, "ai.map_batches", several).status_code == 202


def _create_and_run(store: PostgresStore, api: Api, user: uuid.UUID, job_type: str, data: dict[str, Any]) -> Any:
    """Create a job through the HTTP app, run what is due, and return the job."""
    created = api.create(user, job_type, data)
    assert created.status_code == 202, created.json
    Runner(store, load_job_modules()).run_available()
    return store.get(uuid.UUID(created.json["id"]))


def test_an_extract_schema_is_measured_as_create_measured_it(pg_store, make_user, claude_env, monkeypatch,
                                                              database_url) -> None:
    """Non-ASCII text in the schema: create counts it as UTF-8; the in-job guard counted
    it ASCII-escaped (12 bytes per emoji instead of 4) and refused the job's one call."""
    server = FakeAnthropicServer([sse_events('{"a": "x"}')]).start()
    api = Api(database_url)
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        schema = {"type": "object", "properties": {"a": {"type": "string", "description": "\U0001F600" * 5000}}}
        job = _create_and_run(pg_store, api, make_user(), "ai.extract",
                              {"text": "a: x", "schema": schema, "max_tokens": 64})
    finally:
        server.stop()
        api.close()
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result["data"] == {"a": "x"} and len(server.requests) == 1


def test_the_bound_counts_us_only_inference(pg_store, make_user, claude_env, monkeypatch, database_url) -> None:
    """Requests name no inference_geo, so a workspace whose default is "us" is billed x1.1;
    the estimate, the cap and the in-job guard count it, so the call that would cost more
    than a $0.085 cap and budget is refused at create instead of run."""
    reply = sse_events("hello", input_tokens=1000, output_tokens=7000, start_usage={"inference_geo": "us"})
    server = FakeAnthropicServer([reply]).start()
    api = Api(database_url, AI_JOBS_MAX_JOB_COST_USD="0.085", AI_JOBS_USER_DAILY_BUDGET_USD="0.085")
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        user = make_user()
        refused = api.create(user, "ai.generate", {"prompt": "Say hello", "max_tokens": 8000})
        body = _problem(refused, 422, "job_cost_too_high")
        assert body["estimated_cost_usd"] > 0.088  # 8,000 output tokens alone: $0.08 x 1.1
        job = _create_and_run(pg_store, api, user, "ai.generate", {"prompt": "Say hello", "max_tokens": 7000})
    finally:
        server.stop()
        api.close()
    assert job.status is JobStatus.COMPLETED and job.usage["inference_geo"] == "us"
    assert job.usage["cost_usd"] == pytest.approx(1.1 * (1000 * 2 + 7000 * 10) / 1e6)
    assert job.usage["cost_usd"] <= job.cost_cap_usd <= 0.085


def _thinking_then_stall(mark: str) -> list[Any]:
    """message_start (1,000 input), a thinking block shown as omitted (empty thinking and
    its signature: finished, every thinking token billed), then nothing more."""
    events = sse_events("", input_tokens=1000, thinking="", chunks=1)
    return [*events[:5], ("mark", mark), ("stall", 60)]


def test_cancel_and_retry_after_omitted_thinking_stays_within_the_cap_and_budget(
        pg_store, make_user, claude_env, monkeypatch, database_url) -> None:
    """Each cut call records the most it can have cost (its max_tokens), so the owner's
    cancel-and-retry loop runs out of cap and budget; before, each recorded 1 output
    token and the loop was bounded by nothing."""
    server = FakeAnthropicServer([_thinking_then_stall(f"p{n}") for n in range(8)]).start()
    api = Api(database_url, AI_JOBS_USER_DAILY_BUDGET_USD="0.2")
    try:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        user = make_user()
        created = api.create(user, "ai.generate", {"prompt": "Think hard", "max_tokens": 8000})
        assert created.status_code == 202, created.json
        job_id = uuid.UUID(created.json["id"])
        sent = 0
        for n in range(8):
            worker = threading.Thread(target=Runner(pg_store, load_job_modules()).run_available,
                                      kwargs={"job_id": job_id, "max_jobs": 1})
            worker.start()
            if server.marks[f"p{n}"].wait(3):
                sent += 1
                pg_store.request_cancel(job_id)
            worker.join(15)
            job = pg_store.get(job_id)
            if job.status is not JobStatus.CANCELLED or api.retry(user, job_id).status_code != 202:
                break
        job = pg_store.get(job_id)
        ledger = float(db_spend(database_url, user))
    finally:
        server.stop()
        api.close()
    worst = usage_record(SONNET, {"input_tokens": 1000, "output_tokens": 8000})["cost_usd"]
    assert sent == len(server.requests) <= 2
    assert job.usage["output_tokens"] == sent * 8000 and job.usage["estimated"] is True
    assert job.usage["cost_usd"] == pytest.approx(sent * worst) and ledger == pytest.approx(sent * worst)


def db_spend(database_url: str, user: uuid.UUID) -> float:
    with psycopg.connect(database_url) as conn:
        return conn.execute("select coalesce(sum(cost_usd), 0) from public.ai_jobs_spend where user_id = %s",
                            (user,)).fetchone()[0]


def test_the_map_child_type_takes_the_map_max_tokens_cap(api_factory, make_user) -> None:
    user = make_user()
    api = api_factory(AI_JOBS_MAX_TOKENS='{"ai.map_batches": 1000}')
    _problem(api.create(user, "ai.map_batches", {"document": "d", "items": ["a"], "max_tokens": 8000}),
             422, "max_tokens_too_large")
    body = _problem(api.create(user, "ai.map_batch", {"document": "d", "items": ["a"], "instructions": "map",
                                                       "max_tokens": 8000}), 422, "max_tokens_too_large")
    assert body["max_tokens_cap"] == 1000
    own = api_factory(AI_JOBS_MAX_TOKENS='{"ai.map_batches": 1000, "ai.map_batch": 2000}')
    assert own.create(user, "ai.map_batch", {"document": "d", "items": ["a"], "instructions": "map",
                                             "max_tokens": 2000}).status_code == 202


def test_spend_settings_fail_at_start_up() -> None:
    for env in ({"AI_JOBS_MAX_TOKENS": "{not json"}, {"AI_JOBS_MAX_TOKENS": '{"ai.generate": 0}'},
                {"AI_JOBS_MAX_JOB_COST_USD": "-1"}, {"AI_JOBS_USER_DAILY_BUDGET_USD": "lots"},
                {"AI_JOBS_MODELS": "claude sonnet"}, {"AI_JOBS_MAX_CALLS_PER_JOB": "0"}):
        with pytest.raises(ValueError):
            Settings.from_env(env)
    spend = Settings.from_env({"AI_JOBS_MODELS": " claude-opus-5-5 ,,claude-haiku-5-5", "AI_JOBS_MODEL": "claude-x"}).spend
    assert spend.allowed_models() == ["claude-x", "claude-opus-5-5", "claude-haiku-5-5"]
    assert SpendSettings().max_tokens_cap("my.custom") == 8192
