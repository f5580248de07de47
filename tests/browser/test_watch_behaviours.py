"""Issue 9, behaviours 1–8, and later fixes: public/ai-jobs.js (and the useAiJob hook)
with the real supabase-js 2.119.1 in headless Chromium, against the project's Realtime
test server (tests/browser/fake_supabase.py: the join-then-"Subscribed to PostgreSQL"
order, unfiltered DELETEs, 413 truncation, unchanged TOASTed values left out, token
expiry closes, RLS reads with failures) on real PostgreSQL rows.

Each test also fails against the client before its fix: run them with
AI_JOBS_CLIENT_DIR=<a folder holding the old ai-jobs.js and ai-jobs-react.js>."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ai_jobs.models import NewJob
from ai_jobs.store.postgres import PostgresStore
from tests.browser.conftest import ARTIFACTS
from tests.browser.fake_supabase import SUPABASE_UMD, FakeSupabase, client_dir
from tests.browser.test_realtime_client import WORKER, open_harness, start, wait_for
from tests.conftest import user_token

pytestmark = pytest.mark.browser
JS = Path(__file__).resolve().parent / "js"


@pytest.fixture()
def fake(database_url: str, pg_store: PostgresStore) -> Iterator[FakeSupabase]:
    if not SUPABASE_UMD.exists():
        pytest.fail(f"{SUPABASE_UMD} missing: run `make test` (it installs tests/browser/js with npm)")
    server = FakeSupabase(database_url, store=pg_store)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def running(pg_store: PostgresStore, make_user) -> Any:  # type: ignore[no-untyped-def]
    """make(): a claimed (running) example.countdown job → (job id, user id, token)."""

    def make(user: Any = None) -> tuple[str, Any, str]:
        user = user or make_user()
        created = pg_store.enqueue(NewJob(user_id=user, job_type="example.countdown")).job
        pg_store.claim(WORKER, job_id=created.id, lease_seconds=300)
        return str(created.id), user, user_token(user)

    return make


def state(page: Any, name: str = "main") -> dict[str, Any]:
    return page.evaluate("(n) => window.watchState(n)", name)


def progress(page: Any, name: str = "main") -> int | None:
    updates = state(page, name)["updates"]
    return updates[-1]["progress"] if updates else None


def live(page: Any, name: str = "main") -> bool:
    modes = state(page, name)["modes"]
    return bool(modes) and modes[-1] == "realtime"


def settled_reads(fake: FakeSupabase, job_id: str, quiet: float = 0.6) -> int:
    """The REST read count once no read has arrived for `quiet` seconds (the reconciling
    read once live may still be in flight when the page reports "realtime")."""
    count, since = fake.rest_reads[job_id], time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.05)
        if fake.rest_reads[job_id] != count:
            count, since = fake.rest_reads[job_id], time.monotonic()
    return count


def no_rejections(page: Any) -> None:
    assert page.evaluate("window.rejections") == []


def test_1_never_stuck_first_state_at_once_and_changes_before_live_within_2s(page, fake, running, pg_store) -> None:
    """A 5 s join, then a 3 s gap before "Subscribed to PostgreSQL": the first state shows
    at once, and changes landing before and during the gap (never pushed) show within 2 s."""
    job_id, _, token = running()
    fake.join_delay = 5.0
    fake.hold_system.set()
    open_harness(page, fake)
    started = time.monotonic()
    start(page, "main", job_id, token, realtime=True, pollInterval=1000)
    wait_for(lambda: progress(page) == 0, timeout=1.5, what="the first state, before the join")
    assert time.monotonic() - started < 1.5
    time.sleep(0.5)
    pg_store.progress(job_id, WORKER, 20, "before the join reply")
    changed = time.monotonic()
    wait_for(lambda: progress(page) == 20, timeout=2, what="a change before the join reply, within 2 s")
    wait_for(lambda: fake.channels_for(job_id) != [], timeout=10, what="the join reply")
    pg_store.progress(job_id, WORKER, 50, "joined, Postgres subscription not live")
    assert fake.push_change(job_id) == 0  # the server drops it: the subscription is not live
    changed = time.monotonic()
    wait_for(lambda: progress(page) == 50, timeout=2, what="a change in the gap, within 2 s")
    assert time.monotonic() - changed <= 2
    before_live = fake.rest_reads[job_id]
    fake.release_system()
    wait_for(lambda: live(page), what="the live subscription")
    wait_for(lambda: fake.rest_reads[job_id] > before_live, timeout=3, what="a reconciling read once live")
    after_live = settled_reads(fake, job_id)
    assert after_live - before_live <= 2  # the reconciling read (and at most one poll that crossed it)
    pg_store.progress(job_id, WORKER, 70, "pushed")
    fake.push_change(job_id)
    wait_for(lambda: progress(page) == 70, timeout=2, what="a pushed change")
    time.sleep(2.5)
    assert fake.rest_reads[job_id] == after_live, "kept reading after the subscription was live"
    no_rejections(page)


def test_2_failed_reads_are_retried_and_every_watcher_ends(page, fake, running, pg_store) -> None:
    """The first reads fail (500, a dropped connection, a pool timeout, a read slower than the
    read timeout) while the job completes unseen by Realtime: both watchers still end completed."""
    job_id, _, token = running()
    fake.hold_system.set()  # changes are never pushed in this test
    fake.read_failures = ["500", "drop", "504", "slow:4", "500"]
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, shared="app", readTimeout=1500)
    start(page, "second", job_id, token, realtime=True, shared="app", readTimeout=1500)
    wait_for(lambda: len(fake.rest_failures_served) >= 2, timeout=10, what="failing reads")
    pg_store.complete(job_id, WORKER, {"ok": True})
    wait_for(lambda: state(page)["done"] == "completed" and state(page, "second")["done"] == "completed", timeout=30,
             what="both watchers to reach completed")
    assert state(page)["errors"], "read failures were not reported"
    assert fake.rest_failures_served == ["500", "drop", "504", "slow:4", "500"]
    no_rejections(page)


def test_3_token_refresh_401_and_expiry_close_rejoin_and_return_to_realtime(page, fake, running, pg_store, make_user) -> None:
    """The channel's token expires: the server closes the channel (system error + phx_close),
    the rejoin with the stale token is refused and REST answers 401; once the app has a
    refreshed token, reads and the join use it and the watch is back on Realtime."""
    user = make_user()
    job_id, _, _ = running(user)
    short = user_token(user, exp=int(time.time()) + 4)
    fresh = user_token(user, iat=int(time.time()) + 1)
    open_harness(page, fake)
    start(page, "main", job_id, short, realtime=True)
    wait_for(lambda: live(page), what="the live subscription")
    wait_for(lambda: fake.closes != [], timeout=10, what="the server to close the channel at token expiry")
    pg_store.progress(job_id, WORKER, 30, "while the channel is closed")
    wait_for(lambda: "polling-fallback" in state(page)["modes"], what="the fallback")
    time.sleep(1.5)  # rejoins and reads with the expired token fail
    assert any("expired" in e.lower() for e in state(page)["errors"]), state(page)["errors"]
    page.evaluate("(t) => { window.tokens.main = t; }", fresh)  # the app's hourly refresh
    wait_for(lambda: progress(page) == 30, timeout=10, what="a read with the fresh token")
    wait_for(lambda: live(page), timeout=20, what="Realtime again")
    assert fake.joins[-1]["access_token"] == fresh
    assert fresh in fake.rest_tokens
    pg_store.progress(job_id, WORKER, 60, "pushed after the rejoin")
    fake.push_change(job_id)
    wait_for(lambda: progress(page) == 60, timeout=3, what="a pushed change after the rejoin")
    settled = fake.rest_reads[job_id]
    time.sleep(3)
    assert fake.rest_reads[job_id] == settled, "still polling after returning to Realtime"
    no_rejections(page)


def test_4_many_watchers_share_one_channel(page, fake, running, pg_store) -> None:
    """Three watchers of one job on one supabase client: one join, every watcher updated,
    one stopping does not affect the others, the channel leaves with the last one."""
    job_id, _, token = running()
    open_harness(page, fake)
    for name in ("main", "header", "sidebar"):
        start(page, name, job_id, token, realtime=True, shared="app", pollInterval=1000)
    wait_for(lambda: all(live(page, n) for n in ("main", "header", "sidebar")), what="all three live")
    assert len([j for j in fake.joins if job_id in j["topic"]]) == 1
    assert fake.rest_reads[job_id] <= 2  # shared reads: the first and the reconciling one
    page.evaluate("window.watches.sidebar.stop()")
    pg_store.progress(job_id, WORKER, 45, "shared")
    fake.push_change(job_id)
    wait_for(lambda: progress(page, "main") == 45 and progress(page, "header") == 45, timeout=3, what="both updated")
    assert progress(page, "sidebar") != 45
    assert fake.leaves == []
    start(page, "late", job_id, token, realtime=True, shared="app")  # joins the same feed
    wait_for(lambda: progress(page, "late") == 45, timeout=3, what="a late watcher to get the current state")
    assert len([j for j in fake.joins if job_id in j["topic"]]) == 1
    for name in ("main", "header", "late"):
        page.evaluate("(n) => window.watches[n].stop()", name)
    wait_for(lambda: fake.leaves != [], timeout=5, what="the channel to leave with the last watcher")
    start(page, "again", job_id, token, realtime=True, shared="app")  # a new feed after release
    wait_for(lambda: live(page, "again"), what="a new subscription")
    pg_store.complete(job_id, WORKER, {"ok": True})
    fake.push_change(job_id)
    wait_for(lambda: state(page, "again")["done"] == "completed", timeout=3, what="done")
    no_rejections(page)


def test_5_only_this_job_and_deletion_is_gone(page, fake, running, pg_store) -> None:
    """DELETE events reach every subscriber with only the primary key: another job's deletion
    is ignored; this job's deletion ends the watch as "gone" (not an error, not done)."""
    job_id, user, token = running()
    other_id, _, _ = running(user)
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    wait_for(lambda: live(page), what="the live subscription")
    fake.delete_row(other_id)
    assert fake.delivered[-1] == (f"realtime:ai-jobs-live:{job_id}", "DELETE", other_id)
    pg_store.progress(job_id, WORKER, 35, "still here")
    fake.push_change(job_id)
    wait_for(lambda: progress(page) == 35, timeout=3, what="updates after another job's DELETE")
    assert state(page)["gone"] is None and state(page)["errors"] == []
    fake.delete_row(job_id)
    wait_for(lambda: state(page)["gone"] == job_id, timeout=3, what="the gone state")
    assert state(page)["done"] is None
    wait_for(lambda: fake.leaves != [], timeout=5, what="the channel to leave")
    no_rejections(page)


