"""Headless Chromium (Debian's, driven by Playwright). In CI a missing browser
is a failure, never a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
JS = Path(__file__).resolve().parent / "js"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--no-first-run",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("AI_JOBS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (make test installs Debian's chromium package)")
        pytest.skip("Chromium not installed (apt-get install chromium); browser tests skipped locally")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture()
def page(browser) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def screenshot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def bundle_jsx(entry: str, out: Path) -> str:
    """Bundle tests/browser/js/<entry> (a React app importing public/ai-jobs-react.js)
    for the browser with esbuild, as an app's build would; the bundle's source."""
    build = subprocess.run(
        [str(JS / "node_modules" / ".bin" / "esbuild"), str(JS / entry), "--bundle", "--format=esm",
         "--jsx=automatic", "--define:process.env.NODE_ENV=\"development\"", f"--outfile={out}"],
        cwd=JS, capture_output=True, text=True, env={"NODE_PATH": str(JS / "node_modules"), "PATH": "/usr/bin:/bin"},
    )
    assert build.returncode == 0, build.stderr
    return out.read_text()
