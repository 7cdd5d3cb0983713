"""A class on one server: N students (Playwright contexts) start a short pre-training run at the same moment
against one `streamlit run` server with the default limits; then the teacher's watch link is open in N
contexts while the teacher's run trains. Prints wait and finish times, queue positions seen, lost or refused
runs, and the server's peak memory (VmHWM).

    .venv/bin/python bench/class_jobs.py                          # 30 students, in-process runner
    .venv/bin/python bench/class_jobs.py --memory-mb 2700         # Streamlit Community Cloud's ceiling
    .venv/bin/python bench/class_jobs.py --ray                    # the same on a local 2-CPU Ray cluster
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import CHROMIUM, CHROMIUM_ARGS, DONE, ROOT, free_port, streamlit_server

FIELDS = (("Steps", 60), ("Layers", 1), ("Width (n_embd)", 32), ("Block size", 16),
          ("Evaluate + checkpoint every", 30), ("Eval batches", 2), ("Sample every (0: never)", 0),
          ("Use the first N characters (0: all)", 20_000))


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else float("nan")


async def settle(page) -> None:
    await page.wait_for_selector(DONE, timeout=600_000)


async def main_text(page) -> str:
    return " ".join(await page.locator("[data-testid='stMain'] p").all_inner_texts())


async def student(browser, url: str, i: int, start: asyncio.Event, ready: list[int],
                  setting_up: asyncio.Semaphore) -> dict:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    # A few students fill in the form at a time: students arrive over minutes, and 30 Chromium contexts
    # typing at once on 2 cores measure the browsers, not the server. The start is still simultaneous.
    async with setting_up:
        await page.goto(f"{url}/Pretraining", timeout=600_000)
        await settle(page)
        for label, value in FIELDS:
            box = page.get_by_label(label, exact=True)
            await box.fill(str(value))
            await box.press("Enter")
            await settle(page)
        name = page.get_by_label("Run name", exact=True)
        await name.fill(f"student-{i:02d}")
        await name.press("Enter")
        await settle(page)
    ready.append(i)
    await start.wait()
    t0 = time.perf_counter()
    await page.get_by_role("button", name="▶ Start training").click()
    positions, started, refused = set(), None, ""
    while True:
        text = await main_text(page)
        for m in re.finditer(r"position (\d+) of (\d+)", text):
            positions.add(int(m.group(1)))
        if "already have a job" in text or "busy" in text or "could never start" in text:
            refused = text
            break
        if started is None and re.search(r"pre-training student-\d+: (running|finished)", text):
            started = time.perf_counter() - t0
        if "finished · step 60 / 60" in text:
            break
        if time.perf_counter() - t0 > 1800:
            break
        await asyncio.sleep(2.0)
    done = time.perf_counter() - t0
    await context.close()
    return {"i": i, "wait": started, "finish": done, "positions": positions, "refused": refused}


async def shown_step(page, timeout: float = 120) -> int:
    """The step in the live panel's status line ("step 267 / 4,000"), -1 if none appears in time."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        m = re.search(r"step ([\d,]+) / ", await main_text(page))
        if m:
            return int(m.group(1).replace(",", ""))
        await asyncio.sleep(0.5)
    return -1


async def watcher(browser, link: str) -> dict:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    t0 = time.perf_counter()
    await page.goto(link, timeout=600_000)
    await settle(page)
    first = time.perf_counter() - t0
    step0 = await shown_step(page)  # the live panel draws after the page's first run: wait for its status line
    buttons = await page.get_by_role("button", name="⏸ Pause").count()
    await asyncio.sleep(8)
    step1 = await shown_step(page)
    text = await main_text(page)
    await context.close()
    return {"first": first, "controls": buttons, "advanced": step1 > step0 >= 0, "read_only": "read-only" in text}


async def run_class(url: str, n: int) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        start, ready = asyncio.Event(), []
        setting_up = asyncio.Semaphore(4)
        tasks = [asyncio.create_task(student(browser, url, i, start, ready, setting_up)) for i in range(n)]
        while len(ready) + sum(t.done() for t in tasks) < n:  # a student whose page failed does not hold the class
            await asyncio.sleep(0.5)
        print(f"  {len(ready)} students ready ({sum(t.done() for t in tasks)} failed to open the page); all press start",
              flush=True)
        start.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await browser.close()
    return results


async def run_watchers(url: str, n: int) -> tuple[list[dict], str]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        teacher = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
        await teacher.goto(f"{url}/Pretraining")
        await settle(teacher)
        for label, value in FIELDS:
            box = teacher.get_by_label(label, exact=True)
            await box.fill(str(100_000 if label == "Steps" else value))  # still running when the last watcher looks
            await box.press("Enter")
            await settle(teacher)
        name = teacher.get_by_label("Run name", exact=True)
        await name.fill("lecture")
        await name.press("Enter")
        await settle(teacher)
        await teacher.get_by_role("button", name="▶ Start training").click()
        await teacher.wait_for_function("() => new URL(location.href).searchParams.has('train')", timeout=600_000)
        link = teacher.url
        results = await asyncio.gather(*(watcher(browser, link) for _ in range(n)), return_exceptions=True)
        await teacher.get_by_role("button", name="⏹ Stop").click()
        await settle(teacher)
        await browser.close()
    return results, link


