"""Streamlit helpers shared by the dashboard pages (app.py and pages/*.py).

Shared, thread-safe objects live in `st.cache_resource` (the job runner and its store, the
benchmark thread); per-browser state (the name this session signed in as) in `st.session_state`. Everything that
does not need Streamlit is in `asymviz.pagekit`, `asymviz.lab` (the pool's status), `asymviz.owners` (passwords, names)
and `asymviz.policy` (the datasets offered), where it is unit-tested.

`setup()` is also the lab's access gate: with ASYMVIZ_PASSWORD set (or ASYMVIZ_AUTH=oidc) a
page renders nothing but the password form (or the login button) until the session is in.
Past the gate it says on every page what keeps this server from training: its workers gone
(new runs refused, `check_can_train`), or its run store file deleted or replaced (the page stops).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import os
import sys
import threading
import time

import streamlit as st

from asymviz import lab, owners, pagekit, policy
from asymviz.errors import AsymvizError

WRONG_PASSWORD = "Wrong password: ask your instructor for this lab's password."


# The dashboard's navigation, in the sidebar of every page: (script, label, icon). Streamlit's own
# navigation for a pages/ folder would name the first entry after the entry script ("app"), so it
# is switched off (client.showSidebarNavigation in .streamlit/config.toml) and drawn here.
PAGES = (
    ("app.py", "Home", ":material/neurology:"),
    ("pages/1_Train.py", "Train", ":material/model_training:"),
    ("pages/2_Runs.py", "Runs", ":material/table_chart:"),
    ("pages/3_Backward_timing.py", "Backward timing", ":material/timer:"),
    ("pages/4_Experiment.py", "Experiment", ":material/science:"),
    ("pages/5_Instructor.py", "Instructor", ":material/admin_panel_settings:"),
)


def setup(title: str, icon: str) -> None:
    """Page config, the access gate, the navigation and the server's health; call first on every page."""
    _freeze_loaded_modules()
    st.set_page_config(page_title=f"{title} · asymviz", page_icon=icon, layout="wide")
    access_gate()
    navigation()
    server_health()


def navigation() -> None:
    """The sidebar's list of pages, Home first. A page file run on its own as the entry script
    (`streamlit run pages/1_Train.py`, AppTest.from_file) knows no other page: no list then."""
    from streamlit.errors import StreamlitPageNotFoundError

    box = st.sidebar.container(key="asymviz_nav")
    try:
        for script, label, icon in PAGES:
            box.page_link(script, label=label, icon=icon)
    except StreamlitPageNotFoundError:
        return  # nothing was drawn: the first link already fails


class CannotTrain(AsymvizError):
    """This server cannot train a new run (its workers are gone): the sentence says what to do."""


def server_health() -> None:
    """Say what keeps this server from working, on every page: the run store file deleted or
    replaced under it (an error; the page stops: nothing can be read or recorded), or its
    workers gone (an error; runs can be watched, new ones are refused) or restarting (a warning)."""
    try:
        the_runner = runner()
        problem = the_runner.store.file_problem()
    except Exception as err:  # the store cannot even be opened: one sentence, nothing else
        error(err)
        st.stop()
    if problem:
        _log_once(problem)
        st.error(problem, icon=":material/database:")
        st.stop()
    workers = lab.pool_problem(the_runner)
    if workers is not None:
        fatal, sentence = workers
        (st.error if fatal else st.warning)(sentence, icon=":material/engineering:")


@st.cache_resource(show_spinner=False)
def _logged() -> set:
    return set()


def _log_once(sentence: str) -> None:
    """Write a problem of the server to its log once (not once per page view)."""
    logged = _logged()
    if sentence not in logged:
        logged.add(sentence)
        print(f"asymviz dashboard: {sentence}", file=sys.stderr, flush=True)


def check_can_train() -> None:
    """Raise CannotTrain (its one sentence) when no worker will ever train a new run here."""
    problem = lab.pool_problem(runner())
    if problem is not None and problem[0]:
        raise CannotTrain(problem[1])


