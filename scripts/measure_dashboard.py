"""Measure the dashboard in a real browser: Start -> first plotted point, and the cost of the
live view's refresh while a run trains. Prints a table.

    .venv/bin/python scripts/measure_dashboard.py                  # own server, temp ASYMVIZ_HOME
    .venv/bin/python scripts/measure_dashboard.py --repeats 10 --watch 20
    .venv/bin/python scripts/measure_dashboard.py --url http://127.0.0.1:8501   # a running server

Start -> first point: the time from the click on Start (performance.now() in the page) until
the loss chart holds at least one point, for a default digits run. The first run after a
server start is reported apart: its worker process still has to import and load the data.
Refresh cost, over --watch seconds of a run training: refreshes seen by the browser, bytes the
server sends per refresh (websocket frames), server CPU per refresh (the Streamlit process's
CPU time with the page open, minus the same window with no page open; own server only) and the
browser main thread's long tasks. Needs Debian's Chromium (/usr/bin/chromium) and Playwright.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: a free port, health, stopping a session
from helpers import free_port, healthy, stop_session, until  # noqa: E402
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
CONFIG = "dataset=digits&hidden=256,256&strategy=neuron&sparsity=0.9"
OWNER, PIN = f"measure-{secrets.token_hex(3)}", secrets.token_hex(4)  # a fresh name, also on a --url dashboard

WAIT_FIRST_POINT = """async (timeout) => {
    const start = performance.now();
    while (performance.now() - start < timeout) {
        const d = document.querySelector('.st-key-train_fig_loss .js-plotly-plot');  // the loss chart; _fullData: decoded arrays
        const t = d && d._fullData && d._fullData[0];
        if (t && t.x && t.x.length > 0) return performance.now();
        await new Promise(r => setTimeout(r, 10));
    }
    return -1;
}"""
WATCH = """async (ms) => {
    const seen = []; let last = null; let longTasks = 0;
    const obs = new PerformanceObserver(list => { for (const e of list.getEntries()) longTasks += e.duration; });
    try { obs.observe({entryTypes: ['longtask']}); } catch (e) {}
    const start = performance.now();
    while (performance.now() - start < ms) {
        const d = document.querySelector('.st-key-train_fig_loss .js-plotly-plot');
        const t = d && d._fullData && d._fullData[0];
        const n = t && t.x && t.x.length ? t.x[t.x.length - 1] : null;
        if (n !== last) { seen.push(performance.now()); last = n; }
        await new Promise(r => setTimeout(r, 20));
    }
    obs.disconnect();
    return {updates: seen, longTasks};
}"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (not its children)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(home: str):
    port = free_port()
    env = {**os.environ, "ASYMVIZ_HOME": home}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        until(lambda: healthy(port), 90, "the streamlit server to start", every=0.3)
    except AssertionError:
        stop_session(proc)
        raise SystemExit("The streamlit server did not start within 90 s.") from None
    return proc, f"http://127.0.0.1:{port}"


def sign_in(page) -> None:
    """Sign in from the sidebar, as every page load (a new session) needs; claims OWNER the first time."""
    page.get_by_role("textbox", name="Your name").fill(OWNER)
    page.get_by_role("textbox", name="PIN", exact=True).fill(PIN)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {OWNER}").wait_for()


def start_and_time(page, url: str, seed: int, epochs: int) -> float:
    """Seconds from clicking Start to the first point on the loss chart."""
    page.goto(f"{url}/Train?{CONFIG}&epochs={epochs}&seed={seed}")
    sign_in(page)
    button = page.get_by_role("button", name="Start")
    button.wait_for()
    page.wait_for_timeout(500)  # let the page settle
    t0 = page.evaluate("performance.now()")
    button.click()
    t1 = page.evaluate(WAIT_FIRST_POINT, 60_000)
    if t1 < 0:
        page.screenshot(path=str(ROOT / "artifacts" / "measure-failed.png"))
        raise SystemExit(f"No point was plotted within 60 s of clicking Start ({page.url}).")
    print(f"  seed {seed}: first point after {(t1 - t0) / 1000:.2f} s", file=sys.stderr)
    return (t1 - t0) / 1000


def stop_run(page) -> None:
    stop = page.get_by_role("button", name="Stop")
    if stop.count():
        stop.click()
        page.wait_for_timeout(1500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running dashboard (default: start one on a free port)")
    parser.add_argument("--repeats", type=int, default=5, help="timed Starts after the cold one (default 5)")
    parser.add_argument("--watch", type=float, default=10.0, help="seconds of refresh measurement (default 10)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    proc, home = None, None
    url = args.url
    if url is None:
        home = tempfile.mkdtemp(prefix="asymviz-measure-")
        proc, url = start_server(home)
    rows: list[tuple[str, str]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1600})
            page.set_default_timeout(90_000)
            cold = start_and_time(page, url, seed=100, epochs=300)
            stop_run(page)
            warm = []
            for i in range(args.repeats):
                warm.append(start_and_time(page, url, seed=101 + i, epochs=300))
                stop_run(page)
            rows.append(("Start -> first point, first run after server start", f"{cold:.2f} s"))
            rows.append((f"Start -> first point, median of {len(warm)}", f"{statistics.median(warm):.2f} s"))
            rows.append(("Start -> first point, min / max", f"{min(warm):.2f} / {max(warm):.2f} s"))

            # refresh cost: a long run trains while the page watches it
            frames = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(
                (time.monotonic(), len(payload)))))
            start_and_time(page, url, seed=200, epochs=500)
            run_url = page.url
            page.goto("about:blank")
            if proc is not None:  # server CPU with no page open, over the same window
                c0 = cpu_seconds(proc.pid)
                time.sleep(args.watch)
                idle_cpu = cpu_seconds(proc.pid) - c0
            page.goto(run_url)
            page.get_by_text("Running:").wait_for()
            page.wait_for_timeout(2000)
            frames.clear()
            c0 = cpu_seconds(proc.pid) if proc is not None else None
            t0 = time.monotonic()
            watched = page.evaluate(WATCH, args.watch * 1000)
            elapsed = time.monotonic() - t0
            busy_cpu = cpu_seconds(proc.pid) - c0 if proc is not None else None
            sign_in(page)  # a new tab is a new session: sign in again to stop the run
            stop_run(page)
            browser.close()
        updates = watched["updates"]
        n = max(1, len(updates) - 1)
        period = (updates[-1] - updates[0]) / 1000 / n if len(updates) > 1 else float("nan")
        received = sum(size for t, size in frames if t0 <= t <= t0 + elapsed)
        rows.append(("Refreshes seen by the browser", f"{len(updates)} in {elapsed:.1f} s (every {period:.2f} s)"))
        rows.append(("Bytes sent per refresh", f"{received / n / 1024:.1f} KiB ({received / elapsed / 1024:.1f} KiB/s)"))
        if busy_cpu is not None:
            per = (busy_cpu - idle_cpu) / n
            rows.append(("Server CPU per refresh (page open minus closed)", f"{per * 1000:.0f} ms"))
            rows.append(("Server CPU share while watching", f"{busy_cpu / elapsed:.0%} of one core "
                         f"(closed: {idle_cpu / args.watch:.0%})"))
        rows.append(("Browser long tasks (>50 ms) per second", f"{watched['longTasks'] / elapsed:.0f} ms"))
    finally:
        if proc is not None:
            stop_session(proc)
            shutil.rmtree(home, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(f"\nmachine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
          f"refresh interval ASYMVIZ_REFRESH_S={os.environ.get('ASYMVIZ_REFRESH_S', '1.0')}")


if __name__ == "__main__":
    main()
