"""Load test of the dashboard: many browser sessions watching live runs, each refresh timed.

    .venv/bin/python scripts/load_test.py --sessions 60 --seconds 120     # the README's table
    .venv/bin/python scripts/load_test.py --sessions 10 --seconds 20 --scenarios own,same --json
    .venv/bin/python scripts/load_test.py --sessions 60 --seconds 120 --scenarios lecture --workers 3

It starts the lab as a class gets it, `python -m asymviz serve` (the dashboard and a pool of
--workers training processes) on 127.0.0.1 with a throw-away ASYMVIZ_HOME, and opens simulated
sessions that speak Streamlit's own WebSocket protocol (the BackMsg / ForwardMsg protobufs
shipped in `streamlit.proto`) the way the browser does: open `/_stcore/stream`, ask for a page
run with the page's name and query string (`Train?run=N`), then send a fragment rerun
(`rerun_script` with the fragment id, `is_auto_rerun`) every time the `auto_rerun` timer the
server asked for fires (on every tick, as Streamlit 1.67's browser does), echoing the message
hashes the browser would hold in its cache. A refresh is a fragment run the session was served
(ServedRuns: a finished run the server relabeled "early for rerun" counts too); its latency runs
from its rerun request to the last delta of the run that served it.

Scenarios (each prints one row):
  views   one session on a live digits run for each detail view (curves with the timing view,
          gradient masks) and on a live moons run (decision boundary); with Chromium available,
          a real tab on the curves too, in --view-repeats windows each after a simulated
          session's: a simulated session must cost the server the same CPU per refresh and per
          second as a real one; then one session on a run that waits in the queue (every worker
          busy); last, one session on the digits run once it has ended.
  own     every session watches its own run, all submitted at once and sized so the queue
          drains within the window: most sessions first watch a queued run, then a running one,
          then an ended one; measured from the first session joining (the class joins over 10 s).
  same    every session watches the same long run while the other workers train others;
          measured once every session has loaded its page.
  lecture as `same`, on a small network on two moons started with its symmetric and dropout
          twins at the toy pace (as a lesson starts it): every page also draws the lecture panel's
          network picture and live boundary, and the twins view (three workers train all three).
          Not in the default set; its row also says how many sessions got those pictures.
Under `own`, `same` and `lecture`, a probe loads Home or Train in a fresh session every 2 s (page load: the
page's HTML, then the session's first run to its last delta).

Columns: sessions; the refresh interval the server gave most sessions last (the lab's, which the
instructor sets); refreshes served (fragment runs that finished) and
the fewest updates (page runs and refreshes) one session got; refresh latency p50 / p95 / max;
the longest a watching session went without an update; the Streamlit server's CPU time (from
/proc, all its threads) per session-second and per refresh, less its CPU with no session open;
its RSS before the sessions opened, at the end, and the most seen; runs finished of runs
submitted (under `same`: trained through the window, then stopped by this script); training
steps/s of all workers, and against the same workers with no session watching (under `own`: as
many of the same runs trained before the class arrived, and a note splits it into the runs that
started while the class was loading its pages and those that started after; under `same`: after
the window, the sessions pause and resume their refreshes in turns of --baseline-seconds, three
each, so the two are measured side by side); page-load p95 (and max); errors (exceptions and
error messages on a page, dropped connections, message-cache misses, failed page loads, and
tracebacks in the server's log).
Bounded in time (each phase) and count (at most 200 sessions); it talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_EPOCHS = 100_000  # TrainConfig's limit
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: a free port, health, the process tree
from helpers import cmdline, descendants, free_port, healthy, stop_session, until  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MAX_SESSIONS = 200
# Runs a class starts: the Train page's default (digits, 256-256, neuron 0.9), and a 2-D one.
DIGITS = {"dataset": "digits", "hidden": [256, 256], "strategy": "neuron", "sparsity": 0.9, "batch_size": 64}
MOONS = {"dataset": "moons", "hidden": [32, 32], "strategy": "neuron", "sparsity": 0.5, "batch_size": 32, "lr": 0.01}
STEPS_PER_EPOCH = {"digits": 20, "moons": 22}  # 1257 / 64 and 700 / 32 training examples per batch
VIEWS = {"curves": None, "masks": "Gradient masks", "boundary": "Decision boundary"}
LECTURE = {"dataset": "moons", "hidden": [8, 8], "strategy": "neuron", "sparsity": 0.5, "batch_size": 32, "lr": 0.01}
LECTURE_CHARTS = ("lecture_fig_network", "lecture_fig_boundary", "lecture_twins_acc", "lecture_twins_time")
SCENARIOS = ("views", "own", "same", "lecture")


# ----------------------------------------------------------------------------- the server


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (not its children)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Lab:
    """`python -m asymviz serve` on a free 127.0.0.1 port with a temporary ASYMVIZ_HOME."""

    def __init__(self, workers: int, refresh: float | None):
        from asymviz.jobs import Runner
        from asymviz.policy import Limits

        self.home = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-load-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "ASYMVIZ_HOME": str(self.home), "ASYMVIZ_WORKERS": str(workers),
               "ASYMVIZ_WORKER_THREADS": "1", "ASYMVIZ_MAX_QUEUE": "0", "ASYMVIZ_MAX_RUNS_PER_OWNER": "0"}
        for name in ("ASYMVIZ_PASSWORD", "ASYMVIZ_AUTH", "ASYMVIZ_EXTERNAL_WORKERS", "ASYMVIZ_DATASETS"):
            env.pop(name, None)
        if refresh is not None:
            env["ASYMVIZ_REFRESH_S"] = str(refresh)
        self.log = open(self.home / "serve.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "asymviz", "serve", "--port", str(self.port),
                                      "--address", "127.0.0.1", "--workers", str(workers)],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            until(lambda: healthy(self.port) or self.proc.poll() is not None, 120, "the dashboard to start", 0.3)
            if self.proc.poll() is not None:
                raise SystemExit("asymviz serve exited: " + (self.home / "serve.log").read_text()[-2000:])
            self.pid = until(self._streamlit_pid, 30, "the Streamlit process")
        except BaseException:
            self.close()
            raise
        self.runner = Runner(self.home / "asymviz.db", workers=0, limits=Limits(0, 0, 0, 0))

    def _streamlit_pid(self) -> int | None:
        return next((p for p in descendants(self.proc.pid) if "streamlit" in cmdline(p)), None)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mb(self.pid)

    def submit(self, config: dict, epochs: int, owner: str) -> int:
        """Queue a run of `epochs` (at most the 100,000 a config allows: runs meant to outlast a
        long window are stopped by the scenario anyway)."""
        return self.runner.submit({**config, "epochs": min(int(epochs), MAX_EPOCHS)}, owner=owner)

    def submit_twins(self, config: dict, epochs: int, owner: str, speed: float) -> list[int]:
        """The run and its symmetric and dropout twins, at `speed` steps per second, as the
        Train page's Start queues them with "Compare with symmetric and dropout" on."""
        from asymviz import pace, twins

        configs = twins.twin_configs({**config, "epochs": int(epochs)})
        return pace.submit(self.runner, configs, owner=owner, speed=speed, tag=twins.new_tag())

    def steps_done(self, run_ids) -> int:
        ids = list(run_ids)
        if not ids:
            return 0
        rows = self.runner.store._query(  # one count over the runs' step rows
            f"SELECT count(*) AS n FROM steps WHERE run_id IN ({','.join('?' * len(ids))})", ids)
        return int(rows[0]["n"])

    def span_throughput(self, run_ids) -> float | None:
        """Steps per second of these runs together, from the first start to the last end."""
        runs = [self.runner.store.get_run(i) for i in run_ids]
        starts = [r["started_at"] for r in runs if r["started_at"]]
        ends = [r["finished_at"] for r in runs if r["finished_at"]]
        if not starts or not ends or max(ends) <= min(starts):
            return None
        return self.steps_done(run_ids) / (max(ends) - min(starts))

    def log_errors(self) -> list[str]:
        """Tracebacks the server and its workers wrote to their log."""
        text = (self.home / "serve.log").read_text(errors="replace")
        return [block.strip().splitlines()[-1] for block in text.split("Traceback (most recent call last):")[1:]]

    def statuses(self, run_ids) -> dict[int, str]:
        return {i: self.runner.store.get_run(i)["status"] for i in run_ids}

    def wait_running(self, run_ids, timeout: float) -> None:
        until(lambda: all(s == "running" for s in self.statuses(run_ids).values()), timeout, "the runs to start", 0.2)

    def wait_ended(self, run_ids, timeout: float) -> dict[int, str]:
        from asymviz.store import TERMINAL
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.statuses(run_ids)
            if all(s in TERMINAL for s in states.values()):
                return states
            time.sleep(0.3)
        return self.statuses(run_ids)

    def stop_runs(self, run_ids) -> None:
        from asymviz.owners import ADMIN

        for i in run_ids:
            self.runner.stop(i, owner=ADMIN)  # the harness is the machine's own user

    def close(self) -> None:
        stop_session(self.proc, grace=30)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


