"""Fair claims, concurrency limits at claim time, bounded run_at and locked_by hidden
from owners (migration 20261130000400). Real PostgreSQL; workers are threads, each a
Runner over its own PostgresStore (its own connections), as worker processes are."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel, Field

from ai_jobs.context import JobContext
from ai_jobs.errors import InvalidArgumentError
from ai_jobs.http.app import App, create_app
from ai_jobs.http.operations import org_from_claims
from ai_jobs.http.schemas import Job as ApiJob
from ai_jobs.http.services import Services
from ai_jobs.models import Job, NewJob
from ai_jobs.registry import Concurrency, JobRegistry
from ai_jobs.runner import Runner
from ai_jobs.service import submit_job
from ai_jobs.settings import Settings
from ai_jobs.store import base
from ai_jobs.store.base import ENQUEUE, JobStore
from ai_jobs.store.postgres import PostgresStore
from ai_jobs.sweep import sweep
from tests.conftest import JWT_SECRET, user_token
from tests.rls import act_as

HOLD = 0.3  # seconds each job of the fairness test runs


class HoldInput(BaseModel):
    seconds: float = Field(ge=0, le=5)


class HoldOutput(BaseModel):
    held: float


def hold_registry(**type_options: Any) -> JobRegistry:
    """A registry with one job type, test.hold, that sleeps `seconds`."""
    registry = JobRegistry()

    @registry.job("test.hold", input=HoldInput, output=HoldOutput, **type_options)
    def hold(data: HoldInput, ctx: JobContext) -> HoldOutput:
        time.sleep(data.seconds)
        return HoldOutput(held=data.seconds)

    return registry


class Workers:
    """N concurrent workers claiming `batch` jobs at a time until stopped."""

    def __init__(self, database_url: str, registry: JobRegistry, n: int, *, batch: int = 1) -> None:
        self.database_url, self.registry, self.batch = database_url, registry, batch
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(f"worker-{i}",), daemon=True) for i in range(n)]

    def _run(self, name: str) -> None:
        try:
            with PostgresStore(self.database_url, max_size=2) as store:
                runner = Runner(store, self.registry, worker_id=name, lease_seconds=30, stopping=self.stop)
                while not self.stop.is_set():
                    if not runner.run_available(max_jobs=self.batch, batch=self.batch):
                        self.stop.wait(0.01)
        except BaseException as exc:  # surfaced in __exit__
            self.errors.append(exc)

    def __enter__(self) -> Workers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not self.errors, self.errors


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def started_at(db: psycopg.Connection, job_id: uuid.UUID) -> datetime | None:
    return db.execute("select started_at from public.ai_jobs where id = %s", (job_id,)).fetchone()[0]


def enqueue_backlog(db: psycopg.Connection, user: uuid.UUID, n: int, seconds: float, **limits: int) -> None:
    db.execute(
        "select public.ai_jobs_enqueue_v2(p_user_id => %s, p_job_type => 'test.hold', "
        "p_input => jsonb_build_object('seconds', %s::float8, 'i', i), p_user_limit => %s) "
        "from generate_series(1, %s) i",
        (user, seconds, limits.get("user_limit"), n),
    )


# -- fairness ----------------------------------------------------------------------


def _backlog_run(database_url: str, db: psycopg.Connection, store: JobStore, a: uuid.UUID, b: uuid.UUID,
                 watch_seconds: float) -> tuple[Job, datetime | None, int]:
    """A has 1,000 pending jobs and two workers are busy with them; B enqueues one job.
    Returns B's job, when it started (None if not within `watch_seconds`) and how many
    of A's jobs started between B's enqueue and B's start (or the end of the watch)."""
    enqueue_backlog(db, a, 1000, HOLD)
    with Workers(database_url, hold_registry(), 2):
        wait_for(lambda: db.execute("select count(*) from public.ai_jobs where user_id = %s and status = 'running'",
                                    (a,)).fetchone()[0] == 2, 10, "both workers busy with A's jobs")
        b_job = store.enqueue(NewJob(user_id=b, job_type="test.hold", input={"seconds": 0})).job
        deadline = time.monotonic() + watch_seconds
        while time.monotonic() < deadline and started_at(db, b_job.id) is None:
            time.sleep(0.01)
        b_started = started_at(db, b_job.id)
        until = b_started or db.execute("select now()").fetchone()[0]
        overtaken = db.execute(
            "select count(*) from public.ai_jobs where user_id = %s and started_at > %s and started_at < %s",
            (a, b_job.created_at, until),
        ).fetchone()[0]
    return b_job, b_started, overtaken