def test_6_truncated_terminal_event_reads_the_full_row(page, fake, running, pg_store) -> None:
    """A completed row over the size limit arrives without its result (413): the watcher
    reads the full row and ends with the result."""
    job_id, _, token = running()
    fake.max_record_bytes = 20_000  # the real limit is 1 MB; the behaviour is the same
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    wait_for(lambda: live(page), what="the live subscription")
    reads = settled_reads(fake, job_id)
    result = {"text": "x" * 30_000}
    pg_store.complete(job_id, WORKER, result)
    fake.push_change(job_id)
    wait_for(lambda: state(page)["done"] == "completed", timeout=5, what="done")
    assert state(page)["doneResult"] == len(json.dumps(result, separators=(",", ":")))
    assert fake.rest_reads[job_id] == reads + 1
    no_rejections(page)


def test_9_unchanged_toasted_columns_stay_from_the_last_full_row(page, fake, pg_store, make_user) -> None:
    """An UPDATE that leaves a large (TOASTed) input alone arrives without `input` and with
    no 413, as Realtime sends it: the update and the end state still carry the input, taken
    from the last full row, and no extra read is made."""
    user = make_user()
    rng = random.Random(9)
    job_input = {"prompt": "".join(rng.choice(string.ascii_letters) for _ in range(6000))}  # ~6 kB even compressed
    created = pg_store.enqueue(NewJob(user_id=user, job_type="example.countdown", input=job_input)).job
    pg_store.claim(WORKER, job_id=created.id, lease_seconds=300)
    job_id, token = str(created.id), user_token(user)
    size = len(json.dumps(job_input, separators=(",", ":")))
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    wait_for(lambda: live(page), what="the live subscription")
    reads = settled_reads(fake, job_id)
    assert state(page)["updates"][-1]["input"] == size
    pg_store.progress(job_id, WORKER, 40, "input untouched")
    fake.push_change(job_id)
    wait_for(lambda: progress(page) == 40, timeout=3, what="the pushed progress")
    assert fake.unchanged_toast == [(job_id, ["input"])]  # sent without it, as the server does
    assert state(page)["updates"][-1]["input"] == size, "the update lost the job's input"
    pg_store.complete(job_id, WORKER, {"ok": True})
    fake.push_change(job_id)
    wait_for(lambda: state(page)["done"] == "completed", timeout=3, what="done")
    assert fake.unchanged_toast[-1] == (job_id, ["input"])
    assert state(page)["doneInput"] == size and state(page)["doneResult"] == len('{"ok":true}')
    assert fake.rest_reads[job_id] == reads
    no_rejections(page)