@st.cache_resource
def _freeze_loaded_modules() -> bool:
    """Once per server: put every object alive after the first page's imports into the garbage
    collector's permanent generation (gc.freeze). With torch, pandas and plotly loaded a full
    collection walks about 300,000 objects, about 200 ms of CPU with the GIL held, so every
    session stands still meanwhile (on a busy machine, for seconds); frozen, the modules' objects
    are skipped and a collection walks only what the sessions create."""
    import gc

    import pandas  # noqa: F401  the pages' other large modules, loaded now so they are frozen too
    import plotly.graph_objects  # noqa: F401
    gc.collect()
    gc.freeze()
    return True


def access_gate() -> None:
    """Stop the page until this session may see the lab: logged in through the identity
    provider (ASYMVIZ_AUTH=oidc, Streamlit's st.login), and holding the lab password when
    ASYMVIZ_PASSWORD is set. Until then the page shows the login or the password form only."""
    try:
        mode = owners.auth_mode()
    except Exception as err:
        error(err)
        st.stop()
    if mode == "oidc":
        _oidc_gate()
    password = os.environ.get("ASYMVIZ_PASSWORD", "")
    if password:
        password_gate(password, "access", "Lab password", WRONG_PASSWORD,
                      "This lab is protected by a password; your instructor has it.")


def password_gate(expected: str, key: str, label: str, wrong: str, caption: str) -> None:
    """Return if this session has entered `expected`; else show a password form (or, after a
    wrong one, the form and `wrong`) and stop the page. The session keeps a token, not the
    password; the comparison is constant-time."""
    ss = st.session_state
    token = owners.password_token(expected)
    if ss.get(f"{key}_token") == token:
        return
    with st.form(f"{key}_form", clear_on_submit=True):
        st.text_input(label, type="password", key=f"{key}_password", help=caption)
        submitted = st.form_submit_button("Enter", type="primary")
    if submitted:
        entered = ss.get(f"{key}_password") or ""
        if owners.password_matches(entered, expected):
            ss[f"{key}_token"] = token
            st.rerun()
        time.sleep(1.0)  # guessing costs a second per try
        st.error(wrong, icon=":material/lock:")
    st.stop()


def _oidc_gate() -> None:
    """ASYMVIZ_AUTH=oidc: a "Log in" button (st.login, the provider of .streamlit/secrets.toml's
    [auth] section, or ASYMVIZ_AUTH_PROVIDER's) until the identity provider says who this is."""
    if _logged_in():
        st.sidebar.button("Log out", key="auth_logout", on_click=st.logout, icon=":material/logout:")
        return
    provider = os.environ.get("ASYMVIZ_AUTH_PROVIDER") or None
    st.button("Log in", key="auth_login", type="primary", icon=":material/login:",
              on_click=st.login, args=(provider,) if provider else ())
    st.stop()


def _logged_in() -> bool:
    """st.user.is_logged_in, False where Streamlit has no login configured."""
    return bool(st.user.get("is_logged_in", False))


def _identity() -> str | None:
    """With ASYMVIZ_AUTH=oidc, the logged-in user's e-mail (or provider user name) as an owner name."""
    if not _logged_in():
        return None
    return owners.oidc_owner({field: st.user.get(field) for field in ("email", "preferred_username")})


def offered_datasets() -> list[str]:
    """The datasets this lab offers ($ASYMVIZ_DATASETS; all when unset), in display order;
    a bad ASYMVIZ_DATASETS is one sentence and stops the page."""
    try:
        return policy.offered_datasets()
    except Exception as err:
        error(err)
        st.stop()


def submit(config: dict, owner: str) -> int:
    """Queue a run from a page: refused (CannotTrain) when no worker would train it; the runner
    checks the config, the lab's dataset list (DatasetNotOffered) and the limits, each with one
    sentence; the run id."""
    check_can_train()
    return runner().submit(config, owner=owner)


