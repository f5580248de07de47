"""useAiJob in a real React app (React from npm, bundled with esbuild), in
headless Chromium against `ai-jobs dev`; and the TypeScript declarations
checked with tsc against a usage file."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench._local_stack import LocalStack, start_dev
from tests.browser.conftest import bundle_jsx, screenshot

pytestmark = pytest.mark.browser
JS = Path(__file__).resolve().parent / "js"
PAGE = '<!doctype html><html lang="en"><body><div id="root"></div><script type="module" src="/react-app.js"></script></body></html>'


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    return bundle_jsx("react_app.jsx", tmp_path_factory.mktemp("react") / "react-app.js")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = start_dev(data_dir=tmp_path_factory.mktemp("dev"))
    yield running
    running.stop()


def tsc(file: str, *, skip_lib_check: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JS / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict", "--target", "es2022", "--module", "esnext",
         "--moduleResolution", "bundler", "--skipLibCheck", str(skip_lib_check).lower(), file],
        cwd=JS, capture_output=True, text=True,
    )


def test_declarations_type_check() -> None:
    """public/*.d.ts (checked themselves: no skipLibCheck) as an app uses them: the
    AiJobsError constructor, onGone/onResume, the "gone" hook status, cancel() → Job | null."""
    result = tsc("types_check.ts", skip_lib_check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_supabase_clients_fit_the_supabase_option() -> None:
    """createClient(...) from supabase-js 2.119.1, also with the `accessToken` option
    (supabase-js's own .d.ts need @types/node, hence skipLibCheck here only)."""
    result = tsc("supabase_check.ts", skip_lib_check=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_use_ai_job_follows_cancels_and_retries(page, stack: LocalStack, bundle: str) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.url, headers={"authorization": f"Bearer {stack.token}"}) as api:
        job = api.post("/api/jobs", json={"type": "example.countdown", "input": {"steps": 25, "step_seconds": 0.2}}).json()
    page.route(f"{stack.url}/react-test.html", lambda route: route.fulfill(body=PAGE, content_type="text/html"))
    page.route(f"{stack.url}/react-app.js", lambda route: route.fulfill(body=bundle, content_type="text/javascript"))
    page.goto(f"{stack.url}/react-test.html#job={job['id']}&token={stack.token}")
    page.wait_for_function("window.appReady === true")
    page.wait_for_function("document.querySelector('#progress').value >= 12")
    assert page.inner_text("#status") == "running" and page.inner_text("#message").startswith("Step ")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status').textContent === 'cancelled'")
    screenshot(page, "react-hook-cancelled")
    page.click("#retry")
    page.wait_for_function("document.querySelector('#status').textContent === 'completed'", timeout=60_000)
    assert '"steps_completed":25' in page.inner_text("#result")
    states = page.evaluate("window.hookStates")
    statuses = [s["status"] for s in states]
    assert statuses[0] == "loading" and "running" in statuses and statuses[-1] == "completed"
    first_completed = statuses.index("completed")
    assert all(s == "completed" for s in statuses[first_completed:])
    screenshot(page, "react-hook-completed")
