"""A real headless Chromium from the system's packages (Debian's ``chromium`` and
``chromium-driver``, one version), driven by Selenium, started once per test run
(benchmarks/browser.py: nothing downloads a browser).

Without the browser the page tests skip, unless ``RECBRIDGE_REQUIRE_BROWSER=1`` (``make test``,
which installs it) turns that into a failure. Screenshots go to ``ARTIFACTS`` (kept after the
run; ``RECBRIDGE_ARTIFACTS`` moves it).

Pulled into tests/integration/conftest.py by a star import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import PROJECT_ROOT
from benchmarks.browser import missing_browser, open_chromium

__all__ = ["ARTIFACTS", "browser"]

ARTIFACTS = Path(os.environ.get("RECBRIDGE_ARTIFACTS", PROJECT_ROOT / "test-artifacts")) / "browser"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A Selenium WebDriver on the system's headless Chromium."""
    missing = missing_browser()
    if missing:
        why = f"no browser for the page tests: {', '.join(missing)} missing (make browser)"
        if os.environ.get("RECBRIDGE_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    driver = open_chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
