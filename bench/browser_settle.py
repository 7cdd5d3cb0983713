"""How fast the inspection pages answer in a real browser, and what a class opening one link costs.

    .venv/bin/python bench/browser_settle.py [--port 8602] [--repeats 5] [--sessions 20] [--skip-class | --only-class]
    .venv/bin/python bench/browser_settle.py --sections Circuits --skip-class   # the Circuits pages

One Streamlit server (the embedded model, port 8602) and Debian's Chromium through Playwright.
"Settled" = the app's script state is notRunning and the DOM has not changed for 300 ms (a
MutationObserver records the last change); a time is from the action to that last change.

Per inspection page: the first visit through the sidebar with the model already loaded, then the median
of `--repeats` changes of the page's main control; on the Weights page fifteen rapid key presses on the
layer slider (time from the last press). Then the class scenario: `--sessions` browser contexts open one
shared link at once and each moves the layer slider its own number of steps: no exception, each session
ends on its own value (no session sees another's state), the server's RSS with all sessions connected and
idle and at its peak while they run vs after one session, the server's CPU seconds for the class, p50/p95 of
the settle times. Prints tables; targets: control <= 1.0 s, first visit <= 3 s, 15 presses
settle within 3 s of the last one. Figures depend on the machine's load: say what else was running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import CHROMIUM, CHROMIUM_ARGS, ROOT, cpu_seconds, rss_mib, streamlit_server  # noqa: E402

from ui.navigation import available_pages  # noqa: E402

QUIET_MS = 300
SECTIONS = ("Inside the model", "Attention & weights")
OBSERVER = """
window.__lastMut = performance.now();
new MutationObserver(() => { window.__lastMut = performance.now(); })
  .observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""
PROBE = """() => [performance.now(), window.__lastMut,
  (document.querySelector("[data-testid='stApp']") || {getAttribute: () => 'none'}).getAttribute('data-test-script-state')]"""
# The main control of each page: (widget kind, label text). Pages not listed use their first slider.
CONTROLS = {
    "Architecture": ("selectbox", "Element type for the KV cache"),
    "Parameters": ("selectbox", "Statistic"),
    "Forward_pass": ("slider", "Layer"),
    "Tokens": ("slider", "Vocabulary size"),
    "Embeddings_and_positions": ("slider", "Nearest neighbours"),
    "Attention": ("slider", "Layer"),
    "Weights": ("slider", "Layer"),
    "Logit_lens": ("selectbox", "Position"),
    "Logit_attribution": ("selectbox", "Prediction made at position"),
    "Ablation_and_patching": ("radio", "Mode"),
    "Contribution_graph": ("slider", "Show routes carrying at least"),
    "Head_roles": ("selectbox", "Head"),
}
SLIDER = "[data-testid='stMain'] [data-testid='stSlider']"
SELECT = "[data-testid='stMain'] [data-testid='stSelectbox']"
RADIO = "[data-testid='stMain'] [data-testid='stRadio']"


# ---------------------------------------------------------------- settle detection (sync and async twins)


def mark(page) -> float:
    return page.evaluate("() => performance.now()")