# ----------------------------------------------------------------------------- a session


class ServedRuns:
    """The fragment runs a tab was served, told from the ForwardMsgs it receives, in order.

    Streamlit never cuts a fragment run short for another fragment's rerun, but when the next run
    starts before a finished run's messages went out, the server relabels that run's finish
    FINISHED_EARLY_FOR_RERUN and keeps its deltas (ForwardMsgQueue.clear). A tab whose fragments'
    timers fire together (the Train page's live view and its panel, both on the lab's interval)
    gets about every other refresh so labeled. Such a run was served if the next run is a fragment
    run too; a page run drops its deltas."""

    def __init__(self):
        self.times: list[float] = []  # when each served fragment run finished
        self.fragment = False  # the current run is a fragment run
        self.early: float | None = None  # a fragment run relabeled early: served if the next is one too

    def see(self, msg, now: float) -> str | None:
        """"served" when this message tells of a served fragment run (this one's finish, or the
        start of the run after one relabeled early), "early" for a relabeled finish, "dropped"
        when a page run followed one; None otherwise."""
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        kind = msg.WhichOneof("type")
        if kind == "new_session":
            early, self.early = self.early, None
            self.fragment = bool(msg.metadata.run.fragment_ids)
            if early is not None:
                if self.fragment:
                    self.times.append(early)
                    return "served"
                return "dropped"
        elif kind == "script_finished" and self.fragment:
            if msg.script_finished == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY:
                self.times.append(now)
                return "served"
            if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                self.early = now
                return "early"
        return None


