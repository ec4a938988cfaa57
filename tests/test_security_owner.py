"""Ownership holds: a name typed in the sidebar gives no control of its runs, a shared link
carries none, the per-owner limit follows the proven name, PINs are stored as slow salted
hashes and guessing them is rate-limited in the store, the instructor (and only the instructor)
sets a new PIN. asymviz.owners and its store table as units (and the lab's password, kept by a
session only as a token), then the dashboard through AppTest, attacked the way a classmate would:
typing a name, guessing PINs, forcing a disabled button."""

import hashlib
import re
import sqlite3
import threading

import pytest

from asymviz import owners
from asymviz.errors import ConfigError
from asymviz.jobs import Runner
from asymviz.owners import ADMIN, SignInError
from asymviz.store import MIGRATIONS, Store
from asymviz.train import TrainConfig
from conftest import PIN

TRAIN, RUNS, INSTRUCTOR = "pages/1_Train.py", "pages/2_Runs.py", "pages/5_Instructor.py"


@pytest.fixture
def store():
    with Store(":memory:") as s:
        yield s


def test_passwords_compare_by_token():
    assert owners.password_matches("sesame", "sesame")
    assert not owners.password_matches("Sesame", "sesame") and not owners.password_matches("", "sesame")
    assert "sesame" not in owners.password_token("sesame") and len(owners.password_token("x")) == 64


def test_auth_mode(monkeypatch):
    monkeypatch.delenv("ASYMVIZ_AUTH", raising=False)
    assert owners.auth_mode() == "password"
    monkeypatch.setenv("ASYMVIZ_AUTH", "OIDC")
    assert owners.auth_mode() == "oidc"
    monkeypatch.setenv("ASYMVIZ_AUTH", "ldap")
    with pytest.raises(ConfigError, match="ASYMVIZ_AUTH must be 'oidc' or unset"):
        owners.auth_mode()


def lock_expires(store, name):
    """Time passes: the name's lock runs out (its attempt count stays)."""
    with store._transaction() as db:
        db.execute("UPDATE owners SET locked_until = 0 WHERE key = ?", (owners.name_key(name),))


# ------------------------------------------------------------------------- names and PINs (units)


def test_a_name_is_claimed_once_and_then_needs_its_pin(store):
    first = owners.sign_in(store, "Ana", "4711")
    assert first["claimed"] and first["name"] == "Ana" and owners.holds(store, first)
    again = owners.sign_in(store, "  ana ", "4711")  # any spelling of the name: the claimed one
    assert not again["claimed"] and again["name"] == "Ana" and owners.holds(store, again)
    with pytest.raises(SignInError, match=r"^Wrong PIN for Ana \(4 more tries before a pause\): if the name"):
        owners.sign_in(store, "ANA", "1234")
    assert owners.sign_in(store, "Ben Li", "4711")["claimed"]  # the same PIN on another name is fine


@pytest.mark.parametrize("name", ["cli", "CLI", "guest-3fa2", "Guest-anything", "admin", "Administrator",
                                  "instructor"])
def test_reserved_names_cannot_be_claimed(store, name):
    with pytest.raises(SignInError, match="is reserved; choose another"):
        owners.sign_in(store, name, "4711")
    assert store.owner_claims() == []


@pytest.mark.parametrize("name, pin, sentence", [
    ("", "4711", "A name must be 1 to 40"), ("-ana", "4711", "A name must be 1 to 40"),
    ("x" * 41, "4711", "A name must be 1 to 40"), ("ana;drop", "4711", "A name must be 1 to 40"),
    ("ana", "", "A PIN must be 4 to 32"), ("ana", "123", "A PIN must be 4 to 32"),
    ("ana", "    ", "A PIN must be 4 to 32"), ("ana", "9" * 33, "A PIN must be 4 to 32"),
])
def test_bad_names_and_pins_are_one_sentence(store, name, pin, sentence):
    with pytest.raises(SignInError, match=sentence) as err:
        owners.sign_in(store, name, pin)
    assert "\n" not in str(err.value) and store.owner_claims() == []


def test_stored_hashes_are_not_the_pin(tmp_path):
    path = tmp_path / "asymviz.db"
    with Store(path) as store:
        owners.sign_in(store, "ana", "4711")
        owners.sign_in(store, "ben", "4711")
    raw = sqlite3.connect(path).execute("SELECT name, kdf, salt, pin_hash FROM owners ORDER BY name").fetchall()
    assert all(b"4711" not in f.read_bytes() for f in tmp_path.iterdir())  # the file, its WAL: no PIN
    (_, kdf, salt_a, hash_a), (_, _, salt_b, hash_b) = raw
    assert kdf == "scrypt:16384:8:1" and len(salt_a) == 16 and salt_a != salt_b  # a salt per name ...
    assert hash_a != hash_b  # ... so one PIN gives two hashes
    assert hash_a == hashlib.scrypt(b"4711", salt=salt_a, n=16384, r=8, p=1, dklen=32)  # a slow KDF, not a digest


