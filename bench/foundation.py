"""Foundation figures: embedded model first (GGUF) and cached load in a new process, a 64-token
forward pass with attentions, the app's cold start to Home rendered, and resident memory with
1 and 5 browser sessions on one server.

    .venv/bin/python bench/foundation.py [--skip-browser]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import CHROMIUM, CHROMIUM_ARGS, ROOT, rss_mib, streamlit_server, wait_rendered

LOAD = ("import json, time; t = time.perf_counter(); from core.models.loading import load_model; "
        "lm = load_model('embedded'); "
        "print(json.dumps({'load_seconds': lm.load_seconds, 'from': lm.loaded_from, "
        "'process_seconds': time.perf_counter() - t}))")


def new_process_load(cache: str) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, capture_output=True, text=True,
                         env={**__import__("os").environ, "LLM_LAB_CACHE": cache}, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds_with_python_start"] = time.perf_counter() - start
    return result


def bench_loads() -> None:
    with tempfile.TemporaryDirectory() as cache:
        first = new_process_load(cache)
        cached = new_process_load(cache)
    print(f"embedded first load (GGUF, empty cache):   load_model {first['load_seconds']:.2f} s "
          f"(import + load {first['process_seconds']:.2f} s)  [{first['from']}]")
    print(f"embedded cached load (new process):        load_model {cached['load_seconds']:.2f} s "
          f"(import + load {cached['process_seconds']:.2f} s)  [{cached['from']}]")
    print(f"speed-up of the cached load:               {first['load_seconds'] / cached['load_seconds']:.1f}x")


def bench_forward() -> None:
    sys.path.insert(0, str(ROOT))
    from core.models.capture import run_forward
    from core.models.loading import load_model

    lm = load_model("embedded")
    text = " ".join(["token"] * 64)
    cap = run_forward(lm, text, max_tokens=64)
    assert len(cap.ids) == 64
    times = []
    for _ in range(7):
        t = time.perf_counter()
        run_forward(lm, text, max_tokens=64)
        times.append(time.perf_counter() - t)
    print(f"64-token forward with attentions + hidden states (embedded, CPU): "
          f"median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms over 7 runs")


def bench_browser() -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        start = time.perf_counter()
        with streamlit_server({"LLM_LAB_DEFAULT_MODEL": "embedded"}) as (url, proc, up):
            page = browser.new_page()
            page.goto(url)
            wait_rendered(page)
            cold = time.perf_counter() - start
            print(f"app cold start to Home rendered (server start + model from disk cache): {cold:.1f} s "
                  f"(server answered after {up:.1f} s)")
            # Each session also runs a forward pass with attentions (the Attention page), so the weights are
            # resident (safetensors are memory-mapped) and every session has computed something.
            page.goto(f"{url}/Attention")
            wait_rendered(page)
            time.sleep(2)
            one = rss_mib(proc.pid)
            pages = [page]
            for _ in range(4):
                pg = browser.new_context().new_page()
                pg.goto(url)
                wait_rendered(pg)
                pg.goto(f"{url}/Attention")
                wait_rendered(pg)
                pages.append(pg)
            time.sleep(2)
            five = rss_mib(proc.pid)
            print(f"server resident memory (Home, then the Attention page): 1 session {one:.0f} MiB, "
                  f"5 sessions {five:.0f} MiB (+{(five - one) / one * 100:.1f}%)")
        browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--only-browser", action="store_true")
    args = parser.parse_args()
    if not args.only_browser:
        bench_loads()
        bench_forward()
    if not args.skip_browser and Path(CHROMIUM).exists():
        bench_browser()