def refresh_seconds() -> float:
    """How often live views refresh now: the chosen interval (chosen_refresh), stretched while
    the server is busy (asymviz.live.RefreshGovernor: x2, x3, x5, x10)."""
    return chosen_refresh() * refresh_governor().factor()


@st.cache_resource
def _refresh_governor():
    from asymviz.live import RefreshGovernor, server_cpu_budget
    return RefreshGovernor(server_cpu_budget())


def refresh_governor():
    """The server process's one RefreshGovernor ($ASYMVIZ_SERVER_CPU refused: its sentence)."""
    try:
        return _refresh_governor()
    except AsymvizError as err:
        error(err)
        st.stop()


def restart_page() -> None:
    """Run the page again, from a live view's refresh, to take a new timer (or none once its run
    has ended) when the server's RefreshGovernor lets a view restart now (a few a second, so a
    class whose run ends does not queue every open page's run at once); else the view keeps its
    timer and asks again on its next refresh."""
    if refresh_governor().may_restart():
        st.rerun()


def chosen_refresh() -> float:
    """How often live views refresh while the server is not busy: the interval the instructor
    set for the lab (Instructor page), else $ASYMVIZ_REFRESH_S (default 1 s, at least 0.2)."""
    chosen = _lab_refresh()
    if chosen is not None:
        return chosen
    try:
        return max(0.2, float(os.environ.get("ASYMVIZ_REFRESH_S", "1.0")))
    except ValueError:
        return 1.0


_LAB_REFRESH = {"read_at": -1e9, "value": None}


def _lab_refresh() -> float | None:
    """The instructor's lab-wide interval, read from $ASYMVIZ_HOME at most every 2 s."""
    from asymviz import live
    now = time.monotonic()
    if now - _LAB_REFRESH["read_at"] >= 2.0:
        _LAB_REFRESH.update(read_at=now, value=live.read_refresh(home_folder()))
    return _LAB_REFRESH["value"]


def set_lab_refresh(seconds: float) -> None:
    """Set the lab-wide refresh interval (ValueError outside asymviz.live.REFRESH_RANGE); every
    live view follows within a few seconds."""
    from asymviz import live
    live.write_refresh(home_folder(), seconds)
    _LAB_REFRESH["read_at"] = -1e9


# ---------------------------------------------------------------------------- live views

QUEUED_REFRESH_S = 3.0  # a queued run is looked at less often; it starts at most this late on screen


def refresh_for(status: str) -> float:
    """Seconds between a live view's refreshes: the lab's interval (refresh_seconds), at least
    QUEUED_REFRESH_S while the run is queued."""
    every = refresh_seconds()
    return max(every, QUEUED_REFRESH_S) if status == "queued" else every


def _store_key() -> str:
    from asymviz.store import default_path
    return str(default_path())


@st.cache_resource
def _live_runs(path: str):
    from asymviz.live import LiveRuns
    return LiveRuns()


class _Slots:
    """At most `n` holders at a time; the others wait their turn in order, page loads before
    refreshes, and a freed slot is handed to the next in line (no stampede, no overtaking)."""

    def __init__(self, n: int):
        self._lock = threading.Lock()
        self._free = n
        self._line: list = []  # heap of (priority, arrival, event)
        self._arrivals = itertools.count()

    @contextlib.contextmanager
    def hold(self, priority: int):
        with self._lock:
            if self._free and not self._line:
                self._free -= 1
                turn = None
            else:
                turn = threading.Event()
                heapq.heappush(self._line, (priority, next(self._arrivals), turn))
        if turn is not None:
            turn.wait()  # the slot is ours when set
        try:
            yield
        finally:
            with self._lock:
                if self._line:
                    heapq.heappop(self._line)[2].set()
                else:
                    self._free += 1


_LIVE_SLOTS = _Slots(2)
_PAGE_RUN = threading.local()  # set while a page's full run draws its live view


