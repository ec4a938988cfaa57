"""Streamlit helpers shared by the dashboard pages (app.py and pages/*.py).

Shared, thread-safe objects live in `st.cache_resource` (the job runner and its store, the
benchmark thread); per-browser state (the name this session signed in as) in `st.session_state`. Everything that
does not need Streamlit is in `asymviz.ui` and `asymviz.lab`, where it is unit-tested.

`setup()` is also the lab's access gate: with ASYMVIZ_PASSWORD set (or ASYMVIZ_AUTH=oidc) a
page renders nothing but the password form (or the login button) until the session is in.
Past the gate it says on every page what keeps this server from training: its workers gone
(new runs refused, `check_can_train`), or its run store file deleted or replaced (the page stops).
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time

import streamlit as st

from asymviz import lab, owners, ui
from asymviz.errors import AsymvizError

WRONG_PASSWORD = "Wrong password: ask your instructor for this lab's password."


def setup(title: str, icon: str) -> None:
    """Page config, the access gate and the server's health; call first on every page."""
    st.set_page_config(page_title=f"{title} · asymviz", page_icon=icon, layout="wide")
    access_gate()
    server_health()


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


def access_gate() -> None:
    """Stop the page until this session may see the lab: logged in through the identity
    provider (ASYMVIZ_AUTH=oidc, Streamlit's st.login), and holding the lab password when
    ASYMVIZ_PASSWORD is set. Until then the page shows the login or the password form only."""
    try:
        mode = lab.auth_mode()
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
    token = lab.password_token(expected)
    if ss.get(f"{key}_token") == token:
        return
    with st.form(f"{key}_form", clear_on_submit=True):
        st.text_input(label, type="password", key=f"{key}_password", help=caption)
        submitted = st.form_submit_button("Enter", type="primary")
    if submitted:
        entered = ss.get(f"{key}_password") or ""
        if lab.password_matches(entered, expected):
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
        return lab.offered_datasets()
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
    """How often live views poll the store: $ASYMVIZ_REFRESH_S (default 1 s, at least 0.2)."""
    try:
        return max(0.2, float(os.environ.get("ASYMVIZ_REFRESH_S", "1.0")))
    except ValueError:
        return 1.0


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
    if lab.auth_mode() == "oidc":  # (access_gate has already refused a bad ASYMVIZ_AUTH)
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
    if lab.auth_mode() == "oidc":
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
        ss["owner_problem"] = ui.friendly_error(err)
        return
    ss["owner_claim"] = {"name": claim["name"], "stamp": claim["stamp"]}
    if claim["claimed"]:
        ss["owner_welcome"] = (f"The name {claim['name']} is yours now. Remember its PIN: a reload or a new tab "
                               "asks for it again, and only your instructor can set a new one.")


def _sign_out() -> None:
    st.session_state.pop("owner_claim", None)


def error(err: BaseException, where=None) -> None:
    """Show an exception as one sentence (never a traceback)."""
    (where or st).error(ui.friendly_error(err), icon=":material/error:")