@pytest.fixture(scope="module")
def hook_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/browser/js/hook_app.jsx bundled with React; the hook and client come from
    client_dir() (public/, or the copy AI_JOBS_CLIENT_DIR names)."""
    out = tmp_path_factory.mktemp("hook") / "hook-app.js"
    public = client_dir()
    build = subprocess.run(
        [str(JS / "node_modules" / ".bin" / "esbuild"), str(JS / "hook_app.jsx"), "--bundle", "--format=esm",
         "--jsx=automatic", "--define:process.env.NODE_ENV=\"development\"", f"--outfile={out}",
         f"--alias:ai-jobs-client/react={public / 'ai-jobs-react.js'}", f"--alias:ai-jobs-client={public / 'ai-jobs.js'}"],
        cwd=JS, capture_output=True, text=True,
        env={"NODE_PATH": str(JS / "node_modules"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert build.returncode == 0, build.stderr
    return out.read_text()


HOOK_PAGE = ('<!doctype html><html lang="en"><body><div id="root"></div><script src="/supabase.js"></script>'
             '<script>window.rejections=[];addEventListener("unhandledrejection",e=>rejections.push(String(e.reason)))'
             '</script><script type="module" src="/pages/hook-app.js"></script></body></html>')


def test_7_hook_clears_error_when_updates_resume_and_orders_cancel_response(page, fake, running, pg_store, hook_bundle) -> None:
    """useAiJob: a failed first read shows an error that goes once updates resume; a cancel()
    answer older than a Realtime event already shown does not move the state back."""
    job_id, _, token = running()
    fake.read_failures = ["500", "500"]
    fake.cancel_delay = 1.5
    fake.serve("hook-app.js", hook_bundle, "text/javascript")
    page.goto(fake.serve("hook.html", HOOK_PAGE, "text/html") + f"#job={job_id}&token={token}")
    page.wait_for_function("window.appReady === true")
    page.wait_for_function("window.hookStates.some((s) => s.error)")
    page.wait_for_function("document.querySelector('#status').textContent === 'running'")
    wait_for(lambda: fake.live_channels(job_id) != [], what="the live subscription")
    pg_store.progress(job_id, WORKER, 40, "resumed")
    fake.push_change(job_id)
    page.wait_for_function("document.querySelector('#progress').value === 40")
    assert page.inner_text("#error") == "", "the error stayed after updates resumed"
    page.click("#cancel")  # the API cancels at once but answers 1.5 s later
    wait_for(lambda: fake.api_tokens != [], what="the cancel request")
    time.sleep(0.3)
    pg_store.mark_cancelled(uuid.UUID(job_id), WORKER)  # the worker stops at its next step
    fake.push_change(job_id)
    page.wait_for_function("document.querySelector('#status').textContent === 'cancelled'")
    time.sleep(2)  # the older cancel answer has arrived
    assert page.inner_text("#status") == "cancelled"
    statuses = [s["status"] for s in page.evaluate("window.hookStates")]
    assert statuses[statuses.index("cancelled"):] == ["cancelled"] * len(statuses[statuses.index("cancelled"):]), statuses
    assert page.evaluate("window.rejections") == []


def test_8_access_token_option_client_without_get_access_token(page, fake, running, pg_store) -> None:
    """A supabase-js client made with the `accessToken` option (auth.getSession() throws)
    and no getAccessToken: Realtime, reads and API calls all use the callback's token."""
    job_id, _, token = running()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, apiToken=False)
    wait_for(lambda: live(page), what="the live subscription")
    settled_reads(fake, job_id)
    assert fake.joins[-1]["access_token"] == token
    cancelled = page.evaluate("""async (id) => {
        try { const job = await window.watches.main.client.cancelJob(id); return job.cancel_requested_at !== null; }
        catch (error) { return String(error); }
    }""", job_id)
    assert cancelled is True, cancelled
    assert fake.api_tokens == [token]
    assert fake.push_change(job_id) == 1, (fake.joins, fake.closes, state(page))
    wait_for(lambda: state(page)["updates"][-1]["updated_at"] != state(page)["updates"][0]["updated_at"], timeout=3,
             what="the cancel request pushed")
    no_rejections(page)


