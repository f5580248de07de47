"""The demo console under the real `ai-jobs dev` (its own data folder, --port 0)
in headless Chromium: Realtime through the local Supabase edge with supabase-js
from the checkout, no polling, nothing outside loopback, and a sign-in that
survives a reload and a new tab (issues 9 item 10 and 17 items 3, 4).

Figures (REST reads per watched job, row commit to page update) are written to
test-artifacts/localstack-figures.json."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from ai_jobs.devtools import dev_secrets, ensure_user, mint_token
from ai_jobs.localstack import supabase_js_path
from bench._local_stack import LocalStack, start_dev
from tests.browser.conftest import ARTIFACTS, screenshot

pytestmark = pytest.mark.browser

JOB_READ = re.compile(r"/api/jobs/[0-9a-f-]{36}$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    if supabase_js_path() is None:
        pytest.fail("public/node_modules has no supabase-js: make test runs npm ci in public/")
    stack = start_dev(data_dir=tmp_path_factory.mktemp("dev-realtime"), public=True, sweep_interval=2)
    yield stack
    stack.stop()


def edge_url(stack: LocalStack) -> str:
    line = next(line for line in stack.banner if line.strip().startswith("supabase "))
    return line.split()[1]


def watch_dom(page) -> None:  # type: ignore[no-untyped-def]
    """Record, with the page's clock, each progress message, status and mode shown."""
    page.evaluate(
        """() => {
          window.__seen = [];
          const note = (kind, el) => window.__seen.push({kind, text: el.textContent, mode: el.dataset.mode, at: Date.now()});
          for (const [id, kind] of [["progress-message", "message"], ["job-status", "status"], ["mode", "mode"]]) {
            const el = document.getElementById(id);
            new MutationObserver(() => note(kind, el)).observe(el, {childList: true, characterData: true, subtree: true, attributes: true});
          }
        }"""
    )


def run_countdown(page, steps: int, seconds: float) -> str:  # type: ignore[no-untyped-def]
    page.select_option("#job-type", "example.countdown")
    page.fill("#field-steps", str(steps))
    page.fill("#field-step_seconds", str(seconds))
    page.click("#submit")
    page.wait_for_selector("#job-view:not([hidden])")
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'completed'", timeout=60_000)
    return page.inner_text("#job-id")


def test_countdown_in_realtime_mode_without_polling(page, stack: LocalStack) -> None:  # type: ignore[no-untyped-def]
    requests: list[tuple[str, str]] = []
    page.on("request", lambda request: requests.append((request.method, request.url)))
    page.goto(stack.demo_url)
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#who") == "dev@localhost"
    watch_dom(page)
    started = len(requests)
    job_id = run_countdown(page, steps=6, seconds=0.5)
    screenshot(page, "dev-realtime-completed")
    during = requests[started:]
    assert page.get_attribute("#mode", "data-mode") == "realtime"
    assert page.inner_text("#mode") == "realtime"  # the header reads "Updates: realtime"
    seen = page.evaluate("window.__seen")
    modes = {entry["mode"] for entry in seen if entry["kind"] == "mode"}
    assert not {m for m in modes if "polling" in str(m)}, f"polled during the job: {modes}"
    polls = [url for method, url in during if method == "GET" and JOB_READ.search(urlsplit(url).path)]
    assert polls == [], f"polling requests during a Realtime job: {polls}"
    rest_reads = [url for method, url in during if method == "GET" and "/rest/v1/ai_jobs" in url and job_id in url]
    assert 1 <= len(rest_reads) <= 2, rest_reads
    assert '"steps_completed": 6' in page.inner_text("#result")

    # commit of each progress update (the dev feed's clock_timestamp()) to the page showing it
    with psycopg.connect(stack.database_url) as conn:
        changes = conn.execute(
            "select record->>'progress_message', extract(epoch from committed_at) * 1000 from ai_jobs_dev.changes "
            "where old_pk->>'id' = %s and op = 'UPDATE' order by id", (job_id,)).fetchall()
    first_commit: dict[str, float] = {}
    for message, at in changes:
        if message and message not in first_commit:
            first_commit[message] = float(at)
    shown = {}
    for entry in seen:
        if entry["kind"] == "message" and entry["text"] and entry["text"] not in shown:
            shown[entry["text"]] = entry["at"]
    latencies = [shown[m] - first_commit[m] for m in first_commit if m in shown]
    assert len(latencies) >= 4, (first_commit, shown)
    figures = {"rest_reads_per_watched_job": len(rest_reads), "polling_requests": len(polls),
               "commit_to_page_ms": {"samples": len(latencies), "median": round(statistics.median(latencies), 1),
                                     "max": round(max(latencies), 1)}}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "localstack-figures.json").write_text(json.dumps(figures, indent=2))
    print(f"\nlocal Realtime figures: {figures}")
    assert max(latencies) < 2000, latencies