def test_a_backlog_delays_another_users_first_job_by_at_most_one_job_per_worker(
    database_url: str, db: psycopg.Connection, pg_store: PostgresStore, make_user
) -> None:
    a, b = make_user(), make_user()
    b_job, b_started, overtaken = _backlog_run(database_url, db, pg_store, a, b, watch_seconds=10 * HOLD)
    assert b_started is not None, "B's job never started"
    delay = (b_started - b_job.created_at).total_seconds()
    assert delay <= 2 * HOLD, f"B waited {delay:.2f} s behind A's backlog (jobs take {HOLD} s, 2 workers)"
    assert overtaken <= 2, f"{overtaken} of A's jobs started after B's was enqueued"
    # A's backlog is still served
    assert db.execute("select count(*) from public.ai_jobs where user_id = %s and status = 'completed'",
                      (a,)).fetchone()[0] >= 2


def test_control_the_old_claim_order_makes_b_wait_behind_the_backlog(
    database_url: str, db: psycopg.Connection, pg_store: PostgresStore, make_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run with ai_jobs_claim_v1 (priority, then run_at): B's job waits behind
    A's older jobs, so the test above can tell the two apart."""
    monkeypatch.setattr(base, "CLAIM", base.SqlFunction("ai_jobs_claim_v1"))
    a, b = make_user(), make_user()
    _, b_started, overtaken = _backlog_run(database_url, db, pg_store, a, b, watch_seconds=4 * HOLD)
    assert b_started is None and overtaken >= 4


def test_claim_interleaves_owners_and_priority_still_comes_first(store: JobStore, make_user) -> None:
    a, b, c = make_user(), make_user(), make_user()
    a_jobs = [store.enqueue(NewJob(user_id=a, job_type="test.hold")).job for _ in range(5)]
    b_job = store.enqueue(NewJob(user_id=b, job_type="test.hold")).job
    urgent = store.enqueue(NewJob(user_id=c, job_type="test.hold", priority=10)).job
    first = store.claim("w", limit=3)
    assert {j.id for j in first} == {urgent.id, a_jobs[0].id, b_job.id}
    # A has one running now, nobody else has anything due: A's next two, in order
    assert [j.id for j in sorted(store.claim("w", limit=2), key=lambda j: j.run_at)] == [a_jobs[1].id, a_jobs[2].id]


# -- concurrency limits --------------------------------------------------------------


def _limits(store: JobStore, **kw: Any) -> Job:
    kw.setdefault("job_type", "test.hold")
    return store.enqueue(NewJob(**kw)).job


def test_limits_are_stored_and_a_job_over_them_waits_with_a_reason(
    store: JobStore, make_user, db: psycopg.Connection
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    # user limit 2: two start, the third waits (user_limit)
    mine = [_limits(store, user_id=alice, user_limit=2) for _ in range(3)]
    assert mine[0].user_limit == 2 and mine[0].wait_reason is None
    assert {j.id for j in store.claim("w", limit=10)} == {mine[0].id, mine[1].id}
    waiting = store.get(mine[2].id)
    assert waiting.status.value == "pending" and waiting.wait_reason == "user_limit"
    before = waiting.updated_at
    assert store.claim("w", limit=10) == []
    assert store.get(mine[2].id).updated_at == before  # the same reason is not written again
    store.complete(mine[0].id, "w", {"held": 0})
    [started] = store.claim("w", limit=10)
    assert started.id == mine[2].id and started.wait_reason is None

    # a concurrency key is shared inside an organization (bob and carol), limit 1
    k1 = _limits(store, user_id=bob, org_id="org-1", concurrency_key="decision:1", key_limit=1, user_limit=5)
    k2 = _limits(store, user_id=carol, org_id="org-1", concurrency_key="decision:1", key_limit=1, user_limit=5)
    # ... but not with the same key of a user outside it
    k3 = _limits(store, user_id=alice, concurrency_key="decision:1", key_limit=1, user_limit=5)
    claimed = {j.id for j in store.claim("w2", limit=10)}
    assert k3.id in claimed and len(claimed & {k1.id, k2.id}) == 1
    held_back = (k2 if k1.id in claimed else k1).id
    assert store.get(held_back).wait_reason == "key_limit"

    # a reason a worker gave when it deferred the job (rate_limited, claude_batch) is kept
    deferred = _limits(store, user_id=alice, user_limit=2)
    db.execute("update public.ai_jobs set wait_reason = 'claude_batch' where id = %s", (deferred.id,))
    store.claim("w", limit=10)
    assert store.get(deferred.id).wait_reason == "claude_batch"

    # organization limit 1
    o1 = _limits(store, user_id=bob, org_id="org-2", org_limit=1)
    o2 = _limits(store, user_id=carol, org_id="org-2", org_limit=1)
    claimed = {j.id for j in store.claim("w3", limit=10)}
    assert len(claimed & {o1.id, o2.id}) == 1
    assert store.get((o2 if o1.id in claimed else o1).id).wait_reason == "org_limit"


def test_enqueue_refuses_bad_limits_keys_and_run_at(store: JobStore, make_user) -> None:
    user = make_user()
    now = datetime.now(UTC)
    for run_at in (now + timedelta(days=366), now - timedelta(minutes=2)):
        with pytest.raises(InvalidArgumentError, match="run_at must be between"):
            _limits(store, user_id=user, run_at=run_at)
    # edge-of-range values pydantic cannot even represent, sent as the database reads them
    for raw in ("infinity", "-infinity", "294276-01-01 00:00:00+00"):
        with pytest.raises(InvalidArgumentError, match="run_at must be between"):
            store.call(ENQUEUE, {"p_user_id": user, "p_job_type": "test.hold", "p_run_at": raw})
    with pytest.raises(InvalidArgumentError, match="concurrency_key"):
        store.call(ENQUEUE, {"p_user_id": user, "p_job_type": "test.hold", "p_concurrency_key": "a b"})
    with pytest.raises(InvalidArgumentError, match="concurrency limits"):
        store.call(ENQUEUE, {"p_user_id": user, "p_job_type": "test.hold", "p_user_limit": 0})
    # inside the range: fine (one minute of clock skew is allowed)
    assert _limits(store, user_id=user, run_at=now - timedelta(seconds=30)).status.value == "pending"
    assert _limits(store, user_id=user, run_at=now + timedelta(days=364)).status.value == "pending"


def test_running_jobs_never_exceed_any_limit_under_four_concurrent_workers(
    database_url: str, db: psycopg.Connection, pg_store: PostgresStore, make_user
) -> None:
    """Defaults 3 per user, 5 per organization, 2 per key; jobs enqueued through the
    API's path (submit_job); 4 workers claiming 1-3 at a time; a sampler reads the
    table every few milliseconds."""
    settings = Settings(store="postgres", database_url=database_url, max_active_per_user=100)
    registry = hold_registry()
    org_users = [make_user() for _ in range(3)]
    loner = make_user()
    ids = []
    for i, user in enumerate(org_users):
        for n in range(6):
            key = "decision:7" if n % 2 else None
            ids.append(submit_job(pg_store, user, "test.hold", {"seconds": 0.08}, settings=settings, registry=registry,
                                  org_id="acme", concurrency_key=key).job.id)
    for n in range(6):  # same key name, no organization: a scope of its own
        ids.append(submit_job(pg_store, loner, "test.hold", {"seconds": 0.08}, settings=settings, registry=registry,
                              concurrency_key="decision:7").job.id)
    assert {(r[0], r[1], r[2]) for r in db.execute(
        "select user_limit, org_limit, key_limit from public.ai_jobs where concurrency_key is not null "
        "and org_id is not null")} == {(3, 5, 2)}

    peaks: Counter[str] = Counter()
    reasons: set[str] = set()
    violations: list[str] = []
    done = threading.Event()

    def sample() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not done.is_set():
                rows = conn.execute(
                    "select user_id, org_id, concurrency_key, status, wait_reason from public.ai_jobs "
                    "where status in ('pending', 'running')").fetchall()
                running = [r for r in rows if r[3] == "running"]
                reasons.update(r[4] for r in rows if r[3] == "pending" and r[4])
                scopes = Counter()
                for user_id, org_id, key, _, _ in running:
                    scopes[f"user {user_id}"] += 1
                    if org_id:
                        scopes[f"org {org_id}"] += 1
                    if key:
                        scopes[f"key {org_id or user_id} {key}"] += 1
                for scope, n in scopes.items():
                    kind = scope.split()[0]
                    peaks[kind] = max(peaks[kind], n)
                    if n > {"user": 3, "org": 5, "key": 2}[kind]:
                        violations.append(f"{n} running in {scope}")
                time.sleep(0.003)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with Workers(database_url, registry, 4, batch=3):
        wait_for(lambda: db.execute("select count(*) from public.ai_jobs where status = 'completed'").fetchone()[0]
                 == len(ids), 60, "every job to complete")
    done.set()
    sampler.join(10)
    assert violations == []
    assert peaks["org"] == 5 and peaks["key"] == 2  # the limits were reached, so they were tested
    assert {"org_limit", "key_limit"} <= reasons  # visible while waiting
    rows = db.execute("select status, wait_reason, attempts from public.ai_jobs where id = any(%s)", (ids,)).fetchall()
    assert all(status == "completed" and reason is None and attempts == 1 for status, reason, attempts in rows)


def test_a_type_sets_its_own_limits_and_priority(
    pg_store: PostgresStore, make_user, database_url: str
) -> None:
    settings = Settings(store="postgres", database_url=database_url)
    user = make_user()
    tight = hold_registry(concurrency=Concurrency(user=1, key=0), priority=7)
    job = submit_job(pg_store, user, "test.hold", {"seconds": 0}, settings=settings, registry=tight,
                     org_id="o", concurrency_key="k").job
    assert (job.user_limit, job.org_limit, job.key_limit, job.priority) == (1, 5, None, 7)
    loose = hold_registry(concurrency={"user": 0, "org": 0})
    job = submit_job(pg_store, user, "test.hold", {"seconds": 0}, settings=settings, registry=loose).job
    assert (job.user_limit, job.org_limit, job.key_limit, job.priority) == (None, None, None, 0)
    # no organization in the token: no organization limit; settings change the defaults
    job = submit_job(pg_store, user, "test.hold", {"seconds": 0}, registry=hold_registry(),
                     settings=settings.model_copy(update={"user_concurrency": 9})).job
    assert (job.user_limit, job.org_limit, job.org_id) == (9, None, None)
    with pytest.raises(ValueError):
        hold_registry(concurrency={"user": -1})


def test_an_idle_invocation_leaves_work_held_back_by_a_limit(
    pg_store: PostgresStore, make_user
) -> None:
    """A worker invocation with a long budget does not spin on a due job whose limit is
    full: the worker running the other job claims it when that one ends."""
    user = make_user()
    first = _limits(pg_store, user_id=user, user_limit=1)
    second = _limits(pg_store, user_id=user, user_limit=1)
    assert [j.id for j in pg_store.claim("elsewhere", job_id=first.id, lease_seconds=120)] == [first.id]
    started = time.monotonic()
    outcomes = Runner(pg_store, hold_registry()).run_available(budget_seconds=60)
    assert outcomes == [] and time.monotonic() - started < 5
    assert pg_store.get(second.id).wait_reason == "user_limit"


class CountingDispatcher:
    """Records the work invocations a sweep asks for."""

    enabled = True

    def __init__(self) -> None:
        self.ids: list[uuid.UUID] = []

    def dispatch(self, job_id: uuid.UUID | None = None, *, wait: bool = True) -> None:
        self.ids.append(job_id)


def _work_due(db: psycopg.Connection) -> bool:
    return db.execute("select public.ai_jobs_work_due_v1()").fetchone()[0]


def test_a_backlog_held_by_its_own_limit_is_neither_redispatched_nor_due_work(
    pg_store: PostgresStore, db: psycopg.Connection, make_user
) -> None:
    """A user's backlog behind their concurrency limit (3 long jobs running elsewhere):
    before, every sweep asked for 10 work invocations that each claimed nothing, and the
    wake-up called the sweep every few seconds for as long as the backlog lasted."""
    user, other = make_user(), make_user()
    backlog = [_limits(pg_store, user_id=user, user_limit=3, input={"seconds": 0}) for _ in range(30)]
    held = pg_store.claim("busy", limit=3, lease_seconds=600, job_types=["test.hold"])
    assert {j.id for j in held} == {j.id for j in backlog[:3]}
    db.execute("update public.ai_jobs set run_at = now() - interval '2 minutes' where status = 'pending'")

    dispatcher = CountingDispatcher()
    report = sweep(pg_store, Runner(pg_store, hold_registry()), dispatcher, stale_pending_seconds=60,
                   budget_seconds=0)
    assert (report.redispatched, dispatcher.ids) == (0, [])
    assert not _work_due(db)  # the wake-up stays idle
    assert pg_store.stale_pending(older_than_seconds=60, job_types=["test.hold"]) == []

    # another user's due job is work as before, and only it is re-requested
    free = _limits(pg_store, user_id=other, user_limit=3, input={"seconds": 0})
    assert _work_due(db)
    db.execute("update public.ai_jobs set run_at = now() - interval '2 minutes' where id = %s", (free.id,))
    dispatcher = CountingDispatcher()
    report = sweep(pg_store, Runner(pg_store, hold_registry()), dispatcher, stale_pending_seconds=60,
                   budget_seconds=0)
    assert (report.redispatched, dispatcher.ids) == (1, [free.id])
    db.execute("delete from public.ai_jobs where id = %s", (free.id,))
    assert not _work_due(db)

    # a slot frees without its worker claiming next (say its budget ran out): the backlog
    # is due work again, so the wake-up and the sweep start it
    pg_store.complete(held[0].id, "busy", {"held": 0})
    assert _work_due(db)
    assert len(pg_store.stale_pending(older_than_seconds=60, limit=100, job_types=["test.hold"])) == 27
    # ... but not for a deployment that does not serve its type
    assert pg_store.stale_pending(older_than_seconds=60, job_types=["test.other"]) == []


def test_due_work_follows_each_limit_as_the_claim_scopes_it(
    pg_store: PostgresStore, db: psycopg.Connection, make_user
) -> None:
    """Organization and concurrency-key limits count like the claim counts them: a key is
    shared inside an organization, else it is the user's own."""
    alice, bob, carol = make_user(), make_user(), make_user()
    running = _limits(pg_store, user_id=alice, org_id="org-1", concurrency_key="doc:1", key_limit=1)
    assert [j.id for j in pg_store.claim("w", job_id=running.id, lease_seconds=600)] == [running.id]
    same_key_same_org = _limits(pg_store, user_id=bob, org_id="org-1", concurrency_key="doc:1", key_limit=1)
    assert not _work_due(db)
    same_key_no_org = _limits(pg_store, user_id=carol, concurrency_key="doc:1", key_limit=1)
    assert _work_due(db)  # another scope: claimable
    assert [j.id for j in pg_store.claim("w", limit=5)] == [same_key_no_org.id]
    assert not _work_due(db)
    org_limited = _limits(pg_store, user_id=carol, org_id="org-1", org_limit=2)
    assert _work_due(db)  # one of org-1's jobs runs, its limit is 2
    [started] = pg_store.claim("w", limit=5)
    assert started.id == org_limited.id and pg_store.get(same_key_same_org.id).wait_reason == "key_limit"
    _limits(pg_store, user_id=bob, org_id="org-1", org_limit=2)
    assert not _work_due(db)
    # a job without limits is always work when due
    _limits(pg_store, user_id=bob)
    assert _work_due(db)


def test_the_worker_whose_job_ends_claims_the_job_its_limit_held_back(
    pg_store: PostgresStore, db: psycopg.Connection, make_user
) -> None:
    """The path that starts a limit-held job without any wake-up: the invocation running
    the job that holds the slot claims the waiting job when that one ends."""
    user = make_user()
    first = _limits(pg_store, user_id=user, user_limit=1, input={"seconds": 1.0})
    runner = Runner(pg_store, hold_registry())
    outcomes: list[Any] = []
    thread = threading.Thread(target=lambda: outcomes.extend(runner.run_available(budget_seconds=60)))
    thread.start()
    try:
        wait_for(lambda: started_at(db, first.id), 5, "the first job to start")
        second = _limits(pg_store, user_id=user, user_limit=1, input={"seconds": 0})
        assert pg_store.claim("other", limit=5) == []  # held back by the limit ...
        assert pg_store.get(second.id).wait_reason == "user_limit"
        assert not _work_due(db)  # ... so no wake-up for it
    finally:
        thread.join(timeout=30)
    assert [(o.job_id, o.kind) for o in outcomes] == [(first.id, "completed"), (second.id, "completed")]


def _run_elsewhere(db: psycopg.Connection, job: Job) -> None:
    """Make `job` running under another worker with a long lease, whatever its limits say."""
    db.execute("update public.ai_jobs set status = 'running', locked_by = 'elsewhere', attempts = 1, "
               "lease_expires_at = now() + interval '10 minutes', started_at = now(), wait_reason = null "
               "where id = %s", (job.id,))


def test_a_job_its_limit_holds_back_does_not_block_the_owners_other_jobs(
    pg_store: PostgresStore, db: psycopg.Connection, make_user
) -> None:
    """Every worker claims one job at a time. A claim of 1 used to look at each owner's
    first due job only: with that job held back by its concurrency key, none of the
    owner's other jobs started, while the wake-up and the sweep's re-dispatch counted
    them as claimable and asked for work invocations that each claimed nothing."""
    user = make_user()
    for _ in range(2):  # two jobs with key k run elsewhere: k's limit (2) is full
        _run_elsewhere(db, _limits(pg_store, user_id=user, user_limit=5, concurrency_key="k", key_limit=2))
    heads = [_limits(pg_store, user_id=user, user_limit=5, concurrency_key="k", key_limit=2) for _ in range(3)]
    other = _limits(pg_store, user_id=user, user_limit=5, priority=-1)  # last in the owner's order, no key
    db.execute("update public.ai_jobs set run_at = run_at - interval '2 minutes' where status = 'pending'")
    assert _work_due(db)
    assert [j.id for j in pg_store.stale_pending(older_than_seconds=60, job_types=["test.hold"])] == [other.id]

    assert [j.id for j in pg_store.claim("w", limit=1)] == [other.id]
    assert pg_store.get(heads[0].id).wait_reason == "key_limit"
    # what is left is held back: no work for the wake-up, no re-dispatch, no claim
    assert not _work_due(db)
    assert pg_store.stale_pending(older_than_seconds=60, job_types=["test.hold"]) == []
    assert pg_store.claim("w", limit=1) == []

    # the same through the worker's fused statement: a job held back by its user limit
    # (then by its key) in front of one that can run
    user2 = make_user()
    first = _limits(pg_store, user_id=user2, user_limit=2, input={"seconds": 0})
    [running] = pg_store.claim("w2", job_id=first.id)
    _run_elsewhere(db, _limits(pg_store, user_id=user2, user_limit=9, concurrency_key="k", key_limit=1))
    held_by_user = _limits(pg_store, user_id=user2, user_limit=2, priority=3)
    held_by_key = _limits(pg_store, user_id=user2, user_limit=9, concurrency_key="k", key_limit=1, priority=2)
    free = _limits(pg_store, user_id=user2, user_limit=9, concurrency_key="k2", key_limit=1, priority=1)
    done, claimed = pg_store.complete_and_claim("w2", [(running.id, {"held": 0}, None)], limit=1)
    # the finished job freed a slot of user_limit 2: the job behind it takes it
    assert done == {running.id} and [j.id for j in claimed] == [held_by_user.id]
    done, claimed = pg_store.complete_and_claim("w2", [(held_by_user.id, {"held": 0}, None)], limit=1)
    assert [j.id for j in claimed] == [free.id]
    assert pg_store.get(held_by_key.id).wait_reason == "key_limit"


def test_a_claim_reaches_owners_past_its_window_when_the_window_is_all_held_back(
    pg_store: PostgresStore, db: psycopg.Connection, make_user
) -> None:
    """A claim looks at max(8, batch + 2) owners from a random one on. When all of them
    are held back by their limits, it looks further, at owners with a job it can take,
    rather than coming back empty while ai_jobs_work_due_v1 calls the work due."""
    for _ in range(30):  # 30 owners at their limit of 1, each with a job waiting
        user = make_user()
        _run_elsewhere(db, _limits(pg_store, user_id=user, user_limit=1))
        _limits(pg_store, user_id=user, user_limit=1)
    assert not _work_due(db) and pg_store.claim("w", limit=1) == []
    for _ in range(6):  # before: each claim found the free job only when its window held it, ~9 in 31
        free = _limits(pg_store, user_id=make_user(), user_limit=1)
        assert _work_due(db)
        assert [j.id for j in pg_store.claim("w", limit=1)] == [free.id]
        assert not _work_due(db)


def test_a_claim_takes_a_job_exactly_when_due_work_and_the_redispatch_say_it_can(
    pg_store: PostgresStore, db: psycopg.Connection, make_user
) -> None:
    """Random mixes of users, organizations, keys and limits, some running elsewhere: a
    claim of 1 comes back with a job exactly when ai_jobs_work_due_v1 calls something
    due (and ai_jobs_next_due_v3 says a job is due now), and the job is one
    ai_jobs_stale_pending_v2 would re-dispatch."""
    rng = random.Random(1130)
    users = [make_user() for _ in range(3)]
    for round_ in range(40):
        db.execute("delete from public.ai_jobs")
        for n in range(rng.randint(1, 12)):
            job = _limits(pg_store, user_id=rng.choice(users), org_id=rng.choice([None, "o1", "o2"]),
                          concurrency_key=rng.choice([None, "k1", "k2"]), priority=rng.randint(-1, 1),
                          user_limit=rng.choice([None, 1, 2]), org_limit=rng.choice([None, 1, 2]),
                          key_limit=rng.choice([None, 1]), input={"seconds": 0, "n": n})
            if rng.random() < 0.4:
                _run_elsewhere(db, job)
        db.execute("update public.ai_jobs set run_at = now() - interval '2 minutes' where status = 'pending'")
        due = _work_due(db)
        claimable = {j.id for j in pg_store.stale_pending(older_than_seconds=60, limit=100)}
        assert due == bool(claimable), round_
        due_in = pg_store.next_due_in()  # an idle invocation's wait
        assert (due_in is not None and due_in <= 0) == due, round_
        claimed = pg_store.claim("w", limit=1)
        assert bool(claimed) == due, (round_, claimable)
        assert {j.id for j in claimed} <= claimable


def test_the_sweep_fails_pending_jobs_of_a_type_the_deployment_does_not_register(
    pg_store: PostgresStore, db: psycopg.Connection, make_user
) -> None:
    """A type removed in a deploy: its jobs were never claimed and never finished, the
    wake-up called the sweep and the sweep re-requested work for them for ever."""
    user = make_user()
    gone = [pg_store.enqueue(NewJob(user_id=user, job_type="test.removed", input={"i": i})).job for i in range(12)]
    recent = pg_store.enqueue(NewJob(user_id=user, job_type="test.removed", input={"i": 99})).job
    served = _limits(pg_store, user_id=user, input={"seconds": 0})
    db.execute("update public.ai_jobs set run_at = now() - interval '2 minutes' where id <> %s", (recent.id,))

    dispatcher = CountingDispatcher()
    report = sweep(pg_store, Runner(pg_store, hold_registry()), dispatcher, stale_pending_seconds=60,
                   budget_seconds=0)
    assert report.unregistered_failed == 12
    assert dispatcher.ids == [served.id]  # never a work request for a type nobody serves
    for job in gone:
        row = pg_store.get(job.id)
        assert row.status.value == "failed" and row.finished_at is not None and row.attempts == 0
        assert row.error is not None and (row.error.code, row.error.retryable) == ("unknown_job_type", False)
        assert row.error.message == ("job type test.removed is not registered in this deployment, "
                                     "so no worker can run it")
    # due for less than AI_JOBS_STALE_PENDING_SECONDS (a deploy still rolling out): kept
    assert pg_store.get(recent.id).status.value == "pending"
    assert pg_store.get(served.id).status.value == "pending"
    # a registry without any type serves nothing and fails nothing
    db.execute("update public.ai_jobs set run_at = now() - interval '2 minutes' where id = %s", (recent.id,))
    assert sweep(pg_store, Runner(pg_store, JobRegistry()), None, stale_pending_seconds=60,
                 budget_seconds=0).unregistered_failed == 0
    assert pg_store.get(recent.id).status.value == "pending"
    with pytest.raises(InvalidArgumentError):
        pg_store.fail_unregistered([])
    with pytest.raises(InvalidArgumentError, match="job_types"):
        pg_store.call(base.FAIL_UNREGISTERED, {"p_job_types": []})
    # the next sweep of a deployment that serves test.hold fails it too
    assert sweep(pg_store, Runner(pg_store, hold_registry()), None, stale_pending_seconds=60,
                 budget_seconds=0).unregistered_failed == 1
    assert pg_store.get(recent.id).error.code == "unknown_job_type"


# -- run_at bounds, sweep and health ----------------------------------------------------


def test_edge_of_range_run_at_cannot_be_stored_and_the_queue_stays_healthy(
    db: psycopg.Connection, pg_store: PostgresStore, make_user, database_url: str
) -> None:
    users = [make_user() for _ in range(4)]
    for raw in ("294276-12-31 00:00:00+00", "-infinity", "infinity", "1999-01-01 00:00:00+00"):
        with pytest.raises(psycopg.errors.CheckViolation):  # even a direct write
            db.execute("insert into public.ai_jobs (user_id, job_type, run_at) values (%s, 'test.hold', %s)",
                       (users[0], raw))
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            db.execute("select public.ai_jobs_enqueue_v2(p_user_id => %s, p_job_type => 'test.hold', p_run_at => %s)",
                       (users[0], raw))
    jobs = [_limits(pg_store, user_id=u, input={"seconds": 0}) for u in users[1:]]
    # a batch claim takes every user's job, and they all complete
    claimed = pg_store.claim("w", limit=4)
    assert {j.id for j in claimed} == {j.id for j in jobs}
    assert pg_store.complete_many("w", [(j.id, {"held": 0}, None) for j in claimed]) == {j.id for j in jobs}
    # the sweep and the idle wait (next due) work, and health answers 200
    pending = _limits(pg_store, user_id=users[0], run_at=datetime.now(UTC) + timedelta(days=360))
    report = sweep(pg_store, Runner(pg_store, hold_registry()), None, stale_pending_seconds=60, budget_seconds=None)
    assert report.reaped == 0
    assert 359 * 86400 < pg_store.next_due_in() < 361 * 86400
    app = create_app(Services(settings=_api_settings(database_url), registry=hold_registry()))
    assert app.test_client().get("/api/health").status_code == 200
    assert pg_store.get(pending.id).status.value == "pending"


# -- the API ------------------------------------------------------------------------------


def _api_settings(database_url: str) -> Settings:
    return Settings(store="postgres", database_url=database_url, jwt_secret=JWT_SECRET, worker_budget_seconds=6)


@pytest.fixture()
def api(database_url: str) -> Iterator[App]:
    services = Services(settings=_api_settings(database_url), registry=hold_registry(priority=10))
    yield create_app(services)
    services.close()


def _create(app: App, user: uuid.UUID, claims: dict[str, Any] | None = None, **body: Any):
    body.setdefault("type", "test.hold")
    body.setdefault("input", {"seconds": 0})
    token = user_token(user, **(claims or {}))
    return app.test_client().post("/api/jobs", data=json.dumps(body), content_type="application/json",
                                  headers={"Authorization": f"Bearer {token}"})


def test_api_priority_can_only_go_down(api: App, make_user, db: psycopg.Connection) -> None:
    user = make_user()
    refused = _create(api, user, priority=1)
    assert refused.status_code == 422 and refused.mimetype == "application/problem+json"
    assert refused.json["code"] == "invalid_body" and refused.json["errors"][0]["field"] == "priority"
    assert "send 0 or lower" in refused.json["errors"][0]["message"]
    assert _create(api, user, priority=1000).status_code == 422
    lower = _create(api, user, priority=-3)
    default = _create(api, user)
    assert (lower.status_code, default.status_code) == (202, 202)
    assert (lower.json["priority"], default.json["priority"]) == (7, 10)  # the type's 10, lowered by 3
    assert db.execute("select count(*) from public.ai_jobs where user_id = %s", (user,)).fetchone()[0] == 2


@pytest.mark.parametrize(
    "run_at",
    ["294276-01-01T00:00:00Z", "-infinity", "infinity", "year+1d", "2min-ago", "2026-01-01T00:00:00"],
)
def test_api_refuses_run_at_out_of_range(api: App, make_user, db: psycopg.Connection, run_at: str) -> None:
    now = datetime.now(UTC)
    value = {"year+1d": (now + timedelta(days=366)).isoformat(),
             "2min-ago": (now - timedelta(minutes=2)).isoformat()}.get(run_at, run_at)
    user, other = make_user(), make_user()
    theirs = _create(api, other)
    r = _create(api, user, run_at=value)
    assert r.status_code == 422 and r.mimetype == "application/problem+json", r.data
    assert r.json["errors"][0]["field"] == "run_at"
    assert db.execute("select count(*) from public.ai_jobs where user_id = %s", (user,)).fetchone()[0] == 0
    assert theirs.status_code == 202  # someone else's job is unaffected
    assert _create(api, user, run_at=(now + timedelta(days=364)).isoformat()).status_code == 202


def test_api_concurrency_key_and_organization(api: App, make_user) -> None:
    user = make_user()
    created = _create(api, user, {"app_metadata": {"org_id": "acme-42"}}, concurrency_key="decision:123")
    assert created.status_code == 202, created.data
    job = created.json
    assert (job["org_id"], job["concurrency_key"]) == ("acme-42", "decision:123")
    assert (job["user_limit"], job["org_limit"], job["key_limit"], job["wait_reason"]) == (3, 5, 2, None)
    no_org = _create(api, make_user()).json
    assert (no_org["org_id"], no_org["org_limit"], no_org["key_limit"]) == (None, None, None)
    for bad in ("", "has space", "x" * 201, "-leading", "emoji✓", "semi;colon"):
        r = _create(api, user, concurrency_key=bad)
        assert r.status_code == 422 and r.json["errors"][0]["field"] == "concurrency_key", bad


def test_org_claim_path() -> None:
    claims = {"app_metadata": {"org_id": "acme", "n": 42, "deep": {"x": "y"}, "bad": {"a": 1}}, "org": True}
    assert org_from_claims(claims, "app_metadata.org_id") == "acme"
    assert org_from_claims(claims, "app_metadata.n") == "42"
    assert org_from_claims(claims, "app_metadata.deep.x") == "y"
    for path in ("app_metadata.missing", "app_metadata.bad", "org", "app_metadata.org_id.more", ""):
        assert org_from_claims(claims, path) is None, path
    assert org_from_claims({"o": "x" * 201}, "o") is None
    assert Settings.from_env({"AI_JOBS_ORG_CLAIM": ""}).org_claim == ""
    assert Settings.from_env({}).org_claim == "app_metadata.org_id"
    env = {"AI_JOBS_USER_CONCURRENCY": "4", "AI_JOBS_ORG_CONCURRENCY": "0", "AI_JOBS_KEY_CONCURRENCY": "1"}
    s = Settings.from_env(env)
    assert (s.user_concurrency, s.org_concurrency, s.key_concurrency) == (4, 0, 1)
    with pytest.raises(ValueError):
        Settings.from_env({"AI_JOBS_ORG_CLAIM": "app_metadata..org"})


# -- locked_by -------------------------------------------------------------------------------


def test_owners_cannot_read_locked_by(database_url: str, pg_store: PostgresStore, make_user, api: App) -> None:
    user = make_user()
    job = _limits(pg_store, user_id=user, user_limit=1)
    waiting = _limits(pg_store, user_id=user, user_limit=1)
    pg_store.claim("host-a:1234:abcd", limit=2)
    claims = {"role": "authenticated", "sub": str(user)}
    for statement in ("select locked_by from public.ai_jobs", "select * from public.ai_jobs",
                      "select to_jsonb(j) from public.ai_jobs j"):
        with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                act_as(conn, claims)
                conn.execute(statement)
    with psycopg.connect(database_url) as conn, conn.transaction():
        act_as(conn, claims)
        rows = conn.execute("select id, status, wait_reason from public.ai_jobs where id = any(%s) order by status",
                            ([job.id, waiting.id],)).fetchall()
        # the browser client's explicit column list is exactly what may be read
        columns = ",".join(ApiJob.model_fields)
        conn.execute(f"select {columns} from public.ai_jobs")
    assert rows == [(waiting.id, "pending", "user_limit"), (job.id, "running", None)]
    # the API never returns it
    client = api.test_client()
    headers = {"Authorization": f"Bearer {user_token(user)}"}
    got = client.get(f"/api/jobs/{job.id}", headers=headers)
    assert got.status_code == 200 and got.json["status"] == "running" and "locked_by" not in got.json
    listed = client.get("/api/jobs", headers=headers).json["jobs"]
    assert listed and all("locked_by" not in j for j in listed)
    assert "locked_by" not in client.post(f"/api/jobs/{job.id}/cancel", headers=headers).json
    assert "locked_by" not in _create(api, user).json
    # operators (the store, the service role) still see it
    assert pg_store.get(job.id).locked_by == "host-a:1234:abcd"


def test_api_job_model_is_the_row_without_locked_by() -> None:
    from ai_jobs.http.openapi import openapi_document

    assert set(ApiJob.model_fields) == set(Job.model_fields) - {"locked_by"}
    schema = openapi_document()["components"]["schemas"]["Job"]
    assert "locked_by" not in schema["properties"] and "wait_reason" in schema["properties"]
    client_columns = open("public/ai-jobs.js").read().split("export const JOB_COLUMNS = [")[1].split("]")[0]
    assert {c.strip().strip('"') for c in client_columns.replace("\n", "").split(",") if c.strip()} == set(
        ApiJob.model_fields)
