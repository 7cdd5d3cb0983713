"""Training lessons: two short runs that differ in one setting, trained side by side in ONE job.

The job alternates one optimizer step of run A with one of run B, so both curves grow together on one chart
and a lesson takes one job slot (the per-user limit of one running job holds). Both runs draw the same
batches at each step (same seed): the only difference between the curves is the setting under study.
A run that diverges is marked and left behind; the other one continues.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from core.train.config import TrainConfig
from core.train.pretrain import Trainer, TrainingDiverged, make_accelerator, prepare_data

# Small enough that both runs together take well under two minutes on 2 CPU cores.
BASE = TrainConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, batch_size=16, learning_rate=3e-3,
                   max_iters=400, warmup_iters=0, lr_decay_iters=400, min_lr=3e-4, eval_interval=25,
                   eval_iters=8, sample_interval=0, grad_clip=1.0, weight_decay=0.1, seed=1337)


@dataclass(frozen=True)
class Lesson:
    key: str
    title: str
    labels: tuple[str, str]
    configs: tuple[TrainConfig, TrainConfig]
    look_for: str  # written after watching the real curves


def _pair(**common: Any) -> TrainConfig:
    return replace(BASE, **common)


LESSONS: dict[str, Lesson] = {}


def _add(key: str, title: str, label_a: str, a: dict, label_b: str, b: dict, common: dict, look_for: str) -> None:
    base = _pair(**common)
    LESSONS[key] = Lesson(key, title, (label_a, label_b), (replace(base, **a), replace(base, **b)), look_for)


_add("warmup", "Warmup vs none", "no warmup", {"warmup_iters": 0}, "100 warmup steps", {"warmup_iters": 100},
     {"learning_rate": 1e-2, "n_layer": 4, "grad_clip": 0.0},
     "")
_add("clipping", "Gradient clipping vs none at a high learning rate", "no clipping", {"grad_clip": 0.0},
     "clip at 1.0", {"grad_clip": 1.0}, {"learning_rate": 3e-2, "n_layer": 4, "warmup_iters": 0},
     "")
_add("norm", "Pre-LN vs post-LN", "pre-LN", {"norm_position": "pre"}, "post-LN", {"norm_position": "post"},
     {"n_layer": 6, "learning_rate": 3e-3, "warmup_iters": 0},
     "")
_add("init", "Init N(0, 0.02) vs a bad init N(0, 1)", "std 0.02 (scaled residual)", {"init": "scaled"},
     "std 1.0", {"init": "bad"}, {},
     "")
_add("dropout", "Dropout 0 vs 0.2 on a small slice", "dropout 0", {"dropout": 0.0}, "dropout 0.2",
     {"dropout": 0.2}, {"max_chars": 20_000, "n_layer": 4, "n_embd": 128, "block_size": 64, "batch_size": 16,
                        "learning_rate": 1e-3, "max_iters": 600, "lr_decay_iters": 600, "min_lr": 1e-4,
                        "eval_interval": 30, "weight_decay": 0.0},
     "")


@dataclass
class _Side:
    label: str
    trainer: Trainer
    diverged: str = ""
    last: dict[str, Any] = field(default_factory=dict)


def run_lesson(key: str, job: Any, max_iters: int | None = None) -> dict[str, Any]:
    """Train the lesson's two runs in alternation; one metrics row per run per step (column `run`)."""
    if key not in LESSONS:
        raise ValueError(f"Unknown lesson {key!r}; choose one of {', '.join(LESSONS)}.")
    lesson = LESSONS[key]
    configs = [replace(c, max_iters=max_iters or c.max_iters) for c in lesson.configs]
    acc = make_accelerator()
    sides = []
    for label, config in zip(lesson.labels, configs):
        data = prepare_data(config)
        sides.append(_Side(label, Trainer(config, data, acc)))
    job.report(step=0, parameters={s.label: s.trainer.raw.num_parameters() for s in sides})
    total = configs[0].max_iters
    started = time.perf_counter()
    for step in range(1, total + 1):
        job.tick()
        for side in sides:
            if side.diverged:
                continue
            row = _one_step(side, step, total)
            row["elapsed_s"] = time.perf_counter() - started
            job.report(metrics=row)
        job.report(step=step, diverged={s.label: s.diverged for s in sides if s.diverged})
        if all(s.diverged for s in sides):
            break
    return {s.label: {"val_loss": s.last.get("val_loss"), "diverged": s.diverged} for s in sides}


def _one_step(side: _Side, step: int, total: int) -> dict[str, Any]:
    t = side.trainer
    row: dict[str, Any] = {"step": step, "run": side.label, "val_loss": None}
    try:
        result = t.train_step()
    except TrainingDiverged as exc:
        side.diverged = f"step {step}: {str(exc).split(';')[0]}"
        return {**row, "train_loss": math.nan, "lr": math.nan, "grad_norm": math.nan}
    row.update(train_loss=result.train_loss, lr=result.lr, grad_norm=result.grad_norm)
    if step % t.config.eval_interval == 0 or step == total:
        losses = t.evaluate()
        row["val_loss"] = losses["val"]
        side.last = row
    return row