@contextlib.contextmanager
def page_run():
    """`with page_run():` a live view drawn inside is a page being opened, not a fragment's
    refresh: it gets the next free slot before any refresh waiting for one."""
    _PAGE_RUN.active = True
    try:
        yield
    finally:
        _PAGE_RUN.active = False


@contextlib.contextmanager
def live_slot():
    """Draw a live view while holding one of two slots. Every refresh of every session runs in
    its own thread, and Python runs one thread at a time: a class of sessions refreshing at once
    would have dozens of runnable threads taking turns, and the event loop that sends their
    messages and starts new runs waits its turn behind all of them, so refreshes come later and
    pile up further. Waiting threads take no turns: the server stays responsive when it is
    behind, sessions are served in order, and a page being opened goes first."""
    with _LIVE_SLOTS.hold(0 if getattr(_PAGE_RUN, "active", False) else 1):
        yield


def live_runs():
    """The asymviz.live.LiveRuns of $ASYMVIZ_HOME's store, shared by every session."""
    return _live_runs(_store_key())


def live_run(run_id: int):
    """The run's asymviz.live.LiveRun (of $ASYMVIZ_HOME's store), shared by every session."""
    return live_runs().get(int(run_id))


FAST_CHARTS = True  # False: live charts go through st.plotly_chart (validated again, ~10x the CPU)


def chart(where, chart, key: str, config: dict | None = None) -> None:
    """Show an asymviz.live.Chart (plotly JSON built once for every session) in `where` (st or a
    column), with plotly's `config` (as st.plotly_chart's). It sends the PlotlyChart element
    st.plotly_chart would send for the same figure, with its defaults (theme, width, content
    height), without validating and serializing the figure again for each session;
    tests/test_live_view.py holds the two to the same element."""
    if FAST_CHARTS:
        try:
            _enqueue_plotly_json(where, chart.json, chart.height, key, config)
            return
        except (ImportError, AttributeError, TypeError):  # Streamlit's internals moved: the plain path
            pass
    import json
    where.plotly_chart(json.loads(chart.json), key=key, config=config)


def _enqueue_plotly_json(dg, spec: str, height: int, key: str, config: dict | None = None) -> None:
    import json

    from streamlit.elements.lib.form_utils import current_form_id
    from streamlit.elements.lib.layout_utils import LayoutConfig
    from streamlit.elements.lib.utils import compute_and_register_element_id
    from streamlit.proto.PlotlyChart_pb2 import PlotlyChart

    dg = getattr(dg, "_main", dg) if dg is st else dg
    proto = PlotlyChart()
    proto.theme = "streamlit"
    proto.form_id = current_form_id(dg)
    proto.spec = spec
    proto.config = json.dumps(config or {})
    proto.id = compute_and_register_element_id(
        "plotly_chart", user_key=key, key_as_main_identity=False, dg=dg, plotly_spec=proto.spec,
        plotly_config=proto.config, selection_mode=("points", "box", "lasso"), is_selection_activated=False,
        theme="streamlit", width="stretch", height="content", alt=None)
    dg._enqueue("plotly_chart", proto, layout_config=LayoutConfig(width="stretch", height=height))


@st.cache_resource(show_spinner="Starting the training workers ...")
def _runner(path: str):
    from asymviz.experiment import Advancer
    from asymviz.jobs import get_runner

    runner = get_runner(path)
    # One thread per server moves every launched experiment on (stage 2 once a selection is
    # done, then the width sweep), so an experiment goes on with its tab closed, and again
    # after a server restart.
    Advancer(runner).start()
    return runner


def runner():
    """The process-wide job runner of $ASYMVIZ_HOME's store (started once per server)."""
    from asymviz.store import default_path
    return _runner(str(default_path()))


def store():
    """The run store (read it; write only through the runner)."""
    return runner().store


def home_folder():
    """$ASYMVIZ_HOME (default ~/.asymviz), where the store, the cache and uploads live."""
    from asymviz.store import default_path
    return default_path().parent


