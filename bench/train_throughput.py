"""Pre-training through the job machinery vs a bare loop; page rerun time while a job runs; memory of a job.

    .venv/bin/python bench/train_throughput.py [--steps 200] [--reruns 5]

1. tokens/s of nanoGPT's baby GPT (shakespeare_char.json) for --steps steps: a bare PyTorch loop (the same
   model, AdamW, batches; no accelerate, no job) vs `core.train.pretrain.train` started through
   `core.jobs.REGISTRY` (evaluation, samples and checkpoints pushed past the end so both do the same work).
   Three rounds, alternating; the best of each counts (the machine may be shared). The bare loop runs in a
   short-lived thread, then once in the main thread, after the last job.

   Why the order matters: torch's OpenMP (libgomp) gives every thread that runs a parallel op its own pool of
   worker threads, kept until that thread exits. With more pool threads alive than cores, libgomp stops
   spin-waiting and every op pays a futex wake-up: a job thread then runs at about one core's speed. Streamlit
   runs page scripts in threads that end, so in the app only jobs hold pools; the bench keeps its main thread
   free of torch until the end, and one line after the overhead shows what a job gets when the main thread
   holds a pool.
2. server time of a rerun of pages/10_Pretraining.py in AppTest while a job runs and is attached (median).
3. memory held by one running job: the tensors it owns (weights, gradients, AdamW moments, token ids) and the
   growth of this process's resident set while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
os.environ.setdefault("LLM_LAB_DEFAULT_MODEL", "tiny-llama")

import torch  # noqa: E402
from _util import rss_mib  # noqa: E402

from core.jobs import REGISTRY  # noqa: E402
from core.train.config import TrainConfig, lr_at  # noqa: E402
from core.train.data import get_batch, step_generator  # noqa: E402
from core.train.model import GPT  # noqa: E402
from core.train.pretrain import prepare_data, train  # noqa: E402
from core.units import format_bytes  # noqa: E402


def baby_config(steps: int) -> TrainConfig:
    values = json.loads((ROOT / "data" / "train_configs" / "shakespeare_char.json").read_text())
    config = TrainConfig.from_dict(values)
    return replace(config, max_iters=steps, eval_interval=10**9, sample_interval=0, checkpoint_interval=10**9)


def bare_loop(config: TrainConfig) -> float:
    """tokens/s of the plainest loop over the same model, optimizer settings and batches."""
    data = prepare_data(config)
    model = GPT(config.model_config(data.vocab_size), generator=torch.Generator().manual_seed(config.seed))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=config.learning_rate,
                            betas=(config.beta1, config.beta2))
    model.train()
    start = time.perf_counter()
    for step in range(config.max_iters):
        for g in opt.param_groups:
            g["lr"] = lr_at(config, step)
        x, y = get_batch(data.train, config.batch_size, config.block_size, step_generator(config.seed, step))
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
    return config.max_iters * config.batch_size * config.block_size / (time.perf_counter() - start)


def in_thread(fn: Callable[..., float], *args: object) -> float:
    """fn(*args) in a thread that ends afterwards, as Streamlit runs a page script."""
    out: list[float] = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)))
    worker.start()
    worker.join()
    return out[0]


def through_job(config: TrainConfig, run_dir: Path) -> tuple[float, dict]:
    job = REGISTRY.start("pretrain", "bench", lambda j: train(config, run_dir, j, export=False), total_steps=config.max_iters)
    snap = job.wait()
    assert snap.status == "finished", snap.message
    rows = snap.metrics
    seconds = rows[-1]["elapsed_s"]
    return config.max_iters * config.batch_size * config.block_size / seconds, snap.info


def page_rerun_ms(reruns: int, tmp: Path) -> tuple[float, dict]:
    from pagetest import run_page

    config = replace(baby_config(5000), eval_interval=200, sample_interval=200)
    rss0 = rss_mib() * 2**20
    job = REGISTRY.start("pretrain", "bench-page", lambda j: train(config, tmp / "page", j, export=False),
                         total_steps=config.max_iters)
    while job.snapshot().step < 20:
        time.sleep(0.2)
    at = run_page("pages/10_Pretraining.py")
    at.query_params["train"] = job.id
    at.run()
    times = []
    for _ in range(reruns):
        t = time.perf_counter()
        at.run()
        times.append((time.perf_counter() - t) * 1000)
    assert not at.exception, [e.value for e in at.exception]
    snap = job.snapshot()
    memory = {"tensors": snap.info.get("memory_bytes"), "rss_growth": rss_mib() * 2**20 - rss0}
    job.stop()
    job.wait()
    return statistics.median(times), memory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reruns", type=int, default=5)
    args = ap.parse_args()
    config = baby_config(args.steps)
    print(f"torch threads: {torch.get_num_threads()}, load average: {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bare, job = [], []
        for i in range(3):
            bare.append(in_thread(bare_loop, config))
            tps, info = through_job(config, Path(tmp) / f"run{i}")
            job.append(tps)
            print(f"  round {i + 1}: bare loop (thread) {bare[-1]:,.0f} tokens/s, job {job[-1]:,.0f} tokens/s", flush=True)
        bare_main = bare_loop(config)
        print(f"  bare loop in the main thread: {bare_main:,.0f} tokens/s", flush=True)
        best_bare = max(*bare, bare_main)
        overhead = 100 * (1 - max(job) / best_bare)
        print(f"baby GPT ({info['parameters']:,} parameters), {args.steps} steps: bare loop {best_bare:,.0f} tokens/s, "
              f"through the job machinery {max(job):,.0f} tokens/s, overhead {overhead:.1f}% (target <= 5%)")
        stale, _ = through_job(config, Path(tmp) / "stale")
        print(f"  a job started while the main thread holds an OpenMP pool: {stale:,.0f} tokens/s "
              f"({100 * (1 - stale / best_bare):.0f}% slower; see the docstring)")
        ms, memory = page_rerun_ms(args.reruns, Path(tmp))
        print(f"page rerun while a job runs (AppTest, median of {args.reruns}): {ms:.0f} ms (target < 500 ms)")
        print(f"memory held by one running job: {format_bytes(memory['tensors'])} in tensors "
              f"(weights, gradients, AdamW moments, token ids); process RSS grew {format_bytes(memory['rss_growth'])}")


if __name__ == "__main__":
    main()
