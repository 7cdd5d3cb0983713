"""Readable on a projector and a phone, in headless Chromium on the embedded model (issue 20): at 1280x800 no
metric's value or label is cut (an element's scrollWidth beyond its clientWidth is text hidden behind "…"), at
390x844 nothing makes the page itself scroll sideways (a wide chart scrolls inside its own box), and the
GPUs planner's number boxes read "1e5" as 100,000 and say on the page why -5 is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_browser import CHROMIUM, DONE, chromium, streamlit_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make browser)"),
]

PAGES = ("GPUs", "Attention", "Architecture", "Weights", "Logit_lens", "Embeddings_and_positions",
         "Scaling_laws", "Quantization", "Tokens", "Forward_pass", "Attention_by_hand")

# Every element inside a metric whose text is wider than its box: the metric's text, for the message.
CUT_METRICS = """() => [...document.querySelectorAll("[data-testid='stMetric']")]
    .filter(m => [m, ...m.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))
    .map(m => m.innerText.replace(/\\n+/g, ' | '))"""
PAGE_OVERFLOW = """() => { const m = document.querySelector("[data-testid='stMain']");
    return m.scrollWidth - m.clientWidth; }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with streamlit_server("embedded", log) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def settle(page) -> None:
    page.wait_for_selector("h1", timeout=300_000)
    page.wait_for_selector(DONE, timeout=300_000)
    page.wait_for_timeout(1500)  # charts finish drawing, a rerun a widget change starts shortly after
    page.wait_for_selector(DONE, timeout=300_000)


def opened(browser, url: str, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, wait_until="domcontentloaded")
    settle(page)
    return page


@pytest.mark.parametrize("path", PAGES)
def test_metrics_are_not_cut_at_1280(server, browser, path):
    page = opened(browser, f"{server}/{path}", 1280, 800)
    try:
        assert not page.locator("[data-testid='stException']").count()
        assert page.evaluate(CUT_METRICS) == []
    finally:
        page.close()


@pytest.mark.parametrize("path", PAGES)
def test_nothing_scrolls_the_page_sideways_at_390(server, browser, path):
    page = opened(browser, f"{server}/{path}", 390, 844)
    try:
        assert not page.locator("[data-testid='stException']").count()
        assert page.evaluate(PAGE_OVERFLOW) <= 1
    finally:
        page.close()


def _type(page, label: str, text: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(text)
    box.press("Enter")
    settle(page)


def test_gpu_number_boxes_read_scientific_notation_and_explain_a_refusal(server, browser):
    page = opened(browser, f"{server}/GPUs", 1280, 800)
    try:
        _type(page, "Sequence length", "1e5")  # Streamlit's integer box read this as 1
        assert "× 100,000 tokens × 1 sequences" in page.inner_text("[data-testid='stMain']")
        _type(page, "Batch", "-5")
        text = page.inner_text("[data-testid='stMain']")
        assert "Batch: type a whole number from 1 to 100,000 (got -5)" in text  # on the page, not on hover
        assert "Prefill (tokens/s)" not in text  # nothing computed with the old batch
    finally:
        page.close()
