"""public/ai-jobs.js with the real supabase-js in headless Chromium, against a
loopback server speaking Supabase's Realtime websocket protocol and PostgREST
reads under RLS on the real test database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ai_jobs.models import NewJob
from ai_jobs.store.postgres import PostgresStore
from tests.browser.conftest import ARTIFACTS, screenshot
from tests.browser.fake_supabase import SUPABASE_UMD, FakeSupabase
from tests.conftest import user_token

pytestmark = pytest.mark.browser
WORKER = "browser-test-worker"


@pytest.fixture()
def fake(database_url: str) -> Iterator[FakeSupabase]:
    if not SUPABASE_UMD.exists():
        pytest.fail(f"{SUPABASE_UMD} missing: run `make test` (it installs tests/browser/js with npm)")
    server = FakeSupabase(database_url)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def job(pg_store: PostgresStore, make_user) -> tuple[str, str]:
    user = make_user()
    created = pg_store.enqueue(NewJob(user_id=user, job_type="example.countdown")).job
    pg_store.claim(WORKER, job_id=created.id, lease_seconds=300)
    return str(created.id), user_token(user)


def events(page: Any, name: str = "main") -> dict[str, Any]:
    return page.evaluate("(n) => window.watchState(n)", name)


def wait_for(check: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def open_harness(page: Any, fake: FakeSupabase) -> None:
    page.goto(fake.url + "/")
    page.wait_for_function("window.harnessReady === true")


def start(page: Any, name: str, job_id: str, token: str, **options: Any) -> None:
    page.evaluate("([n, id, t, o]) => startWatch(n, id, t, o)", [name, job_id, token, options])


def subscribed(page: Any, name: str = "main") -> bool:
    modes = events(page, name)["modes"]
    return bool(modes) and modes[-1] == "realtime"


def test_join_carries_table_filter_and_token_and_rereads_once_live(page, fake, job, pg_store) -> None:
    job_id, token = job
    fake.hold_joins.set()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, pollInterval=5000)
    wait_for(lambda: len(fake.joins) == 1, what="the join")
    join = fake.joins[0]
    assert join["topic"] == f"realtime:ai-jobs-live:{job_id}"  # the job's private channel: status and output
    assert join["config"]["private"] is True
    assert join["config"]["postgres_changes"] == [
        {"event": "*", "schema": "public", "table": "ai_jobs", "filter": f"id=eq.{job_id}"}
    ]
    assert join["access_token"] == token
    # the first state is read at once, without waiting for the join
    wait_for(lambda: events(page)["updates"] != [], timeout=3, what="the first read")
    assert fake.rest_reads[job_id] == 1
    # progress written while the subscription is not live yet: Realtime never sends it
    pg_store.progress(job_id, WORKER, 40, "before subscribe")
    fake.release_joins()
    wait_for(lambda: page.inner_text("#progress") == "40", what="the re-read once live to show progress 40")
    assert subscribed(page)
    assert fake.rest_reads[job_id] == 2  # the first read and the reconciling one
    screenshot(page, "realtime-reread-after-subscribe")


def test_out_of_order_and_duplicate_events_never_move_backwards(page, fake, job, pg_store) -> None:
    job_id, token = job
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    wait_for(lambda: subscribed(page), what="subscription")
    pg_store.progress(job_id, WORKER, 30, "thirty")
    older = fake.row(job_id)
    pg_store.progress(job_id, WORKER, 60, "sixty")
    newer = fake.row(job_id)
    for record in (newer, older, newer, older, newer):
        fake.push_change(job_id, record)
    wait_for(lambda: any(u["progress"] == 60 for u in events(page)["updates"]), what="progress 60")
    time.sleep(0.5)  # let every pushed event arrive
    progress = [u["progress"] for u in events(page)["updates"]]
    assert progress == sorted(progress), progress
    assert progress.count(60) == 1 and progress[-1] == 60
    assert page.inner_text("#progress") == "60"


def test_channel_error_falls_back_to_polling_and_recovers(page, fake, job, pg_store) -> None:
    job_id, token = job
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    wait_for(lambda: subscribed(page), what="subscription")
    fake.reject_joins = 2  # the next two rejoin attempts fail
    fake.error_channel(job_id)
    wait_for(lambda: events(page)["modes"][-1] == "polling-fallback", what="fallback to polling")
    pg_store.progress(job_id, WORKER, 80, "while Realtime is down")  # never pushed
    wait_for(lambda: page.inner_text("#progress") == "80", what="polling to show progress 80")
    polled = fake.rest_reads[job_id]
    assert polled >= 2
    wait_for(lambda: subscribed(page), timeout=30, what="Realtime to recover")
    assert len(fake.joins) >= 4  # first join, two rejected rejoins, the accepted one
    time.sleep(0.5)
    after_recovery = fake.rest_reads[job_id]
    time.sleep(3)
    assert fake.rest_reads[job_id] == after_recovery, "polling did not stop after Realtime recovered"
    modes = events(page)["modes"]
    assert modes[:2] == ["connecting", "realtime"] and "polling-fallback" in modes and modes[-1] == "realtime"


def test_channel_removed_at_terminal_status(page, fake, job, pg_store) -> None:
    job_id, token = job
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    wait_for(lambda: subscribed(page), what="subscription")
    pg_store.complete(job_id, WORKER, {"ok": True})
    fake.push_change(job_id, fake.row(job_id))
    wait_for(lambda: events(page)["done"] == "completed", what="done")
    wait_for(lambda: f"realtime:ai-jobs-live:{job_id}" in fake.leaves, what="phx_leave for the channel")
    assert events(page)["updates"][-1]["progress"] == 100
    assert fake.channels_for(job_id) == []  # no channel left to deliver to


def test_request_count_for_a_30_second_job(page, fake, job, pg_store) -> None:
    """Realtime watcher vs a 2-second polling watcher, side by side on one 30 s job."""
    job_id, token = job
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    start(page, "poll", job_id, token, pollInterval=2000)
    wait_for(lambda: subscribed(page), what="subscription")
    started = time.monotonic()
    for second in range(1, 30):
        time.sleep(max(0, started + second - time.monotonic()))
        pg_store.progress(job_id, WORKER, int(second * 100 / 30), f"second {second}")
        fake.push_change(job_id, fake.row(job_id))
    time.sleep(max(0, started + 30 - time.monotonic()))
    pg_store.complete(job_id, WORKER, {"ok": True})
    fake.push_change(job_id, fake.row(job_id))
    wait_for(lambda: events(page, "main")["done"] == "completed" and events(page, "poll")["done"] == "completed",
             timeout=10, what="both watchers to finish")
    realtime_reads = fake.rest_reads[job_id]
    polling_reads = fake.api_reads[job_id]
    realtime_updates = len(events(page, "main")["updates"])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "realtime-request-count.json").write_text(json.dumps({
        "job_seconds": 30, "realtime_rest_reads": realtime_reads, "realtime_updates_shown": realtime_updates,
        "polling_2s_reads": polling_reads,
    }, indent=2))
    assert realtime_reads <= 2, realtime_reads
    assert 13 <= polling_reads <= 17, polling_reads
    assert realtime_updates >= 29  # every pushed change was shown
