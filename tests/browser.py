"""A real headless browser for tests: Debian's chromium driven by Playwright's Python client
(no browser download), and screenshots kept where people can find them.

CI sets BLUEPRI_REQUIRE_BROWSER=1: there a missing browser fails the test; on a laptop
without chromium the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("BLUEPRI_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("BLUEPRI_REQUIRE_BROWSER") == "1"


def unavailable(reason: str) -> None:
    if REQUIRE_BROWSER:
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[object]:
    """A launched headless chromium (a Playwright `Browser`), closed afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(
            f"no chromium at {CHROMIUM} (apt-get install chromium, or set BLUEPRI_CHROMIUM)"
        )
    # The sandbox refuses to run as root (CI containers); elsewhere keep it.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


def save_screenshot(tmp_path: Path, name: str, page) -> Path:
    """Screenshot into the test's tmp dir, copied to a stable folder, both printed."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    keep = Path(
        os.environ.get("BLUEPRI_ARTIFACTS", Path(tempfile.gettempdir()) / "bluepri-artifacts")
    )
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, keep / name)
    print(f"screenshot: {shot}\nscreenshot: {keep / name}")
    return shot


def load_all_images(page, timeout_ms: int = 60_000) -> dict[str, int]:
    """Load every image of the open page (lazy ones too: made eager) and count them:
    {"all": <img> elements, "ok": those that loaded (naturalWidth > 0)}."""
    page.evaluate("document.querySelectorAll('img').forEach((i) => i.loading = 'eager')")
    page.wait_for_function(
        "Array.from(document.images).every((i) => i.complete)", timeout=timeout_ms
    )
    return page.evaluate(
        """() => { const images = Array.from(document.images);
            return {all: images.length,
                    ok: images.filter((i) => i.naturalWidth > 0).length}; }"""
    )
