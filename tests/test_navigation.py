"""The dashboard's navigation: Home first, then every page in pages/, at the paths links use.

Streamlit's own list for a pages/ folder names the first entry after the entry script ("app"),
so it is switched off in .streamlit/config.toml and `ui_common.navigation` draws the list on
every page. The label a browser shows is checked in tests/test_browser.py."""

import tomllib

import pytest
from streamlit.testing.v1 import AppTest

import ui_common
from conftest import ROOT
from test_page_access import PAGES, opened

# (label, page path in the URL) in order: lesson links, a run's Train address and the
# instructor's start page use these paths.
NAVIGATION = [("Home", ""), ("Train", "Train"), ("Runs", "Runs"), ("Backward timing", "Backward_timing"),
              ("Experiment", "Experiment"), ("Instructor", "Instructor")]


def _links(at) -> list[tuple[str, str]]:
    out = []

    def walk(node):
        children = getattr(node, "children", None)
        for child in (children.values() if isinstance(children, dict) else []):
            if child.type == "page_link":
                out.append((child.proto.label, child.proto.page))
            walk(child)

    walk(at.sidebar)
    return out


@pytest.mark.parametrize("path", PAGES)
def test_every_page_lists_home_first_then_every_page_at_its_path(home, path):
    assert _links(opened(path)) == NAVIGATION


def test_the_list_holds_every_page_file_in_order():
    files = ["app.py"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py"))
    assert [script for script, _, _ in ui_common.PAGES] == files


def test_streamlits_own_list_is_off():
    """Otherwise the sidebar would show two lists, the first starting with "app"."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["client"]["showSidebarNavigation"] is False


@pytest.mark.parametrize("path", [p for p in PAGES[1:] if p != "pages/2_Runs.py"])  # Runs links to Train itself
def test_a_page_run_on_its_own_renders_without_the_list(home, path):
    """Run as the entry script (tests use AppTest.from_file on a page) a page knows no other
    page: it draws no list rather than failing on the first link."""
    at = AppTest.from_file(str(ROOT / path), default_timeout=180).run()
    assert not at.exception, at.exception
    assert _links(at) == []
    assert at.title, "the page drew nothing"
