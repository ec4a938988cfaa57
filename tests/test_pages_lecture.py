"""The lecture parts of the dashboard through AppTest: lesson links, hide / lock flags (and the
attacks on them), the pace controls and their state in the store, twins, Reset, the network
picture, the Runs page's twins, the Instructor's start page and Home's lessons."""

import pytest

from asymviz import lessons, pace
from asymviz.snapshot import Recorder
from asymviz.store import Store
from asymviz.train import Callback, TrainConfig, fit

TRAIN, RUNS, INSTRUCTOR = "pages/1_Train.py", "pages/2_Runs.py", "pages/5_Instructor.py"
MOONS = {"dataset": "moons", "hidden": "8,8", "epochs": "3", "sparsity": "0.5", "seed": "11"}


def runs_of(home):
    with Store(home / "asymviz.db") as store:
        return sorted(store.list_runs(), key=lambda r: r["id"])


def pace_of(home, run_id):
    with Store(home / "asymviz.db") as store:
        return pace.get(store, run_id)


def styles(at):
    return " ".join(h.proto.body for h in at.get("html"))


def warnings(at):
    return [w.value for w in at.warning]


# ---------------------------------------------------------------------------- lessons and flags

def test_a_short_lesson_link_opens_its_part_with_hidden_and_locked_controls(page):
    at = page(TRAIN, query_params={"lesson": "chosen-neurons", "part": "2"})
    assert at.selectbox(key="train_dataset").value == "moons"
    assert at.radio(key="train_selection").value == "random"  # part 2
    assert [at.number_input(key=f"train_width_{i}").value for i in range(2)] == [8, 8]
    params = at.query_params
    assert params["lesson"] == "chosen-neurons" and params["part"] == "2" and params["pace"] == "5"
    assert set(params["lock"].split(",")) == {"dataset", "network", "strategy"}
    css = styles(at)
    assert ".st-key-train_dataset" in css and ".st-key-train_optimizer" in css and "display: none" in css
    assert ".st-key-train_strategy" in css and "pointer-events: none" in css  # locked, shown
    assert at.select_slider(key="lecture_speed").value == 5.0
    assert at.get_by_key("lecture_banner") is not None and not warnings(at)


def test_locked_values_cannot_be_changed_from_the_page_and_runs_start_with_them(page, home):
    at = page(TRAIN, query_params={**MOONS, "strategy": "neuron", "lock": "strategy,network", "hide": "optimizer"},
              state={"owner": "ana"})
    at.selectbox(key="train_strategy").set_value("refined").run()  # as a page sends a changed widget
    at.number_input(key="train_width_0").set_value(64).run()
    assert at.selectbox(key="train_strategy").value == "neuron" and at.number_input(key="train_width_0").value == 8
    assert at.query_params["strategy"] == "neuron" and at.query_params["hidden"] == "8,8"
    at.switch_page(RUNS).run()  # away and back: the link's locks stay for the visit
    at.switch_page(TRAIN)
    at.query_params.clear()
    at.run()
    at.selectbox(key="train_strategy").set_value("excessive").run()
    assert at.selectbox(key="train_strategy").value == "neuron" and "strategy" in at.query_params["lock"]
    at.slider(key="train_sparsity").set_value(0.75).run()  # not locked: changes
    at.button(key="train_start").click().run()
    (run,) = runs_of(home)
    assert run["config"]["strategy"] == "neuron" and run["config"]["hidden"] == [8, 8]
    assert run["config"]["sparsity"] == 0.75 and run["owner"] == "ana"


@pytest.mark.parametrize("params, fragments", [
    ({"hide": "dataset,nonsense", "lock": "seed"}, ["`nonsense`, which is not a control"]),
    ({"hide": "[click me](http://evil.example)", "lock": "../../etc/passwd"},
     ["`[click me](http://evi...`", "`../../etc/passwd`"]),
    ({"lesson": "<script>alert(1)</script>"}, ["There is no lesson `<script>alert(1)</scr...`"]),
    ({"lesson": "overfitting", "part": "7"}, ["has parts 1 to 1, not `7`"]),
    ({"pace": "1e9", "twins": "maybe", "twins_p": "1.5"}, ["pace `1e9`", "twins flag must be 1 or 0", "twins_p `1.5`"]),
    ({"hide": "x" * 400}, ["too long"]),
])
def test_hostile_flags_are_one_sentence_each_and_ignored(page, params, fragments):
    at = page(TRAIN, query_params={**MOONS, **params})
    assert not at.exception
    found = warnings(at)
    for fragment in fragments:
        assert any(fragment in w for w in found), (fragment, found)
    assert all("\n" not in w for w in found) and len(found) == len(fragments)
    assert ".st-key-train_nonsense" not in styles(at)
    assert at.select_slider(key="lecture_speed").value == pace.TOY_SPEED  # the page's default pace
    assert at.toggle(key="lecture_twins").value is False


