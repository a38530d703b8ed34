"""Headless Chromium for browser tests: Debian's ``chromium`` driven by Selenium and ``chromedriver``.

Never downloads a browser: the binary and driver paths are fixed, Selenium Manager is kept offline.
Each session gets a fresh profile directory, and the launch flags switch off everything that
would phone home (component updates, sync, background networking, QUIC). When Chromium, its
driver or the ``selenium`` package is missing, browser tests skip locally and fail in CI
(``require_or_skip``).

* ``chromium``: a session-scoped WebDriver (window 1280x1000).
* ``artifact_dir``: ``test-artifacts/<test module>/`` for screenshots (kept after the run; gitignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_or_skip

__all__ = ["CHROMEDRIVER", "CHROMIUM", "CHROMIUM_FLAGS", "artifact_dir", "chromium"]

CHROMIUM = os.environ.get("MVSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MVSYNC_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require_or_skip("the selenium package is not installed (pip install selenium)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            require_or_skip(f"{path} not found (apt-get install {package})")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    os.environ["SE_AVOID_STATS"] = "true"
    profile = tempfile.mkdtemp(prefix="mvsync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        require_or_skip(f"headless Chromium does not start here: {exc.msg}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def artifact_dir(request: pytest.FixtureRequest) -> Path:
    path = ARTIFACTS / request.node.module.__name__.rsplit(".", 1)[-1]
    path.mkdir(parents=True, exist_ok=True)
    return path
