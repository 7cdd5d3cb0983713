"""The runs folder: where training and fine-tuning jobs keep their checkpoints, and which of them can be
opened as a model on every inspection page.

Layout of one run (a folder under `runs_root()`):
    config.json            the training configuration
    model/                 a Hugging Face-format export (config.json, model.safetensors, tokenizer files):
                           what the model picker loads, as a local folder, like any other model
    ...                    checkpoints, metrics.csv, samples (see core.train)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
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


# ---------------------------------------------------------------- names a user types, and the disk cap

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STALE_AFTER_S = 600.0  # a "running" run not updated for this long was orphaned by a restart or a kill


def run_path(name: str, root: Path | None = None) -> Path:
    """The folder of run `name` inside the runs folder; ValueError for a name that could leave it."""
    name = (name or "").strip()
    if not name:
        raise ValueError("Give the run a name (letters, digits, '-', '_', '.').")
    if not _RUN_NAME.match(name) or ".." in name:
        raise ValueError(f"Run name {name!r} is not allowed: use up to 64 letters, digits, '-', '_' or '.', "
                         "starting with a letter or digit (no '/', no '..', no absolute paths).")
    root = (root or runs_root()).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError(f"Run name {name!r} would leave the runs folder.")
    return path


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_info(run: Path) -> dict:
    """run.json of a run (owner, status, step, updated); {} when missing or unreadable."""
    try:
        return json.loads((Path(run) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def is_finished(run: Path, now: float | None = None) -> bool:
    info = run_info(run)
    if info.get("status") != "running":
        return True
    return (now or time.time()) - float(info.get("updated", 0)) > STALE_AFTER_S


def enforce_cap(cap_bytes: int, owner: str | None = None, keep: Path | None = None,
                root: Path | None = None) -> list[Path]:
    """Remove finished runs, oldest first (the owner's own before anyone else's), until the folder fits.

    Returns the removed folders. A running run and `keep` are never removed.
    """
    root = root or runs_root()
    if not root.is_dir():
        return []
    runs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    sizes = {d: folder_bytes(d) for d in runs}
    total = sum(sizes.values())
    keep = Path(keep).resolve() if keep else None
    candidates = [d for d in runs if is_finished(d) and d.resolve() != keep]
    candidates.sort(key=lambda d: (run_info(d).get("owner") != owner, run_info(d).get("updated", 0)))
    removed = []
    for d in candidates:
        if total <= cap_bytes:
            break
        shutil.rmtree(d, ignore_errors=True)
        total -= sizes[d]
        removed.append(d)
    return removed


def runs_cap_bytes() -> int:
    """LLM_LAB_RUNS_CAP_MB (default 2048 MiB): the most the runs folder may hold."""
    return int(float(os.environ.get("LLM_LAB_RUNS_CAP_MB", "2048")) * 2**20)


def resumable_runs(root: Path | None = None) -> list[Path]:
    """Runs with a checkpoint, newest first."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / "checkpoints").is_dir() and (d / "config.json").is_file()]
    return sorted(found, key=lambda d: run_info(d).get("updated", 0), reverse=True)