def test_figures_reads_and_latency(page, fake, running, pg_store) -> None:
    """REST reads per watched job and time from row update to callback, for the report."""
    job_id, _, token = running()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, pollInterval=1000)  # the default
    wait_for(lambda: live(page), what="the live subscription")
    latencies = []
    for step in range(1, 21):
        pg_store.progress(job_id, WORKER, step * 4, f"step {step}")
        written = time.time()
        fake.push_change(job_id)
        wait_for(lambda: progress(page) == step * 4, timeout=3, what=f"step {step}")
        shown = state(page)["updates"][-1]["at"] / 1000
        latencies.append((shown - written) * 1000)
    pg_store.complete(job_id, WORKER, {"ok": True})
    fake.push_change(job_id)
    wait_for(lambda: state(page)["done"] == "completed", timeout=3, what="done")
    latencies.sort()
    figures = {"rest_reads_per_watched_job": fake.rest_reads[job_id], "updates": 21,
               "update_to_callback_ms_p50": round(latencies[len(latencies) // 2], 1),
               "update_to_callback_ms_max": round(latencies[-1], 1)}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "realtime-client-figures.json").write_text(json.dumps(figures, indent=2))
    assert fake.rest_reads[job_id] <= 3  # 2 unless the join took over a second (a read while connecting)


def test_10_an_upper_case_job_id_is_followed(page, fake, running, pg_store, hook_bundle) -> None:
    """watchJob and useAiJob accept a job id in upper case (a UUID either way) and follow it:
    Postgres prints uuids in lower case, so events and rows are matched on that form."""
    job_id, _, token = running()
    open_harness(page, fake)
    start(page, "main", job_id.upper(), token, realtime=True)
    wait_for(lambda: live(page), what="the live subscription")
    pg_store.progress(job_id, WORKER, 40, "pushed")
    assert fake.push_change(job_id) == 1
    wait_for(lambda: progress(page) == 40, timeout=3, what="a pushed change for the upper-case id")
    assert fake.joins[-1]["topic"].endswith(job_id)  # joined in lower case, as the private topic's policy needs
    pg_store.complete(job_id, WORKER, {"ok": True})
    fake.push_change(job_id)
    wait_for(lambda: state(page)["done"] == "completed", timeout=3, what="done")
    no_rejections(page)

    other_id, _, other_token = running()
    fake.serve("hook-app.js", hook_bundle, "text/javascript")
    page.goto(fake.serve("hook.html", HOOK_PAGE, "text/html") + f"#job={other_id.upper()}&token={other_token}")
    page.wait_for_function("window.appReady === true")
    page.wait_for_function("document.querySelector('#status').textContent === 'running'")
    wait_for(lambda: fake.live_channels(other_id) != [], what="the hook's live subscription")
    pg_store.progress(other_id, WORKER, 55, "pushed to the hook")
    fake.push_change(other_id)
    page.wait_for_function("document.querySelector('#progress').value === 55")
    pg_store.complete(other_id, WORKER, {"ok": True})
    fake.push_change(other_id)
    page.wait_for_function("document.querySelector('#status').textContent === 'completed'")
    assert page.evaluate("window.rejections") == []


def test_11_with_public_access_off_changes_are_still_pushed(page, fake, running, pg_store, make_user) -> None:
    """With "Allow public access" off, the server refuses every join that is not private
    ("PrivateOnly: This project only allows private channels"). The watch joins one
    channel, the job's private topic, which the owner's policy allows: it goes live and
    shows pushed changes without polling. Another user's join of that topic is refused."""
    job_id, _, token = running()
    fake.private_only = True
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    wait_for(lambda: live(page), what="the live subscription")
    assert [j["topic"] for j in fake.joins] == [f"realtime:ai-jobs-live:{job_id}"]
    assert fake.joins[0]["config"]["private"] is True
    reads = settled_reads(fake, job_id)
    pg_store.progress(job_id, WORKER, 25, "pushed")
    assert fake.push_change(job_id) == 1
    wait_for(lambda: progress(page) == 25, timeout=3, what="a pushed change")
    time.sleep(1.5)
    assert fake.rest_reads[job_id] == reads, "kept reading while on Realtime"
    assert state(page)["errors"] == []
    refused = page.evaluate("""async ([id, t]) => {
        const supabase = window.supabase.createClient(location.origin, "anon-key", { accessToken: async () => t });
        return await new Promise((resolve) => {
            supabase.channel(`ai-jobs-live:${id}`, { config: { private: true } })
                .subscribe((status, error) => { if (status !== "SUBSCRIBED") resolve(String(error && error.message)); else resolve("joined"); });
        });
    }""", [job_id, user_token(make_user())])
    assert "You do not have permissions to read from this Channel topic" in refused, refused
    no_rejections(page)


def test_12_status_over_broadcast_is_live_only_once_replication_is_up(page, fake, running, pg_store) -> None:
    """statusVia "broadcast": the join reply does not wait for the replication connection
    that streams Broadcast from Database, and a status message sent before it is up is
    never delivered. The watch asks for config.broadcast.replication_ready and keeps
    reading until the server's "Replication connection established": a job that completes
    meanwhile still ends completed. Once it is up, a new watch goes live at that message
    and status messages are applied without reads."""
    job_id, _, token = running()
    fake.hold_replication.set()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, statusVia="broadcast")
    wait_for(lambda: fake.channels_for(job_id) != [], what="the join")
    time.sleep(1.0)
    pg_store.complete(job_id, WORKER, {"ok": True})
    assert fake.db_status(job_id) == 0 and fake.lost_broadcasts  # before the replication connection: lost
    wait_for(lambda: state(page)["done"] == "completed", timeout=4, what="the completed job (seen by reading)")
    assert "realtime" not in state(page)["modes"]
    join = fake.joins[-1]
    assert join["topic"] == f"realtime:ai-jobs-live:{job_id}" and join["config"]["private"] is True
    assert join["config"]["broadcast"]["replication_ready"] is True
    assert join["config"].get("postgres_changes") in (None, [])

    fake.release_replication()
    other_id, _, other_token = running()
    start(page, "other", other_id, other_token, realtime=True, statusVia="broadcast")
    wait_for(lambda: live(page, "other"), what="live at the replication-ready message")
    reads = settled_reads(fake, other_id)
    pg_store.progress(other_id, WORKER, 65, "over Broadcast")
    assert fake.db_status(other_id) == 1
    wait_for(lambda: progress(page, "other") == 65, timeout=3, what="a status message")
    time.sleep(1.0)
    assert fake.rest_reads[other_id] == reads, "kept reading while live"
    no_rejections(page)


