"""Checkpoints of a pre-training run, written so that a crash at any moment leaves a usable last one.

Run folder (see core.runs for the shared layout and lifecycle):
    config.json                      the TrainConfig (with the char vocabulary filled in)
    run.json, .lock                  owner, status, step, heartbeat; the lock a live job holds (core.runs)
    metrics.csv                      one row per step: step, train_loss, val_loss, lr, grad_norm, ...
    samples.txt                      the text sampled every sample_interval steps
    checkpoints/step-000500/         model.safetensors, optimizer.pt, trainer.json (step)
    model/                           the Hugging Face export (core.train.export), when the switches allow one

A checkpoint is written under a temporary name and renamed when complete (core.runs.atomic_folder), so a
stop or a kill during the write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from core.runs import atomic_folder, atomic_write

# `tokens` is cumulative and counts every process of a data-parallel run (torchrun: each process trains on its
# own batches), so the Scaling laws page reads the tokens a run really saw.
METRIC_COLUMNS = ("step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "tokens")
KEEP_CHECKPOINTS = 2
_STEP = re.compile(r"^step-\d+$")


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def latest_checkpoint(run: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    folder = checkpoint_dir(run)
    if not folder.is_dir():
        return None
    done = [d for d in folder.iterdir() if _STEP.match(d.name) and (d / "trainer.json").is_file()]
    return max(done, key=lambda d: int(d.name.split("-")[1]), default=None)


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; a tied head is stored once (safetensors refuses shared storage)."""
    sd = model.state_dict()
    if getattr(model.config, "tie_weights", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(run: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write checkpoints/step-N atomically; keep the newest KEEP_CHECKPOINTS."""
    folder = checkpoint_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:06d}"
    with atomic_folder(final) as tmp:
        save_file(_state_dict(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "saved_at": time.time(), **(extra or {})}))
    for old in sorted((d for d in folder.iterdir() if _STEP.match(d.name)),
                      key=lambda d: d.name)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Load weights (and optimizer state) into the given objects; returns the step."""
    state = load_file(str(Path(path) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {missing}, unexpected {unexpected}")
    if optimizer is not None:
        if not (Path(path) / "optimizer.pt").is_file():
            raise ValueError(f"{Path(path).parent.parent.name} can no longer be resumed: its optimizer state was dropped "
                             "to keep the runs folder under its cap (its model is still in the picker).")
        optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location="cpu", weights_only=True))
    return int(json.loads((Path(path) / "trainer.json").read_text())["step"])


# ---------------------------------------------------------------- metrics.csv, samples, run.json


def write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv with every row so far (atomic: temporary file, then rename)."""
    columns = list(METRIC_COLUMNS) + sorted({k for r in rows for k in r} - set(METRIC_COLUMNS))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=columns)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write(Path(run) / "metrics.csv", out.getvalue())


def read_metrics(run: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if v in ("", None):
                    row[k] = None
                elif k == "step":
                    row[k] = int(float(v))
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            if up_to_step is None or row["step"] <= up_to_step:
                rows.append(row)
    return rows


def append_sample(run: Path, step: int, text: str) -> None:
    with (Path(run) / "samples.txt").open("a", encoding="utf-8") as f:
        f.write(f"--- step {step} ---\n{text}\n")
