"""The system's headless Chromium under Selenium (Debian's ``chromium`` + ``chromium-driver``),
for the page's tests and benchmark. Nothing downloads a browser: Selenium Manager stays
offline and is handed the system's driver."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("RECBRIDGE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RECBRIDGE_CHROMEDRIVER", "/usr/bin/chromedriver"))
# Flags that keep Chromium from reaching out (updates, sync, QUIC) and working in a container.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,1000",
)


def missing_browser() -> list[str]:
    """What the browser needs and is not here (empty: ready)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev extra)")
    return missing


def open_chromium() -> Any:
    """A WebDriver on the headless system Chromium; quit it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver
