"""The app in headless Chromium, as a user sees it: every page opens, finishes running, shows no
exception box; a screenshot of each lands in artifacts/screenshots/ (git-ignored)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests_paths import ROOT
from ui.navigation import available_pages

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make browser)"),
]
SHOTS = ROOT / "artifacts" / "screenshots"
DONE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The embedded model as a user gets it, and a tiny GPT-2 (learned positions, LayerNorm, GELU, fused QKV).
MODELS = ("embedded", "tiny-gpt2")


ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def streamlit_server(model: str, log: Path, env: dict[str, str] | None = None):
    """`streamlit run Home.py` on a free port with `model` as the default; yields its URL once healthy."""
    port = free_port()
    env = {**os.environ, "LLM_LAB_DEFAULT_MODEL": model, **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start:\n{log.read_text()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module", params=MODELS)
def server(request, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with streamlit_server(request.param, log) as url:
        yield url, log, request.param


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


# The time of the page's last DOM change, kept by a MutationObserver from the first byte on.
OBSERVER = """window.__lastMutation = performance.now();
new MutationObserver(() => { window.__lastMutation = performance.now(); })
  .observe(document, {subtree: true, childList: true, attributes: true, characterData: true});"""
QUIET = """ms => { const app = document.querySelector("[data-testid='stApp']");
  return app && app.getAttribute('data-test-script-state') === 'notRunning'
    && performance.now() - window.__lastMutation >= ms; }"""


def watch_changes(page) -> None:
    """Call before the first goto: `quiet` then knows when the page last changed."""
    page.add_init_script(OBSERVER)


def quiet(page, ms: int = 500, timeout_s: float = 180) -> None:
    """The script has finished and nothing on the page changed for `ms`: charts and images drawn, and a rerun
    that a widget starts just after a run has come and gone (a fixed 1.5 s wait did this before, slower)."""
    page.wait_for_selector("h1", timeout=timeout_s * 1000)
    page.wait_for_function(QUIET, arg=ms, timeout=timeout_s * 1000, polling=100)


def open_and_shoot(browser, url: str, name: str) -> list[str]:
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    watch_changes(page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(url, wait_until="domcontentloaded")
        quiet(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        exceptions = page.locator("[data-testid='stException']").all_inner_texts()
        nav = " ".join(page.locator("[data-testid='stSidebarNav']").all_inner_texts())
        if "Inside the model" not in nav:  # a deep link must get the sectioned navigation, not pages/ mode
            exceptions.append(f"sidebar navigation without sections: {nav!r}")
    finally:
        page.close()
    return exceptions + errors


# Home last: the first test opens a page by its URL on a fresh server (a shared deep link).
PAGES = [(p.url_path, p.url_path) for p in available_pages()] + [("", "Home")]


@pytest.mark.parametrize("path,name", PAGES, ids=[n for _, n in PAGES])
def test_page_renders_without_exception(server, browser, path, name):
    url, _log, model = server
    problems = open_and_shoot(browser, f"{url}/{path}", name if model == "embedded" else f"{name}-{model}")
    assert not problems, problems


def test_server_log_is_clean(server, browser):
    url, log, model = server
    open_and_shoot(browser, url, "Home" if model == "embedded" else f"Home-{model}")
    text = log.read_text()
    for bad in ("Traceback", "Examining the path of torch.classes", "Error"):
        assert bad not in text, text[-3000:]
