"""Parallel ai.map_batches (issue 16 item 7): over AI_JOBS_MAP_FAN_OUT_MIN_BATCHES the
map job runs batch 1 itself and the rest as ai.map_batch children, against the
HTTP-level fake of the Anthropic API (tests/claude_api_fake.py), on a real database;
the crash test uses real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from ai_jobs.claude.client import reset_clients
from ai_jobs.models import JobStatus
from ai_jobs.registry import load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.store.postgres import PostgresStore
from tests.claude_api_fake import ClaudeApiFake

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = "The service keeps every uploaded file encrypted at rest and in transit. " * 600  # ~10.8k tokens
ENV_NAMES = ("AI_JOBS_MODEL", "AI_JOBS_PROMPT_CACHE", "AI_JOBS_PROMPT_CACHE_1H_MIN_CALLS",
             "AI_JOBS_MAP_BATCH_API_MIN_ITEMS", "AI_JOBS_RATE_LIMITS", "AI_JOBS_MAP_FAN_OUT_MIN_BATCHES",
             "AI_JOBS_MAP_PARALLELISM")


@pytest.fixture()
def claude(monkeypatch: pytest.MonkeyPatch) -> Iterator[ClaudeApiFake]:
    from ai_jobs import workflows

    with ClaudeApiFake() as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("AI_JOBS_USER_CONCURRENCY", "0")
        for name in ENV_NAMES:
            monkeypatch.delenv(name, raising=False)
        workflows._settings_from_env.cache_clear()
        reset_clients()
        yield fake
        reset_clients()
        workflows._settings_from_env.cache_clear()


def enqueue(store: PostgresStore, user: UUID, items: list[str], batch_size: int = 1) -> UUID:
    data = {"document": DOCUMENT, "items": items, "batch_size": batch_size, "use_batch_api": False}
    return store.enqueue(load_job_modules().new_job(user, "ai.map_batches", data)).job.id


def run(store: PostgresStore) -> None:
    Runner(store, load_job_modules(), lease_seconds=5).run_available(wait_for_due=False)


def children(db: psycopg.Connection, parent: UUID) -> list[dict]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("select * from public.ai_jobs where parent_id = %s order by spawn_seq", (parent,)).fetchall()


def tree_cost(job, kids: list[dict]) -> float:  # type: ignore[no-untyped-def]
    return float(job.usage.get("cost_usd", 0)) + sum(float((k["usage"] or {}).get("cost_usd", 0)) for k in kids)


def batch_of(request: dict) -> str:
    """The items a /v1/messages request maps (its last text block), as one string."""
    return request["messages"][0]["content"][-1]["text"]


def test_fanned_out_results_in_order_same_cost_same_cached_prefix(pg_store, db, make_user, claude, monkeypatch) -> None:
    items = [f"requirement {i}" for i in range(7)]
    user = make_user()
    sequential = enqueue(pg_store, user, items)
    run(pg_store)
    seq = pg_store.get(sequential)
    assert seq.status is JobStatus.COMPLETED, seq.error
    assert children(db, sequential) == []
    seq_requests = list(claude.message_requests)

    monkeypatch.setenv("AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "3")
    monkeypatch.setenv("AI_JOBS_MAP_PARALLELISM", "4")
    claude.message_requests.clear()
    claude._cache.clear()  # a fresh prompt cache, as the sequential run had
    fanned = enqueue(pg_store, user, items)
    run(pg_store)
    job = pg_store.get(fanned)
    assert job.status is JobStatus.COMPLETED, job.error
    assert [m["item"] for m in job.result["mappings"]] == items and job.result["batches"] == 7
    kids = children(db, fanned)
    assert [k["job_type"] for k in kids] == ["ai.map_batch"] * 6
    assert all(k["status"] == "completed" and k["concurrency_key"] == f"map:{fanned}" for k in kids)
    assert {k["key_limit"] for k in kids} == {4}

    # the same requests byte for byte (same cached prefix, same TTL), each batch once
    assert sorted(json.dumps(r, sort_keys=True) for r in claude.message_requests) == \
        sorted(json.dumps(r, sort_keys=True) for r in seq_requests)
    assert len({json.dumps(r["messages"][0]["content"][0]) for r in claude.message_requests}) == 1
    assert claude.message_requests[0]["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}

    # the recorded cost is identical: batch 1 on the parent, the children's as children_cost_usd
    children_cost = sum(float(k["usage"]["cost_usd"]) for k in kids)
    assert job.usage["children_cost_usd"] == pytest.approx(children_cost, rel=1e-9)
    assert job.usage["cost_usd"] + job.usage["children_cost_usd"] == pytest.approx(seq.usage["cost_usd"], rel=1e-9)
    assert tree_cost(job, kids) == pytest.approx(seq.usage["cost_usd"], rel=1e-9)
    assert job.usage["requests"] == seq.usage["requests"] == 7
    assert job.usage["cache_read_input_tokens"] == seq.usage["cache_read_input_tokens"] > 0

    # the spend ledger counts each dollar once (children_cost_usd is not cost_usd)
    ledger = db.execute("select coalesce(sum(cost_usd), 0) from public.ai_jobs_spend where job_id = any(%s)",
                        ([fanned, *[k["id"] for k in kids]],)).fetchone()[0]
    assert float(ledger) == pytest.approx(seq.usage["cost_usd"], rel=1e-6)

    # the cap covers the tree: the parent's spend plus its children's caps fit under its cap
    cap = float(job.cost_cap_usd) if job.cost_cap_usd is not None else 5.0  # none stored: AI_JOBS_MAX_JOB_COST_USD
    assert all(k["cost_cap_usd"] is not None for k in kids)
    assert job.usage["cost_usd"] + sum(float(k["cost_cap_usd"]) for k in kids) <= cap


def test_below_the_threshold_or_through_the_batch_api_no_children(pg_store, db, make_user, claude, monkeypatch) -> None:
    monkeypatch.setenv("AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "5")
    small = enqueue(pg_store, make_user(), ["a", "b", "c"])
    run(pg_store)
    assert pg_store.get(small).status is JobStatus.COMPLETED
    assert children(db, small) == []


def test_a_cap_too_small_for_the_children_fails_cleanly_keeping_batch_one(pg_store, db, make_user, claude, monkeypatch) -> None:
    monkeypatch.setenv("AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "2")
    job_id = enqueue(pg_store, make_user(), [f"r{i}" for i in range(5)])
    # a cap that fits batch 1 but leaves less than one call's worst case per remaining batch
    from ai_jobs.claude.settings import DEFAULT_MODEL
    from ai_jobs.claude.spend import call_cost_bound, model_price, utf8_bytes

    worst = call_cost_bound(model_price(DEFAULT_MODEL), utf8_bytes(DOCUMENT, "r0") + 100, 4096, cache_write=True)
    cap = 2.5 * worst
    db.execute("update public.ai_jobs set cost_cap_usd = %s where id = %s", (cap, job_id))
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error.code == "budget_exceeded", job.error
    assert "batch-1" in job.checkpoints and "spawned" not in job.checkpoints
    assert children(db, job_id) == []
    assert len(claude.message_requests) == 1
    assert job.usage["cost_usd"] <= cap


# -- a SIGKILLed parent worker mid-fan-out --------------------------------------------------


def start_worker(database_url: str, fake: ClaudeApiFake) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "PYTHONPATH": str(REPO),
           "AI_JOBS_USER_CONCURRENCY": "0", "AI_JOBS_WORKER_URL": "", "WORKER_SECRET": "",
           "ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url,
           "AI_JOBS_MAP_FAN_OUT_MIN_BATCHES": "2", "AI_JOBS_MAP_PARALLELISM": "3"}
    for name in ENV_NAMES[:5]:
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "ai_jobs.cli", "worker", "--lease-seconds", "1", "--poll-interval", "0.05"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_a_killed_parent_worker_still_runs_each_batch_exactly_once(pg_store, db, database_url, make_user) -> None:
    items = [f"requirement {i}" for i in range(12)]
    with ClaudeApiFake(call_seconds=0.3) as fake:
        job_id = enqueue(pg_store, make_user(), items)
        procs = [start_worker(database_url, fake)]
        try:
            # kill the worker holding the parent once batch 1 is checkpointed (spawning or waiting)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                job = pg_store.get(job_id)
                if "batch-1" in job.checkpoints:
                    break
                time.sleep(0.01)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            procs += [start_worker(database_url, fake), start_worker(database_url, fake)]
            end = time.monotonic() + 90
            while time.monotonic() < end and pg_store.get(job_id).status not in (JobStatus.COMPLETED, JobStatus.FAILED):
                time.sleep(0.1)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
        job = pg_store.get(job_id)
        assert job.status is JobStatus.COMPLETED, job.error
        assert [m["item"] for m in job.result["mappings"]] == items
        kids = children(db, job_id)
        assert len(kids) == 11 and all(k["status"] == "completed" for k in kids)
        # every batch went to Claude exactly once, the parent's kill notwithstanding
        sent = Counter(batch_of(r) for r in fake.message_requests)
        assert len(sent) == 12 and set(sent.values()) == {1}, sent


def test_a_job_keeps_the_way_it_started_when_the_setting_changes(pg_store, db, make_user, claude, monkeypatch) -> None:
    items = [f"r{i}" for i in range(4)]
    monkeypatch.setenv("AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "2")
    job_id = enqueue(pg_store, make_user(), items)
    Runner(pg_store, load_job_modules(), lease_seconds=5).run_available(wait_for_due=False, job_id=job_id, max_jobs=1)
    assert pg_store.get(job_id).wait_reason == "waiting_for_children"
    monkeypatch.setenv("AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "0")  # turned off while the children run
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert [m["item"] for m in job.result["mappings"]] == items
    assert len(children(db, job_id)) == 3
    assert Counter(batch_of(r) for r in claude.message_requests) == Counter({f"Map each of these items:\n- {i}": 1 for i in items})


def test_an_invalid_fan_out_setting_fails_the_job_naming_it(pg_store, make_user, claude, monkeypatch) -> None:
    monkeypatch.setenv("AI_JOBS_MAP_FAN_OUT_MIN_BATCHES", "two")
    job_id = enqueue(pg_store, make_user(), ["a", "b"])
    run(pg_store)
    job = pg_store.get(job_id)
    assert job.status is JobStatus.FAILED and job.error.code == "claude_config"
    assert "AI_JOBS_MAP_FAN_OUT_MIN_BATCHES" in job.error.message