class Session:
    """One browser tab, simulated: the page's first run, then fragment reruns on the timers the
    server sets (`auto_rerun`), as Streamlit 1.67's browser sends them (App.handleAutoRerun: one
    setInterval per fragment that sends a rerun on every tick, whether or not a run is under way;
    a page run clears them). Unlike the browser it sends no widget states but the view it clicked:
    the 29 the browser sends with each rerun on the Train page cost the server no measurable CPU."""

    def __init__(self, url: str, page: str, query: str = "", view: str | None = None):
        self.url, self.page, self.query, self.view = url, page, query, view
        self.page_hash = ""
        self.widgets: dict = {}  # widget id -> WidgetState this tab sends (a clicked view)
        self.cache: dict[str, list] = {}  # message hash -> [run count when last used, fragment id]
        self.runs = 0
        self.started_since_rerun = False  # a run started since this session last asked for one
        self.max_age = 2
        self.timers: dict[str, tuple[asyncio.Task, float]] = {}  # fragment id -> (its timer, interval)
        self.waiting: list[float] = []  # send times of reruns not yet started
        self.serving: list[float] = []  # ... of reruns the current run serves
        self.last_delta: float | None = None
        self.latencies: list[float] = []
        self.updates: list[float] = []  # when each run (fragment or full) finished
        self.refreshes = 0
        self.reruns_sent = 0
        self.served = ServedRuns()
        self.early: tuple[float, list[float]] | None = None  # (end, requests) of a run relabeled early
        self.full_runs = 0
        self.errors: list[str] = []
        self.first_run_s: float | None = None
        self.first_run = asyncio.Event()
        self.ws = None
        self.closed = False
        self.paused = False  # a measuring device: the tab stays open but asks for nothing
        self.interval: float | None = None  # the refresh interval the server set last
        self.last_kind: str | None = None  # the last message's type (for a session that stops getting any)
        self.intervals: set[float] = set()  # every interval the server set (it stretches them when busy)
        self.charts: set[str] = set()  # the keys of the charts this tab was sent

    def _rerun(self, fragment_id: str = "", auto: bool = False):
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ClientState_pb2 import ContextInfo
        from streamlit.proto.WidgetStates_pb2 import WidgetStates

        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = self.query
        state.page_script_hash = self.page_hash
        state.page_name = "" if self.page_hash else self.page
        state.widget_states.CopyFrom(WidgetStates(widgets=list(self.widgets.values())))
        if fragment_id:
            state.fragment_id = fragment_id
            state.is_auto_rerun = auto
        state.cached_message_hashes.extend(self.cache)
        state.context_info.CopyFrom(ContextInfo(timezone="UTC", timezone_offset=0, locale="en-US",
                                                url=f"{self.url}/{self.page}?{self.query}", is_embedded=False,
                                                color_scheme="light"))
        return msg.SerializeToString()

    async def send_rerun(self, fragment_id: str = "", auto: bool = False) -> None:
        self.waiting.append(time.monotonic())
        self.reruns_sent += 1
        self.started_since_rerun = False
        await self.ws.send(self._rerun(fragment_id, auto))

    async def _timer(self, fragment_id: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.paused:  # as the browser: a rerun on every tick, the server queues it
                await self.send_rerun(fragment_id, auto=True)

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        t0 = time.monotonic()
        self.ws = await connect(self.url.replace("http", "ws", 1) + "/_stcore/stream", origin=self.url,
                                subprotocols=["streamlit", "PLACEHOLDER_AUTH_TOKEN"], max_size=None,
                                open_timeout=60)
        self.started = t0
        await self.send_rerun()

    async def listen(self) -> None:
        from websockets.exceptions import ConnectionClosed
        try:
            async for data in self.ws:
                self.handle(data)
        except ConnectionClosed as err:
            if not self.closed:
                self.errors.append(f"connection closed: {err}")
        except Exception as err:  # a protocol surprise is a finding, not a crash of the harness
            self.errors.append(f"{type(err).__name__}: {err}")

    def handle(self, data: bytes) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        now = time.monotonic()
        msg = ForwardMsg.FromString(data)
        kind = msg.WhichOneof("type")
        self.last_kind = f"{kind} at {now - getattr(self, 'started', now):.1f} s"
        served = self.served.see(msg, now)
        if kind == "new_session":  # a run starts: it serves every rerun asked for so far
            self.started_since_rerun = True
            early, self.early = self.early, None
            if served == "served":  # the fragment run before it, relabeled early, was served
                self._refreshed(*early)
            elif served == "dropped":  # ... was not: this page run serves its requests
                self.serving = early[1] + self.serving
            self.serving, self.waiting, self.last_delta = self.serving + self.waiting, [], None
            if not msg.metadata.run.fragment_ids:  # a page run: as the browser, drop the fragments'
                self.max_age = msg.new_session.config.max_cached_message_age or self.max_age
                for task, _ in self.timers.values():  # timers; the run sets those it still has
                    task.cancel()
                self.timers.clear()
        elif kind == "navigation":  # the page this session is on (the browser reruns it by this hash)
            self.page_hash = msg.navigation.page_script_hash
        elif kind in ("delta", "ref_hash"):
            self.last_delta = now
            if kind == "ref_hash":
                if msg.ref_hash not in self.cache:
                    self.errors.append(f"cache miss {msg.ref_hash}")
                else:
                    self.cache[msg.ref_hash][0] = self.runs
                return
            if msg.metadata.cacheable and msg.hash and msg.hash not in self.cache:
                self.cache[msg.hash] = [self.runs, msg.delta.fragment_id]
            self._inspect(msg.delta)
        elif kind == "auto_rerun":
            fid, interval = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
            old = self.timers.get(fid)
            if old is None or old[1] != interval:  # as the browser: the same interval keeps its timer
                if old is not None:
                    old[0].cancel()
                self.timers[fid] = (asyncio.get_running_loop().create_task(self._timer(fid, interval)), interval)
            self.interval = interval
            self.intervals.add(interval)
        elif kind == "stop_auto_rerun":
            for fid in msg.stop_auto_rerun.fragment_ids:
                timer = self.timers.pop(fid, None)
                if timer is not None:
                    timer[0].cancel()
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "session_event" and msg.session_event.WhichOneof("type") == "script_compilation_exception":
            self.errors.append("script compilation error: " + msg.session_event.script_compilation_exception.message)
        elif kind == "script_finished":
            self._finished(msg, now, served)

    def _inspect(self, delta) -> None:
        if delta.WhichOneof("type") != "new_element":
            return
        el = delta.new_element
        which = el.WhichOneof("type")
        if which == "plotly_chart":
            self.charts.add(el.plotly_chart.id.rsplit("-", 1)[-1])  # "$$ID-<hash>-<key>"
        elif which == "exception":
            self.errors.append(f"exception: {el.exception.type}: {el.exception.message}")
        elif which == "alert" and el.alert.format == el.alert.ERROR:
            self.errors.append(f"error on the page: {el.alert.body}")
        elif which == "button_group" and self.view and not self.widgets:
            labels = [o.content for o in el.button_group.options]
            if self.view in labels:  # click it, as a student would
                from streamlit.proto.Common_pb2 import StringArray
                from streamlit.proto.WidgetStates_pb2 import WidgetState
                self.widgets[el.button_group.id] = WidgetState(
                    id=el.button_group.id, string_array_value=StringArray(data=[self.view]))
                self.click = delta.fragment_id

    def _finished(self, msg, now: float, served: str | None) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        fragments = list(msg.metadata.run.fragment_ids)
        status = msg.script_finished
        end = self.last_delta or now
        if served == "served":
            self._refreshed(end, self.serving)
        elif served == "early":  # served if the next run is a fragment run too (ServedRuns)
            self.early = (end, self.serving)
        elif status == ForwardMsg.FINISHED_SUCCESSFULLY:
            self.updates.append(end)
            self.full_runs += 1
            if self.first_run_s is None:
                self.first_run_s = end - self.started
                self.first_run.set()
        elif status == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
            self.errors.append("the page failed to run")
        if served is not None or status == ForwardMsg.FINISHED_SUCCESSFULLY:
            self.serving = []
        # a page run's FINISHED_EARLY_FOR_RERUN: the next run serves the same requests
        if status != ForwardMsg.FINISHED_EARLY_FOR_RERUN and self.started_since_rerun:
            # The browser's message cache ages entries by script runs, but not while a rerun it
            # asked for, with the hashes it then held, has not started (App.handleScriptFinished).
            self.runs += 1
            for h, (used, fragment) in list(self.cache.items()):
                if fragments and fragment not in fragments:
                    continue
                if self.runs - used > self.max_age:
                    del self.cache[h]
        if getattr(self, "click", None) is not None and status != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
            fid, self.click = self.click, None  # the tab's click reruns the view's fragment
            asyncio.get_running_loop().create_task(self.send_rerun(fid))

    def _refreshed(self, end: float, requests: list[float]) -> None:
        """A fragment run that ended at `end` served these rerun requests (their send times)."""
        self.updates.append(end)
        self.refreshes += 1
        self.latencies += [end - t for t in requests]

    async def close(self) -> None:
        self.closed = True
        for task, _ in self.timers.values():
            task.cancel()
        if self.ws is not None:
            await self.ws.close()


async def open_sessions(url: str, specs: list[tuple[str, str, str | None]], spread: float) -> list[Session]:
    """Open one session per (page, query, view), spread over `spread` seconds."""
    sessions = []
    for i, (page, query, view) in enumerate(specs):
        s = Session(url, page, query, view)
        try:
            await s.open()
        except Exception as err:
            s.errors.append(f"could not connect: {type(err).__name__}: {err}")
        else:
            s.listener = asyncio.get_running_loop().create_task(s.listen())
        sessions.append(s)
        if spread and i + 1 < len(specs):
            await asyncio.sleep(spread / len(specs))
    return sessions


async def close_sessions(sessions: list[Session]) -> None:
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


async def page_load(url: str, page: str, query: str = "", timeout: float = 60.0) -> float | None:
    """Seconds to load a page in a fresh session: the page's HTML, then its first run; None if
    it did not finish within `timeout`."""
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    path = f"{url}/{page}" + (f"?{query}" if query else "")
    s, listener = Session(url, page, query), None
    try:
        await loop.run_in_executor(None, lambda: urllib.request.urlopen(path, timeout=timeout).read())
        await s.open()
        listener = loop.create_task(s.listen())
        await asyncio.wait_for(s.first_run.wait(), max(1.0, timeout - (time.monotonic() - t0)))
        return time.monotonic() - t0
    except (asyncio.TimeoutError, OSError):  # OSError: refused, reset, or the HTTP request timed out
        return None
    finally:
        await s.close()
        if listener is not None:
            listener.cancel()


# ------------------------------------------------------------------------------- measuring


class Meter:
    """The server's CPU and RSS, this harness's own CPU, and the workers' steps over a window."""

    def __init__(self, lab: Lab, run_ids=()):
        self.lab, self.run_ids = lab, list(run_ids)
        self.rss_max = lab.rss()

    def start(self) -> None:
        self.t0, self.cpu0, self.steps0 = time.monotonic(), self.lab.cpu(), self.lab.steps_done(self.run_ids)
        self.own0 = sum(os.times()[:2])

    def sample(self) -> None:
        self.rss_max = max(self.rss_max, self.lab.rss())

    def stop(self) -> dict:
        elapsed = time.monotonic() - self.t0
        return {"seconds": elapsed, "cpu_s": self.lab.cpu() - self.cpu0,
                "steps_per_s": (self.lab.steps_done(self.run_ids) - self.steps0) / elapsed,
                "rss_mb": self.lab.rss(), "rss_max_mb": max(self.rss_max, self.lab.rss()),
                "client_cores": (sum(os.times()[:2]) - self.own0) / elapsed}


async def sampled_throughput(lab: Lab, run_ids, seconds: float) -> tuple[float, float]:
    """(steps/s of these runs together, the server's CPU seconds per second) over `seconds`."""
    meter = Meter(lab, run_ids)
    meter.start()
    await asyncio.sleep(seconds)
    m = meter.stop()
    return m["steps_per_s"], m["cpu_s"] / m["seconds"]


async def watch(lab: Lab, specs, seconds: float, run_ids, idle_rate: float, probe: bool = False,
                spread: float = 0.0, settled: bool = True, alternate: float = 0.0) -> dict:
    """Open one session per (page, query, view) spec, let them watch for `seconds`, and measure:
    once their first page runs are over (`settled`), or from before they open; with `probe`, load
    Home or Train in a fresh session every 2 s meanwhile. With `alternate`, the sessions then
    pause and resume their refreshes in turns of that many seconds, three times each, for the
    workers' throughput with and without watchers, measured side by side on a machine whose
    other load drifts."""
    rss_before = lab.rss()
    meter = Meter(lab, run_ids)
    if not settled:
        meter.start()
    opening = asyncio.get_running_loop().create_task(open_sessions(lab.url, specs, spread))
    joined: dict[str, float] = {}

    async def every_page_ran() -> None:  # when the last session's first page run was over
        opened = await opening
        await asyncio.gather(*(s.first_run.wait() for s in opened if s.ws is not None))
        joined["at"] = time.time()

    joining = asyncio.get_running_loop().create_task(every_page_ran())
    if settled:
        sessions = await opening
        try:  # measure the watching, not the first page runs
            await asyncio.wait_for(asyncio.shield(joining), 180)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(3)
        for s in sessions:
            s.latencies, s.refreshes, s.updates, s.reruns_sent = [], 0, [], 0
        meter.start()
    deadline = meter.t0 + seconds
    probes: list[tuple[str, asyncio.Task]] = []
    while time.monotonic() < deadline:
        if probe:
            page, query = ("", "") if len(probes) % 2 == 0 else ("Train", f"run={run_ids[0]}")
            probes.append((page or "Home", asyncio.get_running_loop().create_task(page_load(lab.url, page, query))))
        meter.sample()
        await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    m = meter.stop()
    sessions = await opening
    loads = [await task for _, task in probes]
    row = summarize(sessions, m, idle_rate, meter.t0)
    joining.cancel()
    row["joined_at"] = joined.get("at")  # unix seconds, as the store's; None: some session never ran its page
    if alternate:
        rates = {True: [], False: []}
        for watching in (False, True) * 3:
            for s in sessions:
                s.paused = not watching
            await asyncio.sleep(2)  # the runs in flight finish
            rates[watching].append((await sampled_throughput(lab, run_ids, alternate))[0])
        row["steps_per_s"] = statistics.mean(rates[True])
        row["steps_per_s_alone"] = statistics.mean(rates[False])
    await close_sessions(sessions)
    row["rss_before_mb"] = rss_before
    if probe:
        ok = sorted(t for t in loads if t is not None)
        row.update(page_loads=len(loads), page_load_failed=len(loads) - len(ok), page_load_p95_s=pct(ok, 95),
                   page_load_max_s=ok[-1] if ok else None)
        row["errors"] += row["page_load_failed"]
    return row


def summarize(sessions: list[Session], m: dict, idle_rate: float, t0: float) -> dict:
    lat = sorted(x for s in sessions for x in s.latencies)
    refreshes = sum(s.refreshes for s in sessions)
    cpu = m["cpu_s"] - idle_rate * m["seconds"]
    session_s = len(sessions) * m["seconds"]
    errors = [e for s in sessions for e in s.errors]
    gaps = [max(b - a for a, b in zip([t0, *s.updates], [*s.updates, t0 + m["seconds"]])) for s in sessions]
    intervals = Counter(s.interval for s in sessions if s.interval)
    return {"sessions": len(sessions), "refreshes": refreshes, "reruns_sent": sum(s.reruns_sent for s in sessions),
            "refresh_s": intervals.most_common(1)[0][0] if intervals else None,
            "refresh_seen_s": sorted(set().union(*(s.intervals for s in sessions))),
            "fewest_updates": min((len(s.updates) for s in sessions), default=0),
            "fewest_updates_session": next(({"updates": len(s.updates), "refreshes": s.refreshes,
                                             "full_runs": s.full_runs, "timers": len(s.timers),
                                             "interval": s.interval, "waiting": len(s.waiting),
                                             "serving": len(s.serving), "errors": s.errors[:3],
                                             "last": s.last_kind}
                                            for s in sorted(sessions, key=lambda s: len(s.updates))[:1]), None),
            "longest_gap_s": max(gaps, default=None),
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "max_s": lat[-1] if lat else None,
            "cpu_ms_per_session_s": 1000 * cpu / session_s if session_s else None,
            "cpu_ms_per_refresh": 1000 * cpu / refreshes if refreshes else None,
            "server_cores": m["cpu_s"] / m["seconds"], "client_cores": m["client_cores"],
            "rss_mb": m["rss_mb"], "rss_max_mb": m["rss_max_mb"], "steps_per_s": m["steps_per_s"],
            "errors": len(errors), "error_samples": sorted(set(errors))[:5], "seconds": m["seconds"],
            "lecture_pictures": sum(all(k in s.charts for k in LECTURE_CHARTS) for s in sessions)}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def chromium_tab(lab: Lab, query: str, seconds: float, idle_rate: float) -> dict | None:
    """One real Chromium tab on the Train page for `seconds`: its refreshes counted from the
    websocket frames it receives (ServedRuns), the reruns it sent, and the server's CPU over the
    same window; None without Chromium or Playwright."""
    if not os.path.exists(CHROMIUM):
        return None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    served, sent = ServedRuns(), []

    def received(payload):
        if isinstance(payload, (bytes, bytearray)):
            served.see(ForwardMsg.FromString(bytes(payload)), time.monotonic())

    def sending(payload):
        if isinstance(payload, (bytes, bytearray)) and BackMsg.FromString(bytes(payload)).WhichOneof("type") == "rerun_script":
            sent.append(time.monotonic())

    def websocket(ws):
        ws.on("framereceived", received)
        ws.on("framesent", sending)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page(viewport={"width": 1500, "height": 1600})
        page.on("websocket", websocket)
        await page.goto(f"{lab.url}/Train?{query}", timeout=180_000)
        await page.get_by_text("Running:").wait_for(timeout=180_000)
        await asyncio.sleep(3)  # let the first refreshes pass
        meter = Meter(lab)
        n0, sent0 = len(served.times), len(sent)
        meter.start()
        await asyncio.sleep(seconds)
        m = meter.stop()
        n, reruns = len(served.times) - n0, len(sent) - sent0
        await browser.close()
    cpu = m["cpu_s"] - idle_rate * m["seconds"]
    return {"sessions": 1, "refreshes": n, "reruns_sent": reruns, "cpu_ms_per_session_s": 1000 * cpu / m["seconds"],
            "cpu_ms_per_refresh": 1000 * cpu / n if n else None, "rss_mb": m["rss_mb"], "rss_max_mb": m["rss_max_mb"],
            "server_cores": m["cpu_s"] / m["seconds"], "errors": 0, "seconds": m["seconds"]}


def epochs_for(dataset: str, seconds: float, steps_per_s: float) -> int:
    return max(1, int(seconds * steps_per_s / STEPS_PER_EPOCH[dataset]))


# ------------------------------------------------------------------------------- scenarios


async def scenario_views(lab: Lab, args, per_worker: float, idle: float, rows: list) -> None:
    """One session per detail view on live runs, then a real tab on the curves."""
    t = args.view_seconds
    digits = lab.submit(DIGITS, 100 * epochs_for("digits", 4 * t, per_worker), "load-views")  # stopped below
    moons = lab.submit(MOONS, 100 * epochs_for("moons", t, per_worker), "load-views")
    lab.wait_running([digits, moons], 120)
    for name, run_id in (("curves", digits), ("masks", digits), ("boundary", moons)):
        if lab.statuses([run_id])[run_id] != "running":
            rows.append((f"1 session, {name} view", {"sessions": 1, "errors": 1, "error_samples": ["the run ended early"]}))
            continue
        row = await watch(lab, [("Train", f"run={run_id}", VIEWS[name])], t, [run_id], idle)
        row.pop("steps_per_s")
        rows.append((f"1 session, {name} view", row))
        if name == "curves" and not args.no_browser:
            tab = await against_chromium(lab, run_id, row, t, idle, args.view_repeats)
            if tab is not None:
                rows.append((f"1 Chromium tab, curves view (mean of {args.view_repeats})", tab))
    # every worker busy, so one more run waits in the queue: its view refreshes less often
    fillers = [lab.submit(DIGITS, 100 * epochs_for("digits", t, per_worker), "load-views")
               for _ in range(max(0, args.workers - 2))]
    queued = lab.submit(DIGITS, 20, "load-views")
    row = await watch(lab, [("Train", f"run={queued}", None)], t, [queued], idle)
    row.pop("steps_per_s")
    if lab.statuses([queued])[queued] != "queued":
        row["errors"] += 1
        row["error_samples"] = ["the run left the queue during the window"]
    rows.append(("1 session on a queued run", row))
    lab.stop_runs([digits, moons, queued, *fillers])
    lab.wait_ended([digits, moons, queued, *fillers], 60)
    row = await watch(lab, [("Train", f"run={digits}", None)], t, [digits], idle)  # after its page: nothing
    row.pop("steps_per_s")
    row["longest_gap_s"] = None
    rows.append(("1 session on an ended run", row))


async def against_chromium(lab: Lab, run_id: int, first: dict, seconds: float, idle: float, repeats: int) -> dict | None:
    """A real Chromium tab on the curves in `repeats` windows, each after a simulated session's
    (`first` is the first of those), so the machine's drifting load (the workers, other jobs)
    touches both alike: the row holds the tab's mean CPU, every window of both, and the mean of
    the pairs' ratios, per refresh and per second; None without Chromium."""
    pairs = []
    for i in range(repeats):
        if i:
            first = await watch(lab, [("Train", f"run={run_id}", None)], seconds, [run_id], idle)
        tab = await chromium_tab(lab, f"run={run_id}", seconds, idle)
        if tab is None:
            return None
        pairs.append((first, tab))
    keys = ("refreshes", "reruns_sent", "cpu_ms_per_session_s", "cpu_ms_per_refresh")
    row = {**pairs[-1][1], **{k: round(statistics.mean(tab[k] or 0 for _, tab in pairs), 1) for k in keys}}
    row["windows"] = [{"simulated": {k: sim.get(k) for k in keys}, "chromium": {k: tab.get(k) for k in keys}}
                      for sim, tab in pairs]
    for key, out in (("cpu_ms_per_refresh", "vs_simulated_pct"), ("cpu_ms_per_session_s", "vs_simulated_per_s_pct")):
        ratios = [tab[key] / sim[key] for sim, tab in pairs if tab.get(key) and sim.get(key)]
        row[out] = 100 * statistics.mean(ratios) if ratios else None
    return row


async def scenario_own(lab: Lab, args, per_worker: float, idle: float, rows: list) -> None:
    """Each session watches its own run: all submitted at once, sized so the queue drains well
    within the window; throughput against the same runs trained with no session open."""
    n = args.sessions
    epochs = max(2, min(20, epochs_for("digits", 0.5 * args.seconds * args.workers / n, per_worker)))
    alone = [lab.submit(DIGITS, epochs, "load-baseline") for _ in range(n)]  # the same queue, unwatched
    lab.wait_ended(alone, max(120.0, args.seconds))
    before = lab.span_throughput(alone)
    runs = [lab.submit(DIGITS, epochs, f"student-{i:02d}") for i in range(n)]
    specs = [("Train", f"run={r}", None) for r in runs]  # the class joins over the first 10 s, all counted
    row = await watch(lab, specs, args.seconds, runs, idle, probe=True, spread=min(10.0, args.seconds / 4),
                      settled=False)
    states = lab.wait_ended(runs, max(30.0, args.seconds))
    row["runs"] = f"{sum(s == 'finished' for s in states.values())}/{len(runs)}"
    row["steps_per_s"] = lab.span_throughput(runs)
    row["steps_per_s_alone"] = before
    row["throughput_pct"] = 100 * row["steps_per_s"] / before if row["steps_per_s"] and before else None
    if row.get("joined_at") and before:  # the runs that trained while the class was still joining, and the rest
        starts = {i: lab.runner.store.get_run(i)["started_at"] or 0.0 for i in runs}
        for part, ids in (("joining", [i for i in runs if starts[i] < row["joined_at"]]),
                          ("joined", [i for i in runs if starts[i] >= row["joined_at"]])):
            rate = lab.span_throughput(ids) if len(ids) >= args.workers else None
            row[f"throughput_{part}"] = (len(ids), 100 * rate / before if rate else None)
    row["longest_gap_s"] = None  # sessions on queued and ended runs are meant to be quiet
    rows.append((f"{n} sessions, each on its own run ({epochs} epochs)", row))


def _stop_and_count(lab: Lab, runs: list[int], row: dict) -> None:
    """After a window on long runs: how many trained throughout (none failed or ended early),
    then stop them, and the throughput against the same workers unwatched."""
    training = sum(s == "running" for s in lab.statuses(runs).values())
    lab.stop_runs(runs)
    states = lab.wait_ended(runs, 60)
    row["runs"] = f"{training}/{len(runs)} trained throughout, then stopped" + \
        ("" if all(s == "stopped" for s in states.values()) else f" ({', '.join(states.values())})")
    row["throughput_pct"] = 100 * row["steps_per_s"] / row["steps_per_s_alone"]


async def scenario_same(lab: Lab, args, per_worker: float, idle: float, rows: list) -> None:
    """Every session watches one long run while the other workers train others."""
    n = args.sessions
    outlast = args.seconds + 6 * args.baseline_seconds + 60  # outlasts the window and the turns after it
    runs = [lab.submit(DIGITS, 10 * epochs_for("digits", outlast, per_worker), "teacher") for _ in range(args.workers)]
    lab.wait_running(runs, 120)
    specs = [("Train", f"run={runs[0]}", None)] * n
    row = await watch(lab, specs, args.seconds, runs, idle, probe=True, spread=min(10.0, args.seconds / 4),
                      alternate=args.baseline_seconds)
    _stop_and_count(lab, runs, row)
    rows.append((f"{n} sessions, all on one run", row))


async def scenario_lecture(lab: Lab, args, per_worker: float, idle: float, rows: list) -> None:
    """Every session watches one small run on two moons with its twins, at the toy pace."""
    from asymviz.pace import TOY_SPEED

    n = args.sessions
    outlast = args.seconds + 6 * args.baseline_seconds + 60
    epochs = 10 * max(1, int(outlast * TOY_SPEED / STEPS_PER_EPOCH["moons"]))
    group = lab.submit_twins(LECTURE, epochs, "teacher", TOY_SPEED)
    others = [lab.submit(DIGITS, 10 * epochs_for("digits", outlast, per_worker), "teacher")
              for _ in range(max(0, args.workers - len(group)))]
    runs = group + others
    lab.wait_running(runs[:min(len(runs), args.workers)], 120)
    specs = [("Train", f"run={group[0]}", None)] * n
    row = await watch(lab, specs, args.seconds, runs, idle, probe=True, spread=min(10.0, args.seconds / 4),
                      alternate=args.baseline_seconds)
    _stop_and_count(lab, runs, row)
    rows.append((f"{n} sessions, all on one lecture run and its twins", row))


# ----------------------------------------------------------------------------------- output


def fmt(value, spec: str = ".0f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


COLUMNS = ["scenario", "sessions", "refresh every", "refreshes (fewest updates)", "latency p50 / p95 / max", "longest gap",
           "server CPU ms per session-s", "ms per refresh", "RSS MiB before / end (max)", "runs",
           "steps/s (vs none)", "page load p95 (max)", "errors"]


def cells(name: str, r: dict) -> list[str]:
    lat = " / ".join(fmt(r.get(k), ".2f") for k in ("p50_s", "p95_s", "max_s")) + " s" if r.get("p50_s") else "–"
    cpu = fmt(r.get("cpu_ms_per_session_s"), ".1f") if r.get("sessions") else f"{1000 * r.get('server_cores', 0):.1f} (idle)"
    steps = "–"
    if r.get("steps_per_s"):
        steps = f"{r['steps_per_s']:.0f}" + (f" ({r['throughput_pct']:.0f} %)" if r.get("throughput_pct") else "")
    load = f"{fmt(r.get('page_load_p95_s'), '.2f')} ({fmt(r.get('page_load_max_s'), '.2f')}) s" if r.get("page_loads") else "–"
    refreshes = f"{r['refreshes']} ({r['fewest_updates']})" if "fewest_updates" in r else str(r.get("refreshes", "–"))
    every = fmt(r.get("refresh_s"), "g", " s")
    if len(r.get("refresh_seen_s") or []) > 1:  # the server stretched (or shrank) the interval meanwhile
        every += " (" + ", ".join(f"{x:g}" for x in r["refresh_seen_s"]) + " s)"
    return [name, str(r.get("sessions", "")), every, refreshes, lat, fmt(r.get("longest_gap_s"), ".1f", " s"), cpu,
            fmt(r.get("cpu_ms_per_refresh"), ".1f"),
            f"{fmt(r.get('rss_before_mb', r.get('rss_mb')))} / {fmt(r.get('rss_mb'))} ({fmt(r.get('rss_max_mb', r.get('rss_mb')))})",
            r.get("runs", "–"), steps, load, str(r.get("errors", 0))]


def table(rows: list[tuple[str, dict]]) -> str:
    lines = [cells(name, r) for name, r in rows]
    widths = [max(len(COLUMNS[i]), *(len(line[i]) for line in lines)) for i in range(len(COLUMNS))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)) + " |",
           "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"]
    out += ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) + " |"
            for line in lines]
    return "\n".join(out)


