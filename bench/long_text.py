"""20,000 characters in every text box of every page, in Chromium: the server's peak memory and the time to the cap.

Each box gets a fresh `streamlit run` (so one page's peak is not another's), is opened at 1280x800, the clicks that
show the box are made (a step, a tab, a radio or select option, "Load tiny-bert"), and the box is filled with the
same 20,000-character text and committed (Ctrl+Enter / Enter); where the page runs its work on a button (Decode,
Measure, Compare, the PPO step, Load model, the patched runs), the button is pressed too when it is enabled.
Printed per box: the characters the box kept (a box with max_chars drops a longer paste whole), the
seconds from the commit to a cap message ("at most N tokens", "only the first N") or, when none comes, to the end
of the run and the message the page gave instead, the server's resident memory before and its peak while it
handled the text (VmHWM after a reset, and a 50 ms sampler), and whether it stayed within the budget.

    .venv/bin/python bench/long_text.py                    # every box, embedded model (default)
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
    page: str  # url path ("" = Home)
    label: str  # the widget's label (aria-label of its <input>/<textarea>)
    area: bool  # textarea (Ctrl+Enter commits) or input (Enter)
    button: str | None = None  # pressed after the text, when present and enabled
    # What to click first, in order: a text (a step, a tab, a radio option, a button) or (a select's label, option)
    before: tuple[str | tuple[str, str], ...] = ()
    selector: str | None = None  # a CSS selector where the box has no fixed label (the first match is used)


HUB = "Hugging Face Hub id or local folder…"  # the sidebar picker's entry that reads the Hub id box
# Every text box of every page (checked against `text_input` / `text_area` in pages/ and ui/), the clicks that
# show it, and the button that runs its work. Not reachable here: RLHF's "Score your own answers" (it needs a
# trained reward model, minutes) and GRPO's reward word (a WORD_CHARS box, as PPO's).
BOXES = (
    Box("", "Hub id or folder (when chosen above)", False, "Load model", before=(("Model", HUB),)),
    Box("Architecture", "Hub model id", False, before=("A Hugging Face Hub config",)),
    Box("Architecture", "config.json", True, before=("Paste or upload a config.json",)),
    Box("Forward_pass", "Text", True),
    Box("Tokens", "A sentence to tokenize", False),
    Box("Tokens", "Your training text", True, before=("Your own text",)),
    Box("Embeddings_and_positions", "Tokens to look at (comma-separated words)", False),
    Box("Attention", "Text", True),
    Box("Attention", "Second text", True, before=("Compare with a second text",)),
    Box("Logit_lens", "Text", True),
    Box("Attention_by_hand", "Text (its first three tokens are used)", False, before=("4 · A real head",)),
    Box("Attention_by_hand", "an answer box", False, selector="input[placeholder='a number']"),
    Box("Logit_attribution", "Text", True),
    Box("Logit_attribution", "Target token", False),
    Box("Logit_attribution", "Contrast token (optional)", False),
    Box("Ablation_and_patching", "Text", True),
    Box("Ablation_and_patching", "Clean prompt", False, "Run the patched runs", before=("Activation patching",)),
    Box("Ablation_and_patching", "Corrupted prompt", False, "Run the patched runs", before=("Activation patching",)),
    Box("Ablation_and_patching", "Target (clean answer)", False, before=("Activation patching",)),
    Box("Ablation_and_patching", "Contrast (corrupted answer)", False, before=("Activation patching",)),
    Box("Contribution_graph", "Text", True),
    Box("Encoder_attention", "Text (the encoder reads it)", True, before=("Load tiny-bert",)),
    Box("Encoder_attention", "Target (the decoder reads it after its start token)", True, before=("Load tiny-t5",)),
    Box("Pretraining", "Run name", False),
    Box("Pretraining", "Your text", True, before=(("Text", "Paste a text"),)),
    Box("Fine_tuning", "Your own prompt, answered before and after (optional)", False),
    Box("Fine_tuning", "Run name", False),
    Box("RLHF", "Prompt", False, "▶ Sample a rollout and take one PPO step", before=("3 · PPO",)),
    Box("RLHF", "Word", False, before=("3 · PPO", ("Reward", "contains"))),
    Box("Decoding", "Prompt", True, "▶ Decode"),
    Box("KV_cache", "Prompt", True, "⏱ Measure with and without the cache"),
    Box("GPUs", "Hub id", False, before=("a Hub id",)),
    Box("GPUs", "config.json", True, before=("paste a config.json",)),
    Box("Evaluation", "Text to score", True),
    Box("Evaluation", "Text", False, "Compare P and Q"),
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
        if not el.is_visible():  # another tab's
            continue
        text = el.inner_text()
        if CAP.search(text):
            return " ".join(text.split())[:140]
    return None


def other_message(page, field) -> str | None:
    """The first message below the box when none names a cap (a refused id, a config that does not parse)."""
    top = (field.bounding_box() or {"y": 0})["y"] if field.count() else 0
    below = []
    for el in page.query_selector_all("[data-testid='stAlert'], [data-testid='stException']"):
        box = el.bounding_box() if el.is_visible() else None  # not another tab's
        if box is not None and box["y"] > top:
            below.append((box["y"], " ".join(el.inner_text().split())[:100]))
    return min(below)[1] if below else None


def dismiss_dialog(page) -> None:
    """Close a modal that makes the page inert: a deep link into a freshly started server can meet Streamlit's
    "Page not found" dialog while the page itself renders behind it."""
    dialog = page.get_by_role("dialog")
    if dialog.count() and dialog.first.is_visible():
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the select labelled `label`; a rerun that redraws the select closes its list: try again."""
    for attempt in range(3):
        page.get_by_role("combobox", name=label, exact=True).first.click()
        item = page.get_by_role("option").filter(has_text=re.compile(f"^{re.escape(option)}$")).first
        try:
            item.click(timeout=5_000)
            return
        except Exception:  # playwright's TimeoutError
            page.keyboard.press("Escape")
            wait_done(page, 60)
    raise RuntimeError(f"could not choose {option!r} in {label!r}")


