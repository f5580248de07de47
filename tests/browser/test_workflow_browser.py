"""A parent job's children counts, live in the browser: useAiJob in a real React
app (bundled with esbuild) in headless Chromium against `ai-jobs dev`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from bench._local_stack import LocalStack, start_dev
from tests.browser.conftest import bundle_jsx, screenshot

pytestmark = pytest.mark.browser
PAGE = '<!doctype html><html lang="en"><body><div id="root"></div><script type="module" src="/children-app.js"></script></body></html>'


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    return bundle_jsx("children_app.jsx", tmp_path_factory.mktemp("children") / "children-app.js")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = start_dev(data_dir=tmp_path_factory.mktemp("dev"))
    yield running
    running.stop()


def test_use_ai_job_shows_a_parents_children_counts_live(page, stack: LocalStack, bundle: str) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.url, headers={"authorization": f"Bearer {stack.token}"}) as api:
        job = api.post("/api/jobs", json={"type": "example.fan_out",
                                          "input": {"children": 6, "steps": 3, "step_seconds": 0.4}}).json()
    page.route(f"{stack.url}/children-test.html", lambda route: route.fulfill(body=PAGE, content_type="text/html"))
    page.route(f"{stack.url}/children-app.js", lambda route: route.fulfill(body=bundle, content_type="text/javascript"))
    page.goto(f"{stack.url}/children-test.html#job={job['id']}&token={stack.token}")
    page.wait_for_function("window.appReady === true")
    page.wait_for_function("document.querySelector('#children').textContent.endsWith('of 6 done')", timeout=30_000)
    page.wait_for_function("document.querySelector('#status').textContent === 'completed'", timeout=60_000)
    screenshot(page, "workflow-children-completed")
    assert page.inner_text("#children") == "6 of 6 done"
    states = page.evaluate("window.childStates")
    seen = [s["children"]["done"] for s in states if s["children"]]
    assert seen[-1] == 6 and any(0 < done < 6 for done in seen), seen  # counts arrived while children ran
    waiting = [s for s in states if s["status"] == "pending" and s["children"]]
    assert waiting, "the parent was seen waiting (pending) with its children counts"


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = start_dev(data_dir=tmp_path_factory.mktemp("dev-console"), public=True, sweep_interval=2)
    assert running.demo_url, "ai-jobs dev printed no demo URL"
    yield running
    running.stop()


def test_demo_console_shows_a_parents_progress_and_children_live(page, console_stack: LocalStack) -> None:  # type: ignore[no-untyped-def]
    page.goto(console_stack.demo_url)
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#job-type", "example.fan_out")
    page.fill("#field-children", "6")
    page.fill("#field-steps", "3")
    page.fill("#field-step_seconds", "0.4")
    page.click("#submit")
    page.wait_for_selector("#job-view:not([hidden])")
    page.wait_for_function("() => document.querySelector('#mode').dataset.mode === 'realtime'")
    seen: list[tuple[str, int, str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, progress, children = page.evaluate(
            "() => [document.querySelector('#job-status').textContent, document.querySelector('#progress').value,"
            " document.querySelector('#job-children').textContent]")
        seen.append((status, int(progress), children))
        if status == "completed":
            break
        time.sleep(0.05)
    screenshot(page, "demo-fan-out-completed")
    assert seen[-1][0] == "completed", seen[-5:]
    assert page.inner_text("#job-children") == "Child jobs: 6 of 6 done"
    waiting = [(p, c) for s, p, c in seen if s == "pending" and c]
    assert waiting, "the parent was shown waiting with its children count"
    partial = {c for _, c in waiting} - {"Child jobs: 0 of 6 done", "Child jobs: 6 of 6 done"}
    assert partial, f"no count between 0 and 6 was shown live: {sorted({c for _, c in waiting})}"
    assert any(0 < p < 100 for p, _ in waiting), "the aggregated progress bar moved while it waited"