def test_the_instructor_sets_a_new_pin_and_old_sessions_end(store):
    session = owners.sign_in(store, "ana", "4711")
    assert owners.set_pin(store, "ANA", "9090") == "ana"  # keeps the claimed spelling
    assert not owners.holds(store, session)  # a session that proved the old PIN no longer acts as ana
    with pytest.raises(SignInError, match="Wrong PIN for ana"):
        owners.sign_in(store, "ana", "4711")
    assert owners.holds(store, owners.sign_in(store, "ana", "9090"))
    assert owners.set_pin(store, "cleo", "5555") == "cleo"  # the instructor may hand out a name, too
    assert not owners.sign_in(store, "cleo", "5555")["claimed"]
    with pytest.raises(SignInError, match="reserved"):
        owners.set_pin(store, "cli", "5555")


def test_guessing_a_pin_is_rate_limited_in_the_store(tmp_path):
    path = tmp_path / "asymviz.db"
    with Store(path) as store:
        owners.sign_in(store, "ana", "4711")
        for guess in range(owners.FREE_ATTEMPTS):
            with pytest.raises(SignInError, match="Wrong PIN for ana"):
                owners.sign_in(store, "ana", f"{guess:04d}")
    with Store(path) as store:  # another process (or a restarted server) sees the same count
        with pytest.raises(SignInError) as err:
            owners.sign_in(store, "ana", "4711")  # even the right PIN waits
        assert re.fullmatch(r"Too many wrong PINs for ana: try again in (30|29|28) s, or ask your instructor "
                            r"to set a new PIN\.", str(err.value))
        lock_expires(store, "ana")
        with pytest.raises(SignInError, match=r"Wrong PIN for ana \(no more tries for 60 s\)"):
            owners.sign_in(store, "ana", "0000")  # each further wrong PIN locks twice as long
        with pytest.raises(SignInError, match=r"try again in (60|59|58) s"):
            owners.sign_in(store, "ana", "4711")
        lock_expires(store, "ana")
        assert owners.sign_in(store, "ana", "4711")["name"] == "ana"  # the right PIN resets the count
        assert store.owner_claim("ana")["failures"] == 0
        with pytest.raises(SignInError, match=r"\(4 more tries"):
            owners.sign_in(store, "ana", "0000")
    assert [owners.locked_for(n) for n in (1, 4, 5, 6, 7, 50)] == [0, 0, 30, 60, 120, owners.MAX_LOCK_S]


def test_parallel_guesses_cannot_slip_past_the_count(tmp_path):
    path = tmp_path / "asymviz.db"
    with Store(path) as store:
        owners.sign_in(store, "ana", "4711")
    outcomes = []

    def guess(i):
        with Store(path) as store:  # a connection each, as several server processes would
            try:
                owners.sign_in(store, "ana", f"{i:04d}")
            except SignInError as err:
                outcomes.append(str(err).split(":")[0].split(" (")[0])

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("Wrong PIN for ana") == owners.FREE_ATTEMPTS  # only these were checked
    assert outcomes.count("Too many wrong PINs for ana") == 16 - owners.FREE_ATTEMPTS


def test_a_login_providers_identity_is_the_owner():
    assert owners.oidc_owner({"email": "ana.li+lab@school.edu", "preferred_username": "ali"}) == "ana.li+lab@school.edu"
    assert owners.oidc_owner({"email": None, "preferred_username": "ali"}) == "ali"
    assert owners.oidc_owner({"preferred_username": "cli"}) is None  # never the command line's name
    assert owners.oidc_owner({"preferred_username": "guest-1a2b"}) is None
    assert owners.oidc_owner({"name": "Ana Li"}) is None  # display names are not unique: not an identity


def test_an_older_store_gains_the_owners_table_and_keeps_its_runs(tmp_path, monkeypatch):
    from asymviz import store as store_module

    path = tmp_path / "asymviz.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:2])  # the store before owners existed
    with Store(path) as old:
        run_id = old.create_run({"dataset": "moons"}, owner="ana")
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with Store(path) as new:
        assert new.schema_version == len(MIGRATIONS) and new.get_run(run_id)["owner"] == "ana"
        assert owners.sign_in(new, "ana", "4711")["claimed"]  # the first to claim a name gets its old runs