def test_13_a_server_without_the_replication_ready_message_is_live_after_live_timeout(page, fake, running) -> None:
    """A server that never sends "Replication connection established" (no opt-in): the
    watch reads meanwhile and treats the channel as live liveTimeout after the join."""
    job_id, _, token = running()
    fake.notify_replication = False
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, statusVia="broadcast", liveTimeout=2000)
    wait_for(lambda: fake.channels_for(job_id) != [], what="the join")
    joined = time.monotonic()
    time.sleep(1.0)
    assert not live(page)
    wait_for(lambda: live(page), timeout=5, what="live after liveTimeout")
    assert time.monotonic() - joined >= 1.5
    no_rejections(page)


# A second watcher on the main watch's client (so on its feed) that records which checkpoint
# steps each update carries: a TOASTed column the harness's own watcher does not report.
CHECKPOINT_PROBE = """([id]) => {
  window.probe = [];
  window.probeDone = null;
  window.watches.main.client.watchJob(id, {
    onUpdate: (j) => window.probe.push({progress: j.progress, updated_at: j.updated_at,
                                        steps: j.checkpoints ? Object.keys(j.checkpoints) : "missing"}),
    onDone: (j) => { window.probeDone = {status: j.status, steps: j.checkpoints ? Object.keys(j.checkpoints) : "missing"}; },
  });
}"""


