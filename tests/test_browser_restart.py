"""The server is killed (SIGKILL) in the middle of a run and started again: in Chromium, the old link says the
run was interrupted, the resume list says so too (never "running"), a killed write's leftovers are gone, and
one click resumes it from its last checkpoint with at most one checkpoint interval lost."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_browser import CHROMIUM, chromium, free_port
from test_browser_jobs import set_number, start_small_run, wait_for_paragraph
from test_browser_state import no_exception, params, settle
from tests_paths import ROOT

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make browser)"),
]
EVERY = 20  # steps between checkpoints


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env={**os.environ, **env}, stdout=log.open("a"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"streamlit did not start:\n{log.read_text()}")


def test_a_run_killed_with_its_server_is_listed_as_interrupted_and_resumes(tmp_path):
    runs = tmp_path / "runs"
    env = {"LLM_LAB_RUNS": str(runs), "LLM_LAB_DEFAULT_MODEL": "tiny-llama"}
    log = tmp_path / "streamlit.log"
    proc, url = start_server(env, log)
    try:
        with chromium() as browser:
            context = browser.new_context(viewport={"width": 1400, "height": 1600})
            page = context.new_page()
            page.goto(f"{url}/Pretraining")
            settle(page)
            start_small_run(page, "killrun", 5000, every=EVERY, sample=0)
            old_link = page.url
            deadline = time.time() + 180
            while not (runs / "killrun" / "checkpoints" / f"step-{2 * EVERY:06d}").is_dir():
                assert time.time() < deadline, "no second checkpoint in time"
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)  # no goodbye: the run is mid-step, its lock dies with the process
            proc.wait()
            info = json.loads((runs / "killrun" / "run.json").read_text())
            assert info["status"] == "running"
            last_checkpoint = max(int(p.name.split("-")[1]) for p in (runs / "killrun" / "checkpoints").glob("step-*"))
            seen = len(list(csv.DictReader((runs / "killrun" / "metrics.csv").open())))
            leftover = runs / "killrun" / f".model.tmp-{2**22 + 4321}-1-abcdef"  # what a kill during an export leaves
            leftover.mkdir()

            proc, url = start_server(env, log)
            page.goto(old_link.replace(old_link.split("/Pretraining")[0], url))
            settle(page)
            no_exception(page)
            assert page.get_by_text("was interrupted at step").count() == 1
            assert not leftover.exists()
            page.screenshot(path=str(tmp_path / "after-restart.png"), full_page=True)
            chosen = page.evaluate("() => [...document.querySelectorAll('[data-testid=stExpander] input')]"
                                   ".map(i => i.value || i.getAttribute('aria-label') || '').join(' | ')")
            assert "killrun (step" in chosen and "interrupted" in chosen and "running" not in chosen, chosen
            set_number(page, "Train until step", last_checkpoint + EVERY)
            page.get_by_role("button", name="⏯ Resume from its last checkpoint").click()
            wait_for_paragraph(page, "finished", f"{last_checkpoint + EVERY} / {last_checkpoint + EVERY}")
            no_exception(page)
        rows = list(csv.DictReader((runs / "killrun" / "metrics.csv").open()))
        assert [int(r["step"]) for r in rows] == list(range(1, last_checkpoint + EVERY + 1))  # no gap, no duplicate
        assert seen - last_checkpoint <= EVERY  # lost at most one checkpoint interval
        assert json.loads((runs / "killrun" / "run.json").read_text())["status"] == "finished"
        assert params(page).get("train")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
