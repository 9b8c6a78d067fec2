"""The dashboard in a real browser: Debian's chromium, driven by selenium through the
chromedriver of the same build (nothing is downloaded). The screenshot it saves is the one the
README shows (test-output/dashboard/dashboard.png, copied to docs/dashboard.png)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
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


LIGHT_ENGINES = Path(__file__).resolve().parents[2] / "benchmarks" / "many_engines.py"


def light_engines(n: int, connection_file) -> subprocess.Popen:
    """n light engines in one process (benchmarks/many_engines.py): the controller cannot tell
    them from real ones; each answers a task at once."""
    return subprocess.Popen([sys.executable, str(LIGHT_ENGINES), "--serve", str(n),
                             "--connection-file", str(connection_file)], stdin=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(600, method="thread")
def test_a_thousand_engines_show_as_a_grid_of_cells_with_a_card_on_demand(browser, tmp_path):
    """1,000 engines: 989 light ones, 10 more that die, one real engine kept busy. The page shows
    them as a grid of cells with the count of each state; a cell shows its engine's card. The
    page's times per poll are saved beside the screenshot (timings-1000.json): no assertion on
    them, the figures go in the report."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120, poll_frequency=0.2,
                         ignored_exceptions=[StaleElementReferenceException])

    def js(script: str, *args):
        return browser.execute_script(script, *args)

    def page_counts() -> dict[str, int]:  # the legend: {state: count}
        return js("const out = {}; for (const k of document.querySelectorAll("
                  "'#engine-states .key')) out[k.dataset.state] = Number("
                  "k.querySelector('.count').textContent.replace(/,/g, '')); return out")

    def cell_counts() -> dict[str, int]:  # the grid's cells by their state
        return js("const out = {}; for (const c of document.querySelectorAll("
                  "'#engine-cells .cell')) out[c.dataset.state] = (out[c.dataset.state] || 0) + 1;"
                  " return out")

    def stats_counts(tc) -> dict[str, int]:
        return dict(Counter(e["state"] for e in tc.statistics()["engines"]))

    # A slow heartbeat: on a loaded machine a light engine may otherwise miss one and die.
    with Cluster(1, heartbeat=3.0, engine_properties={"real": 1}) as cluster, \
            cluster.client() as tc:
        lights = light_engines(989, cluster.connection_file)
        doomed = light_engines(10, cluster.connection_file)
        try:
            wait_until(lambda: len(tc.engines()) >= 1000, "1,000 engines to register", 300)
            started, release = tmp_path / "started", tmp_path / "release"
            busy_tid = tc.run(MapTask(make_blocker(), (str(started), str(release), "done", 500),
                                      depend={"real": 1}))
            wait_until(started.exists, "the real engine's task to start")
            [real] = [e for e in tc.statistics()["engines"] if e["current_task"] == busy_tid]
            stop_process(doomed, signal.SIGKILL)
            wait_until(lambda: stats_counts(tc).get("dead", 0) >= 10, "10 engines to die", 120)

            browser.get(cluster.dashboard_url)
            wait.until(lambda d: js("return document.querySelectorAll("
                                    "'#engine-cells .cell').length") == 1000)
            assert js("return document.querySelectorAll('.engine-tile').length") == 0
            # The legend counts what the controller says, and the cells agree with the legend.
            wait.until(lambda d: page_counts() == stats_counts(tc))
            counts = page_counts()
            assert sum(counts.values()) == 1000 and counts["busy"] >= 1 and counts["dead"] >= 10
            assert cell_counts() == counts
            assert js("return document.querySelectorAll('#engine-cells .cell.state-dead')"
                      ".length") == counts["dead"]

            # A click on the busy engine's cell keeps its card beside the grid.
            cell = f'#engine-cells .cell[data-engineid="{real["engineid"]}"]'
            browser.find_element(By.CSS_SELECTOR, cell).click()

            def card() -> str:
                return js("return document.querySelector('#engine-card').textContent")

            wait.until(lambda d: f"engine {real['engineid']}" in card())
            assert f"running task {busy_tid}" in card() and f"pid {real['pid']}" in card()
            assert "heartbeat" in card() and "done" in card()
            # Pointing at another cell shows that engine's card while the pointer is there.
            other = next(e for e in tc.statistics()["engines"] if e["state"] == "idle")
            ActionChains(browser).move_to_element(browser.find_element(
                By.CSS_SELECTOR, f'#engine-cells .cell[data-engineid="{other["engineid"]}"]')
            ).perform()
            wait.until(lambda d: f"engine {other['engineid']}" in card())
            assert "waiting for a task" in card()

            # The page's update: fetch + render (+ the frame) of each poll, 1,000 engines.
            wait.until(lambda d: js("return (window.dashboardTimings || []).filter("
                                    "(t) => t.engines === 1000).length") >= 10)
            timings = js("return window.dashboardTimings.filter((t) => t.engines === 1000)")
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / "timings-1000.json").write_text(json.dumps(timings, indent=1))
            assert browser.save_screenshot(str(OUTPUT / "dashboard-1000.png"))

            # Every engine's card, on demand; and back to the grid.
            wait.until(lambda d: js("const b = document.querySelector("
                                    "'#engine-mode button[data-mode=\"cards\"]');"
                                    " if (b) b.click(); return !!b"))
            wait.until(lambda d: js("return document.querySelectorAll('#engines .engine-tile')"
                                    ".length") == 1000)
            assert js("return document.querySelector('#engine-compact').offsetParent") is None
            wait.until(lambda d: js("document.querySelector("
                                    "'#engine-mode button[data-mode=\"grid\"]').click();"
                                    " return !document.querySelector('#engine-compact')"
                                    ".classList.contains('hidden')"))
            release.touch()
            assert tc.get_task_result(busy_tid, block=True) == "done"
        finally:
            stop_process(lights)
            stop_process(doomed)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