def big_value(seed: int) -> str:
    """About 6 kB of random letters: stored out of line (TOASTed) even compressed."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters) for _ in range(6000))


def probed_steps(page: Any) -> list[str] | str:
    return page.evaluate("window.probe")[-1]["steps"]


def test_14_a_change_missed_before_live_is_not_hidden_by_a_toast_merge(page, fake, running, pg_store) -> None:
    """A checkpoint write (a TOASTed value) lands before the subscription is live, so Realtime
    never sends it. At the live moment the catch-up read starts; before it answers, an UPDATE
    that left `checkpoints` alone arrives without it. Filling it from the last row read (which
    predates the checkpoint) and showing that under the event's newer updated_at would make the
    catch-up read's row (same updated_at) look stale: the step would be missing for good. The
    event must instead wait for a read, and every update and onDone carry the step."""
    job_id, _, token = running()
    fake.hold_system.set()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, pollInterval=60000, maxPollInterval=60000)
    page.evaluate(CHECKPOINT_PROBE, [job_id])
    wait_for(lambda: page.evaluate("window.probe.length") >= 1, what="the first read")
    wait_for(lambda: fake.channels_for(job_id) != [], what="the join")
    pg_store.checkpoint(job_id, WORKER, "s1", big_value(1))  # checkpoints: {} -> {s1: <6 kB>}
    assert fake.push_change(job_id) == 0  # not live yet: the server drops it
    fake.read_failures = ["slow:2"]  # the catch-up read answers 2 s later
    fake.release_system()
    wait_for(lambda: live(page), what="live")
    pg_store.progress(job_id, WORKER, 40, "checkpoints untouched")
    assert fake.push_change(job_id) == 1
    assert fake.unchanged_toast[-1] == (job_id, ["checkpoints"])  # sent without it, as the server does
    wait_for(lambda: progress(page) == 40, timeout=4, what="the pushed progress")
    time.sleep(0.5)
    assert all(u["steps"] == ["s1"] for u in page.evaluate("window.probe") if u["progress"] == 40), page.evaluate("window.probe")
    pg_store.complete(job_id, WORKER, {"ok": True})
    fake.push_change(job_id)
    wait_for(lambda: page.evaluate("window.probeDone") is not None, timeout=3, what="done")
    assert page.evaluate("window.probeDone") == {"status": "completed", "steps": ["s1"]}
    no_rejections(page)


def test_15_a_change_missed_while_reconnecting_is_not_hidden_by_a_toast_merge(page, fake, running, pg_store) -> None:
    """The same after a reconnect: the socket drops, a checkpoint is written while the channel
    is down (never sent), and after the rejoin's "Subscribed to PostgreSQL" an UPDATE without
    the unchanged `checkpoints` arrives before the catch-up read answers."""
    job_id, _, token = running()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, pollInterval=60000, maxPollInterval=60000)
    page.evaluate(CHECKPOINT_PROBE, [job_id])
    wait_for(lambda: live(page), what="live")
    joins = len(fake.joins)
    fake.drop_connections()
    wait_for(lambda: "polling-fallback" in state(page)["modes"], timeout=5, what="the fallback")
    pg_store.checkpoint(job_id, WORKER, "s1", big_value(2))
    assert fake.push_change(job_id) == 0  # no channel: never delivered
    fake.read_failures = ["slow:2"]
    wait_for(lambda: len(fake.joins) > joins and live(page), timeout=15, what="rejoined and live")
    pg_store.progress(job_id, WORKER, 55, "after the reconnect")
    assert fake.push_change(job_id) == 1
    assert fake.unchanged_toast[-1] == (job_id, ["checkpoints"])
    wait_for(lambda: progress(page) == 55, timeout=4, what="the pushed progress")
    time.sleep(0.5)
    assert probed_steps(page) == ["s1"], page.evaluate("window.probe")
    no_rejections(page)


def test_16_a_status_broadcast_after_a_missed_change_waits_for_the_catch_up_read(page, fake, running, pg_store) -> None:
    """statusVia "broadcast": a status message carries a few columns and the rest come from the
    last row. A checkpoint written before the replication connection is up is missed; a status
    message that arrives before the catch-up read answers must not be merged onto the older
    row (its newer updated_at would make that read's row look stale)."""
    job_id, _, token = running()
    fake.hold_replication.set()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, statusVia="broadcast", pollInterval=60000, maxPollInterval=60000)
    page.evaluate(CHECKPOINT_PROBE, [job_id])
    wait_for(lambda: page.evaluate("window.probe.length") >= 1, what="the first read")
    wait_for(lambda: fake.channels_for(job_id) != [], what="the join")
    pg_store.checkpoint(job_id, WORKER, "s1", {"done": True})
    fake.read_failures = ["slow:2"]
    fake.release_replication()
    wait_for(lambda: live(page), what="live at the replication-ready message")
    pg_store.progress(job_id, WORKER, 40, "status over Broadcast")
    assert fake.db_status(job_id) == 1
    wait_for(lambda: progress(page) == 40, timeout=4, what="the status message")
    time.sleep(0.5)
    assert all(u["steps"] == ["s1"] for u in page.evaluate("window.probe") if u["progress"] == 40), page.evaluate("window.probe")
    no_rejections(page)


