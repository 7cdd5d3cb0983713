"""The five training lessons, each as the page starts it (one job, two runs alternating): wall time against the
issue's two-minute budget on 2 CPU cores, and each run's final validation loss.

    .venv/bin/python bench/lessons.py [--only warmup,init]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.jobs import REGISTRY  # noqa: E402
from core.train.lessons import LESSONS, run_lesson  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(LESSONS))
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    print(f"{'lesson':<52} {'steps':>5} {'wall s':>7}  final validation loss")
    for key in args.only.split(","):
        lesson = LESSONS[key]
        steps = lesson.configs[0].max_iters
        start = time.perf_counter()
        job = REGISTRY.start("lesson", "bench", lambda j, k=key: run_lesson(k, j), total_steps=steps)
        snap = job.wait()
        wall = time.perf_counter() - start
        assert snap.status == "finished", snap.message
        finals = " · ".join(f"{label} {r['val_loss']:.3f}" + (f" (diverged {r['diverged']})" if r["diverged"] else "")
                            for label, r in snap.result.items())
        print(f"{lesson.title:<52} {steps:>5} {wall:>7.1f}  {finals}", flush=True)


if __name__ == "__main__":
    main()
