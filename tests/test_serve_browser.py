"""The dashboard in a real headless Chromium (selenium with Debian's chromium and chromium-driver):
the token becomes a cookie, the charts are drawn (uPlot canvases with ink on them), the tables show
the store's numbers, two runs compare side by side, and "halt" on a running paper daemon's page
halts it (the page, the store's controls and the daemon itself) before "stop" stops it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the dashboard needs fastapi and uvicorn (make setup installs them)")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (the dev extra)")

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from engine.serve.app import create_app  # noqa: E402
from tests.serve_helpers import ROOT, TOKEN, add_signal_rows, record_backtest, served  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium / chromedriver: `apt-get install -y chromium chromium-driver` (.ci/run does it)")

INK = """const c = arguments[0].querySelector('canvas'); if (!c || !c.width) return 0;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n;"""


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, predicate, timeout: float = 30.0, what: str = ""):
    """``predicate`` true within ``timeout``; an element replaced by the page's refresh between its
    look-up and its read is looked up again on the next poll."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: predicate(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what or predicate}") from None


def loaded(driver, at_least: int = 1) -> None:
    wait(driver, lambda d: int(d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") or 0) >= at_least,
         what="the page to load its data")


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    db = tmp_path_factory.mktemp("browser") / "store.db"
    url = f"sqlite:///{db}"
    a = record_backtest(url)
    b = record_backtest(url, "--set", "strategies.sma_cross.fast=5")
    add_signal_rows(url, a["run_id"])
    app = create_app(url, TOKEN)
    with served(app) as server:
        yield server.url, a, b


def test_the_run_page_draws_its_charts_and_shows_the_recorded_numbers(browser, two_runs):
    base, a, b = two_runs
    browser.get(f"{base}/?token={TOKEN}")
    assert browser.current_url == f"{base}/"  # the token went into a cookie and out of the address
    loaded(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    assert [r.get_attribute("data-run-id") for r in rows] == [b["run_id"], a["run_id"]]
    browser.find_element(By.LINK_TEXT, a["run_id"]).click()
    wait(browser, lambda d: d.current_url.endswith(f"/runs/{a['run_id']}"), what="the run page")
    loaded(browser)
    for chart in ("chart-equity", "chart-drawdown", "chart-price", "chart-signals"):
        element = browser.find_element(By.CSS_SELECTOR, f"#{chart} .uplot")
        assert browser.execute_script(INK, element) > 500, f"{chart} drew nothing"
    assert text(browser, '#summary td[data-key="final_equity"]') == f"{a['final_equity']:,.2f}"
    assert text(browser, '#summary td[data-key="counts"]') == f"{a['orders']} / {a['fills']} / {a['rejected_orders']}"
    assert text(browser, '#summary td[data-key="fees"]') == f"{a['fees']:,.2f}"
    assert browser.find_element(By.ID, "fills-count").get_attribute("data-total") == str(a["fills"])
    assert browser.find_element(By.ID, "orders-count").get_attribute("data-total") == str(a["orders"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#fills tbody tr")) == 50
    costs = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")[1].text
             for r in browser.find_elements(By.CSS_SELECTOR, "#costs tbody tr")}
    assert costs["fees"] == f"{a['fees']:,.2f}" and costs["slippage"] == f"{a['slippage']:,.2f}"
    assert text(browser, '#signal-summary td[data-key="signals"]') == "30"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#signal-rows tbody tr")) == 20
    assert browser.find_element(By.ID, "daemon").get_attribute("hidden") is not None  # a backtest: no controls
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-refreshing") == "no"
    assert console_errors(browser) == []


def test_two_runs_side_by_side(browser, two_runs):
    base, a, b = two_runs
    browser.get(f"{base}/?token={TOKEN}")
    loaded(browser)
    for run in (a, b):
        browser.find_element(By.CSS_SELECTOR, f'#runs input[value="{run["run_id"]}"]').click()
    browser.find_element(By.ID, "compare").click()
    wait(browser, lambda d: "/compare?" in d.current_url, what="the comparison page")
    loaded(browser)
    assert a["run_id"] in text(browser, "#head-a") + text(browser, "#head-b")
    for chart in ("chart-equity-a", "chart-equity-b", "chart-drawdown-a", "chart-drawdown-b"):
        assert browser.execute_script(INK, browser.find_element(By.CSS_SELECTOR, f"#{chart} .uplot")) > 500, chart
    rows = {r.find_elements(By.TAG_NAME, "td")[0].text: [c.text for c in r.find_elements(By.TAG_NAME, "td")[1:]]
            for r in browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")}
    first = a if a["run_id"] in text(browser, "#head-a") else b
    second = b if first is a else a
    assert rows["final equity"] == [f"{first['final_equity']:,.2f}", f"{second['final_equity']:,.2f}"]
    assert console_errors(browser) == []


@pytest.mark.slow
def test_halt_on_the_page_halts_a_running_paper_daemon_and_stop_stops_it(browser, tmp_path_factory):
    from tests.test_paper import first_hours

    bars = first_hours(tmp_path_factory, 1500)
    db = tmp_path_factory.mktemp("halt") / "store.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "engine", "paper", "start", "--replay", str(bars), "--strategy", "sma_cross", "--speed",
         "20", "--set", f'store.url="sqlite:///{db}"', "--set", 'logging.file=""'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def row(sql: str):
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                return conn.execute(sql).fetchone()
        except sqlite3.OperationalError:  # not created yet
            return None

    try:
        deadline = time.monotonic() + 60
        while (row("select state from daemons") or [None])[0] != "running":
            assert daemon.poll() is None and time.monotonic() < deadline, "the paper daemon did not start"
            time.sleep(0.1)
        (run_id,) = row("select run_id from runs")
        with served(create_app(f"sqlite:///{db}", TOKEN)) as server:
            browser.get(f"{server.url}/runs/{run_id}?token={TOKEN}")
            loaded(browser)
            assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-refreshing") == "yes"
            assert "running" in text(browser, '#health td[data-key="state"]')
            bars_before = int(row("select bars from runs")[0])
            loaded(browser, 2)  # it refreshes itself while the daemon runs
            assert int(row("select bars from runs")[0]) > bars_before

            reason = browser.find_element(By.ID, "halt-reason")
            reason.clear()
            reason.send_keys("halted in the browser test")
            browser.find_element(By.ID, "halt").click()
            wait(browser, lambda d: "halted" in d.find_element(By.ID, "control-result").text, what="the halt answer")
            assert row("select halted, halt_reason, flatten_requested from daemons") == (
                1, "halted in the browser test", 0)
            wait(browser, lambda d: "halted: halted in the browser test" in
                 d.find_element(By.CSS_SELECTOR, '#health td[data-key="state"]').text, what="the page to show the halt")
            deadline = time.monotonic() + 30  # the daemon obeys: it records its state as halted
            while row("select state from daemons")[0] != "halted":
                assert time.monotonic() < deadline, row("select state, note from daemons")
                time.sleep(0.1)
            assert browser.find_element(By.ID, "halt").get_attribute("disabled") is not None
            assert browser.find_element(By.ID, "resume").get_attribute("disabled") is None

            browser.find_element(By.ID, "stop").click()
            browser.switch_to.alert.accept()  # "Stop run ...?"
            wait(browser, lambda d: "stop requested" in d.find_element(By.ID, "control-result").text,
                 what="the stop answer")
            out, err = daemon.communicate(timeout=60)
            assert daemon.returncode == 0, err
            assert f"run {run_id} stopped" in err
            wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '#health td[data-key="state"]').text
                 .startswith("stopped"), timeout=30, what="the page to show the stop")
            assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-refreshing") == "no"
            assert row("select state, stop_requested from daemons") == ("stopped", 0)
            assert console_errors(browser) == []
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    summary = json.loads(out) if out.strip() else None
    assert summary is None  # stopped before the end of the replay: no final summary
