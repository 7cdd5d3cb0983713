"""State that survives and travels, in headless Chromium: the model and a page's controls live in the URL
(a reload and a fresh browser opening the link reopen the same view), survive page navigation, and a bad
link falls back to the defaults with a message."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from test_browser import CHROMIUM, DONE, chromium, streamlit_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make browser)"),
]
SLIDER = "[data-testid='stSlider'] input[type='range']"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with streamlit_server("tiny-llama", log) as url:
        yield url, log


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def settle(page) -> None:
    page.wait_for_selector("h1", timeout=120_000)
    page.wait_for_selector(DONE, timeout=120_000)
    page.wait_for_timeout(700)  # a rerun a widget change starts shortly after
    page.wait_for_selector(DONE, timeout=120_000)


def layer_shown(page) -> str:
    return page.locator(SLIDER).first.get_attribute("aria-valuetext")


def params(page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(page.url).query).items()}


def sidebar_caption(page) -> str:
    return " ".join(page.locator("[data-testid='stSidebar'] [data-testid='stCaptionContainer']").all_inner_texts())


def no_exception(page) -> None:
    assert not page.locator("[data-testid='stException']").count(), \
        page.locator("[data-testid='stException']").all_inner_texts()


def test_link_reload_fresh_browser_and_navigation(server, browser):
    url, log = server
    page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
    page.goto(f"{url}/Weights?model=tiny-gpt2")
    settle(page)
    no_exception(page)
    assert "tiny-gpt2" in sidebar_caption(page)  # the model came from the link
    assert layer_shown(page) == "0"
    page.locator(SLIDER).first.focus()
    page.keyboard.press("ArrowRight")  # layer 0 -> 1
    settle(page)
    assert layer_shown(page) == "1"
    assert params(page).get("w_layer") == "1" and params(page).get("model") == "tiny-gpt2"
    link = page.url
    page.get_by_text("Link to this view").click()  # the copy box shows the link of what is on screen now
    page.wait_for_selector(".lab-link input", timeout=60_000)
    assert page.locator(".lab-link input").first.input_value() == link
    page.keyboard.press("Escape")

    page.reload()  # a new session on the same URL
    settle(page)
    assert layer_shown(page) == "1" and "tiny-gpt2" in sidebar_caption(page)

    # Away and back through the sidebar navigation: the widget value is kept for the session.
    page.locator("[data-testid='stSidebarNav'] a", has_text="Parameter statistics").click()
    settle(page)
    assert "Parameter statistics" in page.locator("h1").first.inner_text()
    assert params(page).get("model") == "tiny-gpt2"  # every page carries the model
    page.locator("[data-testid='stSidebarNav'] a", has_text="Weights").click()
    settle(page)
    assert layer_shown(page) == "1"
    no_exception(page)

    fresh = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()  # a student opens the link
    fresh.goto(link)
    settle(fresh)
    assert layer_shown(fresh) == "1" and "tiny-gpt2" in sidebar_caption(fresh)
    fresh.context.close()
    page.context.close()


def test_bad_link_falls_back_with_messages(server, browser):
    url, log = server
    page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
    page.goto(f"{url}/Weights?model=no-such-org/no-such-model&w_layer=99&w_stat=garbage")
    settle(page)
    no_exception(page)
    text = page.locator("[data-testid='stMain']").inner_text() + sidebar_caption(page)
    sidebar = page.locator("[data-testid='stSidebar']").inner_text()
    assert "link's model could not be opened" in sidebar
    assert "tiny-llama" in sidebar_caption(page)  # the default model instead
    assert "The link asks for Statistic" in text
    assert layer_shown(page) == "0"
    page.context.close()
    assert "Traceback" not in log.read_text()
