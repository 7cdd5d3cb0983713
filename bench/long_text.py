"""20,000 characters in every text box of every page, in Chromium: the server's peak memory and the time to the cap.

Each page gets a fresh `streamlit run` (so one page's peak is not another's), is opened at 1280x800, and each of
its text boxes is filled with the same 20,000-character text and committed (Ctrl+Enter / Enter); where the page
runs its work on a button (Decode, Measure, Compare, the PPO step), the button is pressed too when it is enabled.
Printed per box: the characters the box kept (a box with max_chars truncates), the seconds from the commit to a
cap message ("at most N tokens") or, when none comes, to the end of the run, the server's peak resident memory
while it handled the text (VmHWM after a reset, and a 50 ms sampler), and whether it stayed within the budget.

    .venv/bin/python bench/long_text.py                    # every page, embedded model (default)
    .venv/bin/python bench/long_text.py --pages KV_cache Decoding --budget-mib 3072 --timeout 240
"""

from __future__ import annotations

import argparse
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _util import CHROMIUM, CHROMIUM_ARGS, DONE, streamlit_server

LONG = ("The quick brown fox jumps over the lazy dog while the children sing in the garden. " * 250)[:20_000]
CAP = re.compile(r"at most [\d,]+ tokens|only the first [\d,]+", re.I)


@dataclass(frozen=True)
class Box:
    page: str  # url path
    label: str  # the widget's label (aria-label of its <input>/<textarea>)
    area: bool  # textarea (Ctrl+Enter commits) or input (Enter)
    button: str | None = None  # pressed after the text, when present and enabled
    before: str | None = None  # a button to press first (e.g. the step of a multi-step page)


BOXES = (
    Box("Forward_pass", "Text", True),
    Box("Tokens", "A sentence to tokenize", False),
    Box("Embeddings_and_positions", "Tokens to look at (comma-separated words)", False),
    Box("Attention", "Text", True),
    Box("Logit_lens", "Text", True),
    Box("Attention_by_hand", "Text (its first three tokens are used)", False),
    Box("Pretraining", "Run name", False),
    Box("Fine_tuning", "Your own prompt, answered before and after (optional)", False),
    Box("Fine_tuning", "Run name", False),
    Box("RLHF", "Prompt", False, "▶ Sample a rollout and take one PPO step", before="3 · PPO"),
    Box("Decoding", "Prompt", True, "▶ Decode"),
    Box("KV_cache", "Prompt", True, "⏱ Measure with and without the cache"),
    Box("GPUs", "Hub id", False),
    Box("Evaluation", "Text to score", True),
    Box("Evaluation", "Text", False, "Compare P and Q"),
    Box("Architecture", "Hub model id", False),
)


class Sampler(threading.Thread):
    """Max VmRSS of a process, every 50 ms, until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, status_mib(self.pid, "VmRSS"))
            time.sleep(0.05)


def status_mib(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_done(page, timeout_s: float) -> bool:
    """True when the app's run ended within timeout_s (the attribute flips to running first, then back)."""
    time.sleep(0.3)
    try:
        page.wait_for_selector(DONE, timeout=timeout_s * 1000)
        return True
    except Exception:  # playwright's TimeoutError
        return False


def cap_text(page) -> str | None:
    for el in page.query_selector_all("[data-testid='stAlert']"):  # a warning, not a caption that names a limit
        text = el.inner_text()
        if CAP.search(text):
            return " ".join(text.split())[:140]
    return None


def run_box(browser, box: Box, port: int, budget: float, timeout_s: float) -> dict:
    with streamlit_server(env={"MALLOC_ARENA_MAX": "2"}, port=port) as (url, proc, _):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/{box.page}")
        page.wait_for_selector("h1", timeout=300_000)
        wait_done(page, 300)
        if box.before:
            page.get_by_text(box.before, exact=True).first.click()  # a segmented control's option
            wait_done(page, 300)
        selector = f"{'textarea' if box.area else 'input'}[aria-label=\"{box.label}\"]"
        try:  # the run-state attribute can read "done" before the first run starts: wait for the box itself
            page.wait_for_selector(selector, timeout=120_000)
        except Exception:
            pass
        wait_done(page, 300)
        field = page.locator(selector).first
        if not field.count() or not field.is_visible():
            page.close()
            return {"box": box, "note": "box not on the page's first view"}
        rest = status_mib(proc.pid, "VmRSS")
        try:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM from here on
        except OSError:
            pass
        sampler = Sampler(proc.pid)
        sampler.start()
        field.click()
        field.fill("")
        page.keyboard.insert_text(LONG)  # like a paste: the browser applies a box's max_chars, as for a user
        kept = len(field.input_value())
        start = time.perf_counter()
        field.press("Control+Enter" if box.area else "Enter")
        finished = wait_done(page, timeout_s)
        seconds = time.perf_counter() - start
        message = cap_text(page)
        pressed = ""
        if box.button and finished:  # the work behind the box runs on its button: press it where a user could
            button = page.get_by_role("button", name=box.button).first
            if button.count() and button.is_visible() and button.is_enabled():
                button.click()
                pressed = " (button pressed)"
                finished = wait_done(page, timeout_s)
                if message is None:  # the time to the cap is the first time it shows
                    seconds = time.perf_counter() - start
                    message = cap_text(page)
            elif button.count():
                pressed = " (button disabled)"
        sampler.running = False
        sampler.join()
        peak = max(sampler.peak, status_mib(proc.pid, "VmHWM"))
        page.close()
        return {"box": box, "kept": kept, "seconds": seconds, "finished": finished, "message": message,
                "rest": rest, "peak": peak, "within": peak <= budget, "pressed": pressed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", nargs="*", help="url paths to run (default: every page with a text box)")
    ap.add_argument("--budget-mib", type=float, default=3072, help="the server's memory budget (default 3 GiB)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for one box's run")
    ap.add_argument("--port", type=int, default=8613)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    boxes = [b for b in BOXES if not args.pages or b.page in args.pages]
    print(f"{len(LONG):,} characters into {len(boxes)} boxes; budget {args.budget_mib:,.0f} MiB; "
          f"timeout {args.timeout:.0f} s per box\n")
    print(f"{'page':<26}{'box':<34}{'kept':>7}{'s to cap/end':>14}{'rest MiB':>10}{'peak MiB':>10}  result")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=CHROMIUM_ARGS)
        for box in boxes:
            try:
                r = run_box(browser, box, args.port, args.budget_mib, args.timeout)
            except Exception as exc:  # one page's failure is a row, not the end of the bench
                print(f"{box.page:<26}{box.label[:32]:<34}  error: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            if "note" in r:
                print(f"{box.page:<26}{box.label[:32]:<34}  {r['note']}")
                continue
            if r["message"]:
                result = f"cap: {r['message']}"
            elif not r["finished"]:
                result = f"NO CAP: still running after {args.timeout:.0f} s"
            else:
                result = "no cap message (ran to the end)"
            budget = "" if r["within"] else "  OVER BUDGET"
            print(f"{box.page:<26}{box.label[:32]:<34}{r['kept']:>7,}{r['seconds']:>14.1f}{r['rest']:>10,.0f}"
                  f"{r['peak']:>10,.0f}  {result}{r['pressed']}{budget}", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
