"""One contract, both adapters: every test here runs against PostgresStore and
against SupabaseStore (real supabase-py HTTP calls executed by the PostgREST
emulator under the service_role claims)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ai_jobs.errors import (
    ActiveJobLimitError,
    BudgetExceededError,
    IdempotencyConflictError,
    InvalidArgumentError,
    JobNotFoundError,
    JobStateError,
    LeaseLostError,
)
from ai_jobs.models import JobError, JobStatus, NewJob
from ai_jobs.store.base import COMPLETE_CLAIM, COMPLETE_MANY, ENQUEUE_MANY, JobStore, Json

RETRYABLE = JobError(code="overloaded", message="try later", retryable=True)
FATAL = JobError(code="bad_request", message="prompt too long", retryable=False)


def enqueue(store: JobStore, user_id: uuid.UUID, **kw: object):
    kw.setdefault("job_type", "example.countdown")
    return store.enqueue(NewJob(user_id=user_id, **kw))  # type: ignore[arg-type]


def test_enqueue_returns_pending_job(store: JobStore, make_user) -> None:
    user = make_user()
    result = enqueue(store, user, input={"steps": 3}, priority=5, metadata={"source": "test"})
    job = result.job
    assert result.created is True
    assert job.status is JobStatus.PENDING
    assert job.user_id == user and job.input == {"steps": 3} and job.priority == 5
    assert job.attempts == 0 and job.max_attempts == 3 and job.progress == 0
    assert job.metadata == {"source": "test"} and job.checkpoints == {} and job.usage == {}
    assert store.get(job.id) == job


def test_idempotency_key_returns_existing_job(store: JobStore, make_user) -> None:
    user, other = make_user(), make_user()
    first = enqueue(store, user, input={"n": 1}, idempotency_key="abc")
    again = enqueue(store, user, input={"n": 1}, idempotency_key="abc")
    assert again.created is False and again.job.id == first.job.id
    # the key is unique per user, not global
    assert enqueue(store, other, input={"n": 1}, idempotency_key="abc").created is True
    with pytest.raises(IdempotencyConflictError):
        enqueue(store, user, input={"n": 2}, idempotency_key="abc")


def test_per_user_cap_on_active_jobs(store: JobStore, make_user) -> None:
    user, other = make_user(), make_user()
    for _ in range(3):
        enqueue(store, user, max_active=3)
    with pytest.raises(ActiveJobLimitError) as err:
        enqueue(store, user, max_active=3)
    assert "3 of 3" in err.value.message
    enqueue(store, other, max_active=3)  # other users are unaffected
    # an idempotent repeat is not a new job, so the cap does not apply to it
    job = store.list(user_id=user).jobs[0]
    store.request_cancel(job.id)
    enqueue(store, user, max_active=3)  # a cancelled job frees a slot


def test_paused_jobs_keep_their_place_under_the_cap_and_the_budget(store: JobStore, make_user) -> None:
    """Pausing is not a way around the limits: create to the cap, pause, create again,
    resume would otherwise queue any number of jobs and reserve past the budget."""
    user = make_user()
    jobs = [enqueue(store, user, max_active=3).job for _ in range(3)]
    for job in jobs:
        assert store.pause(job.id, user_id=user).status is JobStatus.PAUSED
    with pytest.raises(ActiveJobLimitError) as err:
        enqueue(store, user, max_active=3)
    assert "3 of 3 jobs pending, running or paused" in err.value.message
    with pytest.raises(ActiveJobLimitError):  # the bulk path counts them too
        store.enqueue_many([NewJob(user_id=user, job_type="example.countdown", max_active=3)])
    for job in jobs:
        store.resume(job.id, user_id=user)
    assert len(store.list(user_id=user).jobs) == 3
    store.request_cancel_tree(jobs[0].id, user_id=user)  # a cancelled one frees its slot
    enqueue(store, user, max_active=3)

    spender = make_user()
    budget = {"cost_estimate_usd": 0.1, "cost_cap_usd": 0.164, "daily_budget_usd": 0.2}
    first = enqueue(store, spender, job_type="ai.generate", **budget).job
    store.pause(first.id, user_id=spender)
    with pytest.raises(BudgetExceededError) as spent:  # the paused job still holds its $0.164
        enqueue(store, spender, job_type="ai.generate", **budget)
    assert spent.value.facts["reserved_usd"] == 0.164


def test_enqueue_many_applies_every_create_check_all_or_nothing(store: JobStore, make_user) -> None:
    user, other = make_user(), make_user()
    jobs = [NewJob(user_id=user, job_type="example.countdown", input={"n": i}, max_active=3) for i in range(3)]
    results = store.enqueue_many(jobs)
    assert [r.created for r in results] == [True] * 3
    assert [r.job.input for r in results] == [{"n": 0}, {"n": 1}, {"n": 2}]  # in input order
    assert all(store.get(r.job.id) == r.job for r in results)
    # the active-job cap counts the batch's own jobs; a refused job inserts nothing
    with pytest.raises(ActiveJobLimitError):
        store.enqueue_many([NewJob(user_id=other, job_type="example.countdown", max_active=3) for _ in range(4)])
    assert store.list(user_id=other).jobs == []
    # idempotent repeats return the existing job, inside the same batch too
    keyed = NewJob(user_id=other, job_type="example.countdown", idempotency_key="k1")
    first, again = store.enqueue_many([keyed, keyed])
    assert (first.created, again.created, again.job.id) == (True, False, first.job.id)
    # the daily budget counts the caps reserved by the jobs before it in the batch
    budget = {"cost_estimate_usd": 0.2, "cost_cap_usd": 0.4, "daily_budget_usd": 1.0}
    with pytest.raises(BudgetExceededError):
        store.enqueue_many([NewJob(user_id=make_user(), job_type="ai.generate", **budget)] * 3)
    assert store.enqueue_many([]) == []
    with pytest.raises(InvalidArgumentError):
        store.enqueue_many([keyed] * 1001)
    with pytest.raises(InvalidArgumentError):
        store.call(ENQUEUE_MANY, {"p_jobs": Json([{"job_type": "example.countdown"}])})
    with pytest.raises(InvalidArgumentError, match="job 1: an object"):  # the index of the bad one
        store.call(ENQUEUE_MANY, {"p_jobs": Json([{"user_id": str(user), "job_type": "example.countdown"}, 5])})


def test_daily_budget_reserves_caps_and_counts_recorded_spend(store: JobStore, make_user) -> None:
    user, other = make_user(), make_user()
    budget = {"cost_estimate_usd": 0.2, "cost_cap_usd": 0.4, "daily_budget_usd": 1.0}
    first = enqueue(store, user, job_type="ai.generate", **budget).job
    assert first.cost_estimate_usd == 0.2 and first.cost_cap_usd == 0.4 and store.get(first.id) == first
    enqueue(store, user, job_type="ai.generate", **budget)
    with pytest.raises(BudgetExceededError) as err:  # 0.8 held + 0.4 > 1.0
        enqueue(store, user, job_type="ai.generate", **budget)
    assert err.value.code == "budget_exceeded" and "budget" in err.value.message
    assert err.value.facts == {"budget_usd": 1.0, "spent_usd": 0, "reserved_usd": 0.8, "job_cap_usd": 0.4,
                               "retry_after_seconds": None}
    assert err.value.retry_after_seconds is None  # active jobs hold it: no recorded spend to wait for
    enqueue(store, other, job_type="ai.generate", **budget)  # other users are unaffected
    # the first job runs and records $0.35: its reservation shrinks to 0.05, the ledger holds 0.35
    store.claim("w-budget", job_id=first.id)
    store.complete(first.id, "w-budget", {"text": "ok"}, usage={"cost_usd": 0.35})
    with pytest.raises(BudgetExceededError) as err:  # 0.35 spent + 0.4 held + 0.4 > 1.0
        enqueue(store, user, job_type="ai.generate", **budget)
    assert err.value.facts["spent_usd"] == 0.35 and err.value.facts["reserved_usd"] == 0.4
    assert 86_300 < err.value.retry_after_seconds <= 86_400
    # a job that reserves nothing is not refused
    enqueue(store, user, job_type="ai.generate", daily_budget_usd=1.0)


def test_unknown_user_and_bad_values_are_invalid_arguments(store: JobStore, make_user) -> None:
    with pytest.raises(InvalidArgumentError):
        enqueue(store, uuid.uuid4())  # not in auth.users
    user = make_user()
    worker = "w-bad"
    job = enqueue(store, user).job
    store.claim(worker)
    with pytest.raises(InvalidArgumentError):
        store.progress(job.id, worker, 101)
    with pytest.raises(InvalidArgumentError):
        store.claim(worker, lease_seconds=0)


def test_claim_leases_by_priority_then_due_time(store: JobStore, make_user) -> None:
    user = make_user()
    low = enqueue(store, user, priority=0).job
    high = enqueue(store, user, priority=10).job
    later = enqueue(store, user, priority=100, run_at=datetime.now(UTC) + timedelta(hours=1)).job
    claimed = store.claim("w1", limit=5, lease_seconds=60)
    assert [j.id for j in sorted(claimed, key=lambda j: -j.priority)] == [high.id, low.id]
    for job in claimed:
        assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.locked_by == "w1"
        assert job.lease_expires_at is not None and job.started_at is not None
    assert store.claim("w2") == []  # nothing else is due
    assert store.get(later.id).status is JobStatus.PENDING


def test_claim_filters_by_type_and_id(store: JobStore, make_user) -> None:
    user = make_user()
    a = enqueue(store, user, job_type="ai.generate").job
    b = enqueue(store, user, job_type="example.countdown").job
    assert [j.id for j in store.claim("w", job_types=["ai.generate"], limit=10)] == [a.id]
    c = enqueue(store, user).job
    assert [j.id for j in store.claim("w", job_id=c.id, limit=10)] == [c.id]
    assert [j.id for j in store.claim("w", limit=10)] == [b.id]


def test_next_due_leaves_out_jobs_a_full_limit_holds_back(store: JobStore, make_user) -> None:
    user, other = make_user(), make_user()
    assert store.next_due_in() is None
    [running] = store.claim("w", job_id=enqueue(store, user, user_limit=1).job.id)
    enqueue(store, user, user_limit=1)  # due now, but its user's limit is full
    assert store.next_due_in() is None
    enqueue(store, other, user_limit=1, run_at=datetime.now(UTC) + timedelta(seconds=30))
    assert 25 < store.next_due_in() <= 30
    assert store.next_due_in(job_types=["example.other"]) is None
    store.complete(running.id, "w", {})
    assert store.next_due_in() <= 0


def test_worker_lifecycle_progress_checkpoint_complete(store: JobStore, make_user) -> None:
    user = make_user()
    job = enqueue(store, user).job
    [running] = store.claim("w1", lease_seconds=30)
    beat = store.heartbeat(job.id, "w1", lease_seconds=600)
    assert beat.lease_expires_at > running.lease_expires_at
    p = store.progress(job.id, "w1", 40, "Analyzing batch 2 of 5")
    assert (p.progress, p.progress_message) == (40, "Analyzing batch 2 of 5")
    c = store.checkpoint(job.id, "w1", "batch-1", {"items": [1, 2]}, usage={"input_tokens": 10, "cost_usd": 0.5})
    c = store.checkpoint(job.id, "w1", "batch-2", None, usage={"input_tokens": 5, "cost_usd": 0.25, "model": "m"})
    assert c.checkpoints == {"batch-1": {"items": [1, 2]}, "batch-2": None}
    assert c.usage == {"input_tokens": 15, "cost_usd": 0.75, "model": "m"}
    done = store.complete(job.id, "w1", {"text": "hi"}, usage={"output_tokens": 7})
    assert done.status is JobStatus.COMPLETED and done.result == {"text": "hi"} and done.progress == 100
    assert done.finished_at is not None and done.locked_by is None and done.lease_expires_at is None
    assert done.usage["output_tokens"] == 7 and done.usage["input_tokens"] == 15
    assert done.updated_at > c.updated_at
    with pytest.raises(LeaseLostError):
        store.complete(job.id, "w1", {"text": "again"})


def test_other_worker_cannot_touch_a_leased_job(store: JobStore, make_user) -> None:
    job = enqueue(store, make_user()).job
    store.claim("owner")
    for call in (
        lambda: store.heartbeat(job.id, "intruder"),
        lambda: store.progress(job.id, "intruder", 10),
        lambda: store.checkpoint(job.id, "intruder", "s", 1),
        lambda: store.complete(job.id, "intruder", 1),
        lambda: store.fail(job.id, "intruder", FATAL),
        lambda: store.release(job.id, "intruder"),
    ):
        with pytest.raises(LeaseLostError):
            call()
    with pytest.raises(JobNotFoundError):
        store.heartbeat(uuid.uuid4(), "owner")


def test_retryable_failure_backs_off_with_jitter_until_max_attempts(store: JobStore, make_user, db) -> None:
    job = enqueue(store, make_user(), max_attempts=3).job
    delays = []
    for attempt in (1, 2):
        [claimed] = store.claim("w", job_id=job.id)
        assert claimed.attempts == attempt
        before = datetime.now(UTC)
        failed = store.fail(job.id, "w", RETRYABLE, backoff_base_seconds=10)
        assert failed.status is JobStatus.PENDING and failed.error == RETRYABLE
        delays.append((failed.run_at - before).total_seconds())
        assert store.claim("w", job_id=job.id) == []  # not due yet
        db.execute("update public.ai_jobs set run_at = now() where id = %s", (job.id,))
    # base 10 s * 2^(attempt-1), scaled by a jitter factor in [0.5, 1]
    assert 4.5 <= delays[0] <= 10.5
    assert 9.5 <= delays[1] <= 20.5
    store.claim("w", job_id=job.id)
    final = store.fail(job.id, "w", RETRYABLE)
    assert final.status is JobStatus.FAILED and final.attempts == 3 and final.finished_at is not None


def test_retry_at_is_honoured(store: JobStore, make_user) -> None:
    job = enqueue(store, make_user()).job
    store.claim("w")
    at = datetime.now(UTC) + timedelta(seconds=90)
    failed = store.fail(job.id, "w", RETRYABLE, retry_at=at)
    assert failed.status is JobStatus.PENDING
    assert abs((failed.run_at - at).total_seconds()) < 0.01


def test_non_retryable_failure_fails_at_once(store: JobStore, make_user) -> None:
    job = enqueue(store, make_user(), max_attempts=5).job
    store.claim("w")
    failed = store.fail(job.id, "w", FATAL, usage={"input_tokens": 3})
    assert failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error == FATAL and failed.usage == {"input_tokens": 3}


def test_release_does_not_spend_an_attempt_and_keeps_checkpoints(store: JobStore, make_user) -> None:
    job = enqueue(store, make_user(), max_attempts=1).job
    for step in ("one", "two", "three"):
        [claimed] = store.claim("w", job_id=job.id)
        assert claimed.attempts == 1
        store.checkpoint(job.id, "w", step, step.upper())
        released = store.release(job.id, "w")
        assert released.status is JobStatus.PENDING and released.attempts == 0
    assert store.get(job.id).checkpoints == {"one": "ONE", "two": "TWO", "three": "THREE"}


def test_cancel_pending_is_immediate(store: JobStore, make_user) -> None:
    user = make_user()
    job = enqueue(store, user).job
    cancelled = store.request_cancel(job.id, user_id=user)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
    assert store.request_cancel(job.id, user_id=user).status is JobStatus.CANCELLED  # idempotent
    assert store.claim("w") == []


def test_cancel_running_flags_and_worker_stops(store: JobStore, make_user) -> None:
    user = make_user()
    job = enqueue(store, user).job
    store.claim("w")
    flagged = store.request_cancel(job.id, user_id=user)
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested_at is not None
    seen = store.progress(job.id, "w", 50)  # the worker learns of it from any write
    assert seen.cancel_requested_at is not None
    stopped = store.mark_cancelled(job.id, "w")
    assert stopped.status is JobStatus.CANCELLED and stopped.locked_by is None


def test_cancel_finished_job_conflicts(store: JobStore, make_user) -> None:
    job = enqueue(store, make_user()).job
    store.claim("w")
    store.complete(job.id, "w", {})
    with pytest.raises(JobStateError):
        store.request_cancel(job.id)


def test_cancel_is_idempotent_and_a_repeat_changes_nothing(store: JobStore, make_user) -> None:
    """The HTTP contract: cancelled -> the job (200), running -> flagged once, repeats
    are reads (updated_at does not move, so Realtime sends no event); completed and
    failed conflict (409) and stay as they were."""
    user = make_user()
    running = enqueue(store, user).job
    store.claim("w")
    flagged = store.request_cancel(running.id, user_id=user)
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested_at is not None
    again = store.request_cancel(running.id, user_id=user)
    assert again.status is JobStatus.RUNNING
    assert (again.cancel_requested_at, again.updated_at) == (flagged.cancel_requested_at, flagged.updated_at)
    assert again.locked_by == "w" and again.lease_expires_at == flagged.lease_expires_at

    cancelled = store.mark_cancelled(running.id, "w")
    repeat = store.request_cancel(running.id, user_id=user)
    assert repeat.status is JobStatus.CANCELLED
    assert (repeat.updated_at, repeat.finished_at) == (cancelled.updated_at, cancelled.finished_at)

    pending = enqueue(store, user).job
    first = store.request_cancel(pending.id, user_id=user)
    assert first.status is JobStatus.CANCELLED and first.cancel_requested_at and first.finished_at
    assert store.request_cancel(pending.id, user_id=user).updated_at == first.updated_at

    completed, failed = enqueue(store, user).job, enqueue(store, user).job
    store.claim("w", limit=2)
    store.complete(completed.id, "w", {"ok": True})
    store.fail(failed.id, "w", FATAL)
    for job_id, status in ((completed.id, JobStatus.COMPLETED), (failed.id, JobStatus.FAILED)):
        before = store.get(job_id)
        with pytest.raises(JobStateError, match=f"is {status.value}"):
            store.request_cancel(job_id, user_id=user)
        after = store.get(job_id)
        assert after.status is status and after.cancel_requested_at is None and after.updated_at == before.updated_at


def test_retry_failed_or_cancelled_keeps_checkpoints(store: JobStore, make_user) -> None:
    user = make_user()
    job = enqueue(store, user).job
    store.claim("w")
    store.checkpoint(job.id, "w", "step-1", 42)
    store.fail(job.id, "w", FATAL)
    again = store.retry(job.id, user_id=user)
    assert again.status is JobStatus.PENDING and again.attempts == 0 and again.error is None
    assert again.checkpoints == {"step-1": 42} and again.finished_at is None
    with pytest.raises(JobStateError):
        store.retry(job.id, user_id=user)  # pending cannot be retried
    store.request_cancel(job.id, user_id=user)
    assert store.retry(job.id, user_id=user).status is JobStatus.PENDING


def test_retry_respects_the_cap(store: JobStore, make_user) -> None:
    user = make_user()
    job = enqueue(store, user).job
    store.request_cancel(job.id)
    enqueue(store, user)
    with pytest.raises(ActiveJobLimitError):
        store.retry(job.id, user_id=user, max_active=1)


def test_delete_only_finished_jobs(store: JobStore, make_user) -> None:
    user = make_user()
    job = enqueue(store, user).job
    with pytest.raises(JobStateError):
        store.delete(job.id, user_id=user)
    store.request_cancel(job.id, user_id=user)
    assert store.delete(job.id, user_id=user).id == job.id
    with pytest.raises(JobNotFoundError):
        store.get(job.id)


def test_owner_scoping_hides_other_users_jobs(store: JobStore, make_user) -> None:
    alice, bob = make_user(), make_user()
    job = enqueue(store, alice).job
    for call in (store.get, store.request_cancel, store.retry, store.delete):
        with pytest.raises(JobNotFoundError):
            call(job.id, user_id=bob)
    assert store.list(user_id=bob).jobs == []
    assert store.get(job.id, user_id=alice).id == job.id


def test_list_is_newest_first_and_paginates(store: JobStore, make_user) -> None:
    user = make_user()
    ids = [enqueue(store, user, input={"i": i}).job.id for i in range(7)]
    enqueue(store, make_user())  # someone else's
    seen = []
    cursor = None
    while True:
        page = store.list(user_id=user, limit=3, cursor=cursor)
        seen += [j.id for j in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))
    store.request_cancel(ids[0])
    assert [j.id for j in store.list(user_id=user, status=JobStatus.CANCELLED).jobs] == [ids[0]]
    with pytest.raises(InvalidArgumentError):
        store.list(user_id=user, cursor="not-a-cursor")


def test_expired_lease_is_reaped_and_reclaimed(store: JobStore, make_user, db) -> None:
    job = enqueue(store, make_user(), max_attempts=2).job
    store.claim("crashed", lease_seconds=30)
    store.checkpoint(job.id, "crashed", "step-1", "done")
    db.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 second' where id = %s", (job.id,))
    [reclaimed] = store.claim("rescuer")  # claim reaps first
    assert reclaimed.id == job.id and reclaimed.locked_by == "rescuer" and reclaimed.attempts == 2
    assert reclaimed.checkpoints == {"step-1": "done"}
    assert reclaimed.error is not None and reclaimed.error.code == "lease_expired"
    with pytest.raises(LeaseLostError):
        store.heartbeat(job.id, "crashed")
    # attempts spent: the next expiry fails the job for good
    db.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 second' where id = %s", (job.id,))
    [reaped] = store.reap_expired()
    assert reaped.status is JobStatus.FAILED and reaped.error.retryable is False


def test_reap_cancels_a_job_whose_cancel_was_requested(store: JobStore, make_user, db) -> None:
    job = enqueue(store, make_user()).job
    store.claim("w")
    store.request_cancel(job.id)
    db.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 second' where id = %s", (job.id,))
    [reaped] = store.reap_expired()
    assert reaped.status is JobStatus.CANCELLED


def test_purge_respects_retention(store: JobStore, make_user, db) -> None:
    user = make_user()
    jobs = {name: enqueue(store, user).job for name in ("old_done", "new_done", "old_failed", "mid_failed")}
    for name, job in jobs.items():
        store.claim("w", job_id=job.id)
        if "done" in name:
            store.complete(job.id, "w", {})
        else:
            store.fail(job.id, "w", FATAL)
    ages = {"old_done": "31 days", "new_done": "29 days", "old_failed": "8 days", "mid_failed": "6 days"}
    for name, age in ages.items():
        db.execute(
            "update public.ai_jobs set finished_at = now() - %s::interval where id = %s", (age, jobs[name].id)
        )
    assert store.purge() == 2
    remaining = {j.id for j in store.list(user_id=user).jobs}
    assert remaining == {jobs["new_done"].id, jobs["mid_failed"].id}
    assert store.purge(completed_retention=timedelta(days=1), failed_retention=timedelta(days=1)) == 2


def test_purge_keeps_the_children_of_an_unfinished_parent(store: JobStore, make_user, db) -> None:
    """A workflow still running (say, sleeping for 40 days between its steps) must find
    its children again under their spawn keys, or it would spawn and pay for new ones."""
    user = make_user()
    parent = enqueue(store, user).job
    child = enqueue(store, user, parent_id=parent.id).job
    store.claim("w", job_id=child.id)
    store.complete(child.id, "w", {})
    db.execute("update public.ai_jobs set finished_at = now() - interval '31 days' where id = %s", (child.id,))
    for status in ("pending", "paused"):
        db.execute("update public.ai_jobs set status = %s, wait_reason = %s where id = %s",
                   (status, "paused" if status == "paused" else None, parent.id))
        assert store.purge() == 0 and store.get(child.id).status is JobStatus.COMPLETED
    db.execute("update public.ai_jobs set status = 'pending', wait_reason = null where id = %s", (parent.id,))
    store.claim("w", job_id=parent.id)
    assert store.purge() == 0  # running
    store.complete(parent.id, "w", {})
    assert store.purge() == 1  # the parent finished: the child's retention applies again
    with pytest.raises(JobNotFoundError):
        store.get(child.id)


def test_metrics(store: JobStore, make_user) -> None:
    user = make_user()
    for _ in range(3):
        enqueue(store, user, job_type="ai.generate")
    ok = enqueue(store, user, job_type="ai.match").job
    bad = enqueue(store, user, job_type="ai.match").job
    for job in (ok, bad):
        store.claim("w", job_id=job.id)
    store.complete(ok.id, "w", {})
    store.fail(bad.id, "w", FATAL)
    depth = {(d.job_type, d.status): d.jobs for d in store.queue_depth()}
    assert depth == {("ai.generate", JobStatus.PENDING): 3}
    [stats] = store.stats_24h()
    assert (stats.job_type, stats.completed, stats.failed) == ("ai.match", 1, 1)
    assert stats.failure_rate == 0.5 and stats.p50_run_seconds is not None and stats.p95_run_seconds >= 0


def test_job_type_and_shape_checked_by_the_database(make_user, database_url) -> None:
    """The CHECK constraints hold even for writes that skip the Python models."""
    user = make_user()
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "insert into public.ai_jobs (user_id, job_type, status) values (%s, 'x', 'running')", (user,)
        )
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into public.ai_jobs (user_id, job_type) values (%s, 'Bad Type!')", (user,))
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "insert into public.ai_jobs (user_id, job_type, status, finished_at) values (%s, 'a', 'completed', now())",
            (user,),
        )


def test_complete_many_completes_only_what_the_worker_holds(store: JobStore, make_user) -> None:
    user = make_user()
    mine = [enqueue(store, user).job for _ in range(3)]
    theirs = enqueue(store, user).job
    store.claim("w1", limit=3)
    store.claim("w2", job_id=theirs.id)
    results = [(job.id, {"n": i}, {"input_tokens": i} if i else None) for i, job in enumerate(mine)]
    results.append((theirs.id, {"n": 99}, None))
    done = store.complete_many("w1", results)
    assert done == {job.id for job in mine}
    for i, job in enumerate(mine):
        finished = store.get(job.id)
        assert finished.status is JobStatus.COMPLETED and finished.result == {"n": i} and finished.progress == 100
    assert store.get(mine[2].id).usage == {"input_tokens": 2}
    assert store.get(theirs.id).status is JobStatus.RUNNING  # not w1's to complete
    with pytest.raises(InvalidArgumentError):
        store.call(COMPLETE_MANY, {"p_worker": "w1", "p_results": Json({"id": "not an array"})})


def test_a_completion_without_usage_keeps_the_usage_recorded_while_running(store: JobStore, make_user) -> None:
    """The fast path sends no usage for a job that recorded none at completion (a no-op
    or a job whose steps recorded it already): the row's usage stays exactly as the
    run left it, on both completion paths, and usage that is sent is still added."""
    user = make_user()
    jobs = [enqueue(store, user).job for _ in range(3)]
    store.claim("w1", limit=3)
    for job in jobs:
        store.checkpoint(job.id, "w1", "call", {"ok": True}, usage={"input_tokens": 10, "cost_usd": 0.5})
    assert store.complete_many("w1", [(jobs[0].id, {"n": 0}, None)]) == {jobs[0].id}
    done, _ = store.complete_and_claim("w1", [(jobs[1].id, {"n": 1}, None), (jobs[2].id, {"n": 2}, {"output_tokens": 4})])
    assert done == {jobs[1].id, jobs[2].id}
    assert store.get(jobs[0].id).usage == {"input_tokens": 10, "cost_usd": 0.5}
    assert store.get(jobs[1].id).usage == {"input_tokens": 10, "cost_usd": 0.5}
    assert store.get(jobs[2].id).usage == {"input_tokens": 10, "cost_usd": 0.5, "output_tokens": 4}


def test_complete_and_claim_writes_batch_n_and_leases_batch_n_plus_1(store: JobStore, make_user) -> None:
    """The fused statement is complete_many then claim: only held jobs are completed,
    the claim spends one attempt per job and leases it, and a job whose slot the
    completion frees (user limit 1) is claimable in the same statement."""
    user = make_user()
    first = enqueue(store, user, user_limit=1).job
    second = enqueue(store, user, user_limit=1).job
    theirs = enqueue(store, make_user()).job
    store.claim("w2", job_id=theirs.id)
    assert [j.id for j in store.claim("w1", limit=5)] == [first.id]  # the limit holds the second back
    done, claimed = store.complete_and_claim(
        "w1", [(first.id, {"n": 1}, {"input_tokens": 3}), (theirs.id, {"n": 99}, None)], limit=5, lease_seconds=45
    )
    assert done == {first.id}
    finished = store.get(first.id)
    assert finished.status is JobStatus.COMPLETED and finished.result == {"n": 1} and finished.usage == {"input_tokens": 3}
    assert store.get(theirs.id).status is JobStatus.RUNNING and store.get(theirs.id).locked_by == "w2"  # not w1's
    assert [j.id for j in claimed] == [second.id]
    job = claimed[0]
    assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.locked_by == "w1"
    assert job.lease_expires_at is not None and store.get(second.id) == job
    # nothing to complete, nothing due: both parts are empty
    assert store.complete_and_claim("w1", [], limit=3) == (set(), [])
    # job types are honoured
    other = enqueue(store, user, job_type="example.other").job
    assert store.complete_and_claim("w1", [], limit=3, job_types=["example.countdown"]) == (set(), [])
    assert [j.id for j in store.complete_and_claim("w1", [], limit=3, job_types=["example.other"])[1]] == [other.id]
    with pytest.raises(InvalidArgumentError):
        store.call(COMPLETE_CLAIM, {"p_worker": "w1", "p_results": Json({"id": "not an array"})})
    with pytest.raises(InvalidArgumentError):
        store.complete_and_claim("w1", [], limit=0)


def test_wakeup_status(store: JobStore, db) -> None:
    """Plain PostgreSQL has no pg_cron: no wake-up and nothing wrong. The same database
    seen as Supabase (it has supabase_admin) without pg_cron reports the problem."""
    status = store.wakeup_status()
    assert (status.mode, status.schedule, status.last_run, status.problem) == ("none", None, None, None)
    created = not db.execute("select 1 from pg_roles where rolname = 'supabase_admin'").fetchone()
    if created:
        db.execute("create role supabase_admin nologin")
    try:
        status = store.wakeup_status()
    finally:
        if created:
            db.execute("drop role supabase_admin")
    assert status.mode == "none" and status.last_run is None
    assert status.problem and "pg_cron is not installed" in status.problem
    assert "select public.ai_jobs_schedule_wake_v2();" in status.problem


def test_alerts_evaluate_mark_and_list(store: JobStore, db, make_user) -> None:
    """Alert incidents: opened once, held for one notifier, marked after delivery,
    listed for `ai-jobs stats`; bad thresholds are invalid arguments."""
    db.execute("delete from public.ai_jobs_alerts")
    db.execute("delete from public.ai_jobs_alert_state")
    user = make_user()
    db.execute("insert into public.ai_jobs (user_id, job_type) select %s, 'contract.alerts' "
               "from generate_series(1, 3)", (user,))
    thresholds = {"queue_depth": 2, "evaluate_every_seconds": 0}
    [notice] = store.evaluate_alerts(thresholds)
    assert (notice.event, notice.fresh, notice.job_type) == ("opened", True, "contract.alerts")
    assert notice.kind == "queue_depth"
    assert (notice.value, notice.threshold, notice.details["due"]) == (3, 2, 3) and notice.notified_at is None
    assert store.evaluate_alerts(thresholds) == []  # still open: nothing new, and held for the first caller
    assert store.mark_alert_notified(notice.id, "opened", delivered=True) is True
    [listed] = store.alerts()
    assert listed.id == notice.id and listed.resolved_at is None and listed.notified_at is not None
    db.execute("delete from public.ai_jobs")
    [resolution] = store.evaluate_alerts(thresholds)
    assert (resolution.event, resolution.fresh, resolution.id) == ("resolved", True, notice.id)
    assert store.mark_alert_notified(notice.id, "resolved", delivered=True) is True
    assert store.evaluate_alerts(thresholds) == []
    assert [a.resolved_at is not None for a in store.alerts()] == [True]
    assert store.alerts(resolved_within=timedelta(0)) == []
    assert store.mark_alert_notified(uuid.uuid4(), "opened", delivered=True) is False
    with pytest.raises(InvalidArgumentError):
        store.mark_alert_notified(notice.id, "closed", delivered=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.evaluate_alerts({"queue_depth": -1})
    with pytest.raises(InvalidArgumentError):
        store.evaluate_alerts({"no_such_threshold": 1})


def test_defer_waits_without_spending_an_attempt(store: JobStore, make_user) -> None:
    """A rate-limited job goes back to pending later, says why, keeps its steps."""
    job = enqueue(store, make_user()).job
    store.claim("w-defer", job_id=job.id)
    store.checkpoint(job.id, "w-defer", "s1", {"ok": True}, usage={"requests": 1})
    before = datetime.now(UTC)
    row = store.defer(job.id, "w-defer", delay_seconds=30, reason="rate_limited",
                      message="Waiting for the Claude rate limit", usage={"requests": 1})
    assert row.status is JobStatus.PENDING and row.attempts == 0 and row.error is None
    assert row.wait_reason == "rate_limited" and row.progress_message == "Waiting for the Claude rate limit"
    assert before + timedelta(seconds=29) <= row.run_at <= datetime.now(UTC) + timedelta(seconds=31)
    assert row.checkpoints == {"s1": {"ok": True}} and row.usage["requests"] == 2
    assert store.claim("w-defer", job_id=job.id) == []  # not due yet
    with pytest.raises(LeaseLostError):
        store.defer(job.id, "w-defer", delay_seconds=1, reason="rate_limited")


def test_cancel_of_a_job_waiting_on_a_claude_batch_leaves_it_to_a_worker(store: JobStore, make_user) -> None:
    """A job with a 'claude-batch' step has a Message Batch running at Anthropic: a
    cancel while it waits flags it and makes it due now (still pending) so a worker can
    cancel the batch; a repeat is a read; defer keeps it pending while the batch stops;
    then the worker marks it cancelled. Jobs without that step keep the old rules."""
    user = make_user()
    job = enqueue(store, user).job
    store.claim("w-batch", job_id=job.id)
    store.checkpoint(job.id, "w-batch", "claude-batch", {"id": "msgbatch_1", "custom_ids": ["batch-1"]})
    waiting = store.defer(job.id, "w-batch", delay_seconds=600, reason="claude_batch", message="Waiting")
    assert waiting.status is JobStatus.PENDING and waiting.wait_reason == "claude_batch"
    flagged = store.request_cancel(job.id, user_id=user)
    assert flagged.status is JobStatus.PENDING and flagged.cancel_requested_at is not None
    assert flagged.finished_at is None and flagged.run_at <= datetime.now(UTC)
    again = store.request_cancel(job.id, user_id=user)
    assert (again.status, again.updated_at) == (JobStatus.PENDING, flagged.updated_at)
    [claimed] = store.claim("w-batch", job_id=job.id)
    assert claimed.cancel_requested_at is not None
    stopping = store.defer(job.id, "w-batch", delay_seconds=0, reason="claude_batch", message="Cancelling")
    assert stopping.status is JobStatus.PENDING and stopping.cancel_requested_at is not None
    assert stopping.attempts == 0 and stopping.finished_at is None
    store.claim("w-batch", job_id=job.id)
    assert store.mark_cancelled(job.id, "w-batch").status is JobStatus.CANCELLED

    other = enqueue(store, user).job
    store.claim("w-batch", job_id=other.id)
    store.request_cancel(other.id, user_id=user)  # running: flagged
    ended = store.defer(other.id, "w-batch", delay_seconds=5, reason="claude_batch")
    assert ended.status is JobStatus.CANCELLED and ended.wait_reason is None  # no batch step: the cancel wins


def test_rate_acquire_and_settle(store: JobStore) -> None:
    bucket = f"type:contract.t{uuid.uuid4().hex[:8]}"
    limits = {bucket: {"rpm": 2, "itpm": 1000}}
    first = store.rate_acquire(limits, input_tokens=900, output_tokens=50)
    assert first.reservation is not None and first.wait_seconds is None
    full = store.rate_acquire(limits, input_tokens=200, output_tokens=50)
    assert (full.reservation, full.bucket, full.limit, full.used, full.max) == (None, bucket, "itpm", 900, 1000)
    assert 59 <= full.wait_seconds <= 60.1
    assert store.rate_settle(first.reservation, input_tokens=700, output_tokens=20) is True
    assert store.rate_acquire(limits, input_tokens=200, output_tokens=50).reservation is not None
    assert store.rate_acquire(limits, input_tokens=0, output_tokens=0).limit == "rpm"


def test_progress_stores_the_live_output_snapshot(store: JobStore, make_user, db) -> None:
    job = enqueue(store, make_user()).job
    store.claim("w1", lease_seconds=30, job_id=job.id)

    def stored() -> object:
        return db.execute("select stream from public.ai_jobs where id = %s", (job.id,)).fetchone()[0]

    first = {"id": "s1", "seq": 3, "format": "text", "text": "Hello wor"}
    assert store.progress(job.id, "w1", 20, "Generating", stream=first).progress == 20
    assert stored() == first
    store.progress(job.id, "w1", 25)  # a progress-only write keeps the snapshot
    assert stored() == first
    store.progress(job.id, "w1", 26, stream={**first, "seq": 2, "text": "Hello"})  # older: ignored
    assert stored() == first
    second = {"id": "s2", "seq": 0, "format": "json", "text": '{"a": '}  # a new call's stream replaces it
    store.progress(job.id, "w1", 30, stream=second)
    assert stored() == second
    for bad in ({"id": "s3", "seq": -1, "text": ""}, {"id": "", "seq": 1, "text": ""}, {"id": "s3", "seq": 1},
                {"id": "s3", "seq": 1, "text": "x", "format": "xml"}, {"id": "s3", "seq": 1.5, "text": "x"}):
        with pytest.raises(InvalidArgumentError):
            store.progress(job.id, "w1", 31, stream=bad)
    with pytest.raises(LeaseLostError):
        store.progress(job.id, "w2", 40, stream=first)


# -- workflows (child jobs, waiting, pause/resume, tree rules) --------------------------------


def test_spawn_wait_and_wake_through_either_adapter(store: JobStore, make_user) -> None:
    parent = enqueue(store, make_user()).job
    store.claim("w1", job_id=parent.id)
    specs = [{"key": f"k{i}", "job_type": "example.countdown", "input": {"steps": i + 1}} for i in range(3)]
    made = store.spawn(parent.id, "w1", specs)
    assert [r.created for r in made] == [True] * 3 and [r.job.spawn_seq for r in made] == [0, 1, 2]
    assert [r.job.id for r in store.spawn(parent.id, "w1", specs)] == [r.job.id for r in made]  # idempotent
    with pytest.raises(LeaseLostError):
        store.spawn(parent.id, "w2", specs)
    with pytest.raises(InvalidArgumentError):
        store.spawn(parent.id, "w1", [{"key": "x", "job_type": "example.countdown"}], max_depth=1)
    assert store.wait_children(parent.id, "w1", keys=["k0"])["state"] == "waiting"
    waiting = store.get(parent.id)
    assert waiting.status is JobStatus.PENDING and waiting.wait_reason == "waiting_for_children"
    assert waiting.locked_by is None and waiting.waiting == {"keys": ["k0"], "max_failures": 0}
    store.claim("w3", job_id=made[0].job.id)
    store.complete(made[0].job.id, "w3", {"done": 0})
    woken = store.get(parent.id)
    assert woken.wait_reason is None and woken.run_at <= datetime.now(UTC)
    store.claim("w1", job_id=parent.id)
    answer = store.wait_children(parent.id, "w1", keys=["k0"])
    assert answer["state"] == "done" and [c["result"] for c in answer["children"]] == [{"done": 0}]
    page = store.children(parent.id, limit=2)
    assert len(page.jobs) == 2 and page.next_cursor is not None
    assert store.resolve_waiting() == 0


def test_pause_resume_cancel_retry_delete_a_tree_through_either_adapter(store: JobStore, make_user) -> None:
    user = make_user()
    parent = enqueue(store, user).job
    store.claim("w1", job_id=parent.id)
    [child] = store.spawn(parent.id, "w1", [{"key": "c", "job_type": "example.countdown", "input": {}}])
    assert store.pause(parent.id, user_id=user).pause_requested_at is not None
    assert store.get(child.job.id).status is JobStatus.PAUSED
    assert store.mark_paused(parent.id, "w1").status is JobStatus.PAUSED
    with pytest.raises(JobNotFoundError):
        store.pause(parent.id, user_id=make_user())
    assert store.resume(parent.id, user_id=user).status is JobStatus.PENDING
    assert store.get(child.job.id).status is JobStatus.PENDING
    with pytest.raises(JobStateError):
        store.delete_tree(parent.id, user_id=user)
    assert store.request_cancel_tree(parent.id, user_id=user).status is JobStatus.CANCELLED
    assert store.get(child.job.id).status is JobStatus.CANCELLED
    assert store.retry_tree(parent.id, user_id=user).status is JobStatus.PENDING
    assert store.get(child.job.id).status is JobStatus.PENDING
    store.request_cancel_tree(parent.id, user_id=user)
    assert store.delete_tree(parent.id, user_id=user).id == parent.id
