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


def start_small_run(page, name: str, steps: int, every: int = 20, sample: int = 20) -> None:
    """Fill the form for a one-layer run of `steps` steps on 20,000 characters, name it, press Start."""
    for label, value in (("Layers", 1), ("Width (n_embd)", 32), ("Block size", 16), ("Steps", steps),
                         ("Evaluate + checkpoint every", every), ("Eval batches", 2),
                         ("Sample every (0: never)", sample), ("Use the first N characters (0: all)", 20_000)):
        set_number(page, label, value)
    page.get_by_label("Run name", exact=True).fill(name)
    page.get_by_label("Run name", exact=True).press("Enter")
    settle(page)
    page.get_by_role("button", name="▶ Start training").click()
    page.wait_for_function("() => new URL(location.href).searchParams.has('train')", timeout=60_000)


def status_line(page) -> str:
    return " ".join(t for t in page.locator("[data-testid='stMain'] p").all_inner_texts() if "pre-training" in t)


@contextlib.contextmanager
def pretraining_page(url: str):
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
        page.goto(f"{url}/Pretraining")
        settle(page)
        yield page


def wait_for_paragraph(page, *parts: str, timeout_s: float = 180) -> None:
    """Until one paragraph of the page holds every part (nobody touches the page meanwhile)."""
    test = " && ".join(f"p.innerText.includes({json.dumps(part)})" for part in parts)
    page.wait_for_function(f"() => [...document.querySelectorAll('[data-testid=stMain] p')].some(p => {test})",
                           timeout=timeout_s * 1000)


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, ray_cluster):
    tmp = tmp_path_factory.mktemp("jobs-ray")
    env = {"LLM_LAB_RUNS": str(tmp / "runs"), "LLM_LAB_RAY_ADDRESS": ray_cluster}
    with streamlit_server("tiny-llama", tmp / "streamlit.log", env=env) as url:
        yield url, tmp / "runs"


def test_training_runs_live_without_clicks_and_a_reload_reattaches(server):
    train_live_and_reload(*server)


def test_the_same_run_on_a_ray_cluster_shows_the_same_live_panel(ray_server):
    """One interface, two runners: the page does not know that the job runs in a Ray worker."""
    train_live_and_reload(*ray_server)


def train_live_and_reload(url: str, runs: Path) -> None:
    with pretraining_page(url) as page:
        start_small_run(page, "browser-run", STEPS)
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
        # two models of 400 steps: 15 s on an idle machine, minutes when other work shares the 2 cores
        wait_for_paragraph(page, "no warmup: val loss", "at step 400", timeout_s=450)
        no_exception(page)
        page.reload()
        settle(page)
        assert page.get_by_role("tab", name="Training lessons").get_attribute("aria-selected") == "true"
        no_exception(page)


def test_a_second_tab_is_the_same_person_and_a_fresh_browser_only_watches(server):
    """The owner is a cookie of the browser: a second tab cannot start a second job (one per person), and a
    browser without the cookie that opens the link gets no Pause, Stop or learning-rate box."""
    url, _runs = server
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        first = context.new_page()
        first.goto(f"{url}/Pretraining")
        settle(first)
        start_small_run(first, "tab-one", 100_000)
        link = first.url
        second = context.new_page()
        second.goto(f"{url}/Pretraining")
        settle(second)
        second.get_by_label("Run name", exact=True).fill("tab-two")
        second.get_by_label("Run name", exact=True).press("Enter")
        settle(second)
        second.get_by_role("button", name="▶ Start training").click()
        settle(second)
        assert second.get_by_text("You already have a job").count() == 1
        no_exception(second)

        stranger = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
        stranger.goto(link)
        settle(stranger)
        assert stranger.get_by_text("read-only").count() >= 1
        for name in ("⏸ Pause", "⏹ Stop", "Set"):
            assert stranger.get_by_role("button", name=name, exact=True).count() == 0
        no_exception(stranger)
        first.get_by_role("button", name="⏹ Stop").click()
        wait_for_paragraph(first, "stopped")
