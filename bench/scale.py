"""The seed's model on a laptop (issue 19): load, weight statistics, parity and peak memory of models with
the shape of DeepSeek-R1-Distill-Qwen-1.5B and Llama-3.2-1B (random weights, seed 0, built from the
shipped configs once and cached as bf16 safetensors folders under ~/.cache/llm-anatomy-lab/bench-models).

Every CLI command runs in its own process, one at a time (a 1.5B model in float32 is 7.1 GB: never two
at once); peak RSS is that process's own VmHWM, printed by it at exit.

    .venv/bin/python bench/scale.py                          # both shapes, bf16, this checkout
    .venv/bin/python bench/scale.py --only 1.5b --dtype float32
    .venv/bin/python bench/scale.py --before /tmp/lab-before  # the same commands in an older checkout
    .venv/bin/python bench/scale.py --pages                  # + first visit of every inspection page (Chromium)
    .venv/bin/python bench/scale.py --only 1b --pages --no-cli  # the pages only (server on port 8615)
    .venv/bin/python bench/scale.py --shape tiny             # the same code on a 2-layer shape (the test)

Targets (2 cores): load <= 15 s; weight statistics of all weights <= 5 s; peak RSS <= 1.2x the weights
in the chosen dtype; each inspection page's first visit <= 10 s once the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {"1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "1b": "meta-llama/Llama-3.2-1B"}
TEXT = "The capital of France is Paris. The capital of Italy is"
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FIRST_CONTENT = ("[data-testid='stMain'] :is([data-testid='stVegaLiteChart'], [data-testid='stDataFrame'], "
                 "[data-testid='stMetric'], [data-testid='stImage'], [data-testid='stTable'], [data-testid='stGraphVizChart'])")
PAGES = ("Architecture", "Parameters", "Forward_pass", "Tokens", "Embeddings_and_positions", "Attention",
         "Weights", "Logit_lens")


def tiny_folder() -> Path:
    """A 2-layer Qwen2 of the same code path (the test's shape), saved like the big ones."""
    from core.models.loading import embedded_tokenizer, tiny_config
    from core.models.shapes import bench_models_root, save_random_model

    return save_random_model(tiny_config("tiny-qwen2", len(embedded_tokenizer())),
                             bench_models_root() / "tiny-qwen2-bfloat16-seed0")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run one command; its wall time, its own peak RSS and its JSON output (or its error)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    result = {"wall_s": wall, "rc": proc.returncode}
    try:
        result["json"] = json.loads(out)
    except ValueError:
        result["error"] = (err or out).strip().splitlines()[-1:] or ["no output"]
    for line in err.splitlines():
        if line.startswith("VmHWM:"):
            result["peak_bytes"] = int(line.split()[1]) * 1024
    return result


# Prints this process's VmHWM to stderr at exit, so each command reports its own peak memory.
PEAK_HOOK = ("import atexit,sys;atexit.register(lambda: print([l for l in open('/proc/self/status') "
             "if l.startswith('VmHWM')][0].strip(), file=sys.stderr));import runpy;sys.argv=['core']+sys.argv[1:];"
             "runpy.run_module('core', run_name='__main__')")


def cli(cwd: Path, *args: str) -> dict:
    return run([sys.executable, "-c", PEAK_HOOK, *args], cwd)


def n_params(folder: Path) -> int:
    from transformers import AutoConfig

    from core.models.params import count_parameters

    return int(count_parameters(AutoConfig.from_pretrained(folder))["total"])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def bench_shape(name: str, folder: Path, dtype: str, cwd: Path) -> dict:
    n = n_params(folder)
    weights = n * BYTES[dtype]
    print(f"\n== {name}: {n / 1e9:.3f}B parameters, {gb(weights)} of weights in {dtype}; checkout {cwd}")
    model = ["--model", str(folder), "--dtype", dtype]
    figures = {}
    for label, args in (("info", ["info", *model]),
                        ("weights --no-cache", ["weights", *model, "--no-cache"]),
                        ("forward --check-parity", ["forward", *model, "--text", TEXT, "--check-parity"])):
        r = cli(cwd, *args)
        figures[label] = r
        if "json" not in r:
            print(f"  {label:24s} failed (rc {r['rc']}): {r.get('error')}")
            continue
        j = r["json"]
        peak = r.get("peak_bytes", 0)
        extra = ""
        if label == "info":
            extra = f"load {j['load_seconds']:.1f} s ({j['loaded_from']})"
        elif label.startswith("weights"):
            extra = f"statistics {j['seconds']:.2f} s of {sum(1 for _ in j['layers'])} layers"
        else:
            p = j["parity"]
            rel = max(p["relative"].values()) if p.get("relative") else float("nan")
            bound = (f"relative tolerance {p['relative_tolerance']:g}" if p.get("relative_tolerance")
                     else f"tolerance {p['tolerance']:g}")
            extra = f"parity: worst max |Δ| {p['worst']:.2e}, worst relative {rel:.2e} ({bound}, ok {p['ok']})"
        print(f"  {label:24s} wall {r['wall_s']:6.1f} s  peak RSS {gb(peak)} = {peak / weights:.2f}x weights  {extra}")
    return figures


def bench_pages(folder: Path, dtype: str) -> None:
    """First visit of each inspection page in Chromium, the model already loaded by Home."""
    from playwright.sync_api import sync_playwright

    from bench._util import CHROMIUM_ARGS, DONE, streamlit_server
    import shutil

    query = "?" + urllib.parse.urlencode({"model": str(folder), "dtype": dtype})
    with streamlit_server({"LLM_LAB_LOCAL_MODELS": "any"}, port=8615) as (url, proc, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in ("", *PAGES):
            t = time.perf_counter()
            page.goto(f"{url}/{name}{query}")
            page.wait_for_selector("h1", timeout=600_000)
            # The part that is ready first: the page's first chart, table, metric or image (a page with a long
            # check, such as the Forward pass's parity, draws everything else and shows a spinner for it).
            page.wait_for_selector(f"{FIRST_CONTENT}, {DONE}", timeout=600_000)
            ready = time.perf_counter() - t
            page.wait_for_selector(DONE, timeout=600_000)
            seconds = time.perf_counter() - t
            shot = ROOT / ".helpers" / "scale" / f"{folder.name}-{name or 'Home'}.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=False)
            print(f"  page {name or 'Home':26s} first content {ready:6.1f} s, settled {seconds:6.1f} s   server RSS "
                  f"{gb(int(Path(f'/proc/{proc.pid}/status').read_text().split('VmRSS:')[1].split()[0]) * 1024)}")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(SHAPES))
    parser.add_argument("--shape", choices=["reference", "tiny"], default="reference")
    parser.add_argument("--dtype", default="bfloat16", choices=list(BYTES))
    parser.add_argument("--before", type=Path, help="an older checkout to run the same CLI commands in")
    parser.add_argument("--pages", action="store_true", help="also open every inspection page in Chromium")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI commands (with --pages)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; dtype {args.dtype}")
    from core.models.shapes import reference_folder

    if args.shape == "tiny":
        targets = {"tiny-qwen2": tiny_folder()}
    else:
        targets = {}
        for key, model_id in SHAPES.items():
            if args.only in (None, key):
                t = time.perf_counter()
                targets[model_id] = reference_folder(model_id, say=print)
                print(f"{model_id}: folder ready in {time.perf_counter() - t:.1f} s ({targets[model_id]})")
    for name, folder in targets.items():
        for cwd in [] if args.no_cli else ([args.before] if args.before else []) + [ROOT]:
            bench_shape(name, folder, args.dtype, cwd)
        if args.pages:
            bench_pages(folder, args.dtype)


if __name__ == "__main__":
    main()
