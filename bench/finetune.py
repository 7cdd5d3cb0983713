"""Fine-tuning figures: loss start -> end, held-out loss, seconds per step and the memory a run holds,
for one mode on one model, through the job machinery (a worker thread, as on the page).

    .venv/bin/python bench/finetune.py                          # LoRA r=8 q,v on the embedded model, 30 steps
    .venv/bin/python bench/finetune.py --mode full --steps 10
    .venv/bin/python bench/finetune.py --model tiny-llama --mode freeze --freeze-layers 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import rss_mib  # noqa: E402
from core.jobs import JobRegistry  # noqa: E402
from core.models.loading import load_model  # noqa: E402
from core.train.finetune import FinetuneConfig, finetune  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="embedded")
    p.add_argument("--mode", default="lora", choices=["lora", "full", "freeze"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--freeze-layers", type=int, default=0)
    args = p.parse_args()
    lm = load_model(args.model)
    held_before = rss_mib()
    lr = args.lr or (1e-3 if args.mode == "lora" else 5e-5)
    cfg = FinetuneConfig(mode=args.mode, learning_rate=lr, steps=args.steps, batch_size=args.batch_size,
                         freeze_layers=args.freeze_layers, checkpoint_every=args.steps, eval_every=args.steps)
    peak = held_before
    with tempfile.TemporaryDirectory() as tmp:
        job = JobRegistry().start("finetune", "bench", lambda j: finetune(j, lm, cfg, Path(tmp) / "run"),
                                  total_steps=cfg.steps)
        while job.snapshot().active:
            peak = max(peak, rss_mib())
            time.sleep(0.5)
        snap = job.wait()
    if snap.status != "finished":
        raise SystemExit(f"{snap.status}: {snap.message}")
    r = snap.result
    print(f"model {args.model} · mode {args.mode} · {cfg.steps} steps · batch {cfg.batch_size} · lr {lr:g}")
    print(f"trainable {r.trainable:,} of {r.total:,} ({r.trainable / r.total:.3%})")
    print(f"training loss {r.loss_start:.3f} -> {r.loss_end:.3f} · held-out loss {r.val_loss_start:.3f} -> "
          f"{r.val_loss_end:.3f}")
    print(f"{r.s_per_step:.2f} s/step (mean of the optimizer steps) · {r.seconds:.1f} s of training")
    print(f"memory: {held_before:,.0f} MiB with the shared model loaded, peak {peak:,.0f} MiB during the job "
          f"(+{peak - held_before:,.0f} MiB: the private copy, gradients, AdamW state)")
    signed = sum("Over and out" in a["after"] for a in r.answers)
    print(f"held-out answers ending with the sign-off: {sum('Over and out' in a['before'] for a in r.answers)} "
          f"before, {signed} after (of {len(r.answers)})")


if __name__ == "__main__":
    main()
