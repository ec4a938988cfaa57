"""The lecture controls end to end in a real browser (the same `streamlit run app.py` server and
Chromium as tests/test_browser.py): Pause, Step and Play a run on two moons and see the step
counter move by exactly one batch on Step, the network picture highlight exactly k neurons per
hidden layer, and a lesson link open with its controls hidden. Screenshots go to artifacts/.
"""

import re

from test_browser import ARTIFACTS, _shot, _sign_in, _wait_for, browser, page, server  # noqa: F401  (fixtures)

K = 4  # sparsity 0.5 of 8 neurons
RUN = "/Train?dataset=moons&hidden=8,8&sparsity=0.5&epochs=200&batch_size=32&lr=0.01&seed=3&pace=5"

# JavaScript: [column, index, kept] of every neuron of the network picture, and its title
NEURONS = """() => {
    const plot = document.querySelector('.st-key-lecture_fig_network .js-plotly-plot');
    if (!plot || !plot._fullData) return null;
    const trace = plot._fullData.find(t => t.name === 'neurons');
    return trace ? {custom: trace.customdata, title: plot._fullLayout.title.text} : null;
}"""


def _step(page) -> int | None:
    text = page.locator(".st-key-lecture_step_counter").inner_text()
    match = re.search(r"Step\s+([\d,]+)", text)
    return int(match.group(1).replace(",", "")) if match else None


def _paused_at(page) -> int | None:
    """The step after which the run's worker holds it, as the panel says (None: not held)."""
    match = re.search(r"Paused after step ([\d,]+)", page.locator(".st-key-lecture_pace_line").inner_text())
    return int(match.group(1).replace(",", "")) if match else None


def _steady_step(page, seconds: float = 2.5) -> int:
    """The counter once it has stayed the same for `seconds` (the page refreshes every second)."""
    def steady():
        first = _step(page)
        page.wait_for_timeout(int(seconds * 1000))
        return first if first is not None and _step(page) == first else None
    return _wait_for(page, steady, "the step counter to settle")


def _button(page, key: str):
    return page.locator(f".st-key-{key}").get_by_role("button")  # the visible one (roles skip hidden copies)


def _click(page, key: str) -> None:
    """Click one of the panel's buttons once the panel shows it once and enabled (while a live
    part of the page redraws, its old copy may still be on the page for a moment)."""
    button = _button(page, key)
    _wait_for(page, lambda: button.count() == 1 and button.is_enabled(), f"the {key} button")
    button.click()


def test_pause_step_play_on_moons_and_the_network_picture(server, page):
    page.goto(server + RUN)
    _sign_in(page)  # starting a run needs a signed-in name
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**run=*")
    _wait_for(page, lambda: (_step(page) or 0) > 2, "the run to take steps")

    _click(page, "lecture_pause")
    paused = _wait_for(page, lambda: _paused_at(page), "the worker to hold the run")
    _wait_for(page, lambda: _step(page) == paused, f"the counter at step {paused}")

    _click(page, "lecture_step")
    _wait_for(page, lambda: _paused_at(page) == paused + 1, f"the run held after step {paused + 1}")
    assert _step(page) == paused + 1
    page.wait_for_timeout(2500)
    assert _paused_at(page) == _step(page) == paused + 1  # exactly one batch, then held again

    picture = _wait_for(page, lambda: (lambda n: n if n and f"step {paused + 1}" in n["title"] else None)(
        page.evaluate(NEURONS)), "the network picture of that step")
    kept = {}
    for column, _, got in picture["custom"]:
        kept[column] = kept.get(column, 0) + got
    assert kept[1] == kept[2] == K, kept  # exactly k neurons of each hidden layer got gradient
    assert kept[0] == 0 and kept[3] == 2  # inputs take none; the output layer is dense
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(5, 1990)
    net = page.locator(".st-key-lecture_fig_network:not([data-retained=true])").first  # not a redraw's old copy
    net.screenshot(path=str(ARTIFACTS / "lecture-network.png"))
    _shot(page, "lecture-paused.png")

    _click(page, "lecture_play")
    _wait_for(page, lambda: (_step(page) or 0) > paused + 3, "the run to go on after Play")
    page.get_by_role("button", name="Stop").click()  # free the worker for the next test
    _wait_for(page, lambda: "Stopped" in (page.locator("[data-testid=stProgress]").first.inner_text()),
              "the run to stop")


def test_a_lesson_link_opens_with_its_controls_hidden(server, page):
    page.goto(server + "/Train?lesson=connections&part=2")
    page.get_by_text("Lesson: Connections too").wait_for()
    assert "strategy=refined" in page.url and "lock=" in page.url  # the lesson lives in the URL
    _wait_for(page, lambda: not page.locator(".st-key-train_optimizer").is_visible(), "the optimizer to be hidden")
    assert page.locator(".st-key-train_strategy").is_visible()  # locked, still shown
    _sign_in(page)
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**run=*")
    _wait_for(page, lambda: (_step(page) or 0) > 2, "the lesson's run to take steps")
    _click(page, "lecture_pause")
    _steady_step(page)  # a still page for the picture
    _wait_for(page, lambda: page.evaluate(NEURONS), "the network picture")
    _shot(page, "lecture-lesson.png")
    page.get_by_role("button", name="Stop").click()
