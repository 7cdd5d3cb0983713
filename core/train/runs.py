"""The runs folder: where training and fine-tuning jobs keep their checkpoints, and which of them can be
opened as a model on every inspection page.

Layout of one run (a folder under `runs_root()`):
    config.json            the training configuration
    model/                 a Hugging Face-format export (config.json, model.safetensors, tokenizer files):
                           what the model picker loads, as a local folder, like any other model
    ...                    checkpoints, metrics.csv, samples (see core.train)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def runs_root() -> Path:
    """LLM_LAB_RUNS, else `runs/` in the lab's cache folder."""
    env = os.environ.get("LLM_LAB_RUNS")
    if env:
        return Path(env)
    from core.models.loading import cache_root

    return cache_root() / "runs"


@dataclass(frozen=True)
class SavedModel:
    label: str  # what the picker shows, e.g. "run: shakespeare-char (step 2000)"
    path: Path  # a folder load_model opens as a local model


def saved_models(root: Path | None = None) -> list[SavedModel]:
    """Every run with an exported model, newest first."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / "model" / "config.json").is_file()]
    found.sort(key=lambda d: (d / "model" / "config.json").stat().st_mtime, reverse=True)
    return [SavedModel(label=f"run: {d.name}", path=d / "model") for d in found]