def test_a_plain_link_of_another_configuration_ends_a_lessons_locks(page):
    at = page(TRAIN, query_params={"lesson": "connections"})
    assert "strategy" in at.query_params["lock"]
    at.switch_page(TRAIN)
    at.query_params.clear()
    at.query_params.update({**MOONS, "strategy": "symmetric"})
    at.run()
    assert "lock" not in at.query_params and at.selectbox(key="train_strategy").value == "symmetric"
    at.selectbox(key="train_strategy").set_value("neuron").run()
    assert at.selectbox(key="train_strategy").value == "neuron"


def test_every_control_a_link_names_has_its_widgets():
    import ui_lecture

    assert set(ui_lecture.KEYS) == set(lessons.CONTROLS)


def test_every_lesson_part_is_a_valid_link(page):
    for slug, lesson in lessons.LESSONS.items():
        for part in range(1, len(lesson.parts) + 1):
            flags, problems = lessons.parse_flags(lessons.query(slug, part))
            assert problems == [] and flags.lesson == slug and flags.part == part
    at = page(TRAIN, query_params=lessons.query("sparse-speed", 2))
    assert not warnings(at) and not at.error
    assert at.toggle(key="lecture_twins").value is True
    assert at.select_slider(key="lecture_speed").value == 0.0  # not a toy set: full speed


# ---------------------------------------------------------------------------------- pace and twins

def test_the_pace_of_a_run_follows_the_sidebar(page, home):
    at = page(TRAIN, query_params=MOONS, state={"owner": "ana"})
    assert at.select_slider(key="lecture_speed").value == pace.TOY_SPEED  # toy 2-D set: slow enough to watch
    at.select_slider(key="lecture_speed").set_value(1.0).run()
    assert at.query_params["pace"] == "1"
    at.button(key="train_start").click().run()
    (run,) = runs_of(home)
    assert pace_of(home, run["id"]) == pace.Pace(speed=1.0) and not run["held"]
    at.selectbox(key="train_dataset").set_value("digits").run()
    assert at.select_slider(key="lecture_speed").value == 1.0  # chosen by hand: kept


def test_pause_step_play_and_speed_are_stored_and_only_for_the_owner(page, home):
    at = page(TRAIN, query_params=MOONS, state={"owner": "ana"})
    at.button(key="train_start").click().run()
    (run,) = runs_of(home)
    assert at.button(key="lecture_play").disabled and not at.button(key="lecture_pause").disabled
    at.button(key="lecture_pause").click().run()
    assert pace_of(home, run["id"]).paused and not at.button(key="lecture_play").disabled
    at.button(key="lecture_step").click().run()
    at.button(key="lecture_step").click().run()
    assert pace_of(home, run["id"]) == pace.Pace(paused=True, speed=pace.TOY_SPEED, budget=2)
    at.button(key="lecture_step_epoch").click().run()
    assert pace_of(home, run["id"]).to_epoch_end
    at.segmented_control(key="lecture_run_speed").set_value(5.0).run()
    assert pace_of(home, run["id"]).speed == 5.0
    at.button(key="lecture_play").click().run()
    assert pace_of(home, run["id"]) == pace.Pace(speed=5.0)
    assert any(m.value.startswith("Step **0**") for m in at.markdown)

    other = page(TRAIN, query_params={"run": str(run["id"])}, state={"owner": "bob"})
    for key in ("lecture_play", "lecture_pause", "lecture_step", "lecture_step_epoch", "lecture_reset"):
        assert other.button(key=key).disabled
    assert other.segmented_control(key="lecture_run_speed").disabled


def test_a_held_run_is_paused_in_the_store_and_play_releases_it(page, home):
    with Store(home / "asymviz.db") as store:
        run_id = store.create_run(TrainConfig(dataset="moons", hidden=[8, 8]).validated().to_dict(), owner="ana",
                                  held=True)
        pace.pause(store, [run_id])
    at = page(TRAIN, query_params={"run": str(run_id)}, state={"owner": "ana"})
    assert any("gave its worker back" in c.value for c in at.caption)
    assert "Paused" in at.get("progress")[0].proto.text
    at.button(key="lecture_play").click().run()
    (run,) = runs_of(home)
    assert not run["held"] and not pace_of(home, run_id).paused