def settled(page, t0: float, timeout: float = 180) -> float:
    """Seconds from t0 (page clock) to the last DOM change, once the app is idle and quiet."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        now, last, state = page.evaluate(PROBE)
        if state == "notRunning" and now - last >= QUIET_MS and now - t0 >= QUIET_MS:
            return max(last - t0, 0.0) / 1000
        time.sleep(0.05)
    return float("nan")


async def asettled(page, t0: float, timeout: float = 600) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        now, last, state = await page.evaluate(PROBE)
        if state == "notRunning" and now - last >= QUIET_MS and now - t0 >= QUIET_MS:
            return max(last - t0, 0.0) / 1000
        await asyncio.sleep(0.1)
    return float("nan")


# ---------------------------------------------------------------- controls


def control(page, url_path: str):
    kind, label = CONTROLS.get(url_path, ("slider", ""))
    if kind == "slider":
        box = page.locator(SLIDER).filter(has_text=label).first if label else page.locator(SLIDER).first
        if not box.count():
            box = page.locator(SLIDER).first
        return "slider", box.locator("input[type='range']").first
    if kind == "radio":
        return "radio", page.locator(RADIO).filter(has_text=label).first
    box = page.locator(SELECT).filter(has_text=label).first
    return "selectbox", box.locator("input[role='combobox']").first


def change(page, kind: str, widget, i: int) -> None:
    """One user change: a key press on a slider, or the next/previous option of a selectbox."""
    key = "ArrowRight" if i % 2 == 0 else "ArrowLeft"
    if kind == "slider":
        widget.focus()
        page.keyboard.press(key)
    elif kind == "radio":  # the other of its first two options
        widget.locator("label").nth((i + 1) % 2).click()
    else:
        widget.click()
        page.keyboard.press("ArrowDown" if i % 2 == 0 else "ArrowUp")
        page.keyboard.press("ArrowDown" if i % 2 == 0 else "ArrowUp")
        page.keyboard.press("Enter")


def exceptions(page) -> int:
    return page.locator("[data-testid='stException']").count()


# ---------------------------------------------------------------- one user, every page


def one_user(browser, url: str, repeats: int, sections: tuple[str, ...] = SECTIONS) -> list[dict]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(OBSERVER)
    page = context.new_page()
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("h1", timeout=300_000)
    settled(page, 0.0, timeout=300)
    rows = [{"page": "Home (app start)", "first visit s": time.perf_counter() - start}]
    pages = [p for p in available_pages() if p.section in sections]
    for info in pages:
        link = page.locator("[data-testid='stSidebarNav'] a", has_text=info.title).first
        more = page.locator("[data-testid='stSidebarNavViewButton']", has_text="more")
        if not link.count() and more.count():  # a long navigation shows its first pages only
            more.first.click()
            link = page.locator("[data-testid='stSidebarNav'] a", has_text=info.title).first
        if not link.count():
            print(f"  {info.title}: not in the sidebar, skipped", flush=True)
            continue
        t0 = mark(page)
        link.click()
        page.wait_for_url(f"**/{info.url_path}**", timeout=60_000)
        first = settled(page, t0)
        kind, widget = control(page, info.url_path)
        times = []
        if widget.count():
            for i in range(repeats):
                t0 = mark(page)
                change(page, kind, widget, i)
                times.append(settled(page, t0))
                kind, widget = control(page, info.url_path)  # a rerun may have replaced the element
        row = {"page": info.title, "first visit s": first,
               "control": f"{kind} {CONTROLS.get(info.url_path, ('', 'first slider'))[1]}" if times else "none found",
               "control median s": statistics.median(times) if times else float("nan"),
               "control max s": max(times) if times else float("nan"), "exceptions": exceptions(page)}
        if info.url_path == "Weights" and widget.count():
            widget.focus()
            for _ in range(15):
                page.keyboard.press("ArrowRight")
                page.wait_for_timeout(60)
            row["15 presses s"] = settled(page, mark(page))
        rows.append(row)
        print(f"  {info.title}: first {first:.2f} s, control median {row['control median s']:.2f} s", flush=True)
    context.close()
    return rows


# ---------------------------------------------------------------- a class on one link


async def one_student(browser, link: str, steps: int) -> dict:
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    await context.add_init_script(OBSERVER)
    page = await context.new_page()
    page.set_default_timeout(600_000)  # 20 Chromium renderers on the server's own cores: slow, not broken
    t = time.perf_counter()
    await page.goto(link, wait_until="commit", timeout=300_000)
    await page.wait_for_selector("h1")
    await page.wait_for_selector(SLIDER)
    await asettled(page, 0.0)
    first = time.perf_counter() - t

    def layer_slider():
        return page.locator(SLIDER).filter(has_text="Layer").first.locator("input[type='range']").first

    times, lost = [], 0
    start_value = value = int(await layer_slider().get_attribute("aria-valuetext"))
    for _ in range(steps):
        for _attempt in range(3):  # a press into a page still busy can be dropped: count it and press again
            t0 = await page.evaluate("() => performance.now()")
            await layer_slider().focus()
            await page.keyboard.press("ArrowRight")
            times.append(await asettled(page, t0))
            now = int(await layer_slider().get_attribute("aria-valuetext"))
            if now == value + 1:
                value = now
                break
            lost += 1
    await asyncio.sleep(5)  # the other sessions keep moving theirs: ours must stay where we left it
    final = int(await layer_slider().get_attribute("aria-valuetext"))
    in_url = f"w_layer={final}" in page.url
    errors = await page.locator("[data-testid='stException']").count()
    return {"context": context, "first": first, "times": times, "start": start_value, "final": final, "confirmed": value,
            "steps": steps, "lost": lost, "in_url": in_url, "errors": errors}


def class_scenario(url: str, pid: int, sessions: int) -> dict:
    from playwright.async_api import async_playwright

    link = f"{url}/Weights?w_layer=3"
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mib(pid))
            time.sleep(0.25)

    async def run() -> tuple[float, list[dict]]:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            await (await one_student(browser, link, 2))["context"].close()  # one session: the baseline memory
            one = tree_rss_mib(pid)
            cpu0 = cpu_seconds(pid)
            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            results = await asyncio.gather(*(one_student(browser, link, 1 + i % 4) for i in range(sessions)),
                                           return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            for exc in failed:
                print(f"  a session failed: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            results = [r for r in results if not isinstance(r, BaseException)]
            stop.set()
            thread.join()
            server_cpu = cpu_seconds(pid) - cpu0
            await asyncio.sleep(3)
            steady = tree_rss_mib(pid)  # every session still connected, none running
            for r in results:
                await r["context"].close()
            await browser.close()
            return one, steady, server_cpu, results

    one, steady, server_cpu, results = asyncio.run(run())
    settle = sorted(t for r in results for t in r["times"])
    firsts = sorted(r["first"] for r in results)
    own = sum(r["final"] == r["confirmed"] and r["in_url"] for r in results)
    reached = sum(r["confirmed"] == r["start"] + r["steps"] for r in results)
    return {"sessions": sessions, "failed": sessions - len(results), "exceptions": sum(r["errors"] for r in results),
            "own state kept": f"{own}/{len(results)}", "reached target": f"{reached}/{len(results)}",
            "presses lost": sum(r["lost"] for r in results),
            "rss one MiB": one, "rss all idle MiB": steady, "idle growth": steady / one - 1,
            "rss peak MiB": peak[0], "peak growth": peak[0] / one - 1,
            "server cpu s": server_cpu,
            "first p50 s": pct(firsts, 50), "first p95 s": pct(firsts, 95),
            "settle p50 s": pct(settle, 50), "settle p95 s": pct(settle, 95)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def tree_rss_mib(pid: int) -> float:
    """The server's resident memory (the streamlit process; it has no worker processes)."""
    try:
        return rss_mib(pid)
    except OSError:
        return float("nan")