@st.cache_resource
def bench_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One thread for timing measurements, shared by every session: two classes pressing
    "Measure" at once queue instead of measuring each other's load."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="asymviz-bench")


SIGN_IN_HELP = ("Sign in to start runs and to stop or delete your own. A name nobody has taken becomes yours "
                "with the PIN you choose; keep the PIN: a reload or a new tab asks for it again. Without "
                "signing in you can look at every run.")


def owner() -> str | None:
    """Who this browser session acts as, shown in the sidebar: the identity provider's user
    (ASYMVIZ_AUTH=oidc), else the name whose PIN this session entered (asymviz.owners); None
    until then: the session may look at every run but start, stop or delete none.

    The proof lives in this session only (never in the URL, so a shared link carries none); a
    reload starts a new session, which asks for the PIN again. A new PIN set by the instructor
    ends the sessions that proved the old one."""
    if owners.auth_mode() == "oidc":  # (access_gate has already refused a bad ASYMVIZ_AUTH)
        name = _identity()
        if name:
            st.sidebar.caption(f"Signed in as **{name}** (your login).")
        else:
            st.sidebar.warning("Your login gives no e-mail or user name this lab can use as your name: you can "
                               "look at runs but not start any.", icon=":material/person_off:")
        return name
    ss = st.session_state
    claim = ss.get("owner_claim")
    if claim is not None and not owners.holds(store(), claim):
        del ss["owner_claim"]
        ss["owner_problem"] = (f"The PIN of {claim['name']} has been changed by the instructor: sign in again "
                               "with the new PIN.")
        claim = None
    if claim is not None:
        st.sidebar.markdown(f"Signed in as **{claim['name']}**")
        if ss.get("owner_welcome"):
            st.sidebar.success(ss.pop("owner_welcome"), icon=":material/key:")
        st.sidebar.button("Sign out", key="owner_sign_out", on_click=_sign_out, icon=":material/logout:")
        st.sidebar.caption("Only this tab is signed in: a reload or a new tab asks for the PIN again.")
        return claim["name"]
    with st.sidebar.form("owner_form"):
        st.text_input("Your name", key="owner_name", max_chars=40, autocomplete="username")
        st.text_input("PIN", key="owner_pin", type="password", max_chars=owners.PIN_MAX,
                      autocomplete="current-password",
                      help=f"{owners.PIN_MIN} to {owners.PIN_MAX} characters; digits are fine.")
        st.form_submit_button("Sign in", key="owner_sign_in", on_click=_sign_in, icon=":material/login:")
    st.sidebar.caption(SIGN_IN_HELP)
    if ss.get("owner_problem"):
        st.sidebar.error(ss.pop("owner_problem"), icon=":material/lock:")
    return None


def sign_in_hint(action: str) -> str:
    """What a session that is not signed in must do first to `action` (e.g. "start a run")."""
    if owners.auth_mode() == "oidc":
        return f"Your login gives no name this lab can use, so you cannot {action}."
    return f"Sign in (your name and a PIN, in the sidebar) to {action}."


def _sign_in() -> None:
    """The sign-in form's callback: prove (or claim) the name; the PIN is not kept."""
    ss = st.session_state
    name, pin = ss.get("owner_name") or "", ss.get("owner_pin") or ""
    ss["owner_pin"] = ""
    try:
        claim = owners.sign_in(store(), name, pin)
    except Exception as err:
        ss["owner_problem"] = pagekit.friendly_error(err)
        return
    ss["owner_claim"] = {"name": claim["name"], "stamp": claim["stamp"]}
    if claim["claimed"]:
        ss["owner_welcome"] = (f"The name {claim['name']} is yours now. Remember its PIN: a reload or a new tab "
                               "asks for it again, and only your instructor can set a new one.")


def _sign_out() -> None:
    st.session_state.pop("owner_claim", None)


def error(err: BaseException, where=None) -> None:
    """Show an exception as one sentence (never a traceback)."""
    (where or st).error(pagekit.friendly_error(err), icon=":material/error:")
