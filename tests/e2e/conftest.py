"""The browser of the e2e tests that drive a page (test_docs, test_trace_viewer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")  # Debian's packages chromium and chromium-driver
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium that resolves no host at all (as if offline); the servers of the pages
    are on 127.0.0.1, which needs no resolving. One per test module."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing}: install Debian's chromium and chromium-driver (make test does)"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-dev-shm-usage",
        "--window-size=1280,2400",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_SECONDS)
    driver.set_script_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()
