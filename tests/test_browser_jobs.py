"""A background job in headless Chromium: the live panel follows a training run by `st.fragment(run_every=...)`
alone (AppTest never fires run_every, so only a browser can show it), and a reload reattaches to the run."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest

from test_browser import CHROMIUM, chromium, streamlit_server
from test_browser_state import no_exception, params, settle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make browser)"),
]
STEPS = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    with streamlit_server("tiny-llama", tmp / "streamlit.log", env={"LLM_LAB_RUNS": str(tmp / "runs")}) as url:
        yield url, tmp / "runs"


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def status_line(page) -> str:
    return " ".join(t for t in page.locator("[data-testid='stMain'] p").all_inner_texts() if "pre-training" in t)


@contextlib.contextmanager
def pretraining_page(url: str):
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
        page.goto(f"{url}/Pretraining")
        settle(page)
        yield page


def wait_for_paragraph(page, *parts: str) -> None:
    """Until one paragraph of the page holds every part (nobody touches the page meanwhile)."""
    test = " && ".join(f"p.innerText.includes({json.dumps(part)})" for part in parts)
    page.wait_for_function(f"() => [...document.querySelectorAll('[data-testid=stMain] p')].some(p => {test})",
                           timeout=180_000)


def test_training_runs_live_without_clicks_and_a_reload_reattaches(server):
    url, runs = server
    with pretraining_page(url) as page:
        for label, value in (("Layers", 1), ("Width (n_embd)", 32), ("Block size", 16), ("Steps", STEPS),
                             ("Evaluate + checkpoint every", 20), ("Eval batches", 2),
                             ("Sample every (0: never)", 20), ("Use the first N characters (0: all)", 20_000)):
            set_number(page, label, value)
        page.get_by_label("Run name", exact=True).fill("browser-run")
        page.get_by_label("Run name", exact=True).press("Enter")
        settle(page)
        page.get_by_role("button", name="▶ Start training").click()
        page.wait_for_function("() => new URL(location.href).searchParams.has('train')", timeout=60_000)
        run_id = params(page)["train"]
        # From here on nobody touches the page: only the fragment's timer can bring the run to its end.
        wait_for_paragraph(page, "finished", f"{STEPS} / {STEPS}")
        settle(page)  # the status line comes first in the fragment's rerun; let the metrics below it arrive
        no_exception(page)
        val = page.locator("[data-testid='stMetric']").filter(has_text="val loss").locator(
            "[data-testid='stMetricValue']").inner_text()
        rows = list(csv.DictReader((runs / "browser-run" / "metrics.csv").open()))
        assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
        assert float(val) == pytest.approx(float(rows[-1]["val_loss"]), abs=1e-3)

        page.reload()
        settle(page)
        assert params(page)["train"] == run_id
        assert "browser-run" in status_line(page) and f"{STEPS} / {STEPS}" in status_line(page)
        no_exception(page)


def test_a_lesson_started_from_its_tab_stays_on_that_tab_and_runs_to_the_end(server):
    url, _runs = server
    with pretraining_page(url) as page:
        page.get_by_role("tab", name="Training lessons").click()
        settle(page)
        page.get_by_role("button", name="▶ Run this lesson").click()
        page.wait_for_function("() => new URL(location.href).searchParams.has('lesson')", timeout=60_000)
        settle(page)
        assert page.get_by_role("tab", name="Training lessons").get_attribute("aria-selected") == "true"
        # the first lesson (warmup) ends with one final validation loss per run in its caption
        wait_for_paragraph(page, "no warmup: val loss", "at step 400")
        no_exception(page)
        page.reload()
        settle(page)
        assert page.get_by_role("tab", name="Training lessons").get_attribute("aria-selected") == "true"
        no_exception(page)