def test_the_command_line_still_acts_on_any_run(home):
    from asymviz.cli import main

    runner = Runner(home / "asymviz.db", workers=0)
    queued = runner.submit({"dataset": "moons", "hidden": [8]}, owner="ana")
    ended = runner.submit({"dataset": "moons", "hidden": [8]}, owner="ben")
    runner.stop(ended, owner=ADMIN)
    assert main(["runs", "stop", str(queued)]) == 0  # the machine's own user needs no PIN
    assert main(["runs", "delete", str(ended)]) == 0
    assert runner.status(queued)["status"] == "stopped" and [r["id"] for r in runner.store.list_runs()] == [queued]
    assert main(["submit", "--dataset", "moons"]) == 0
    assert runner.store.list_runs()[0]["owner"] == "cli"


# ------------------------------------------------------------------------------ the dashboard


def add_run(home, owner, status="queued"):
    c = TrainConfig(dataset="moons", hidden=[8], epochs=3).validated()
    with Store(home / "asymviz.db") as store:
        run_id = store.create_run(c.to_dict(), owner=owner)
        if status != "queued":
            store.set_status(run_id, "running")
            store.set_status(run_id, status)
    return run_id


def claim(home, name, pin):
    with Store(home / "asymviz.db") as store:
        owners.sign_in(store, name, pin)


def runs_of(home):
    with Store(home / "asymviz.db") as store:
        return {r["id"]: r for r in store.list_runs()}


def type_name(at, name, pin="0000"):
    """What a classmate does in the sidebar: sign out if signed in, type a name and, where the
    sidebar asks for one, a PIN, then press Enter."""
    if [b for b in at.button if b.key == "owner_sign_out"]:
        at.button(key="owner_sign_out").click().run()
    at.text_input(key="owner_name").input(name)
    if [t for t in at.text_input if t.key == "owner_pin"]:
        at.text_input(key="owner_pin").input(pin)
        at.button(key="owner_sign_in").click()
    at.run()
    assert not at.exception, at.exception
    return at


def force_click(at, key):
    """A hostile client: clear a button's disabled flag on its side and send the click anyway."""
    button = at.button(key=key)
    button.proto.disabled = False
    button.click().run()
    assert not at.exception, at.exception
    return at


def test_typing_another_students_name_gives_no_stop_or_delete(page, home):
    claim(home, "ana", "4711")
    live, ended = add_run(home, "ana"), add_run(home, "ana", status="finished")
    at = type_name(page(RUNS, owner=None, state={"runs_selected_ids": [live, ended]}), "ana")
    assert at.button(key="runs_stop").disabled and at.button(key="runs_delete").disabled
    assert at.sidebar.error[0].value.startswith("Wrong PIN for ana")
    force_click(at, "runs_stop")
    force_click(at, "runs_delete")
    runs = runs_of(home)
    assert runs[live]["status"] == "queued" and not runs[live]["stop_requested"] and ended in runs


def test_nobody_in_the_dashboard_acts_as_the_command_line(page, home):
    cli_run = add_run(home, "cli")  # queued by `python -m asymviz submit`
    at = type_name(page(RUNS, owner=None, state={"runs_selected_ids": [cli_run]}), "cli", pin="4711")
    said = [e.value for e in at.sidebar.error]
    force_click(at, "runs_stop")
    assert runs_of(home)[cli_run]["status"] == "queued"
    assert said == [
        "The name 'cli' is reserved; choose another (names starting with 'guest-', and admin, administrator, cli, "
        "instructor, are not available)."]


def test_a_shared_link_carries_no_control(page, home):
    at = page(TRAIN, owner="ana", query_params={"dataset": "moons", "epochs": "3"})
    at.button(key="train_start").click().run()
    (run_id,) = runs_of(home)
    link = dict(at.query_params)
    proof = at.session_state["owner_claim"]["stamp"]
    assert link["run"] == str(run_id) and not any(PIN in v or proof in v for v in link.values())
    link.update(owner="ana", owner_claim="ana", owner_name="ana")  # and what a forger would add
    theirs = page(TRAIN, owner=None, query_params=link)
    assert theirs.button(key="train_stop").disabled and not [b for b in theirs.button if b.key == "owner_sign_out"]
    type_name(theirs, "ana")  # the run's label names its owner: type it
    assert theirs.button(key="train_stop").disabled
    force_click(theirs, "train_stop")
    assert runs_of(home)[run_id]["status"] == "queued"


def test_a_reload_asks_for_the_pin_and_then_gives_control_back(page, home):
    claim(home, "ana", "4711")
    live = add_run(home, "ana")
    at = page(RUNS, owner=None, state={"runs_selected_ids": [live]})  # a new session, as after a reload
    assert at.button(key="runs_stop").disabled
    assert any("a reload or a new tab asks for it again" in c.value for c in at.sidebar.caption)
    type_name(at, "ANA", pin="4711")  # the right PIN: ana again, however it is spelled
    assert [m.value for m in at.sidebar.markdown][0] == "Signed in as **ana**"
    at.button(key="runs_stop").click().run()
    assert runs_of(home)[live]["status"] == "stopped"