def test_17_a_row_over_the_size_limit_is_read_not_filled_from_the_last_row(page, fake, running, pg_store) -> None:
    """A row over the size limit (1 MB; 20 kB here) arrives with only its values of 64 bytes
    or less and a 413, whether they changed or not. A checkpoint that made it that large is
    among the values left out: filling it from the last row would show the job without that
    step under the event's updated_at (and the later read of the same row would be ignored).
    The event is not shown; the row is read once."""
    job_id, _, token = running()
    fake.max_record_bytes = 20_000  # the real limit is 1 MB; the behaviour is the same
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True)
    page.evaluate(CHECKPOINT_PROBE, [job_id])
    wait_for(lambda: live(page), what="the live subscription")
    reads = settled_reads(fake, job_id)
    pg_store.checkpoint(job_id, WORKER, "s1", "x" * 30_000, progress=30)
    assert fake.push_change(job_id) == 1
    wait_for(lambda: progress(page) == 30, timeout=3, what="the change")
    time.sleep(0.5)
    assert all(u["steps"] == ["s1"] for u in page.evaluate("window.probe") if u["progress"] == 30), page.evaluate("window.probe")
    assert fake.rest_reads[job_id] == reads + 1
    no_rejections(page)


def app_channel(page: Any, job_id: str, token: str) -> None:
    """The app's own channel on the job's topic, on the supabase client "app", as an app that
    follows the output itself joins it; window.appStatuses gets its subscribe statuses."""
    page.evaluate("""([id, t]) => {
      const sb = window.supabaseFor("app", t);
      window.appStatuses = [];
      window.appOutputs = 0;
      window.appChannel = sb.channel(`ai-jobs-live:${id}`, { config: { private: true } })
        .on("broadcast", { event: "output" }, () => { window.appOutputs += 1; })
        .subscribe((s) => window.appStatuses.push(s));
    }""", [job_id, token])


def test_18_an_app_channel_on_the_jobs_topic_is_reported_and_the_job_is_read(page, fake, running, pg_store) -> None:
    """The app joined `ai-jobs-live:<id>` itself on the supabase client the watch uses:
    realtime-js keeps one channel per topic per client and postgres_changes cannot be added
    to a subscribed channel, so the watch cannot go live on it. It says so once through
    onError ("realtime_topic_in_use"), reads the job (polling-fallback) instead of waiting in
    "connecting" forever, and joins once the app has removed its channel."""
    job_id, _, token = running()
    open_harness(page, fake)
    app_channel(page, job_id, token)
    wait_for(lambda: page.evaluate("window.appStatuses.includes('SUBSCRIBED')"), what="the app's own channel")
    start(page, "main", job_id, token, realtime=True, shared="app")
    wait_for(lambda: "realtime_topic_in_use" in state(page)["codes"], timeout=5, what="the report")
    assert state(page)["modes"][-1] == "polling-fallback"
    pg_store.progress(job_id, WORKER, 30, "read, not pushed")
    wait_for(lambda: progress(page) == 30, timeout=5, what="a read")
    time.sleep(3)
    assert state(page)["codes"].count("realtime_topic_in_use") == 1, state(page)["codes"]  # reported once
    assert all(j["config"]["postgres_changes"] == [] for j in fake.joins)  # only the app's joins (no watch binding)
    page.evaluate("window.supabaseClients.app.removeChannel(window.appChannel)")
    wait_for(lambda: live(page), timeout=20, what="the watch's own channel once the app's is gone")
    pg_store.progress(job_id, WORKER, 60, "pushed")
    assert fake.push_change(job_id) == 1
    wait_for(lambda: progress(page) == 60, timeout=3, what="a pushed change")
    no_rejections(page)