def start_ray() -> tuple[str, str]:
    ray_cli = str(Path(sys.executable).parent / "ray")
    port, temp = free_port(), f"/tmp/rb-{secrets.token_hex(3)}"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
                    "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp],
                   check=True, capture_output=True, env=env, timeout=300)
    return f"127.0.0.1:{port}", temp


def full_collection_seconds() -> tuple[float, int]:
    """What Streamlit's default `runner.postScriptGC` costs after every run: one gc.collect(2) with the server's
    libraries and the default model loaded (the project's config turns it off)."""
    import gc

    import streamlit  # noqa: F401
    from core.models.loading import load_model

    load_model("tiny-llama")
    gc.collect(2)
    start = time.perf_counter()
    gc.collect(2)
    return time.perf_counter() - start, len(gc.get_objects())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--watchers", type=int, default=30)
    ap.add_argument("--memory-mb", type=float, default=None, help="LLM_LAB_MEMORY_MB for the server")
    ap.add_argument("--ray", action="store_true", help="run the jobs on a local 2-CPU Ray cluster")
    args = ap.parse_args()

    seconds, objects = full_collection_seconds()
    print(f"one full garbage collection with the server's libraries loaded: {seconds:.3f} s over {objects:,} objects "
          "(Streamlit's default runs one after every script and fragment run; .streamlit/config.toml turns it off)")
    runs = Path(tempfile.mkdtemp(prefix="class-runs-"))
    env = {"LLM_LAB_RUNS": str(runs), "LLM_LAB_DEFAULT_MODEL": "tiny-llama", "MALLOC_ARENA_MAX": "2"}
    if args.memory_mb:
        env["LLM_LAB_MEMORY_MB"] = str(args.memory_mb)
    ray_temp = None
    if args.ray:
        address, ray_temp = start_ray()
        env.update({"LLM_LAB_RAY_ADDRESS": address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"})
    try:
        with streamlit_server(env) as (url, proc, _):
            t0 = time.perf_counter()
            results = asyncio.run(run_class(url, args.students))
            wall = time.perf_counter() - t0
            errors = [r for r in results if isinstance(r, BaseException)]
            ok = [r for r in results if not isinstance(r, BaseException)]
            complete = 0
            for r in ok:
                path = runs / f"student-{r['i']:02d}" / "metrics.csv"
                if path.is_file() and [int(x["step"]) for x in csv.DictReader(path.open())] == list(range(1, 61)):
                    complete += 1
            waits = [r["wait"] for r in ok if r["wait"] is not None]
            print(f"class of {args.students} ({'Ray' if args.ray else 'in-process'}, memory budget "
                  f"{args.memory_mb or 'default'} MB): {wall:.0f} s in all")
            print(f"  finished with complete metrics.csv: {complete}/{args.students} · refused: "
                  f"{sum(bool(r['refused']) for r in ok)} · browser errors: {len(errors)}")
            for e in errors[:3]:
                print(f"    {type(e).__name__}: {str(e).splitlines()[0]}")
            print(f"  queue positions shown: {len([r for r in ok if r['positions']])} students saw one "
                  f"(largest {max((max(r['positions']) for r in ok if r['positions']), default=0)})")
            print(f"  wait until running: p50 {pct(waits, 50):.1f} s, p95 {pct(waits, 95):.1f} s")
            print(f"  finish after start: p50 {pct([r['finish'] for r in ok], 50):.1f} s, "
                  f"p95 {pct([r['finish'] for r in ok], 95):.1f} s")
            print(f"  server peak memory (VmHWM) after the class: {vm_hwm_mib(proc.pid):,.0f} MiB")
            if args.watchers:
                watched, _ = asyncio.run(run_watchers(url, args.watchers))
                good = [w for w in watched if not isinstance(w, BaseException)]
                print(f"  watch link in {args.watchers} contexts: {len(good)} opened, "
                      f"{sum(w['advanced'] for w in good)} saw the run advance, "
                      f"{sum(w['controls'] == 0 and w['read_only'] for w in good)} read-only; first view p50 "
                      f"{pct([w['first'] for w in good], 50):.1f} s, p95 {pct([w['first'] for w in good], 95):.1f} s")
                print(f"  server peak memory (VmHWM) at the end: {vm_hwm_mib(proc.pid):,.0f} MiB")
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        if ray_temp:
            subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True,
                           env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
            shutil.rmtree(ray_temp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