def test_twins_submit_three_runs_with_the_same_seed_and_show_together(page, home):
    at = page(TRAIN, query_params=MOONS, state={"owner": "ana"})
    at.toggle(key="lecture_twins").set_value(True).run()
    at.slider(key="lecture_twins_p").set_value(0.3).run()
    assert at.query_params["twins"] == "1" and at.query_params["twins_p"] == "0.3"
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error
    runs = runs_of(home)
    assert [r["config"]["strategy"] for r in runs] == ["neuron", "symmetric", "dropout"]
    assert {r["config"]["seed"] for r in runs} == {11} and runs[2]["config"]["dropout"] == 0.3
    assert len({r["tag"] for r in runs}) == 1 and runs[0]["tag"].startswith("twins:")
    assert {r["config"]["hidden"] == [8, 8] for r in runs} == {True}
    assert at.query_params["run"] == str(runs[0]["id"])
    for key in ("lecture_twins_acc", "lecture_twins_gap", "lecture_twins_time"):
        at.get_by_key(key)
    (table,) = [d.value for d in at.dataframe if "backward ms" in d.value.columns]
    assert len(table) == 3 and list(table["status"]) == ["queued"] * 3
    at.button(key="lecture_pause").click().run()  # the group pauses together
    assert all(pace_of(home, r["id"]).paused for r in runs)

    runs_page = page(RUNS, state={"owner": "ana"})
    assert runs_page.selectbox(key="runs_twins_pick").value == runs[0]["tag"]
    runs_page.button(key="runs_twins_open").click().run()
    assert runs_page.query_params["run"] == str(runs[0]["id"])
    runs_page.get_by_key("lecture_twins_time")


def test_twins_over_the_per_person_limit_start_nothing(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MAX_RUNS_PER_OWNER", "2")
    at = page(TRAIN, query_params={**MOONS, "twins": "1"}, state={"owner": "ana"})
    at.button(key="train_start").click().run()
    (sentence,) = [e.value for e in at.error]
    assert sentence.startswith("Comparing with symmetric and dropout starts 3 runs") and "\n" not in sentence
    assert runs_of(home) == []


def test_reset_starts_the_configuration_again_paused(page, home):
    at = page(TRAIN, query_params=MOONS, state={"owner": "ana"})
    at.button(key="train_start").click().run()
    at.button(key="lecture_reset").click().run()
    old, new = runs_of(home)
    assert old["status"] == "stopped" and new["status"] == "queued" and new["config"] == old["config"]
    assert pace_of(home, new["id"]).paused and at.query_params["run"] == str(new["id"])


# ---------------------------------------------------------------------------------- the picture

class Snapshots(Callback):
    def __init__(self, store, run_id):
        self.store, self.run_id = store, run_id

    def on_fit_start(self, ctx):
        self.recorder = Recorder(ctx.model, ctx.data, ctx.device)

    def on_step_end(self, ctx, record):
        self.recorder.count()

    def on_fit_end(self, ctx, result):
        pace.write_snapshot(self.store, self.run_id, self.recorder.capture(ctx.step, ctx.epoch))


def test_the_network_picture_and_live_boundary_of_a_run(page, home):
    config = TrainConfig(dataset="moons", hidden=[8, 8], sparsity=0.5, epochs=1).validated()
    with Store(home / "asymviz.db") as store:
        run_id = store.create_run(config.to_dict(), owner="ana")
        store.claim_next(1, "test")
        fit(config, [Snapshots(store, run_id)])
        store.set_status(run_id, "finished", summary={"steps": 11})
    at = page(TRAIN, query_params={"run": str(run_id)})
    network = at.get_by_key("lecture_fig_network")
    at.get_by_key("lecture_fig_boundary")
    import json
    fig = json.loads(network.proto.spec)
    (neurons,) = [t for t in fig["data"] if t.get("name") == "neurons"]
    kept = [c for c in neurons["customdata"] if c[0] in (1, 2) and c[2]]
    assert len(kept) == 8  # k = 4 in each of the two hidden layers
    assert len(fig["layout"]["images"]) == 2 + 16  # the inputs' and the hidden neurons' heat maps


# ------------------------------------------------------------------------------ home, instructor

def test_home_lists_lessons_and_try_it_trains_at_the_toy_pace(page, home):
    at = page("app.py", state={"owner": "ana"})
    links = {p.proto.query_string for p in at.get("page_link") if p.proto.page == "Train"}
    assert {f"lesson={slug}" for slug in lessons.LESSONS} <= links
    at.button(key="home_try").click().run()
    (run,) = runs_of(home)
    assert pace_of(home, run["id"]).speed == pace.TOY_SPEED


def test_instructor_pins_a_lesson_as_the_start_page(page, home, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_INSTRUCTOR_PASSWORD", "chalk")
    at = page(INSTRUCTOR)
    at.text_input(key="instructor_password").input("chalk")
    at.get("button")[0].click().run()
    (table,) = [d.value for d in at.dataframe if "link" in d.value.columns]
    assert list(table["link"]) == [f"/Train?lesson={slug}" for slug in lessons.LESSONS]
    at.selectbox(key="instructor_start_page").set_value("connections").run()
    at.button(key="instructor_start_save").click().run()
    with Store(home / "asymviz.db") as store:
        assert lessons.pinned(store) == "connections"
        with pytest.raises(Exception, match="There is no lesson"):
            lessons.pin(store, "../../etc")
    fresh = page("app.py")  # a new browser session lands on the lesson
    assert fresh.query_params["lesson"] == "connections" and fresh.selectbox(key="train_strategy").value == "excessive"