def notes(rows: list[tuple[str, dict]]) -> list[str]:
    out = []
    for name, r in rows:
        if r.get("vs_simulated_pct"):
            out.append(f"{name}: {r['cpu_ms_per_refresh']:.1f} ms of server CPU per refresh, "
                       f"{r['vs_simulated_pct']:.0f} % of a simulated session's, and "
                       f"{fmt(r.get('vs_simulated_per_s_pct'))} % per second (means of the windows taken in turns; "
                       "per refresh, simulated / Chromium: " + ", ".join(
                           f"{fmt(w['simulated']['cpu_ms_per_refresh'], '.1f')} / {fmt(w['chromium']['cpu_ms_per_refresh'], '.1f')}"
                           for w in r["windows"]) + " ms).")
        if r.get("client_cores") and r.get("sessions", 0) > 1:
            out.append(f"{name}: this harness used {100 * r['client_cores']:.0f} % of a core, the server "
                       f"{100 * r['server_cores']:.0f} %.")
        if r.get("throughput_joining"):
            (a, pa), (b, pb) = r["throughput_joining"], r["throughput_joined"]
            out.append(f"{name}: training steps/s against the same {r.get('sessions')} runs with no session open: "
                       f"{fmt(pa)} % over the {a} runs that started while the class was still loading its pages, "
                       f"{fmt(pb)} % over the {b} that started after.")
        if "lecture run" in name:
            out.append(f"{name}: {r.get('lecture_pictures', 0)} of {r.get('sessions', 0)} sessions got the network "
                       "picture, the live boundary and the twins' charts.")
        for sample in r.get("error_samples") or []:
            out.append(f"{name}: error: {sample}")
    return out


