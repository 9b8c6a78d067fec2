"""The dashboard in a real browser: Debian's chromium, driven by selenium through the
chromedriver of the same build (nothing is downloaded). The screenshot it saves is the one the
README shows (test-output/dashboard/dashboard.png, copied to docs/dashboard.png)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from systest import fail_loudly, make_blocker, need_programs, wait_until

from taskmill import Cluster, MapTask

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server", "--disable-dev-shm-usage", "--window-size=1440,1800",
]


def pause(seconds):
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture
def browser(tmp_path):
    need_programs("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_dashboard_shows_a_live_cluster(browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The page redraws what changed once a second: an element found a moment ago may be gone,
    # so texts are read in one script call and a click on a replaced element is tried again.
    wait = WebDriverWait(browser, 60, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException])

    def text_of(css: str) -> str:
        return browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css)

    def click(css: str) -> bool:
        found = browser.find_elements(By.CSS_SELECTOR, css)
        if found:
            found[0].click()
        return bool(found)

    props = [{"role": "cpu"}, {"role": "gpu", "gpu": 1}]
    with Cluster(2, heartbeat=0.5, engine_properties=props) as cluster, cluster.client() as tc:
        browser.get(cluster.dashboard_url)
        assert "token=" not in browser.current_url  # kept in a cookie, out of the address bar
        wait.until(lambda d: text_of("#engine-count") == "2")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".engine-tile")) == 2
        browser.execute_script("window.loadedOnce = true")  # gone if the page reloads

        # Completed tasks appear in the task stream's list without a reload.
        tids = tc.mapper(block=False).map(pause, [0.05, 0.1, 0.2, 0.15, 0.08, 0.25, 0.12, 0.3])
        tc.barrier(tids)
        wait.until(lambda d: text_of(f'#recent-tasks tr[data-tid="{tids[-1]}"][data-status="ok"]'))
        wait.until(lambda d: text_of("#finished") == str(len(tids)))

        # A failed task: in the latest failures; a click shows its traceback.
        failed = tc.run(MapTask(fail_loudly, ("the dashboard shows this",)))
        tc.barrier(failed)
        failure_row = f'#failures tr[data-tid="{failed}"]'
        wait.until(lambda d: "ValueError" in text_of(failure_row))
        wait.until(lambda d: click(failure_row))
        wait.until(lambda d: "fail_loudly" in text_of("#task-detail pre.traceback"))
        traceback = text_of("#task-detail pre.traceback")
        assert "ValueError: the dashboard shows this" in traceback
        assert text_of("#task-detail .detail-title span") == f"Task {failed}"
        story = text_of("#task-detail table.story")  # the scheduler's moves of it
        assert "new → ready" in story and "running → finished" in story, story

        # A running task: its engine's tile turns busy and names it.
        started, release = tmp_path / "started", tmp_path / "release"
        running = tc.run(MapTask(make_blocker(), (str(started), str(release), "done")))
        wait_until(started.exists, "the long task to start")
        wait.until(lambda d: f"running task {running}" in text_of('.engine-tile[data-state="busy"]'))
        wait.until(lambda d: text_of(f'#recent-tasks tr[data-tid="{running}"][data-status="running"]'))

        wait.until(lambda d: click('#stream-window button[data-seconds="15"]'))
        wait.until(lambda d: text_of("#stream-span") == "15s")
        height = browser.execute_script(
            "return Math.ceil(document.body.getBoundingClientRect().height)"
            " + window.outerHeight - window.innerHeight")
        browser.set_window_size(1440, height)  # the whole page in one picture
        OUTPUT.mkdir(parents=True, exist_ok=True)
        shot = OUTPUT / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        release.touch()
        assert tc.get_task_result(running, block=True) == "done"
        wait.until(lambda d: text_of("#finished") == str(len(tids) + 2))

        assert browser.execute_script("return window.loadedOnce === true")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
