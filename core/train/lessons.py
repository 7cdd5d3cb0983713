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
    look_for: str  # what the curves show and why, without figures: `figures` quotes the run being watched


def _pair(**common: Any) -> TrainConfig:
    return replace(BASE, **common)


LESSONS: dict[str, Lesson] = {}


def _add(key: str, title: str, label_a: str, a: dict, label_b: str, b: dict, common: dict, look_for: str) -> None:
    base = _pair(**common)
    LESSONS[key] = Lesson(key, title, (label_a, label_b), (replace(base, **a), replace(base, **b)), look_for)


_add("warmup", "Warmup vs none", "no warmup", {"warmup_iters": 0}, "100 warmup steps", {"warmup_iters": 100},
     {"learning_rate": 1e-2, "n_layer": 4, "grad_clip": 0.0},
     ('At this high rate (1e-2, no clipping) the run without warmup drops fastest for a few steps, then '
      'jumps back up and stays above the warmed-up run. The warmed-up run looks slow at first (its rate '
      "starts near 1e-4) but overtakes. Early on, Adam's moment estimates come from a handful of gradients; "
      'full-size steps taken on them push the model somewhere it does not easily leave.'))
_add("clipping", "Gradient clipping vs none at a high learning rate", "no clipping", {"grad_clip": 0.0},
     "clip at 1.0", {"grad_clip": 1.0}, {"learning_rate": 3e-2, "n_layer": 4, "warmup_iters": 0},
     ('Both runs suffer at this rate (3e-2) and the two curves stay close. That is the lesson: with AdamW '
      'each update is already divided by a running scale of the gradient, so clipping only changes the steps '
      'whose norm spikes above the threshold, and those are few. Watch the gradient-norm spikes; then try the '
      'warmup lesson, the bigger lever.'))
_add("norm", "Pre-LN vs post-LN", "pre-LN", {"norm_position": "pre"}, "post-LN", {"norm_position": "post"},
     {"n_layer": 6, "learning_rate": 3e-3, "warmup_iters": 0},
     ("With 6 layers, rate 3e-3 and no warmup, the post-LN model (the original Transformer's layout) gets "
      'stuck at about the loss that predicting character frequencies alone gives, while pre-LN keeps going '
      'down. '
      'In post-LN every gradient has to pass through a LayerNorm per sub-layer on the way down, and without '
      'warmup the first updates wreck it (Xiong et al. 2020); pre-LN keeps an untouched identity path from '
      'the loss to every layer.'))
_add("init", "Init N(0, 0.02) vs a bad init N(0, 1)", "std 0.02 (scaled residual)", {"init": "scaled"},
     "std 1.0", {"init": "bad"}, {},
     ('The bad init starts far above ln 65 = 4.17 nats, what guessing uniformly among 65 characters gives: '
      'with N(0, 1) weights the logits are huge and confidently wrong. It spends its first steps just '
      'shrinking them while the 0.02 init is already learning, and the gap lasts. A bad start costs more '
      'than the steps it takes to recover from it.'))
_add("dropout", "Dropout 0 vs 0.2 on a small slice", "dropout 0", {"dropout": 0.0}, "dropout 0.2",
     {"dropout": 0.2}, {"max_chars": 5_000, "n_layer": 2, "n_embd": 96, "block_size": 64, "batch_size": 16,
                        "learning_rate": 3e-3, "max_iters": 400, "lr_decay_iters": 400, "min_lr": 3e-4,
                        "eval_interval": 25, "weight_decay": 0.0},
     ('On 5,000 characters (4,500 to train on) the model without dropout memorises: its training loss keeps '
      'falling while its validation loss bottoms out and turns up, the gap between the two curves widening. '
      'That is overfitting. With dropout 0.2 the training loss stays higher but the validation loss holds: '
      'each step trains a random sub-network, so no single path can memorise the text.'))


# ---------------------------------------------------------------- figures quoted from the run being watched


def _series(rows: Any, label: str, metric: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[metric])) for r in rows
            if r.get("run") == label and r.get(metric) is not None and not math.isnan(float(r[metric]))]


def _at(series: list[tuple[int, float]], step: int) -> float | None:
    return next((v for s, v in series if s == step), None)


def figures(key: str, rows: Any) -> str:
    """The lesson's figures from `rows` (a lesson job's metrics: one row per run per step), as a sentence;
    "" until the run has a validation loss. The text can never drift from the curves: it is read off them."""
    lesson = LESSONS[key]
    a, b = lesson.labels
    val = {x: _series(rows, x, "val_loss") for x in (a, b)}
    train = {x: _series(rows, x, "train_loss") for x in (a, b)}
    if not (val[a] and val[b]):
        return ""
    step_a, last_a = val[a][-1]
    step_b, last_b = val[b][-1]
    parts = [f"In this run: validation loss {last_a:.2f} ({a}, step {step_a}) vs {last_b:.2f} ({b}, step {step_b})"]
    if key == "warmup" and len(train[a]) >= 5:
        low = min(train[a][:10], key=lambda sv: sv[1])
        later = max((sv for sv in train[a][:25] if sv[0] > low[0]), key=lambda sv: sv[1], default=None)
        if later:
            parts.append(f"without warmup the training loss fell to {low[1]:.2f} at step {low[0]} and bounced to "
                         f"{later[1]:.2f} at step {later[0]}")
    elif key == "clipping":
        norms = _series(rows, a, "grad_norm")
        if norms:
            parts.append(f"the unclipped gradient norm passed 1.0 on {sum(v > 1.0 for _, v in norms)} of "
                         f"{len(norms)} steps")
    elif key == "norm":
        post = [v for _, v in val[b]]
        parts.append(f"post-LN's validation loss stayed between {min(post):.2f} and {max(post):.2f}")
    elif key == "init" and train[b]:
        parts.append(f"the bad init started at a training loss of {train[b][0][1]:.1f} nats "
                     f"(ln 65 = {math.log(65):.2f}) against {train[a][0][1]:.2f}")
    elif key == "dropout":
        best_step, best = min(val[a], key=lambda sv: sv[1])
        parts.append(f"without dropout the validation loss bottomed at {best:.2f} (step {best_step}) and ended at "
                     f"{last_a:.2f}, with training loss {train[a][-1][1]:.2f}; with dropout 0.2 training loss "
                     f"{train[b][-1][1]:.2f}" if train[a] and train[b] else
                     f"without dropout the validation loss bottomed at {best:.2f} (step {best_step})")
    return "; ".join(parts) + "."


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
