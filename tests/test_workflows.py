"""Workflows (issue 16, items 1-5) on a real database: child jobs, waiting without
a worker, durable sleep, the tree rules for cancel / retry / delete / pause /
resume, progress aggregation, RLS, and the bad-input list."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from ai_jobs.errors import (
    ActiveJobLimitError,
    IdempotencyConflictError,
    InvalidArgumentError,
    JobNotFoundError,
    JobStateError,
)
from ai_jobs.models import Job, JobStatus
from ai_jobs.registry import JobRegistry
from ai_jobs.runner import Runner
from ai_jobs.store.base import JobStore
from ai_jobs.store.postgres import PostgresStore

from tests.workflow_jobs import register


@pytest.fixture()
def registry() -> JobRegistry:
    return register(JobRegistry())


@pytest.fixture(autouse=True)
def _fresh_workflow_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from ai_jobs import workflows

    monkeypatch.setenv("AI_JOBS_USER_CONCURRENCY", "0")  # no running-job limit: the runner is sequential anyway
    workflows._settings_from_env.cache_clear()
    yield
    workflows._settings_from_env.cache_clear()


def create(store: JobStore, registry: JobRegistry, user: uuid.UUID, job_type: str, data: dict[str, Any]) -> uuid.UUID:
    return store.enqueue(registry.new_job(user, job_type, data)).job.id


def children_of(db: psycopg.Connection, parent: uuid.UUID) -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "select * from public.ai_jobs where parent_id = %s order by spawn_seq", (parent,)
        ).fetchall()


def run_all(store: JobStore, registry: JobRegistry, **kwargs: Any) -> list[Any]:
    return Runner(store, registry, lease_seconds=5).run_available(wait_for_due=False, **kwargs)


# -- child jobs and waiting ---------------------------------------------------------------


def test_parent_spawns_waits_and_reads_results_in_spawn_order(pg_store: PostgresStore, db, make_user, registry) -> None:
    user = make_user()
    parent = create(pg_store, registry, user, "test.wf_parent", {"children": 12})
    [first] = run_all(pg_store, registry, max_jobs=1)
    assert first.kind == "deferred"  # waiting: the worker was released
    row = pg_store.get(parent)
    assert row.status is JobStatus.PENDING and row.locked_by is None and row.lease_expires_at is None
    assert row.wait_reason == "waiting_for_children" and row.attempts == 0  # the attempt was refunded
    assert row.run_at > datetime.now(UTC)  # not due until a child wakes it
    assert row.children == {**row.children, "total": 12, "done": 0, "active": 12}
    kids = children_of(db, parent)
    assert [k["spawn_key"] for k in kids] == [f"c{i}" for i in range(12)]
    assert {k["user_id"] for k in kids} == {user} and {k["depth"] for k in kids} == {1}

    outcomes = run_all(pg_store, registry)
    assert [o.kind for o in outcomes].count("completed") == 13  # 12 children, then the woken parent
    done = pg_store.get(parent)
    assert done.status is JobStatus.COMPLETED
    assert done.result["results"] == [{"n": i} for i in range(12)]  # spawn order
    assert done.children["done"] == 12 and done.children["active"] == 0
    assert len(children_of(db, parent)) == 12  # the resumed handler created none again


def test_last_child_wakes_the_parent_in_sql(pg_store: PostgresStore, db, make_user, registry) -> None:
    parent = create(pg_store, registry, make_user(), "test.wf_parent", {"children": 3})
    run_all(pg_store, registry, max_jobs=1)
    kids = [k["id"] for k in children_of(db, parent)]
    worker = Runner(pg_store, registry).worker_id
    for i, kid in enumerate(kids):
        [claimed] = pg_store.claim(worker, job_id=kid)
        pg_store.complete(claimed.id, worker, {"n": i})
        row = pg_store.get(parent)
        if i < 2:
            assert row.wait_reason == "waiting_for_children" and row.run_at > datetime.now(UTC)
    row = pg_store.get(parent)
    assert row.wait_reason is None and row.run_at <= datetime.now(UTC)  # due now: the wake-up path runs it
    assert pg_store.next_due_in() <= 0


def test_spawn_is_idempotent_by_key(pg_store: PostgresStore, db, make_user, registry) -> None:
    parent = create(pg_store, registry, make_user(), "test.wf_steps", {"steps": 1})
    worker = "w-idem"
    [job] = pg_store.claim(worker, job_id=parent)
    specs = [{"key": f"k{i}", "job_type": "test.wf_leaf", "input": {"n": i}} for i in range(5)]
    first = pg_store.spawn(job.id, worker, specs)
    again = pg_store.spawn(job.id, worker, specs + [{"key": "k5", "job_type": "test.wf_leaf", "input": {"n": 5}}])
    assert all(r.created for r in first)
    assert [r.job.id for r in again[:5]] == [r.job.id for r in first] and not any(r.created for r in again[:5])
    assert again[5].created and again[5].job.spawn_seq == 5
    assert len(children_of(db, parent)) == 6
    with pytest.raises(IdempotencyConflictError):
        pg_store.spawn(job.id, worker, [{"key": "k0", "job_type": "test.wf_leaf", "input": {"n": 99}}])
    with pytest.raises(InvalidArgumentError, match="children cap"):
        pg_store.spawn(job.id, worker, [{"key": "k9", "job_type": "test.wf_leaf", "input": {}}], max_children=6)
    with pytest.raises(InvalidArgumentError):
        pg_store.spawn(job.id, worker, [{"job_type": "test.wf_leaf", "input": {}}])  # no key


def test_failure_policy_fail_fast_or_tolerate(pg_store: PostgresStore, db, make_user, registry) -> None:
    user = make_user()
    strict = create(pg_store, registry, user, "test.wf_parent", {"children": 3, "fail_keys": ["c1"]})
    run_all(pg_store, registry)
    row = pg_store.get(strict)
    assert row.status is JobStatus.FAILED and row.error.code == "child_failed" and not row.error.retryable
    tolerant = create(pg_store, registry, user, "test.wf_parent",
                      {"children": 3, "fail_keys": ["c0", "c2"], "max_failures": 2})
    run_all(pg_store, registry)
    row = pg_store.get(tolerant)
    assert row.status is JobStatus.COMPLETED
    assert row.result == {"results": [{"n": 1}], "errors": ["c0", "c2"]}


def test_fail_fast_wakes_the_parent_on_the_first_failure(pg_store: PostgresStore, db, make_user, registry) -> None:
    parent = create(pg_store, registry, make_user(), "test.wf_parent", {"children": 3, "fail_keys": ["c0"]})
    run_all(pg_store, registry, max_jobs=1)
    kid = children_of(db, parent)[0]["id"]
    worker = "w-fail"
    pg_store.claim(worker, job_id=kid)
    from ai_jobs.models import JobError

    pg_store.fail(kid, worker, JobError(code="x", message="boom", retryable=False))
    row = pg_store.get(parent)
    assert row.wait_reason is None and row.run_at <= datetime.now(UTC)  # woken with two children still pending


def test_durable_sleep_holds_no_worker_and_keeps_steps(pg_store: PostgresStore, make_user, registry, tmp_path) -> None:
    log = tmp_path / "sleep.log"
    job = create(pg_store, registry, make_user(), "test.wf_sleeper", {"seconds": 1.5, "path": str(log)})
    [outcome] = run_all(pg_store, registry, max_jobs=1)
    assert outcome.kind == "deferred"
    row = pg_store.get(job)
    assert row.status is JobStatus.PENDING and row.wait_reason == "sleeping" and row.locked_by is None
    assert 0.5 < (row.run_at - datetime.now(UTC)).total_seconds() <= 1.6
    assert run_all(pg_store, registry) == []  # not due yet
    time.sleep(1.6)
    [outcome] = run_all(pg_store, registry)
    assert outcome.kind == "completed"
    assert log.read_text().count("before") == 1 and log.read_text().count("after") == 1


def test_sleep_of_an_hour_is_one_deferral(pg_store: PostgresStore, make_user, registry) -> None:
    job = create(pg_store, registry, make_user(), "test.wf_sleeper", {"seconds": 3600})
    run_all(pg_store, registry, max_jobs=1)
    row = pg_store.get(job)
    assert row.wait_reason == "sleeping" and 3590 < (row.run_at - datetime.now(UTC)).total_seconds() <= 3600


# -- bad input -------------------------------------------------------------------------------


def test_spawn_depth_is_capped(pg_store: PostgresStore, db, make_user, registry) -> None:
    root = create(pg_store, registry, make_user(), "test.wf_spawner", {"n": 0})
    run_all(pg_store, registry)
    assert pg_store.get(root).status is JobStatus.FAILED
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("select depth, status, error from public.ai_jobs order by depth").fetchall()
    assert [r["depth"] for r in rows] == [0, 1, 2]  # three levels, never a fourth
    deepest = rows[-1]
    assert deepest["error"]["code"] == "spawn_refused" and "depth" in deepest["error"]["message"]
    assert rows[1]["error"]["code"] == "child_failed"


def test_children_cap_and_forbidden_type_fail_the_parent(pg_store: PostgresStore, db, make_user, registry,
                                                         monkeypatch) -> None:
    from ai_jobs import workflows

    monkeypatch.setenv("AI_JOBS_MAX_CHILDREN", "4")
    workflows._settings_from_env.cache_clear()
    user = make_user()
    capped = create(pg_store, registry, user, "test.wf_parent", {"children": 5})
    forbidden = create(pg_store, registry, user, "test.wf_parent", {"children": 1, "child_type": "test.not_allowed"})
    run_all(pg_store, registry)
    for job_id, words in ((capped, "children cap"), (forbidden, "unknown job type")):
        row = pg_store.get(job_id)
        assert row.status is JobStatus.FAILED and row.error.code == "spawn_refused" and not row.error.retryable
        assert words in row.error.message
        assert children_of(db, job_id) == []  # all or nothing


def test_sweep_resolves_a_parent_whose_children_vanished(pg_store: PostgresStore, db, make_user, registry) -> None:
    parent = create(pg_store, registry, make_user(), "test.wf_parent", {"children": 2})
    run_all(pg_store, registry, max_jobs=1)
    # the rows vanish without any trigger running (as a restore or a replica-mode cascade could)
    db.execute("set session_replication_role = replica")
    db.execute("delete from public.ai_jobs where parent_id = %s", (parent,))
    db.execute("set session_replication_role = origin")
    assert pg_store.get(parent).wait_reason == "waiting_for_children"
    assert pg_store.resolve_waiting() == 1
    assert pg_store.resolve_waiting() == 0
    run_all(pg_store, registry)
    # resumed from the top: its spawn keys are free again, so it made the children anew and finished
    assert pg_store.get(parent).status is JobStatus.COMPLETED
    assert len(children_of(db, parent)) == 2


def test_deleting_an_active_child_wakes_its_parent(pg_store: PostgresStore, db, make_user, registry) -> None:
    parent = create(pg_store, registry, make_user(), "test.wf_parent", {"children": 2})
    run_all(pg_store, registry, max_jobs=1)
    db.execute("delete from public.ai_jobs where parent_id = %s", (parent,))
    row = pg_store.get(parent)
    assert row.wait_reason is None and row.run_at <= datetime.now(UTC)


# -- the tree: cancel, retry, delete, pause, resume ------------------------------------------


def three_levels(store: JobStore, registry: JobRegistry, user: uuid.UUID, **extra: Any) -> uuid.UUID:
    """root -> c0, c1 (test.wf_mid) -> g0, g1 each (test.wf_leaf): root and mids are
    waiting, the four leaves pending."""
    root = create(store, registry, user, "test.wf_parent", {"children": 2, "grandchildren": 2, **extra})
    run_all(store, registry, max_jobs=1)
    run_all(store, registry, max_jobs=2)
    return root


def tree(db: psycopg.Connection, root: uuid.UUID) -> dict[str, dict[str, Any]]:
    """name (root, c0, c0/g1, ...) -> row."""
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(
            """with recursive t as (
                 select j.*, 'root'::text as name from public.ai_jobs j where j.id = %s
                 union all
                 select c.*, case when t.name = 'root' then c.spawn_key else t.name || '/' || c.spawn_key end
                 from public.ai_jobs c join t on c.parent_id = t.id)
               select * from t""",
            (root,),
        ).fetchall()
    return {r["name"]: r for r in rows}


def statuses(db: psycopg.Connection, root: uuid.UUID) -> dict[str, str]:
    return {name: row["status"] for name, row in tree(db, root).items()}


def test_three_level_tree_is_built_and_completes(pg_store: PostgresStore, db, make_user, registry) -> None:
    root = three_levels(pg_store, registry, make_user())
    st = statuses(db, root)
    assert len(st) == 7 and st["root"] == st["c0"] == st["c1"] == "pending"
    assert tree(db, root)["c1/g0"]["depth"] == 2
    run_all(pg_store, registry)
    assert set(statuses(db, root).values()) == {"completed"}


def test_cancel_reaches_every_unfinished_descendant(pg_store: PostgresStore, db, make_user, registry) -> None:
    root = three_levels(pg_store, registry, make_user())
    leaf = tree(db, root)["c0/g0"]["id"]
    [running] = pg_store.claim("w-cancel", job_id=leaf)
    cancelled = pg_store.request_cancel_tree(root)
    assert cancelled.status is JobStatus.CANCELLED
    st = statuses(db, root)
    assert st.pop("c0/g0") == "running" and set(st.values()) == {"cancelled"}
    assert tree(db, root)["c0/g0"]["cancel_requested_at"] is not None  # stops at its next step
    assert pg_store.request_cancel_tree(root).status is JobStatus.CANCELLED  # idempotent
    pg_store.mark_cancelled(running.id, "w-cancel")
    assert set(statuses(db, root).values()) == {"cancelled"}


def test_cli_cancel_reaches_the_tree_as_the_api_does(pg_store: PostgresStore, db, make_user, registry,
                                                     database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from ai_jobs.cli import main

    root = three_levels(pg_store, registry, make_user())
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["cancel", str(root)]) == 0
    assert f"{root} cancelled" in capsys.readouterr().out
    assert set(statuses(db, root).values()) == {"cancelled"}


def test_retry_reruns_only_failed_children(pg_store: PostgresStore, db, make_user, registry, tmp_path) -> None:
    fixed = tmp_path / "fixed"
    root = create(pg_store, registry, make_user(), "test.wf_parent",
                  {"children": 2, "grandchildren": 2, "fail_keys": ["c1"], "fixed_path": str(fixed)})
    run_all(pg_store, registry)
    st = statuses(db, root)
    assert st == {"root": "failed", "c0": "completed", "c1": "failed", "c0/g0": "completed",
                  "c0/g1": "completed", "c1/g0": "failed", "c1/g1": "completed"}
    before = tree(db, root)
    fixed.write_text("")  # the cause is fixed
    with pytest.raises(JobStateError):
        pg_store.retry_tree(before["c0"]["id"])  # completed: nothing to retry
    assert pg_store.retry_tree(root).status is JobStatus.PENDING
    assert statuses(db, root) == {**st, "root": "pending", "c1": "pending", "c1/g0": "pending"}
    run_all(pg_store, registry)
    after = tree(db, root)
    assert set(statuses(db, root).values()) == {"completed"}, {n: (r["status"], r["error"]) for n, r in after.items()}
    for name in ("c0", "c0/g0", "c0/g1", "c1/g1"):  # finished work was not run again
        assert after[name]["finished_at"] == before[name]["finished_at"]
        assert after[name]["attempts"] == before[name]["attempts"]


def test_a_tree_with_more_failed_children_than_the_cap_can_be_retried(
    pg_store: PostgresStore, db, make_user, registry, tmp_path
) -> None:
    """The cap is checked for the job retried, never for its children (as at spawn)."""
    user = make_user()
    fixed = tmp_path / "fixed"
    root = create(pg_store, registry, user, "test.wf_parent",
                  {"children": 25, "fail_keys": [f"c{i}" for i in range(25)], "fixed_path": str(fixed)})
    run_all(pg_store, registry)
    assert set(statuses(db, root).values()) == {"failed"} and len(statuses(db, root)) == 26
    fixed.write_text("")
    assert pg_store.retry_tree(root, user_id=user, max_active=20).status is JobStatus.PENDING
    assert set(statuses(db, root).values()) == {"pending"}
    run_all(pg_store, registry)
    assert set(statuses(db, root).values()) == {"completed"}
    # the cap still holds for the job itself: 20 other unfinished jobs refuse the retry
    failed = create(pg_store, registry, user, "test.wf_parent", {"children": 1, "fail_keys": ["c0"]})
    run_all(pg_store, registry)
    for _ in range(20):
        pg_store.pause(create(pg_store, registry, user, "test.wf_leaf", {"n": 0}), user_id=user)
    with pytest.raises(ActiveJobLimitError, match="20 of 20 jobs pending, running or paused"):
        pg_store.retry_tree(failed, user_id=user, max_active=20)


def test_cancelling_a_paused_job_with_a_message_batch_leaves_it_to_a_worker(
    pg_store: PostgresStore, db, make_user, registry
) -> None:
    """A paused job holding a Claude Message Batch is not cancelled at once, or the
    batch would run on at Anthropic and its cost never reach the job."""
    user = make_user()
    job = create(pg_store, registry, user, "test.wf_leaf", {"n": 0})
    db.execute("update public.ai_jobs set checkpoints = '{\"claude-batch\": {\"id\": \"msgbatch_1\"}}' "
               "where id = %s", (job,))
    pg_store.pause(job, user_id=user)
    flagged = pg_store.request_cancel_tree(job, user_id=user)
    assert flagged.status is JobStatus.PENDING and flagged.cancel_requested_at is not None
    assert flagged.run_at <= datetime.now(UTC) and flagged.wait_reason is None
    plain = create(pg_store, registry, user, "test.wf_leaf", {"n": 1})
    pg_store.pause(plain, user_id=user)
    assert pg_store.request_cancel_tree(plain, user_id=user).status is JobStatus.CANCELLED  # no batch: at once


def test_delete_is_refused_while_children_are_active(pg_store: PostgresStore, db, make_user, registry) -> None:
    user = make_user()
    root = three_levels(pg_store, registry, user)
    pg_store.request_cancel(root)  # the root alone (v2): its children stay active
    assert statuses(db, root)["c0/g0"] == "pending"
    with pytest.raises(JobStateError, match="unfinished child"):
        pg_store.delete_tree(root, user_id=user)
    pg_store.request_cancel_tree(root, user_id=user)
    assert pg_store.delete_tree(root, user_id=user).id == root
    with pytest.raises(JobNotFoundError):
        pg_store.get(root)


def test_pause_and_resume_a_tree(pg_store: PostgresStore, db, make_user, registry) -> None:
    user = make_user()
    root = three_levels(pg_store, registry, user)
    leaf = tree(db, root)["c1/g1"]["id"]
    [running] = pg_store.claim("w-pause", job_id=leaf)
    paused = pg_store.pause(root, user_id=user)
    assert paused.status is JobStatus.PAUSED and paused.wait_reason == "paused"
    st = statuses(db, root)
    assert st.pop("c1/g1") == "running" and set(st.values()) == {"paused"}
    assert tree(db, root)["c1/g1"]["pause_requested_at"] is not None
    assert pg_store.pause(root, user_id=user).status is JobStatus.PAUSED  # idempotent
    assert pg_store.claim("w-other", limit=10) == []  # paused jobs are never claimed
    pg_store.mark_paused(running.id, "w-pause")  # the worker stops at its next step
    assert set(statuses(db, root).values()) == {"paused"}
    other = make_user()
    with pytest.raises(JobNotFoundError):
        pg_store.pause(root, user_id=other)
    with pytest.raises(JobNotFoundError):
        pg_store.resume(root, user_id=other)
    resumed = pg_store.resume(root, user_id=user)
    assert resumed.status is JobStatus.PENDING and resumed.run_at <= datetime.now(UTC)
    assert set(statuses(db, root).values()) == {"pending"}
    assert pg_store.resume(root, user_id=user).status is JobStatus.PENDING  # idempotent
    run_all(pg_store, registry)
    assert set(statuses(db, root).values()) == {"completed"}
    with pytest.raises(JobStateError):
        pg_store.pause(root, user_id=user)
    with pytest.raises(JobStateError):
        pg_store.resume(root, user_id=user)


def test_cancel_a_paused_tree(pg_store: PostgresStore, db, make_user, registry) -> None:
    root = three_levels(pg_store, registry, make_user())
    pg_store.pause(root)
    assert pg_store.request_cancel_tree(root).status is JobStatus.CANCELLED
    assert set(statuses(db, root).values()) == {"cancelled"}


def test_a_running_job_pauses_at_its_next_step_and_keeps_its_checkpoints(
    pg_store: PostgresStore, make_user, registry, tmp_path
) -> None:
    import threading

    log = tmp_path / "steps.log"
    job = create(pg_store, registry, make_user(), "test.wf_steps", {"steps": 6, "step_seconds": 0.2, "path": str(log)})
    runner = Runner(pg_store, registry, lease_seconds=5)
    thread = threading.Thread(target=lambda: runner.run_available(max_jobs=1, wait_for_due=False))
    thread.start()
    deadline = time.monotonic() + 10
    while "s1" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pg_store.pause(job).status is JobStatus.RUNNING  # asked; it stops at its next step
    thread.join(10)
    row = pg_store.get(job)
    assert row.status is JobStatus.PAUSED and row.locked_by is None and row.attempts == 0
    kept = len(row.checkpoints)
    assert 2 <= kept < 6
    assert run_all(pg_store, registry) == []  # never claimed while paused
    pg_store.resume(job)
    run_all(pg_store, registry)
    assert pg_store.get(job).status is JobStatus.COMPLETED
    lines = log.read_text().split()
    assert sorted(lines) == sorted(f"s{i}" for i in range(6))  # no step ran twice


# -- progress and RLS ---------------------------------------------------------------------------


def test_parent_progress_aggregates_children(pg_store: PostgresStore, db, make_user, registry) -> None:
    parent = create(pg_store, registry, make_user(), "test.wf_parent", {"children": 40})
    run_all(pg_store, registry, max_jobs=1)
    run_all(pg_store, registry, max_jobs=10)
    row = pg_store.get(parent)
    # written at most every 0.5 s: somewhere between the spawn's 0 and the 10 finished
    assert row.children["total"] == 40 and 0 <= row.children["done"] <= 10
    time.sleep(0.55)
    run_all(pg_store, registry, max_jobs=1)
    row = pg_store.get(parent)
    assert row.children["done"] == 11 and row.progress == 27 and row.progress_message == "11 of 40 children done"
    run_all(pg_store, registry)
    row = pg_store.get(parent)
    assert row.children == {**row.children, "total": 40, "done": 40, "active": 0, "failed": 0}


def _counts_after_two_quick_finishes(pg_store: PostgresStore, db, registry, user: uuid.UUID) -> tuple[uuid.UUID, list]:
    """A waiting parent of 3 children, all running; two finish within 0.5 s of each other
    (the first write is more than 0.5 s after the spawn's), the third runs on."""
    parent = create(pg_store, registry, user, "test.wf_parent", {"children": 3})
    run_all(pg_store, registry, max_jobs=1)
    kids = [k["id"] for k in children_of(db, parent)]
    assert len(pg_store.claim("w", limit=3, job_types=["test.wf_leaf"], lease_seconds=600)) == 3
    time.sleep(0.55)
    pg_store.complete(kids[0], "w", {"n": 0})
    pg_store.complete(kids[1], "w", {"n": 1})
    return parent, kids


def _owed(db, parent: uuid.UUID) -> list[tuple]:
    return db.execute("select due_at - now() from public.ai_jobs_parent_recounts where parent_id = %s",
                      (parent,)).fetchall()


def test_counts_the_throttle_held_back_are_written_by_the_next_sweep(pg_store: PostgresStore, db, make_user,
                                                                     registry) -> None:
    """Before, the second finish's recount was dropped: the parent said done 1 (33 %)
    until the third child finished, an hour later perhaps."""
    from ai_jobs.sweep import sweep

    parent, kids = _counts_after_two_quick_finishes(pg_store, db, registry, make_user())
    row = pg_store.get(parent)
    assert row.children["done"] == 1 and row.progress_message == "1 of 3 children done"  # the throttle
    time.sleep(0.55)
    sweep(pg_store, Runner(pg_store, registry), None, stale_pending_seconds=60, budget_seconds=0)
    row = pg_store.get(parent)
    assert row.children == {**row.children, "total": 3, "done": 2, "failed": 0, "active": 1}
    assert (row.progress, row.progress_message, row.status) == (66, "2 of 3 children done", JobStatus.PENDING)
    assert _owed(db, parent) == []
    # the last child still wakes the parent, which completes
    pg_store.complete(kids[2], "w", {"n": 2})
    assert pg_store.get(parent).children["done"] == 3
    run_all(pg_store, registry)
    assert pg_store.get(parent).status is JobStatus.COMPLETED


def test_a_later_write_pays_the_owed_count_and_nothing_is_owed_when_nothing_changed(
    pg_store: PostgresStore, db, make_user, registry
) -> None:
    parent, kids = _counts_after_two_quick_finishes(pg_store, db, registry, make_user())
    [(due_in,)] = _owed(db, parent)  # owed, due when the throttle allows the next write
    assert due_in.total_seconds() <= 0.5
    assert pg_store.recount_parents() == 0  # not before then: still at most one write per 0.5 s
    # any later write of the parent's counts (a child finishing 0.5 s after the last
    # write, the last child, a spawn or a wait) takes the owed recount with it
    db.execute("select public.ai_jobs_refresh_parent(%s, true)", (parent,))
    assert _owed(db, parent) == [] and pg_store.get(parent).children["done"] == 2
    db.execute("select public.ai_jobs_refresh_parent(%s)", (parent,))  # within 0.5 s, nothing changed
    assert _owed(db, parent) == []
    # a parent deleted meanwhile: its owed row is dropped
    db.execute("insert into public.ai_jobs_parent_recounts (parent_id, due_at) values (%s, now())", (uuid.uuid4(),))
    assert pg_store.recount_parents() == 0
    assert db.execute("select count(*) from public.ai_jobs_parent_recounts").fetchone()[0] == 0
    pg_store.complete(kids[2], "w", {"n": 2})


def test_rls_owner_sees_own_parent_and_children_only(pg_store: PostgresStore, database_url: str, db, make_user,
                                                     registry) -> None:
    from tests.rls import act_as

    owner, stranger = make_user(), make_user()
    parent = create(pg_store, registry, owner, "test.wf_parent", {"children": 3})
    run_all(pg_store, registry, max_jobs=1)
    with psycopg.connect(database_url) as conn:
        for user, expected in ((owner, 4), (stranger, 0)):
            with conn.transaction():
                act_as(conn, {"role": "authenticated", "sub": str(user)})
                seen = conn.execute(
                    "select count(*) from public.ai_jobs where id = %s or parent_id = %s", (parent, parent)
                ).fetchone()[0]
                assert seen == expected
                if expected:
                    kids = conn.execute(
                        "select spawn_key, depth, children from public.ai_jobs where id = %s", (parent,)
                    ).fetchone()
                    assert kids[2]["total"] == 3
    page = pg_store.children(parent, user_id=owner, limit=2)
    assert len(page.jobs) == 2 and page.next_cursor
    rest = pg_store.children(parent, user_id=owner, limit=2, cursor=page.next_cursor)
    assert len(rest.jobs) == 1 and rest.next_cursor is None
    assert {j.id for j in page.jobs + rest.jobs} == {k["id"] for k in children_of(db, parent)}
    with pytest.raises(JobNotFoundError):
        pg_store.children(parent, user_id=stranger)


# -- Supabase-shaped: migrations as the non-superuser postgres -----------------------------------


def test_workflows_on_a_supabase_shaped_cluster(registry) -> None:
    """The migration applies (twice) as Supabase's non-superuser `postgres`, and a
    parent with children runs there through the service_role-only functions."""
    from ai_jobs.database.migrations import migrate
    from tests.supabase_cluster import PG_BINDIR, destroy_cluster, start_cluster

    if not (PG_BINDIR / "initdb").exists():
        pytest.skip("PostgreSQL 15 binaries not installed")
    cluster = start_cluster()
    try:
        cluster.prepare_database("postgres", pg_cron=False)
        migrate(cluster.url("postgres"))
        migrate(cluster.url("postgres"))  # idempotent
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            assert not conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0]
            user = uuid.uuid4()
            conn.execute("insert into auth.users (id, email) values (%s, 'wf@example.com')", (user,))
            for fn in ("ai_jobs_spawn_v1", "ai_jobs_wait_children_v1", "ai_jobs_pause_v1"):
                grantees = {r[0] for r in conn.execute(
                    "select grantee from information_schema.routine_privileges where routine_name = %s", (fn,))}
                assert "service_role" in grantees and not grantees & {"anon", "authenticated", "PUBLIC"}
        store = PostgresStore(cluster.url("postgres"), max_size=2)
        try:
            parent = create(store, registry, user, "test.wf_parent", {"children": 3})
            run_all(store, registry)
            assert store.get(parent).status is JobStatus.COMPLETED
        finally:
            store.close()
    finally:
        destroy_cluster(cluster)


def test_a_cancel_that_arrives_just_before_the_wait_ends_the_job_cancelled(pg_store: PostgresStore, make_user,
                                                                           registry) -> None:
    parent = create(pg_store, registry, make_user(), "test.wf_steps", {"steps": 1})
    [job] = pg_store.claim("w-race", job_id=parent)
    pg_store.spawn(job.id, "w-race", [{"key": "a", "job_type": "test.wf_leaf", "input": {}}])
    pg_store.request_cancel_tree(parent)  # the worker has not seen it yet
    assert pg_store.wait_children(parent, "w-race")["state"] == "cancelled"
    assert pg_store.get(parent).status is JobStatus.RUNNING  # still the worker's: it marks it cancelled
    pg_store.mark_cancelled(parent, "w-race")
    assert pg_store.get(parent).status is JobStatus.CANCELLED
