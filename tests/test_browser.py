"""End to end in a real browser: `streamlit run app.py` (with its own worker processes) on
127.0.0.1 and a temporary ASYMVIZ_HOME, driven by Debian's Chromium through Playwright.

Sign in, start a run on digits and watch its loss curve gain points, stop it, find it `stopped`
on the Runs page; in a new tab sign in again, start one on moons and see its decision boundary. Screenshots go to artifacts/.
When ASYMVIZ_REQUIRE_BROWSER=1 (as in .ci/run) a missing Chromium or Playwright fails the tests;
otherwise they skip with the reason.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from helpers import free_port, stop_session

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 90_000  # generous: the machine may be busy; no timing is asserted

# JavaScript: the last x of each trace of the loss chart
# (_fullData holds the decoded arrays: plotly ships NumPy arrays base64-encoded).
PLOT_LAST_X = """() => [...document.querySelectorAll('.st-key-train_fig_loss .js-plotly-plot')].map(
    d => (d._fullData || []).map(t => (t.x && t.x.length ? Number(t.x[t.x.length - 1]) : 0)))"""
TRACE_TYPES = """() => [...document.querySelectorAll('.js-plotly-plot')].map(d => (d._fullData || []).map(t => t.type))"""
PROGRESS = "() => [...document.querySelectorAll('[data-testid=stProgress]')].map(e => e.innerText).join(' ')"
# The sidebar's page list: (label, path) of each link, and how many of Streamlit's own lists show.
NAVIGATION = """() => [...document.querySelectorAll('.st-key-asymviz_nav a')].map(
    a => [(a.querySelector('[data-testid=stMarkdownContainer]') || a).innerText.trim(), new URL(a.href).pathname])"""
OWN_NAVIGATION = "() => document.querySelectorAll('[data-testid=stSidebarNav]').length"
TABLE_ROWS = """() => [...document.querySelectorAll('[data-testid=stDataFrame] tbody tr')].map(
    r => [...r.querySelectorAll('td')].map(c => c.textContent))"""


def _require_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if not os.path.exists(CHROMIUM):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = "the browser tests need " + " and ".join(missing)
        if os.environ.get("ASYMVIZ_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (ASYMVIZ_REQUIRE_BROWSER=1)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server():
    """The dashboard as a user runs it; killed (with its workers) when the module ends. Its
    ASYMVIZ_HOME comes from tempfile (a concurrent pytest may prune tmp_path folders)."""
    _require_browser()
    home = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-browser-"))
    port = free_port()
    env = {**os.environ, "ASYMVIZ_HOME": str(home), "ASYMVIZ_WORKERS": "2"}
    env.pop("ASYMVIZ_EXTERNAL_WORKERS", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("streamlit did not come up: " + (home / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        yield url
    finally:
        stop_session(proc)  # the server and its worker processes
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)  # the server's log, with its workers', for a failed CI run
        shutil.copy(home / "server.log", ARTIFACTS / "browser-server.log")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 2000})
    context.set_default_timeout(WAIT_MS)
    p = context.new_page()
    yield p
    context.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(5, 1990)  # no tooltip in the picture
    page.screenshot(path=str(ARTIFACTS / name))


def _loss_last_step(page) -> float:
    """The step of the loss curve's last point (curves are downsampled to a bounded number of
    points, so a growing run shows as a curve that reaches further, not as more points)."""
    charts = page.evaluate(PLOT_LAST_X)
    return charts[0][0] if charts and charts[0] else 0


def _wait_for(page, predicate, what: str, timeout_s: float = WAIT_MS / 1000):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(250)
    _shot(page, f"failed-{what.replace(' ', '-')}.png")
    pytest.fail(f"timed out waiting for {what}")


def _sign_in(page, name="ana", pin="2468"):
    """Sign in from the sidebar, as a student does (the first time, this claims the name)."""
    page.get_by_role("textbox", name="Your name").fill(name)
    page.get_by_role("textbox", name="PIN", exact=True).fill(pin)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {name}").wait_for()


def test_navigation_starts_with_home_also_when_a_page_is_opened_first(server, page):
    """The sidebar lists Home (not "app", the entry script's name), then the pages at the paths
    that links use. First in this module, so the server's first session opens a page, not Home."""
    page.goto(server + "/Runs")
    page.get_by_role("heading", name="Runs").wait_for()
    nav = _wait_for(page, lambda: page.evaluate(NAVIGATION), "the navigation")
    assert [label for label, _ in nav] == ["Home", "Train", "Runs", "Backward timing", "Experiment", "Instructor"]
    assert [path for _, path in nav[1:]] == ["/Train", "/Runs", "/Backward_timing", "/Experiment", "/Instructor"]
    assert page.evaluate(OWN_NAVIGATION) == 0
    _shot(page, "navigation.png")
    page.locator(".st-key-asymviz_nav a").first.click()
    page.get_by_role("heading", name="asymviz: train a network with a sparse backward pass").wait_for()
    assert page.url.rstrip("/") == server.rstrip("/")


def test_digits_run_trains_live_stops_and_shows_up_stopped(server, page):
    page.goto(server + "/Train?dataset=digits&hidden=1024,1024&epochs=400&seed=7")  # long enough to stop
    _sign_in(page)
    start = page.get_by_role("button", name="Start")
    start.wait_for()
    assert "seed=7" in page.url and "epochs=400" in page.url  # the config lives in the URL
    start.click()
    page.wait_for_url("**run=*")
    run_id = page.url.split("run=")[1].split("&")[0]
    first = _wait_for(page, lambda: _loss_last_step(page), "the first plotted point")
    _wait_for(page, lambda: _loss_last_step(page) > first, "the curve to advance")
    _shot(page, "train-digits-live.png")

    page.get_by_role("button", name="Stop").click()
    _wait_for(page, lambda: "Stopped" in page.evaluate(PROGRESS), "the run to stop")
    _shot(page, "train-digits-stopped.png")

    page.get_by_role("link", name="Runs").click()
    page.get_by_role("heading", name="Runs").wait_for()
    rows = _wait_for(page, lambda: page.evaluate(TABLE_ROWS), "the runs table")
    status = {row[0].lstrip("#"): row[1] for row in rows if len(row) > 1}
    _shot(page, "runs-stopped.png")
    assert status.get(run_id) == "stopped", rows


def test_moons_run_draws_a_decision_boundary(server, page):
    page.goto(server + "/Train?dataset=moons&hidden=32,32&epochs=30&batch_size=32&lr=0.01&sparsity=0.5&pace=0")  # full speed
    _sign_in(page)  # a new tab: the PIN again
    page.get_by_role("button", name="Start").click()
    page.get_by_text("Decision boundary after epoch").wait_for()
    _wait_for(page, lambda: any("image" in types for types in page.evaluate(TRACE_TYPES)), "the boundary image")
    _wait_for(page, lambda: "Finished" in page.evaluate(PROGRESS), "the run to finish")
    page.get_by_text("Decision boundary after epoch 30").wait_for()
    _shot(page, "train-moons-boundary.png")


def test_backward_timing_measures_in_the_background(server, page):
    page.goto(server + "/Backward_timing")
    page.get_by_role("heading", name="Backward timing").wait_for()
    for label, value in (("Layer width", "256"), ("Batch size", "32"), ("Repeats", "3")):
        field = page.get_by_role("spinbutton", name=label)
        field.fill(value)
        field.press("Enter")
        page.wait_for_timeout(600)
    sparsities = page.get_by_role("textbox", name="Sparsities")
    sparsities.fill("0, 0.9")
    sparsities.press("Enter")
    page.wait_for_timeout(600)
    page.get_by_role("button", name="Measure").click()
    _wait_for(page, lambda: any("scatter" in types for types in page.evaluate(TRACE_TYPES)), "the timing chart")
    page.get_by_text("Measured on this machine").wait_for()
    rows = _wait_for(page, lambda: page.evaluate(TABLE_ROWS), "the timing table")
    assert len(rows) == 2
    _shot(page, "backward-timing.png")
