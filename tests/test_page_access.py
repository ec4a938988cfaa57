"""The lab's access rules through streamlit.testing's AppTest: the instance password gate on every
page, the instructor view's own password and powers, and the datasets a lab offers."""

import pytest
from streamlit.testing.v1 import AppTest

from asymviz.store import Store
from asymviz.train import TrainConfig
from conftest import ROOT, signed_in
from helpers import FakePool

PAGES = ["app.py", "pages/1_Train.py", "pages/2_Runs.py", "pages/3_Backward_timing.py",
         "pages/4_Experiment.py", "pages/5_Instructor.py"]
INSTRUCTOR = "pages/5_Instructor.py"
GATE = {"form", "text_input", "button"}  # all a gated page may show: the password form


def elements(at) -> list[tuple[str, object]]:
    """(type, value) of every element on the page, main area and sidebar, depth first."""
    out = []

    def walk(node):
        children = getattr(node, "children", None)
        for child in (children.values() if isinstance(children, dict) else []):
            out.append((child.type, getattr(child, "value", None) if child.type != "block" else None))
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return out


def opened(path="app.py", state=None, owner=None, home=None):
    """An AppTest that entered through app.py (as a browser does) and then opened `path`; with
    `owner` (and the store's `home`), signed in as that name."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    for key, value in {**(state or {}), **(signed_in(home, owner) if owner else {})}.items():
        at.session_state[key] = value
    at.run()
    if path != "app.py":
        at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def table_with(at, column):
    """The one dataframe on the page with this column."""
    [table] = [d.value for d in at.dataframe if column in d.value.columns]
    return table


def enter(at, password, key="access"):
    at.text_input(key=f"{key}_password").input(password)
    at.get("button")[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    return at


def add_run(home, owner, status="queued", **config):
    c = TrainConfig(**{"dataset": "moons", "hidden": [8], "epochs": 3, **config}).validated()
    with Store(home / "asymviz.db") as store:
        run_id = store.create_run(c.to_dict(), owner=owner)
        if status != "queued":
            store.set_status(run_id, "running")
            if status != "running":
                store.set_status(run_id, status)
    return run_id


def runs_by_id(home):
    with Store(home / "asymviz.db") as store:
        return {r["id"]: r for r in store.list_runs()}


# --------------------------------------------------------------------------- the instance password


@pytest.mark.parametrize("path", PAGES)
def test_with_a_lab_password_every_page_shows_only_the_password_form(home, monkeypatch, path):
    monkeypatch.setenv("ASYMVIZ_PASSWORD", "sesame")
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    at = opened(path)
    shown = elements(at)
    assert {kind for kind, _ in shown} == GATE, shown
    assert [value for kind, value in shown if kind == "text_input"] == [""]
    assert at.text_input(key="access_password").label == "Lab password"


def test_a_wrong_password_shows_the_error_and_nothing_else(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_PASSWORD", "sesame")
    add_run(home, "ana")
    at = enter(opened(), "Sesame")
    shown = elements(at)
    assert {kind for kind, _ in shown} == GATE | {"error"}, shown
    assert [e.value for e in at.error] == ["Wrong password: ask your instructor for this lab's password."]
    at.switch_page("pages/2_Runs.py").run()  # another page: still locked, still no runs listed
    assert {kind for kind, _ in elements(at)} == GATE


def test_the_right_password_opens_every_page_for_the_session(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_PASSWORD", "sesame")
    at = enter(opened(), "sesame")
    assert at.title[0].value.startswith("asymviz")
    assert at.text_input(key="owner_name").value == "" and at.button(key="owner_sign_in")  # not signed in yet
    assert "sesame" not in repr(at.session_state)  # a token, not the password
    at.switch_page("pages/1_Train.py").run()
    assert not at.exception and at.title[0].value == "Train"


def test_without_a_lab_password_there_is_no_gate(home):
    at = opened()
    assert at.title and [t.key for t in at.text_input] == ["owner_name", "owner_pin"]  # only the sign-in form


def test_oidc_mode_shows_only_the_login_button(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_AUTH", "oidc")
    at = opened()
    assert {kind for kind, _ in elements(at)} == {"button"}
    assert at.button(key="auth_login").label == "Log in"


def test_a_bad_auth_mode_is_one_sentence(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_AUTH", "ldap")
    at = opened()
    assert [kind for kind, _ in elements(at)] == ["error"]
    assert "ASYMVIZ_AUTH" in at.error[0].value


# ------------------------------------------------------------------------------ instructor view


def test_instructor_view_is_disabled_without_its_password(home):
    add_run(home, "ana")
    at = opened(INSTRUCTOR)
    assert "ASYMVIZ_INSTRUCTOR_PASSWORD" in at.info[0].value and "disabled" in at.info[0].value
    assert not at.get("dataframe") and not at.get("multiselect")


def test_instructor_view_refuses_a_wrong_password(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    add_run(home, "ana")
    at = enter(opened(INSTRUCTOR), "sesame", key="instructor")
    assert [e.value for e in at.error] == ["Wrong password: this view needs the instructor password."]
    assert not at.get("dataframe") and not at.get("multiselect") and not at.get("metric")


def test_the_lab_password_does_not_open_the_instructor_view(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_PASSWORD", "sesame")
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    at = enter(opened(), "sesame")
    at.switch_page(INSTRUCTOR).run()
    at = enter(at, "sesame", key="instructor")
    assert at.error and not at.get("dataframe")


def test_instructor_sees_every_owner_and_stops_anyones_run(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    queued = add_run(home, "ana")
    running = add_run(home, "ben", status="running")
    ended = add_run(home, "cleo", status="finished")
    at = enter(opened(INSTRUCTOR, owner="teacher", home=home), "chalk", key="instructor")
    table = table_with(at, "status")
    assert set(table["owner"]) == {"ana", "ben", "cleo"} and len(table) == 3
    queue = table_with(at, "queued")
    assert {(r.owner, r.queued, r.running) for r in queue.itertuples()} == {("ana", 1, 0), ("ben", 0, 1)}
    assert {m.label for m in at.metric} >= {"Workers alive", "Running", "Queued", "CPU load (1 min)"}
    stop = at.multiselect(key="instructor_stop_ids")
    assert set(stop.options) == {f"#{queued} neuron s=0.9 on moons (8) · ana · queued",
                                 f"#{running} neuron s=0.9 on moons (8) · ben · running"}
    stop.set_value([queued, running]).run()
    at.button(key="instructor_stop").click().run()
    assert not at.exception and not at.error
    runs = runs_by_id(home)
    assert runs[queued]["status"] == "stopped"  # a queued run stops at once
    assert runs[running]["stop_requested"] and runs[running]["status"] == "running"  # its worker stops it
    assert runs[ended]["status"] == "finished"


def test_instructor_clears_ended_runs_only(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    queued = add_run(home, "ana")
    running = add_run(home, "ben", status="running")
    add_run(home, "cleo", status="finished")
    add_run(home, "dan", status="failed")
    at = enter(opened(INSTRUCTOR), "chalk", key="instructor")
    assert at.button(key="instructor_clear").disabled  # nothing ended a week ago
    at.number_input(key="instructor_clear_days").set_value(0.0).run()
    button = at.button(key="instructor_clear")
    assert button.label == "Delete 2 runs" and not button.disabled
    button.click().run()
    assert not at.exception
    assert set(runs_by_id(home)) == {queued, running}
    assert any("Deleted 2 run(s)" in s.value for s in at.success)


def test_instructor_can_leave_the_view(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    at = enter(opened(INSTRUCTOR), "chalk", key="instructor")
    at.button(key="instructor_leave").click().run()
    assert at.text_input(key="instructor_password") is not None and not at.get("metric")


# ---------------------------------------------------------------------------------- datasets


def test_the_train_page_offers_only_the_labs_datasets(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_DATASETS", "circles, moons")
    at = opened("pages/1_Train.py", owner="ana", home=home)
    box = at.selectbox(key="train_dataset")
    assert box.options == ["Two moons", "Circles"]  # in the Train page's order, not the variable's
    assert box.value == "moons" and not at.warning  # digits is not offered: the first offered one, silently
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error
    assert [r["config"]["dataset"] for r in runs_by_id(home).values()] == ["moons"]


def test_a_link_to_a_dataset_not_offered_falls_back_with_a_warning(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_DATASETS", "moons,circles")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/1_Train.py")
    at.query_params.update({"dataset": "mnist"})
    at.run()
    assert at.selectbox(key="train_dataset").value == "moons"
    assert any("'mnist' is not offered here" in w.value for w in at.warning)


def test_a_bad_dataset_list_is_one_sentence(home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_DATASETS", "moons,imagenet")
    at = opened("pages/1_Train.py")
    assert [e.value for e in at.error] == [
        "ASYMVIZ_DATASETS names unknown dataset(s) 'imagenet'; use a comma-separated list of: digits, mnist1d, "
        "moons, circles, spiral, xor, breast_cancer, wine, mnist, fashion_mnist, csv."]


def test_instructor_sees_the_workers_of_serve(home, monkeypatch):
    """Under `python -m asymviz serve` the Streamlit process has no pool; the page reads the
    pool status file serve keeps in ASYMVIZ_HOME (here written for a stand-in worker)."""
    import subprocess
    import sys

    from asymviz import lab

    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lab.write_pool_status(FakePool([worker.pid]))
        run_id = add_run(home, "ana", status="running")
        with Store(home / "asymviz.db") as store, store._transaction() as db:
            db.execute("UPDATE runs SET worker_pid = ? WHERE id = ?", (worker.pid, run_id))
        at = enter(opened(INSTRUCTOR), "chalk", key="instructor")
        workers = table_with(at, "worker pid")
        assert list(workers["worker pid"]) == [worker.pid] and list(workers["owner"]) == ["ana"]
        assert workers["memory (MiB)"][0] > 0 and workers["training"][0].startswith(f"#{run_id} ")
        assert next(m.value for m in at.metric if m.label == "Workers alive") == "1 of 2"
    finally:
        worker.kill()
        worker.wait()