async def main_async(args) -> list:
    lab = Lab(args.workers, args.refresh)
    rows: list = []
    try:
        for page in ("", "Train"):  # the first loads import the pages' modules: not what a student waits for
            await page_load(lab.url, page, "", timeout=300)
        runs = [lab.submit(DIGITS, 5000, "load-baseline") for _ in range(args.workers)]
        lab.wait_running(runs, 120)
        await asyncio.sleep(2)
        rate, idle = await sampled_throughput(lab, runs, args.baseline_seconds)
        lab.stop_runs(runs)
        lab.wait_ended(runs, 60)
        rows.append((f"no session, {args.workers} workers training",
                     {"sessions": 0, "steps_per_s": rate, "server_cores": idle, "rss_mb": lab.rss(), "errors": 0}))
        print(f"no session: {rate:.0f} steps/s, server {1000 * idle:.1f} ms CPU per s", file=sys.stderr)
        per_worker = rate / args.workers
        for name in args.scenarios:
            await {"views": scenario_views, "own": scenario_own, "same": scenario_same,
                   "lecture": scenario_lecture}[name](
                lab, args, per_worker, idle, rows)
            print(table(rows), file=sys.stderr)
        problems = lab.log_errors()
        if problems:
            rows.append(("server log", {"errors": len(problems), "error_samples": sorted(set(problems))[:5]}))
    finally:
        lab.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=60, help=f"simulated sessions (1 to {MAX_SESSIONS}; default 60)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long they watch, per scenario (5 to 900; default 120)")
    parser.add_argument("--scenarios", default="views,own,same",
                        help="comma-separated: views, own, same, lecture (default views,own,same)")
    parser.add_argument("--workers", type=int, default=2, help="training worker processes (default 2)")
    parser.add_argument("--refresh", type=float, help="ASYMVIZ_REFRESH_S for the server (default: its default)")
    parser.add_argument("--view-seconds", type=float, default=20.0, help="seconds per view in the views scenario")
    parser.add_argument("--baseline-seconds", type=float, default=10.0,
                        help="seconds of throughput and server CPU measured with no session open (default 10)")
    parser.add_argument("--view-repeats", type=int, default=3,
                        help="in the views scenario, windows of a real Chromium tab on the curves, each after a "
                             "simulated session's (1 to 10; default 3)")
    parser.add_argument("--no-browser", action="store_true", help="no Chromium tab in the views scenario")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list on the last line")
    args = parser.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    problems = []
    if not 1 <= args.sessions <= MAX_SESSIONS:
        problems.append(f"--sessions must be from 1 to {MAX_SESSIONS}, got {args.sessions}")
    if not 5 <= args.seconds <= 900:
        problems.append(f"--seconds must be from 5 to 900, got {args.seconds:g}")
    if not 2 <= args.view_seconds <= 300 or not 2 <= args.baseline_seconds <= 300:
        problems.append("--view-seconds and --baseline-seconds must be from 2 to 300")
    if not 1 <= args.view_repeats <= 10:
        problems.append(f"--view-repeats must be from 1 to 10, got {args.view_repeats}")
    if not 1 <= args.workers <= 16:
        problems.append(f"--workers must be from 1 to 16, got {args.workers}")
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or not args.scenarios:
        problems.append(f"--scenarios takes views, own, same and lecture, got {', '.join(sorted(unknown)) or 'none'}")
    if problems:
        print("load_test.py: " + "; ".join(problems) + ".", file=sys.stderr)
        raise SystemExit(2)
    load = os.getloadavg()[0]
    rows = asyncio.run(main_async(args))
    print(table(rows))
    print()
    for line in notes(rows):
        print(line)
    print(f"machine: {os.cpu_count()} CPU cores, load average {load:.1f} at the start and "
          f"{os.getloadavg()[0]:.1f} at the end; {args.workers} workers x 1 thread; refresh every "
          f"{float(args.refresh or os.environ.get('ASYMVIZ_REFRESH_S') or 1):g} s")
    if args.json:
        print(json.dumps([{"scenario": name, **row} for name, row in rows]))


if __name__ == "__main__":
    main()
