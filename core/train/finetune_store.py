"""A fine-tuning run on disk: checkpoints written atomically, resume, and the export the model picker opens.

    RUN/config.json          {"kind": "finetune", "base": spec, "finetune": FinetuneConfig fields}
    RUN/checkpoint/          state.json (step, curve, before-answers), optimizer.pt, and the trained weights:
                             adapter/ (PEFT format) for LoRA, weights.safetensors (the trainable tensors) otherwise
    RUN/metrics.csv          one row per step
    RUN/adapter/             LoRA only: the final adapter, loadable with PEFT on top of the base model
    RUN/model/               a Hugging Face folder (LoRA merged into W), tokenizer included: load_model opens it
    RUN/answers.json         the held-out prompts answered before and after

Every folder is written under a temporary name and renamed into place: a crash or a stop mid-write
leaves the previous checkpoint whole (`checkpoint.old` covers the instant between two renames).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.runs import atomic_folder, atomic_write, is_live, run_path, run_status, runs_root

METRIC_COLUMNS = ("step", "loss", "val_loss", "lr", "grad_norm", "tokens", "s_per_step", "elapsed_s")


def run_dir_for(name: str, root: Path | None = None) -> Path:
    """A folder under the runs root for a user-typed name (`../`, absolute paths, odd characters refused)."""
    return run_path(name, root)


def default_run_name(source: str, mode: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).name or source).strip("-.")[:32] or "model"
    return f"ft-{base}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_run(run_dir: Path, spec: Any, cfg: dict[str, Any]) -> None:
    """A new run: refuse a folder that already holds a run (resume it instead)."""
    if (run_dir / "config.json").exists():
        raise ValueError(f"A run named {run_dir.name!r} already exists; resume it or choose another name.")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"kind": "finetune", "base": asdict(spec), "finetune": cfg}
    atomic_write(run_dir / "config.json", json.dumps(config, indent=2))


def read_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) and config.get("kind") == "finetune" else None


def _is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], mode: str) -> Path:
    final = run_dir / "checkpoint"
    with atomic_folder(final) as tmp:
        if _is_lora(model):
            model.save_pretrained(tmp / "adapter")
        else:
            save_file({n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad},
                      str(tmp / "weights.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "mode": mode}))
    write_metrics(run_dir, state["metrics"])
    return final


def checkpoint_folder(run_dir: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):
        if (run_dir / name / "state.json").is_file():
            return run_dir / name
    return None


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, base: str,
                    mode: str) -> dict[str, Any]:
    """Put the checkpoint's weights and optimizer state into a freshly configured model; returns the state."""
    from core.jobs import JobError

    config, folder = read_config(run_dir), checkpoint_folder(run_dir)
    if config is None or folder is None:
        raise JobError(f"There is no fine-tuning checkpoint in {run_dir.name!r} to resume from.")
    if config["base"]["source"] != base or config["finetune"]["mode"] != mode:
        raise JobError(f"Run {run_dir.name!r} fine-tuned {config['base']['source']} in {config['finetune']['mode']} "
                       f"mode; load that model and mode to resume it.")
    if _is_lora(model):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(folder / "adapter"), device="cpu"))
    else:
        tensors = load_file(str(folder / "weights.safetensors"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in tensors:
                    p.copy_(tensors[name])
    if not (folder / "optimizer.pt").is_file():
        raise JobError(f"Run {run_dir.name!r} can no longer be resumed: its optimizer state was dropped to keep the "
                       "runs folder under its cap. Its fine-tuned model is still in the model picker.")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    return json.loads((folder / "state.json").read_text())


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / "metrics.csv", out.getvalue())


def export(run_dir: Path, model: nn.Module, tokenizer: Any, mode: str) -> tuple[Path | None, Path]:
    """LoRA: the adapter, then W + (alpha/r) B A merged into a plain model. Others: the model itself.
    Returns (adapter folder or None, model folder). The model is unusable for training afterwards."""
    adapter_dir = None
    if _is_lora(model):
        adapter_dir = run_dir / "adapter"
        with atomic_folder(adapter_dir) as tmp:
            model.save_pretrained(tmp)
        model = model.merge_and_unload()
    model_dir = run_dir / "model"
    model.config.name_or_path = f"{run_dir.name} (fine-tuned: {mode})"
    with atomic_folder(model_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return adapter_dir, model_dir


def write_answers(run_dir: Path, prompts: list[str], before: list[str], after: list[str]) -> None:
    rows = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before, after)]
    atomic_write(run_dir / "answers.json", json.dumps(rows, indent=2, ensure_ascii=False))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """PEFT's own loader: `model` (a private copy of the base) with the saved adapter on top, in eval mode."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def finetune_runs(root: Path | None = None, base: str | None = None) -> list[dict[str, Any]]:
    """Fine-tuning runs with a checkpoint, newest first: name, base model, mode, steps done and planned."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        config = read_config(d) if d.is_dir() else None
        folder = checkpoint_folder(d) if config else None
        if folder is None or (base is not None and config["base"]["source"] != base) or is_live(d):
            continue  # a run a job holds right now is not offered for resuming (two jobs would share it)
        state = json.loads((folder / "state.json").read_text())
        out.append({"name": d.name, "path": str(d), "base": config["base"]["source"],
                    "mode": config["finetune"]["mode"], "step": state["step"],
                    "steps": config["finetune"]["steps"], "config": config["finetune"],
                    "exported": (d / "model" / "config.json").is_file(), "mtime": folder.stat().st_mtime,
                    "status": run_status(d), "resumable": (folder / "optimizer.pt").is_file()})
    return sorted(out, key=lambda r: r["mtime"], reverse=True)
