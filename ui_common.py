"""Streamlit helpers shared by the dashboard pages (app.py and pages/*.py).

Shared, thread-safe objects live in `st.cache_resource` (the job runner and its store, the
benchmark thread); per-browser state (the owner name) in `st.session_state`. Everything that
does not need Streamlit is in `asymviz.ui`, where it is unit-tested.
"""

from __future__ import annotations

import concurrent.futures
import os

import streamlit as st

from asymviz import ui

def setup(title: str, icon: str) -> None:
    """Page config; call first on every page."""
    st.set_page_config(page_title=f"{title} · asymviz", page_icon=icon, layout="wide")


def refresh_seconds() -> float:
    """How often live views poll the store: $ASYMVIZ_REFRESH_S (default 1 s, at least 0.2)."""
    try:
        return max(0.2, float(os.environ.get("ASYMVIZ_REFRESH_S", "1.0")))
    except ValueError:
        return 1.0


@st.cache_resource(show_spinner="Starting the training workers ...")
def _runner(path: str):
    from asymviz.jobs import get_runner
    return get_runner(path)


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


def _owner_changed() -> None:
    ss = st.session_state
    name = (ss.get("owner_name") or "").strip()
    ss["owner_problem"] = ui.owner_problem(name)
    if not ss["owner_problem"]:
        ss["owner"] = name


def owner() -> str:
    """This browser session's owner name, asked once in the sidebar (default guest-xxxx)."""
    ss = st.session_state
    if "owner" not in ss:
        ss["owner"] = ui.default_owner()
    ss["owner_name"] = ss["owner"]  # every page has its own copy of the widget: give it the name
    st.sidebar.text_input(
        "Your name", key="owner_name", max_chars=40, on_change=_owner_changed,
        help="Shown on the runs you start; only you can stop or delete them. Kept while this tab is open: "
             "after a reload, type the same name again to manage your runs.")
    if ss.get("owner_problem"):
        st.sidebar.error(ss.pop("owner_problem"))
    return ss["owner"]


def error(err: BaseException, where=None) -> None:
    """Show an exception as one sentence (never a traceback)."""
    (where or st).error(ui.friendly_error(err), icon=":material/error:")
