"""Live Claude output in the demo console under the real `ai-jobs dev` (issue 14), in
headless Chromium: the worker streams an `ai.generate` reply from the wire-format fake
Anthropic server (tests/anthropic_wire.py) to the job's private Broadcast topic through
the local Realtime edge; supabase-js (from the checkout) joins it as the owner.

Figures (delta written by the fake -> text on screen, p50/p95; Realtime messages per
1,000 output tokens) go to test-artifacts/live-output-figures.json."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from typing import Any

import pytest

from ai_jobs.devtools import dev_secrets, ensure_user, mint_token
from ai_jobs.localstack import supabase_js_path
from bench._local_stack import LocalStack, start_dev
from tests.anthropic_wire import FakeAnthropicServer, sse_events
from tests.browser.conftest import ARTIFACTS, screenshot

pytestmark = pytest.mark.browser

FIGURES = ARTIFACTS / "live-output-figures.json"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropicServer]:
    server = FakeAnthropicServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(fake: FakeAnthropicServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    if supabase_js_path() is None:
        pytest.fail("public/node_modules has no supabase-js: make test runs npm ci in public/")
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url, "AI_JOBS_PROMPT_CACHE": "off",
           "AI_JOBS_LIVE_OUTPUT": "on"}
    running = start_dev(env, data_dir=tmp_path_factory.mktemp("dev-live"), public=True, sweep_interval=2)
    yield running
    running.stop()


def words(count: int) -> str:
    return "".join(f"word{i} " for i in range(count))


def marked_reply(text: str, *, tokens: int, chunks: int, seconds: float, wait_first: float = 0.0) -> list[Any]:
    """The streamed message with a timestamped mark after each text delta, paced."""
    steps: list[Any] = [("sleep", wait_first)] if wait_first else []
    n = 0
    for event in sse_events(text, output_tokens=tokens, chunks=chunks):
        steps.append(event)
        if '"text_delta"' in event:
            n += 1
            steps.append(("mark", f"c{n}"))
            steps.append(("sleep", seconds / chunks))
    return steps


def cumulative(text: str, chunks: int) -> list[int]:
    size = max(1, math.ceil(len(text) / chunks))
    return [min(len(text), size * n) for n in range(1, math.ceil(len(text) / size) + 1)]


OBSERVE = """() => {
  window.__live = [];
  const el = document.getElementById('live-text');
  new MutationObserver(() => window.__live.push({len: el.textContent.length, text: el.textContent, at: Date.now(),
                                                 status: document.getElementById('job-status').textContent}))
    .observe(el, {childList: true, characterData: true, subtree: true});
}"""

# A bare supabase-js client in the page (the UMD build the console loaded), as any app would use.
LISTEN = """async ([topic, token, isPrivate]) => {
  const cfg = window.AI_JOBS_CONFIG;
  const sb = window.supabase.createClient(cfg.supabaseUrl, cfg.supabaseAnonKey, {accessToken: async () => token});
  const out = {statuses: [], messages: []};
  window.__listeners = window.__listeners || [];
  window.__listeners.push(out);
  const ch = sb.channel(topic, {config: {private: isPrivate, broadcast: {self: false, ack: true}}});
  ch.on('broadcast', {event: '*'}, (m) => out.messages.push(m.payload))
    .subscribe((status) => out.statuses.push(status));
  out.send = async (payload) => {
    // over the socket, as a joined channel sends (realtime-js falls back to REST while it
    // cannot push, and the REST endpoint answers 202 even for a message it drops)
    const joinedBy = Date.now() + 5000;
    while (ch.state !== 'joined' && Date.now() < joinedBy) await new Promise((r) => setTimeout(r, 50));
    const viaSocket = await ch.send({type: 'broadcast', event: 'output', payload});
    const viaRest = await ch.httpSend('output', payload).then((r) => r, (e) => ({error: String(e)}));
    return {viaSocket, viaRest};
  };
  const deadline = Date.now() + 5000;
  while (!out.statuses.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return window.__listeners.length - 1;
}"""


def open_console(page, stack: LocalStack, token: str | None = None) -> None:  # type: ignore[no-untyped-def]
    url = stack.demo_url if token is None else stack.demo_url.split("#")[0] + f"#token={token}"
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def submit_generate(page, prompt: str) -> str:  # type: ignore[no-untyped-def]
    page.select_option("#job-type", "ai.generate")
    page.fill("#field-prompt", prompt)
    page.click("#submit")
    page.wait_for_selector("#job-view:not([hidden])")
    page.wait_for_function("() => /^[0-9a-f-]{36}$/.test(document.querySelector('#job-id').textContent)")
    return page.inner_text("#job-id")


def wait_completed(page) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'completed'", timeout=60_000)
    return json.loads(page.inner_text("#result"))


def other_user_token(stack: LocalStack) -> str:
    secret = dev_secrets(stack.data_dir).jwt_secret
    user = ensure_user(stack.database_url, "someone-else@localhost")
    return mint_token(secret, user, email="someone-else@localhost")


def test_text_grows_only_for_the_owner_and_no_browser_can_publish(browser, page, stack: LocalStack,  # type: ignore[no-untyped-def]
                                                                  fake: FakeAnthropicServer) -> None:
    tokens, chunks = 800, 80
    text = words(tokens)
    fake.replies = [marked_reply(text, tokens=tokens, chunks=chunks, seconds=4.0, wait_first=2.5)]
    fake.mark_times.clear()
    open_console(page, stack)
    page.evaluate(OBSERVE)
    job_id = submit_generate(page, "Write 800 words")
    topic = f"ai-jobs-live:{job_id}"
    # while the fake holds the first delta: the owner's own listener, and another user's page
    owner = page.evaluate(LISTEN, [topic, stack.token, True])
    other_context = browser.new_context()
    try:
        theirs = other_context.new_page()
        open_console(theirs, stack, other_user_token(stack))
        theirs_private = theirs.evaluate(LISTEN, [topic, other_user_token(stack), True])
        theirs_public = theirs.evaluate(LISTEN, [topic, other_user_token(stack), False])
        # the owner's browser tries to publish on its own job's topic, over the socket and over REST
        forged = {"job": job_id, "stream": "forged", "seq": 1, "offset": 0, "delta": "FORGED", "format": "text"}
        sent = page.evaluate("async ([i, p]) => { const r = await window.__listeners[i].send(p); return r; }",
                             [owner, forged])
        result = wait_completed(page)
        page.wait_for_timeout(500)
        screenshot(page, "live-output-completed")
        seen = page.evaluate("window.__live")
        mine = page.evaluate("(i) => window.__listeners[i]", owner)
        other_private = theirs.evaluate("(i) => window.__listeners[i]", theirs_private)
        other_public = theirs.evaluate("(i) => window.__listeners[i]", theirs_public)
    finally:
        other_context.close()

    assert result["text"] == text
    assert page.inner_text("#live-text") == text, "the final text differs from the result"
    before_done = [s for s in seen if s["status"] != "completed"]
    steps = sorted({s["len"] for s in before_done if 0 < s["len"] < len(text)})
    assert len(steps) >= 5, f"text grew in {len(steps)} visible steps"
    assert all(text.startswith(s["text"]) for s in seen), "text shown that is not a prefix of the final text"
    # only the owner receives; nobody publishes from a browser
    assert "SUBSCRIBED" in mine["statuses"]
    assert other_private["messages"] == [] and "SUBSCRIBED" not in other_private["statuses"], other_private["statuses"]
    assert other_public["messages"] == [], "a public channel of the same name received the stream"
    assert all(m.get("stream") != "forged" for m in mine["messages"]), "a browser published on the private topic"
    assert "FORGED" not in "".join(s["text"] for s in seen)
    # with ack, a refused broadcast gets no reply (the server drops it): realtime-js reports a timeout
    assert sent["viaSocket"] == "timed out", sent
    outputs = [m for m in mine["messages"] if m.get("job") == job_id and m.get("stream") != "forged"]
    assert outputs and [m["seq"] for m in outputs] == list(range(1, len(outputs) + 1))

    # figures: the fake's delta (timestamped when written) to the text on screen
    ends = cumulative(text, chunks)
    latencies = []
    for n, end in enumerate(ends, start=1):
        written = fake.mark_times.get(f"c{n}")
        shown = next((s["at"] for s in seen if s["len"] >= end), None)
        if written is not None and shown is not None:
            latencies.append(shown - written * 1000)
    latencies.sort()
    figures = {
        "delta_to_screen_ms_p50": round(statistics.median(latencies), 1),
        "delta_to_screen_ms_p95": round(latencies[max(0, math.ceil(len(latencies) * 0.95) - 1)], 1),
        "deltas": len(latencies),
        "realtime_messages": len(outputs),
        "output_tokens": tokens,
        "stream_seconds": round(fake.mark_times[f"c{len(ends)}"] - fake.mark_times["c1"], 2),
        "messages_per_1000_output_tokens": round(len(outputs) * 1000 / tokens, 1),
        "visible_steps": len(steps),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")
    print(figures)
    assert figures["delta_to_screen_ms_p50"] < 500, figures


def test_a_tab_opened_mid_stream_shows_exactly_the_full_text(page, stack: LocalStack,  # type: ignore[no-untyped-def]
                                                             fake: FakeAnthropicServer) -> None:
    text = words(900)
    fake.replies = [marked_reply(text, tokens=900, chunks=90, seconds=6.0)]
    fake.mark_times.clear()
    open_console(page, stack)
    job_id = submit_generate(page, "Write 900 words")
    page.wait_for_function("() => document.querySelector('#live-text').textContent.length > 500", timeout=30_000)
    page.wait_for_timeout(1200)
    # the tab goes away mid-stream and comes back: reload, open the running job from the list
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function("() => document.querySelector('#recent tbody tr')")
    page.evaluate(OBSERVE)
    assert fake.mark_times.get("c90") is None, "the stream ended before the reconnect"
    opened = page.evaluate("() => Date.now()")
    page.click("#recent tbody tr:first-child button")
    assert page.inner_text("#job-id") == job_id
    result = wait_completed(page)
    page.wait_for_timeout(300)
    seen = page.evaluate("window.__live")
    first_text = next(s for s in seen if s["len"] > 0)
    assert first_text["at"] - opened < 1000, f"text so far shown after {first_text['at'] - opened} ms"
    assert first_text["len"] > 500, "the reopened tab did not start from the text so far"
    assert all(text.startswith(s["text"]) for s in seen), "a duplicate or missing span was shown"
    assert result["text"] == text and page.inner_text("#live-text") == text
    screenshot(page, "live-output-reconnected")


@pytest.fixture(scope="module")
def broadcast_stack(fake: FakeAnthropicServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url, "AI_JOBS_STATUS_BROADCAST": "on"}
    running = start_dev(env, data_dir=tmp_path_factory.mktemp("dev-status-broadcast"), public=True, sweep_interval=2)
    yield running
    running.stop()


def test_status_over_broadcast_mode(page, broadcast_stack: LocalStack) -> None:  # type: ignore[no-untyped-def]
    """AI_JOBS_STATUS_BROADCAST=on: the database trigger sends status on the private
    topic and the console follows it (statusVia "broadcast") with no postgres_changes
    subscription, no polling, and the same reconcile-by-read."""
    frames: list[list[Any]] = []
    requests: list[str] = []

    def on_socket(ws) -> None:  # type: ignore[no-untyped-def]
        ws.on("framereceived", lambda payload: frames.append(json.loads(payload)) if isinstance(payload, str) else None)
        ws.on("framesent", lambda payload: frames.append(["sent", *json.loads(payload)]) if isinstance(payload, str) else None)

    page.on("websocket", on_socket)
    page.on("request", lambda request: requests.append(request.url))
    open_console(page, broadcast_stack)
    assert page.evaluate("window.AI_JOBS_CONFIG.statusVia") == "broadcast"
    page.select_option("#job-type", "example.countdown")
    page.fill("#field-steps", "5")
    page.fill("#field-step_seconds", "0.4")
    started = len(requests)
    page.click("#submit")
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'completed'", timeout=60_000)
    assert page.get_attribute("#mode", "data-mode") == "realtime"
    job_id = page.inner_text("#job-id")
    joins = [f for f in frames if f[0] == "sent" and f[4] == "phx_join" and job_id in f[3]]
    assert joins and all(not f[5]["config"]["postgres_changes"] and f[5]["config"]["private"] for f in joins), joins
    statuses = [f[4]["payload"] for f in frames if f[0] != "sent" and f[3] == "broadcast"
                and f[4].get("event") == "status" and f[4]["payload"].get("id") == job_id]
    assert len(statuses) >= 5 and statuses[-1]["status"] == "completed", statuses
    during = requests[started:]
    assert not [u for u in during if f"/api/jobs/{job_id}" in u], "the console polled the API"
    reads = [u for u in during if "/rest/v1/ai_jobs" in u and job_id in u]
    assert len(reads) <= 3, reads  # the first state, the re-read after the join, the terminal state's result
