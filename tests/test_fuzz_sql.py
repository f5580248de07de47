"""Hypothesis against the SQL API through the store: arbitrary arguments and
arbitrary operation sequences. A typed refusal (InvalidArgument, JobState,
LeaseLost, ...) is fine; StoreUnavailableError would mean an unmapped database
error, the SQL-level equivalent of a 5xx. Invariants are checked after every step."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ai_jobs.errors import AiJobsError, StoreUnavailableError
from ai_jobs.models import JobError, NewJob
from ai_jobs.store.postgres import PostgresStore

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
texts = st.text(max_size=300)

INVARIANTS = """
select count(*) from public.ai_jobs j where
  (j.status = 'running') <> (j.locked_by is not null)
  or j.attempts > j.max_attempts
  or (j.finished_at is not null) <> (j.status in ('completed', 'failed', 'cancelled'))
  or j.updated_at < j.created_at
"""


def typed(call):  # type: ignore[no-untyped-def]
    """Run a store call; typed refusals are fine, an unmapped database error is not."""
    try:
        return call()
    except StoreUnavailableError as exc:
        pytest.fail(f"unmapped database error: {exc}")
    except AiJobsError:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    job_type=st.one_of(st.sampled_from(["example.countdown", "ai.generate", "a.b_c"]), texts),
    input_=st.one_of(json_objects, json_values),
    priority=st.integers(-(2**31), 2**31 - 1),
    run_at=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC), min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))),
    key=st.one_of(st.none(), texts),
    metadata=st.one_of(json_objects, json_values),
    max_attempts=st.integers(-5, 200),
    max_active=st.one_of(st.none(), st.integers(-3, 5)),
    cost=st.one_of(st.none(), st.floats()),  # NaN and infinities included
    budget=st.one_of(st.none(), st.floats()),
)
def test_enqueue_any_arguments(pg_store: PostgresStore, database_url: str, fuzz_user: uuid.UUID,
                               job_type, input_, priority, run_at, key, metadata, max_attempts, max_active,
                               cost, budget) -> None:  # type: ignore[no-untyped-def]
    new = NewJob.model_construct(user_id=fuzz_user, job_type=job_type, input=input_, priority=priority, run_at=run_at,
                                 idempotency_key=key, parent_id=None, metadata=metadata, max_attempts=max_attempts,
                                 max_active=max_active, cost_estimate_usd=cost, cost_cap_usd=cost,
                                 daily_budget_usd=budget)
    first = typed(lambda: pg_store.enqueue(new))
    if first is not None and key is not None:
        again = typed(lambda: pg_store.enqueue(new))
        assert again is not None and again.job.id == first.job.id and not again.created
    if first is not None and max_active is not None and first.created:
        with psycopg.connect(database_url) as conn:
            active = conn.execute("select count(*) from public.ai_jobs where user_id = %s and status in ('pending', 'running')",
                                  (fuzz_user,)).fetchone()[0]
        assert active <= max_active  # a cap of 0 or less refuses every enqueue, so this is never reached for it
    with psycopg.connect(database_url) as conn:
        assert conn.execute(INVARIANTS).fetchone()[0] == 0


@pytest.mark.parametrize("field", ["job_type", "idempotency_key", "input", "metadata"])
def test_nul_characters_are_refused_not_crashed(store, fuzz_user: uuid.UUID, field: str) -> None:  # type: ignore[no-untyped-def]
    """Both adapters: psycopg refuses NUL in text client-side; PostgREST passes it to PostgreSQL."""
    values = {"job_type": "example.countdown", "idempotency_key": None, "input": {}, "metadata": {}}
    values[field] = "a\x00b" if field in ("job_type", "idempotency_key") else {"k": "a\x00b"}
    new = NewJob.model_construct(user_id=fuzz_user, priority=0, run_at=None, parent_id=None, max_attempts=3,
                                 max_active=None, **values)
    with pytest.raises(AiJobsError) as err:
        store.enqueue(new)
    assert not isinstance(err.value, StoreUnavailableError), err.value


@pytest.fixture()
def fuzz_user(make_user) -> uuid.UUID:  # type: ignore[no-untyped-def]
    return make_user()


class QueueMachine(RuleBasedStateMachine):
    """Random interleavings of owner and worker operations on a few jobs."""

    store: PostgresStore
    database_url: str
    user: uuid.UUID

    @initialize()
    def setup(self) -> None:
        self.jobs: list[uuid.UUID] = []

    @rule(max_attempts=st.integers(1, 4))
    def enqueue(self, max_attempts: int) -> None:
        result = typed(lambda: self.store.enqueue(NewJob(user_id=self.user, job_type="example.countdown", max_attempts=max_attempts)))
        if result:
            self.jobs.append(result.job.id)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), worker=st.sampled_from(["w1", "w2"]), lease=st.integers(-1, 5))
    def claim(self, data, worker: str, lease: int) -> None:  # type: ignore[no-untyped-def]
        typed(lambda: self.store.claim(worker, lease_seconds=lease, job_id=data.draw(st.sampled_from(self.jobs))))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), worker=st.sampled_from(["w1", "w2"]),
          action=st.sampled_from(["progress", "checkpoint", "complete", "fail", "fail_fatal", "release", "cancelled", "heartbeat"]),
          value=st.integers(-10, 110), step=texts)
    def worker_action(self, data, worker: str, action: str, value: int, step: str) -> None:  # type: ignore[no-untyped-def]
        job_id = data.draw(st.sampled_from(self.jobs))
        calls = {
            "progress": lambda: self.store.progress(job_id, worker, value, step),
            "checkpoint": lambda: self.store.checkpoint(job_id, worker, step, {"v": value}, usage={"input_tokens": value}),
            "complete": lambda: self.store.complete(job_id, worker, {"v": value}),
            "fail": lambda: self.store.fail(job_id, worker, JobError(code="x", message=step, retryable=True)),
            "fail_fatal": lambda: self.store.fail(job_id, worker, JobError(code="x", message=step, retryable=False)),
            "release": lambda: self.store.release(job_id, worker),
            "cancelled": lambda: self.store.mark_cancelled(job_id, worker),
            "heartbeat": lambda: self.store.heartbeat(job_id, worker, lease_seconds=max(value, 0)),
        }
        typed(calls[action])

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), action=st.sampled_from(["cancel", "retry", "delete", "get"]), owner=st.booleans())
    def owner_action(self, data, action: str, owner: bool) -> None:  # type: ignore[no-untyped-def]
        job_id = data.draw(st.sampled_from(self.jobs))
        user = self.user if owner else uuid.uuid4()
        calls = {
            "cancel": lambda: self.store.request_cancel(job_id, user_id=user),
            "retry": lambda: self.store.retry(job_id, user_id=user),
            "delete": lambda: self.store.delete(job_id, user_id=user),
            "get": lambda: self.store.get(job_id, user_id=user),
        }
        typed(calls[action])

    @rule()
    def expire_leases(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 s' where status = 'running'")
        typed(lambda: self.store.reap_expired())

    @invariant()
    def rows_are_consistent(self) -> None:
        with psycopg.connect(self.database_url) as conn:
            assert conn.execute(INVARIANTS).fetchone()[0] == 0


def test_random_operation_sequences(pg_store: PostgresStore, database_url: str, make_user) -> None:  # type: ignore[no-untyped-def]
    QueueMachine.store = pg_store
    QueueMachine.database_url = database_url
    QueueMachine.user = make_user()
    machine = QueueMachine.TestCase
    machine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                suppress_health_check=list(HealthCheck))
    machine().runTest()
