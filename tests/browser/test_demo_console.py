"""The demo console in headless Chromium against `ai-jobs dev`: submit, watch
the progress bar advance (over the local Realtime edge), complete, cancel and
retry. Screenshots go to test-artifacts/. Realtime-specific checks (no polling,
offline, the sign-in that stays): test_dev_realtime.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bench._local_stack import start_dev
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    stack = start_dev(data_dir=tmp_path_factory.mktemp("dev"), public=True, sweep_interval=2)
    assert stack.demo_url, "ai-jobs dev printed no demo URL"
    yield stack.demo_url, stack.url
    stack.stop()


def open_console(page, demo_url: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(demo_url)
    page.wait_for_selector("body[data-ready=true]")


def progress_values(page, until_status: str, timeout: float = 60) -> list[int]:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # one read of both, so a render between two reads cannot pair them wrongly
        value, status = page.evaluate(
            "() => [document.querySelector('#progress').value, document.querySelector('#job-status').textContent]"
        )
        seen.append(int(value))
        if status == until_status:
            return seen
        time.sleep(0.05)
    pytest.fail(f"status never became {until_status}; last {page.inner_text('#job-status')}, progress {seen[-5:]}")


def fill_countdown(page, steps: int, seconds: float) -> None:  # type: ignore[no-untyped-def]
    page.select_option("#job-type", "example.countdown")
    page.fill("#field-steps", str(steps))
    page.fill("#field-step_seconds", str(seconds))


def test_submit_progress_complete(page, dev_stack) -> None:  # type: ignore[no-untyped-def]
    demo_url, _ = dev_stack
    open_console(page, demo_url)
    assert page.inner_text("#who") == "dev@localhost"  # signed in: who, and "Switch user"
    assert "token=" not in page.url  # the token does not linger in the address bar
    fill_countdown(page, steps=6, seconds=0.5)
    page.click("#submit")
    page.wait_for_selector("#job-view:not([hidden])")
    # `ai-jobs dev` serves its local Supabase edge and supabase-js: updates are pushed
    page.wait_for_function("() => document.querySelector('#mode').dataset.mode === 'realtime'")
    values = progress_values(page, "completed")
    screenshot(page, "demo-completed")
    assert values == sorted(values), f"progress bar went backwards: {values}"
    assert len({v for v in values if 0 < v < 100}) >= 2, f"progress bar did not advance: {sorted(set(values))}"
    assert values[-1] == 100
    assert '"steps_completed": 6' in page.inner_text("#result")
    page.wait_for_selector("#recent tbody tr")
    assert "completed" in page.inner_text("#recent tbody")


def test_cancel_then_retry(page, dev_stack) -> None:  # type: ignore[no-untyped-def]
    demo_url, _ = dev_stack
    open_console(page, demo_url)
    fill_countdown(page, steps=12, seconds=0.4)
    page.click("#submit")
    page.wait_for_function("() => document.querySelector('#progress').value >= 17")
    assert page.is_enabled("#cancel") and not page.is_enabled("#retry")
    page.click("#cancel")
    progress_values(page, "cancelled", timeout=20)
    screenshot(page, "demo-cancelled")
    assert page.is_enabled("#retry") and not page.is_enabled("#cancel")
    page.click("#retry")
    values = progress_values(page, "completed", timeout=60)
    screenshot(page, "demo-retried-completed")
    assert values[-1] == 100 and '"steps_completed": 12' in page.inner_text("#result")


def test_validation_errors_show_at_the_field(page, dev_stack) -> None:  # type: ignore[no-untyped-def]
    demo_url, _ = dev_stack
    open_console(page, demo_url)
    fill_countdown(page, steps=5000, seconds=0.1)
    page.click("#submit")
    page.wait_for_selector("#form-errors:not([hidden])")
    assert "less than or equal to 1000" in page.inner_text("#field-steps-error")
    assert page.get_attribute("#field-steps", "aria-invalid") == "true"
    screenshot(page, "demo-validation-error")


def test_accessibility_basics(page, dev_stack) -> None:  # type: ignore[no-untyped-def]
    demo_url, _ = dev_stack
    open_console(page, demo_url)
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(el => el.offsetParent !== null && !(el.labels && el.labels.length))
              .map(el => el.id || el.name)"""
    )
    assert unlabeled == []
    assert page.get_attribute("#progress-message", "aria-live") == "polite"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
