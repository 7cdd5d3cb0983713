"""Alignment mini-runs on the embedded model: the figures of the RLHF page, start -> end, and seconds per step.

    .venv/bin/python bench/align.py                 # reward model, DPO and GRPO with the page's defaults
    .venv/bin/python bench/align.py dpo grpo        # some of them

Prints one line per run: reward-model held-out accuracy, DPO reward margin on the training pairs, GRPO mean
reward (first vs last quarter of the steps). The machine load changes the s/step figures a lot: say it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.align import dpo, grpo, reward  # noqa: E402
from core.models.loading import load_model  # noqa: E402


def main(which: list[str]) -> None:
    lm = load_model(os.environ.get("BENCH_MODEL", "embedded"))
    print(f"model {lm.name} · torch threads {__import__('torch').get_num_threads()} · load {os.getloadavg()[0]:.1f}")
    if "reward" in which:
        t0 = time.perf_counter()
        r = reward.train_reward_model(lm.model, lm.tokenizer, reward.RewardConfig())
        print(f"reward model: held-out accuracy {r.test_accuracy_before:.0%} -> {r.test_accuracy_after:.0%}, "
              f"loss {r.rows[0]['loss']:.3f} -> {r.rows[-1]['loss']:.3f}, {r.seconds_per_step:.2f} s/step "
              f"({len(r.rows)} steps, {time.perf_counter() - t0:.0f} s in all)")
    if "dpo" in which:
        t0 = time.perf_counter()
        d = dpo.run_dpo(lm.model, lm.tokenizer, dpo.DPOConfigLab())
        print(f"DPO: margin on training pairs {d.margin_train_before:+.3f} -> {d.margin_train_after:+.3f}, "
              f"held-out {d.margin_test_before:+.3f} -> {d.margin_test_after:+.3f} "
              f"({d.accuracy_test_after:.0%} ranked right), {d.seconds_per_step:.2f} s/step "
              f"({len(d.rows)} steps, {time.perf_counter() - t0:.0f} s in all)")
    if "grpo" in which:
        t0 = time.perf_counter()
        g = grpo.run_grpo(lm.model, lm.tokenizer, grpo.GRPOConfigLab())
        print(f"GRPO ({g.reward_name}): mean reward {g.reward_start:.3f} -> {g.reward_end:.3f}, "
              f"{g.seconds_per_step:.2f} s/step ({len(g.rows)} steps, {time.perf_counter() - t0:.0f} s in all); "
              "per step: " + " ".join(f"{r['reward']:.2f}" for r in g.rows))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["reward", "dpo", "grpo"])