def show_box(page, box: Box) -> None:
    """Open the page's view that holds the box: each click (a step, a tab, a radio or select option) reruns it."""
    dismiss_dialog(page)
    for step in box.before:
        if isinstance(step, tuple):
            choose(page, *step)
        else:
            page.get_by_text(step, exact=True).first.click()
        wait_done(page, 300)


def run_box(browser, box: Box, port: int, budget: float, timeout_s: float) -> dict:
    with streamlit_server(env={"MALLOC_ARENA_MAX": "2"}, port=port) as (url, proc, _):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/{box.page}")
        page.wait_for_selector("h1", timeout=300_000)
        wait_done(page, 300)
        page.wait_for_timeout(1000)  # a dialog the first run opens
        show_box(page, box)
        selector = box.selector or f"{'textarea' if box.area else 'input'}[aria-label=\"{box.label}\"]"
        try:  # the run-state attribute can read "done" before the first run starts: wait for the box itself
            page.wait_for_selector(selector, timeout=120_000)
        except Exception:
            pass
        wait_done(page, 300)
        field = page.locator(selector).first
        if not field.count() or not field.is_visible():
            page.close()
            return {"box": box, "note": "box not found after the clicks " + repr(box.before)}
        rest = status_mib(proc.pid, "VmRSS")
        try:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM from here on
        except OSError:
            pass
        sampler = Sampler(proc.pid)
        sampler.start()
        field.click()
        page.keyboard.press("Control+A")
        # Like a paste over the box's text. A box with max_chars drops a longer paste whole, without a word, and
        # keeps its text: `kept` then reads that text's length, not 20,000.
        page.keyboard.insert_text(LONG)
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
        other = other_message(page, page.locator(selector).first) if message is None else None
        page.close()
        return {"box": box, "kept": kept, "seconds": seconds, "finished": finished, "message": message,
                "other": other, "rest": rest, "peak": peak, "within": peak <= budget, "pressed": pressed}


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
    done = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=CHROMIUM_ARGS)
        for box in boxes:
            where = f"{box.page or 'Home (sidebar)':<26}{box.label[:32]:<34}"
            try:
                r = run_box(browser, box, args.port, args.budget_mib, args.timeout)
            except Exception as exc:  # one page's failure is a row, not the end of the bench
                print(f"{where}  error: {type(exc).__name__}: {str(exc)[:600]}")
                continue
            if "note" in r:
                print(f"{where}  {r['note']}")
                continue
            done.append(r)
            if r["message"]:
                result = f"cap: {r['message']}"
            elif not r["finished"]:
                result = f"NO CAP: still running after {args.timeout:.0f} s"
            else:
                result = f"no cap; message: {r['other']}" if r["other"] else "no cap, no message (ran to the end)"
            budget = "" if r["within"] else "  OVER BUDGET"
            print(f"{where}{r['kept']:>7,}{r['seconds']:>14.1f}{r['rest']:>10,.0f}{r['peak']:>10,.0f}  "
                  f"{result}{r['pressed']}{budget}", flush=True)
        browser.close()
    capped = [r for r in done if r["message"]]
    if done:
        print(f"\n{len(done)} boxes measured, {len(capped)} with a cap message; slowest to its cap "
              f"{max((r['seconds'] for r in capped), default=0):.1f} s; the server's highest peak "
              f"{max(r['peak'] for r in done):,.0f} MiB of a {args.budget_mib:,.0f} MiB budget "
              f"({sum(not r['within'] for r in done)} over).")

if __name__ == "__main__":
    main()