# ---------------------------------------------------------------- main


def table(rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(widths[c]) for c in cols))


def fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8602)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--skip-class", action="store_true")
    ap.add_argument("--only-class", action="store_true")
    ap.add_argument("--app-dir", default=str(ROOT), help="run another checkout (e.g. the code before a change)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help='navigation sections to visit, comma-separated (e.g. "Circuits")')
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    # MALLOC_ARENA_MAX as `make run` and the Dockerfile serve the app (MALLOC_ARENA_MAX=64 shows glibc's usual behaviour).
    env = {"LLM_LAB_DEFAULT_MODEL": "embedded", "PYTHONPATH": args.app_dir,
           "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    with streamlit_server(env, app_dir=args.app_dir, port=args.port) as (url, proc, _):
        print(f"server up on {url} (pid {proc.pid}); load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs", flush=True)
        if not args.only_class:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                rows = one_user(browser, url, args.repeats, tuple(x.strip() for x in args.sections.split(",")))
                browser.close()
            print("\nOne user (seconds; targets: control <= 1.0, first visit <= 3, 15 presses <= 3):")
            table(rows)
        if not args.skip_class:
            print(f"\nA class on one link ({args.sessions} browser contexts at once, Weights page):", flush=True)
            table([class_scenario(url, proc.pid, args.sessions)])
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
