"""The web view in a real browser: headless Chromium (Debian's ``chromium``) driven by
Selenium through Debian's ``chromium-driver``, against ``statestore serve`` on a real
SQLite store. A missing browser fails these tests (``.ci/run`` installs it), never skips.

The screenshots docs/web.md shows are taken here: with ``STATESTORE_SCREENSHOTS=1`` they
are written to docs/images/, otherwise to a temporary directory (so that a test run
leaves the checkout as it was).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import run_cli
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from web_support import DIFF_RUN, HOSTILE_ENTITY, HOSTILE_RUN, make_store

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
#: A run of the demo job in the store too: the screenshots show a real job's savepoints.
DEMO_RUN = "sensor-demo"
DEMO_SIZE = ("--sensors", "300", "--events", "30000")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``statestore serve`` on a free port of 127.0.0.1; its base URL."""
    url = make_store(tmp_path_factory.mktemp("browser"))
    demo = run_cli("demo", "--url", url, "--run-id", DEMO_RUN, *DEMO_SIZE)
    assert demo.returncode == 0, demo.stderr
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "statestore", "serve", "--url", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"statestore serve did not start: {process.communicate()}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        out, _err = process.communicate(timeout=30)
    assert f"read-only at http://127.0.0.1:{port}/" in out
    assert "only this machine can connect" in out


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.fail(
            f"the browser tests need {', '.join(missing)}: "
            "apt-get install chromium chromium-driver (.ci/run does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("STATESTORE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(exist_ok=True)
        return DOCS_IMAGES
    return tmp_path_factory.mktemp("screenshots")


def screenshot(driver: WebDriver, directory: Path, name: str) -> None:
    path = directory / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def heading(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "h1").text


def test_the_runs_page_shows_every_run_and_markup_as_text(
    browser: WebDriver, server: str, shots: Path
) -> None:
    browser.get(server + "/")
    assert heading(browser) == "Runs"
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#runs a")]
    assert "sensor-fleet" in links
    assert "billing/2024" in links
    assert HOSTILE_RUN in links  # the text itself, not a script that ran
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check
    screenshot(browser, shots, "runs")
    browser.find_element(By.LINK_TEXT, HOSTILE_RUN).click()
    browser.find_element(By.LINK_TEXT, "60000").click()
    assert HOSTILE_ENTITY in browser.find_element(By.ID, "entities").text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_click_from_a_run_to_a_savepoint_and_a_diff(
    browser: WebDriver, server: str, shots: Path
) -> None:
    browser.get(server + "/")
    browser.find_element(By.LINK_TEXT, "sensor-fleet").click()
    assert heading(browser) == "Run sensor-fleet"
    bars = browser.find_elements(By.CSS_SELECTOR, "svg rect.bar")
    assert len(bars) == 8
    assert all(bar.size["width"] > 0 for bar in bars)
    browser.find_element(By.LINK_TEXT, "240000").click()
    assert heading(browser) == "Savepoint 240000 of run sensor-fleet"
    entities = browser.find_elements(By.CSS_SELECTOR, "#entities tbody tr")
    assert len(entities) == 4
    browser.back()
    browser.find_elements(By.LINK_TEXT, "diff with previous")[0].click()
    assert heading(browser) == "Diff of run sensor-fleet: 180000 to 240000"
    assert "4 changed" in browser.find_element(By.TAG_NAME, "main").text


def test_the_demo_run_its_latest_savepoint_and_latest_change(
    browser: WebDriver, server: str, shots: Path
) -> None:
    browser.get(server + "/")
    browser.find_element(By.LINK_TEXT, DEMO_RUN).click()
    assert heading(browser) == f"Run {DEMO_RUN}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg rect.bar")) == 2 * len(rows)
    # The demo job took the run's writer token when it started, seconds ago.
    writer = browser.find_element(By.ID, "writer").text
    assert re.match(r"Writer: token \d+, taken [-0-9 :.]+ UTC, (\d+ s|1 min) ago\.", writer), writer
    screenshot(browser, shots, "run")
    rows[0].find_element(By.TAG_NAME, "a").click()
    assert heading(browser).startswith("Savepoint ")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#entities tbody tr")) == 50
    assert "page 1 of 6 (300 rows)" in browser.find_element(By.CLASS_NAME, "pager").text
    screenshot(browser, shots, "savepoint")
    browser.back()
    browser.find_elements(By.LINK_TEXT, "diff with previous")[0].click()
    assert heading(browser).startswith(f"Diff of run {DEMO_RUN}")
    screenshot(browser, shots, "diff")


def test_the_diff_form_compares_the_chosen_savepoints(browser: WebDriver, server: str) -> None:
    browser.get(server + "/")
    browser.find_element(By.LINK_TEXT, DIFF_RUN).click()
    Select(browser.find_element(By.NAME, "from")).select_by_value("60000")
    Select(browser.find_element(By.NAME, "to")).select_by_value("120000")
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "1 added, 1 removed, 1 changed, 1 unchanged" in text
    kinds = [row.find_element(By.TAG_NAME, "td").text for row in
             browser.find_elements(By.CSS_SELECTOR, "#diff tbody tr")]  # fmt: skip
    assert kinds == ["changed", "added", "removed"]


def test_verify_from_the_runs_page(browser: WebDriver, server: str, shots: Path) -> None:
    browser.get(server + "/")
    browser.find_element(By.LINK_TEXT, "Verify every run").click()
    assert heading(browser) == "Verify the store"
    assert "Intact" in browser.find_element(By.CLASS_NAME, "ok").text
    screenshot(browser, shots, "verify")
    browser.find_element(By.LINK_TEXT, "statestore").click()
    health = browser.find_elements(By.CSS_SELECTOR, "#runs td:last-child")
    assert {cell.text for cell in health} == {"intact"}