def test_19_stopping_the_watch_leaves_the_apps_listeners_on_the_shared_channel(page, fake, running, pg_store) -> None:
    """The app asks its supabase client for `ai-jobs-live:<id>` after watchJob did: realtime-js
    returns the watch's channel, and the app's broadcast listener goes on it. Stopping the
    watch must not remove that channel under the app: it stays joined with only the app's
    listener. A later watch of the job finds the app's channel and reports it."""
    job_id, _, token = running()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, shared="app")
    wait_for(lambda: live(page), what="live")
    app_channel(page, job_id, token)
    assert page.evaluate("window.appChannel.bindings.postgres_changes.length") == 1  # the watch's channel
    page.evaluate("window.watches.main.stop()")
    time.sleep(1.0)
    info = page.evaluate("""() => ({state: window.appChannel.state,
        listed: window.supabaseClients.app.getChannels().includes(window.appChannel),
        listeners: Object.entries(window.appChannel.bindings).flatMap(([t, l]) => l.map((b) => t + ":" + (b.filter.event || "")))})""")
    assert fake.leaves == [] and info["listed"] and info["state"] == "joined", info
    assert info["listeners"] == ["broadcast:output"], info  # the watch's own listeners are off
    assert fake.broadcast(job_id, "output", {"job": job_id, "stream": "s", "seq": 1, "offset": 0, "delta": "hi"}) == 1
    wait_for(lambda: page.evaluate("window.appOutputs") == 1, timeout=3, what="the app's listener")
    start(page, "again", job_id, token, realtime=True, shared="app")
    wait_for(lambda: "realtime_topic_in_use" in state(page, "again")["codes"], timeout=5, what="the report")
    no_rejections(page)


def test_20_a_channel_shut_soon_after_each_join_is_rejoined_with_backoff(page, fake, running) -> None:
    """The server shuts the channel down right after it goes live each time (as it does with
    "Too many messages per second"). The rejoin delays (250 ms, 1, 2, 5, 10 s) must not start
    again at every live moment, or the watch joins, reads and reports every few hundred ms:
    they start again only once a channel has stayed live for 30 s."""
    job_id, _, token = running()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, pollInterval=1000, maxPollInterval=15000)
    wait_for(lambda: live(page), what="live")
    first = len(fake.joins)
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        if fake.live_channels(job_id):
            fake.shut_down(job_id, "Too many messages per second")
        time.sleep(0.05)
    rejoins = len(fake.joins) - first
    assert 2 <= rejoins <= 5, (rejoins, state(page)["codes"])  # 0.25 + 1 + 2 + 5 s: 4 in 9 s
    assert state(page)["codes"].count("realtime_closed") <= 5
    no_rejections(page)


def test_21_reads_stay_at_poll_interval_until_live(page, fake, running, pg_store) -> None:
    """Joined, but "Subscribed to PostgreSQL" is late (here: 7 s; liveTimeout is 10 s): changes
    committed meanwhile are never pushed, so reads are the only way to see them. The watch
    reads every pollInterval until the live moment, as the README says, not slower after
    ten reads."""
    job_id, _, token = running()
    fake.hold_system.set()
    open_harness(page, fake)
    start(page, "main", job_id, token, realtime=True, pollInterval=300, maxPollInterval=3000)
    wait_for(lambda: fake.channels_for(job_id) != [], what="the join")
    time.sleep(4.5)  # over 10 reads at 300 ms
    assert state(page)["modes"] == ["connecting"]
    before = fake.rest_reads[job_id]
    pg_store.progress(job_id, WORKER, 35, "not pushed")
    changed = time.monotonic()
    wait_for(lambda: progress(page) == 35, timeout=2, what="the change, read within 2 s")
    assert time.monotonic() - changed < 1.0
    time.sleep(1.5)
    assert fake.rest_reads[job_id] - before >= 5, fake.rest_reads[job_id] - before  # about one per 300 ms
    fake.release_system()
    wait_for(lambda: live(page), what="live")
    no_rejections(page)