def test_changing_ones_name_does_not_get_around_the_per_owner_limit(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MAX_RUNS_PER_OWNER", "1")
    claim(home, "ben", "8080")
    at = page(TRAIN, owner="ana", query_params={"dataset": "moons"})
    at.button(key="train_start").click().run()
    at.button(key="train_start").click().run()
    assert any("ana already has 1 queued or running runs" in e.value for e in at.error)
    type_name(at, "ben")  # ben's name, a guessed PIN
    assert at.button(key="train_start").disabled
    force_click(at, "train_start")
    assert [r["owner"] for r in runs_of(home).values()] == ["ana"]


def test_guessing_a_pin_in_the_sidebar_is_refused_in_one_sentence(page, home):
    claim(home, "ana", "4711")
    live = add_run(home, "ana")
    at = page(RUNS, owner=None, state={"runs_selected_ids": [live]})
    for guess in range(owners.FREE_ATTEMPTS):
        type_name(at, "ana", pin=f"{guess:04d}")
        assert at.button(key="runs_stop").disabled
    type_name(at, "ana", pin="4711")  # the right one, too late
    assert at.button(key="runs_stop").disabled
    (sentence,) = [e.value for e in at.sidebar.error]
    assert re.fullmatch(r"Too many wrong PINs for ana: try again in \d+ s, or ask your instructor to set a new "
                        r"PIN\.", sentence)
    assert not [b for b in at.button if b.key == "owner_sign_out"]
    assert at.text_input(key="owner_pin").value == ""  # no PIN stays in the session


def through_the_gate(at, password):
    at.text_input(key="access_password").input(password)
    at.get("button")[0].click().run()  # the lab password form's submit button
    assert not at.exception, at.exception
    return at


def test_only_the_instructor_password_opens_the_pin_reset(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_PASSWORD", "sesame")
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    claim(home, "ana", "4711")
    ana = type_name(through_the_gate(page(RUNS, owner=None), "sesame"), "ana", pin="4711")
    assert [m.value for m in ana.sidebar.markdown][0] == "Signed in as **ana**"
    at = through_the_gate(page(INSTRUCTOR, owner=None), "sesame")
    for wrong in ("sesame", "4711"):  # the lab password, a student's PIN
        at.text_input(key="instructor_password").input(wrong)
        at.get("button")[0].click().run()
        assert not [t for t in at.text_input if t.key == "instructor_pin_name"] and not at.get("dataframe")
    at.text_input(key="instructor_password").input("chalk")
    at.get("button")[0].click().run()
    names = next(d.value for d in at.dataframe if "PIN set" in d.value.columns)
    assert list(names["name"]) == ["ana"] and not {"pin_hash", "salt"} & set(names.columns)
    at.text_input(key="instructor_pin_name").input("ana")
    at.text_input(key="instructor_pin_new").input("9090")
    at.button(key="instructor_pin_set").click().run()
    assert [s.value for s in at.success] == ["ana has a new PIN."]
    assert at.text_input(key="instructor_pin_new").value == ""  # the new PIN is not kept either
    ana.run()  # ana's session proved the old PIN: it must sign in again
    assert "changed by the instructor" in ana.sidebar.error[0].value
    type_name(ana, "ana", pin="9090")
    assert [m.value for m in ana.sidebar.markdown][0] == "Signed in as **ana**"


def test_a_session_that_has_not_signed_in_starts_nothing(page, home):
    at = page("app.py", owner=None)
    assert at.button(key="home_try").disabled
    force_click(at, "home_try")
    at = page(TRAIN, owner=None, query_params={"dataset": "moons"})
    assert any(c.value == "Sign in (your name and a PIN, in the sidebar) to start a run." for c in at.caption)
    force_click(at, "train_start")
    at = page("pages/4_Experiment.py", owner=None)
    force_click(at, "exp_launch")
    assert runs_of(home) == {} and "exp" not in at.query_params


def test_the_machines_user_resets_a_pin_from_the_command_line(home):
    """A lab without an instructor password: `owners set-pin` is the reset, `owners list` the view."""
    import os
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "asymviz", "owners", *args], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "ASYMVIZ_HOME": str(home)})

    with Store(home / "asymviz.db") as store:
        old = owners.sign_in(store, "ana", "1111")
    p = cli("set-pin", "Ana", "--pin", "2222")
    assert p.returncode == 0 and "new PIN" in p.stderr
    with Store(home / "asymviz.db") as store:
        assert not owners.holds(store, old)
        assert owners.sign_in(store, "ana", "2222")["name"] == "ana"
        with pytest.raises(SignInError):
            owners.sign_in(store, "ana", "1111")
    assert "ana" in cli("list").stdout
    p = cli("set-pin", "cli", "--pin", "2222")
    assert p.returncode == 2 and "reserved" in p.stderr and len(p.stderr.strip().splitlines()) == 1