def test_offline_console_loads_signs_in_and_completes(browser, stack: LocalStack) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context()
    outside: list[str] = []
    errors: list[str] = []

    def guard(route) -> None:  # type: ignore[no-untyped-def]
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        context.route("**/*", guard)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(stack.demo_url)
        page.wait_for_selector("body[data-ready=true]")
        assert page.inner_text("#who") == "dev@localhost"
        run_countdown(page, steps=3, seconds=0.2)
        assert page.get_attribute("#mode", "data-mode") == "realtime"
        assert sockets and all(urlsplit(url).hostname == "127.0.0.1" for url in sockets), sockets
    finally:
        context.close()
    assert outside == [], f"requests outside loopback: {outside}"
    assert errors == []


def test_sign_in_survives_reload_and_new_tab_and_switch_user(browser, stack: LocalStack) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(stack.demo_url)
        page.wait_for_selector("body[data-ready=true]")
        assert page.inner_text("#who") == "dev@localhost"
        assert "token=" not in page.url  # not left in the address bar
        assert page.is_hidden("#token-form") and page.is_visible("#switch-user")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.inner_text("#who") == "dev@localhost" and page.is_hidden("#token-form")
        tab = context.new_page()
        tab.goto(stack.url + "/")  # a new tab, no token in the URL
        tab.wait_for_selector("body[data-ready=true]")
        assert tab.inner_text("#who") == "dev@localhost" and tab.is_hidden("#token-form")
        screenshot(tab, "dev-signed-in-new-tab")

        # switch user: the form comes back, another user's token signs them in, in every tab
        secret = dev_secrets(stack.data_dir).jwt_secret
        other = ensure_user(stack.database_url, "other@example.com")
        tab.click("#switch-user")
        assert tab.is_visible("#token-form") and tab.is_hidden("#signed-in")
        tab.fill("#token", mint_token(secret, other, email="other@example.com"))
        tab.click("#token-form button[type=submit]")
        tab.wait_for_selector("#signed-in:not([hidden])")
        assert tab.inner_text("#who") == "other@example.com"
        page.wait_for_function("() => document.querySelector('#who').textContent === 'other@example.com'")
        run_countdown(tab, steps=2, seconds=0.1)  # the new user's jobs run and are followed
        assert tab.get_attribute("#mode", "data-mode") == "realtime"

        # an expired token sends the console back to the form with a message
        tab.click("#switch-user")
        tab.fill("#token", mint_token(secret, other, email="other@example.com", ttl_seconds=-60))
        tab.click("#token-form button[type=submit]")
        tab.wait_for_selector("#token-form:not([hidden])")
        # the form was already showing: wait for the submit's verdict, not for the form
        tab.wait_for_function("() => document.querySelector('#auth-status').textContent.includes('expired')",
                              timeout=10_000)
        screenshot(tab, "dev-token-expired")

        # A tab that follows another's sign-in never writes the token store back: had the
        # other tab removed the expired token it read, that removal would reach this tab
        # as a storage event and wipe the message (seen under load: "Paste a token to
        # start."). Here the other tab is handed an expired token as a storage event.
        expired = mint_token(secret, other, email="other@example.com", ttl_seconds=-60)
        kept = page.evaluate(
            """(token) => {
                localStorage.setItem("ai-jobs-demo-token", token);  // no event in this tab itself
                window.dispatchEvent(new StorageEvent("storage", {key: "ai-jobs-demo-token", newValue: token}));
                return localStorage.getItem("ai-jobs-demo-token");
            }""", expired)
        assert kept == expired, "the following tab removed the token another tab had written"
        assert "expired" in page.inner_text("#auth-status") and page.is_visible("#token-form")
        tab.wait_for_function("() => document.querySelector('#auth-status').textContent.includes('expired')")
        page.evaluate('() => localStorage.removeItem("ai-jobs-demo-token")')
    finally:
        context.close()


def test_config_and_vendor_are_served_by_dev_only(stack: LocalStack) -> None:
    import urllib.request

    config = urllib.request.urlopen(stack.url + "/config.js", timeout=5).read().decode()
    assert f'"supabaseUrl": "{edge_url(stack)}"' in config and '"auth": "token"' in config
    assert '"supabaseJsUrl": "/vendor/supabase.js"' in config and "cdn" not in config.lower()
    vendor = urllib.request.urlopen(stack.url + "/vendor/supabase.js", timeout=5).read()
    assert vendor == Path(supabase_js_path() or "").read_bytes()
    assert urlsplit(edge_url(stack)).hostname == "127.0.0.1"


def test_without_supabase_js_the_console_says_so_and_polls(page, stack: LocalStack) -> None:  # type: ignore[no-untyped-def]
    """What `ai-jobs dev` serves when public/node_modules is missing (no npm): a
    notice, and polling; still nothing outside loopback."""
    from ai_jobs.localstack import config_js, dev_config

    body = config_js(dev_config(edge_url(stack), "unused", supabase_js=False))
    page.route("**/config.js", lambda route: route.fulfill(status=200, content_type="text/javascript", body=body))
    page.goto(stack.demo_url)
    page.wait_for_selector("body[data-ready=true]")
    assert "supabase-js is not installed" in page.inner_text("#notice")
    run_countdown(page, steps=2, seconds=0.1)
    assert page.get_attribute("#mode", "data-mode") == "polling"
