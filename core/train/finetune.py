"""Supervised fine-tuning of a loaded causal LM: full, with the lower layers frozen, or LoRA through PEFT.

Three ways to decide which weights move (Hu et al. 2021 for LoRA):
    full     every parameter W is trained
    freeze   the embeddings and the lower N blocks stay fixed; the upper blocks, final norm and head train
    lora     W stays fixed; a low-rank update is learned beside it: h = W x + (alpha / r) * B A x,
             A: [r, d_in], B: [d_out, r] (B starts at zero, so step 0 is the original model)

The job works on its own deep copy of the model: the shared instance every page and session reads never
changes. Loss is the mean cross-entropy over the response tokens only (see finetune_data).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from core.jobs import Job, JobError, JobStopped
from core.models.capture import greedy_continuation
from core.models.loading import LoadedModel
from core.models.params import meta_model_from_config
from core.runs import RunLease, reserve_run, update_run
from core.train import finetune_data as fd
from core.train import finetune_store as store

MODES = ("lora", "full", "freeze")
LORA_TARGETS = {
    "q,v": "query and value projections (the LoRA paper's choice)",
    "attention": "every attention projection (q, k, v, o)",
    "all-linear": "every linear layer of the blocks (attention and MLP), not the output head",
}


@dataclass(frozen=True)
class FinetuneConfig:
    mode: str = "lora"
    learning_rate: float = 1e-3
    steps: int = 30
    batch_size: int = 4
    max_len: int = 256
    freeze_layers: int = 0  # freeze mode: how many blocks, counted from the input
    freeze_embeddings: bool = True  # freeze mode: the token (and position) embeddings stay fixed too
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = "q,v"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 10
    eval_every: int = 5
    max_new_tokens: int = 32


@dataclass
class FinetuneResult:
    run_dir: str
    mode: str
    steps: int
    trainable: int
    total: int
    loss_start: float | None
    loss_end: float | None
    val_loss_start: float | None
    val_loss_end: float | None
    seconds: float
    s_per_step: float | None
    model_dir: str | None
    adapter_dir: str | None
    answers: list[dict[str, str]] = field(default_factory=list)  # {prompt, before, after}
    stopped: bool = False  # a stop ended the training early (the checkpoint and export were still written)


# ---------------------------------------------------------------- checks and the choice of weights


def validate(cfg: FinetuneConfig, model_config: Any) -> None:
    """Refuse impossible settings with a message a user can act on (ValueError)."""
    if cfg.mode not in MODES:
        raise ValueError(f"Unknown mode {cfg.mode!r}; choose one of {', '.join(MODES)}.")
    if not (isinstance(cfg.learning_rate, (int, float)) and math.isfinite(cfg.learning_rate)) \
            or cfg.learning_rate <= 0:
        raise ValueError(f"The learning rate must be a positive number (got {cfg.learning_rate}); "
                         "try 1e-3 for LoRA or 5e-5 for full fine-tuning.")
    if cfg.steps < 1:
        raise ValueError(f"The number of steps must be at least 1 (got {cfg.steps}).")
    if cfg.batch_size < 1:
        raise ValueError(f"The batch size must be at least 1 (got {cfg.batch_size}).")
    if cfg.max_len < 8:
        raise ValueError(f"The maximum example length must be at least 8 tokens (got {cfg.max_len}).")
    n_layers = num_layers(model_config)
    if cfg.mode == "freeze" and not 0 <= cfg.freeze_layers <= n_layers:
        raise ValueError(f"Cannot freeze {cfg.freeze_layers} layers: the model has {n_layers} "
                         f"(choose 0 to {n_layers}).")
    if cfg.mode == "lora":
        if cfg.lora_r < 1:
            raise ValueError(f"The LoRA rank r must be at least 1 (got {cfg.lora_r}).")
        if cfg.lora_alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive (got {cfg.lora_alpha}).")
        if not 0 <= cfg.lora_dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1) (got {cfg.lora_dropout}).")
        if cfg.lora_targets not in LORA_TARGETS:
            raise ValueError(f"Unknown LoRA targets {cfg.lora_targets!r}; choose one of {', '.join(LORA_TARGETS)}.")


def num_layers(model_config: Any) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(model_config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError("Cannot tell how many layers this model has (no num_hidden_layers / n_layer in its config).")


def blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (model.layers, transformer.h, ...): the ModuleList as long as the config says."""
    n = num_layers(model.config)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError("Cannot find this model's stack of transformer blocks.")


def lora_target_modules(model: nn.Module, targets: str) -> list[str] | str:
    """PEFT target names ("parent.leaf" suffixes, so a GPT-2 attention c_proj is not confused with the MLP's)."""
    if targets == "all-linear":
        return "all-linear"
    block = blocks(model)[0]
    names = set()
    for name, module in block.named_modules():
        parts = name.split(".")
        if len(parts) < 2 or not any(k in parts[-2] for k in ("attn", "attention")) or list(module.children()):
            continue
        if type(module).__name__ not in ("Linear", "Conv1D"):
            continue
        if targets == "attention" or parts[-1] in ("q_proj", "v_proj", "query", "value"):
            names.add(".".join(parts[-2:]))
    if not names:
        fused = " (this model fuses q, k and v into one matrix: choose `attention`)" if targets == "q,v" else ""
        raise ValueError(f"No {targets} projection found in this model's blocks{fused}.")
    return sorted(names)


def default_lora_targets(model_config: Any) -> str:
    """`q,v` where the model has separate query and value projections, else `attention` (GPT-2 fuses them)."""
    try:
        lora_target_modules(meta_model_from_config(model_config), "q,v")
    except ValueError:
        return "attention"
    return "q,v"


def configure(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Mark what trains (in place); LoRA returns the PEFT wrapper around `model`."""
    validate(cfg, model.config)
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        # GPT-2's Conv1D stores W as [d_in, d_out], the transpose of nn.Linear: PEFT must know.
        conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=lora_target_modules(model, cfg.lora_targets), task_type="CAUSAL_LM",
                          fan_in_fan_out=conv1d)
        return get_peft_model(model, lora)
    model.requires_grad_(True)
    if cfg.mode == "freeze" and cfg.freeze_layers > 0:
        for block in blocks(model)[: cfg.freeze_layers]:
            block.requires_grad_(False)
        if cfg.freeze_embeddings:
            for name, module in model.named_modules():
                if isinstance(module, nn.Embedding):
                    module.requires_grad_(False)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), each shared (tied) tensor once: PEFT's get_nb_trainable_parameters convention."""
    trainable = total = 0
    for _, p in model.named_parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def preview(model_config: Any, cfg: FinetuneConfig) -> dict[str, Any]:
    """The counts a run would train, from the config alone: the same `configure` on a meta-device model."""
    model = configure(meta_model_from_config(model_config), cfg)
    trainable, total = trainable_parameters(model)
    out = {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}
    if cfg.mode == "lora":
        out["target_modules"] = model.peft_config["default"].target_modules
        out["peft_count"] = list(model.get_nb_trainable_parameters())
    return out


def peak_bytes(lm: LoadedModel, cfg: FinetuneConfig) -> int:
    """What a fine-tuning job holds at its peak, declared before it starts (the server admits it against its
    memory budget): the private copy of the weights, gradients and AdamW's two moments of what trains,
    and one batch's activations (Korthikanti et al. 2022: ~34·s·b·h per layer in 16-bit, twice that in fp32,
    plus the logits and their gradient)."""
    trainable, _ = trainable_parameters(configure(meta_model_from_config(lm.config), cfg))
    c = lm.config
    hidden, layers = int(getattr(c, "hidden_size", 0) or 0), int(getattr(c, "num_hidden_layers", 0) or 0)
    tokens = cfg.batch_size * cfg.max_len
    activations = 2 * 34 * tokens * hidden * layers + 3 * 4 * tokens * int(getattr(c, "vocab_size", 0) or 0)
    return int(lm.memory_bytes() + 16 * trainable + activations)


def working_copy(lm: LoadedModel, cfg: FinetuneConfig) -> nn.Module:
    """A private deep copy, configured for `cfg`: the shared lm.model is only read."""
    if lm.spec.quantization != "none":
        raise ValueError("This model is loaded 8-bit/4-bit; fine-tuning here needs full weights: load it "
                         "with quantization `none`.")
    validate(cfg, lm.config)
    return configure(copy.deepcopy(lm.model), cfg)


# ---------------------------------------------------------------- loss, answers


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the response tokens (labels != -100); the model shifts labels itself."""
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).loss


@torch.no_grad()
def eval_loss(model: nn.Module, encoded: list[fd.Encoded], pad_id: int) -> float | None:
    if not encoded:
        return None
    was_training = model.training
    model.eval()
    losses = [batch_loss(model, fd.collate([e], pad_id)) for e in encoded]
    model.train(was_training)
    return float(torch.stack(losses).mean())


def answers(lm: LoadedModel, model: nn.Module, prompts: list[str], max_new_tokens: int,
            progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy answers of `model` (the working copy) to `prompts`, through the lab's own greedy decode.
    `progress(done, total)` is called before each prompt (a full model answers for minutes on a CPU)."""
    work = replace(lm, model=model)  # same tokenizer and tokenizer lock, private weights
    was_training = model.training
    model.eval()
    out = []
    for i, prompt in enumerate(prompts):
        if progress is not None:
            progress(i, len(prompts))
        with lm.tokenizer_lock:
            ids = fd.encode_prompt(lm.tokenizer, prompt)
        new = greedy_continuation(work, ids, max_new_tokens)
        with lm.tokenizer_lock:
            out.append(lm.tokenizer.decode(new, skip_special_tokens=True).strip())
    model.train(was_training)
    return out


# ---------------------------------------------------------------- the training job


def finetune(job: Job, lm: LoadedModel, cfg: FinetuneConfig, run_dir: str | Path,
             examples: list[fd.Example] | None = None, extra_prompts: tuple[str, ...] = (),
             resume: bool = False) -> FinetuneResult:
    """The worker: train `cfg.steps` optimizer steps, report each one to `job`, checkpoint, export.

    A stop ends the loop early, still writes a checkpoint, the after-answers and the export.
    """
    run_dir = Path(run_dir)
    if not resume:
        reserve_run(run_dir, job_id=job.id, owner=job.owner, kind="finetune")
    # The run's lock, before the minutes of copying: a second resume of this run is refused at once.
    lease = RunLease.claim(run_dir, owner=job.owner, kind="finetune", job_id=job.id)
    job.on_status(lambda status: lease.beat(status=status))
    status = "failed"
    try:
        result = _finetune(job, lm, cfg, run_dir, lease, examples, extra_prompts, resume)
        status = "stopped" if result.stopped else "finished"
        return result
    except JobStopped:
        status = "stopped"
        raise
    finally:
        lease.release(status=status)


def _finetune(job: Job, lm: LoadedModel, cfg: FinetuneConfig, run_dir: Path, lease: RunLease,
              examples: list[fd.Example] | None, extra_prompts: tuple[str, ...], resume: bool) -> FinetuneResult:
    examples = fd.load_instructions() if examples is None else examples
    train_set, heldout = fd.split_examples(examples)
    prompts = list(dict.fromkeys([e.prompt for e in heldout] + [p for p in extra_prompts if p.strip()]))
    job.report(phase="copying the model (the shared one is never trained)")
    try:
        model = working_copy(lm, cfg)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    with lm.tokenizer_lock:
        train_enc = [fd.encode_example(lm.tokenizer, e, cfg.max_len) for e in train_set]
        held_enc = [fd.encode_example(lm.tokenizer, e, cfg.max_len) for e in heldout]
        pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    state: dict[str, Any] = {"step": 0, "metrics": [], "before": None, "seconds": 0.0}
    if resume:
        state = store.load_checkpoint(run_dir, model, optimizer, base=lm.spec.source, mode=cfg.mode)
        job.seed_metrics(state["metrics"], state["step"])
    else:
        store.start_run(run_dir, lm.spec, asdict(cfg))
    lease.beat(step=state["step"], max_iters=cfg.steps)

    def answering(when: str) -> Callable[[int, int], None]:
        return lambda done, n: job.report(phase=f"answering ({when}): prompt {done + 1} of {n}")

    job.report(state["step"], trainable=trainable, total=total, run_dir=str(run_dir), config=asdict(cfg),
               phase="answering (before)")
    if state["before"] is None or len(state["before"]) != len(prompts):
        state["before"] = answers(lm, model, prompts, cfg.max_new_tokens, answering("before"))
    job.report(before=dict(zip(prompts, state["before"])), phase="training")
    if state["step"] == 0:
        row = {"step": 0, "val_loss": eval_loss(model, held_enc, pad_id)}
        state["metrics"].append(row)
        job.report(0, row)

    start_step = state["step"]
    t0 = time.perf_counter()
    stopped = not _train_loop(job, model, optimizer, params, (train_enc, held_enc, pad_id), cfg, run_dir, state, t0)
    state["seconds"] += time.perf_counter() - t0
    _checkpoint(job, run_dir, model, optimizer, state, 0.0, cfg.mode)

    job.report(phase="answering (after)")
    after = answers(lm, model, prompts, cfg.max_new_tokens, answering("after"))
    job.report(after=dict(zip(prompts, after)), phase="exporting the model")
    adapter_dir, model_dir = store.export(run_dir, model, lm.tokenizer, cfg.mode)
    store.write_answers(run_dir, prompts, state["before"], after)
    job.report(phase="done", model_dir=str(model_dir))
    result = _result(run_dir, cfg, state, start_step, trainable, total, prompts, after, model_dir, adapter_dir)
    result.stopped = stopped
    return result


def _train_loop(job: Job, model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                data: tuple[list[fd.Encoded], list[fd.Encoded], int], cfg: FinetuneConfig, run_dir: Path,
                state: dict[str, Any], t0: float) -> bool:
    """Steps from state["step"] + 1 to cfg.steps; False when a stop ended it early (state is kept current)."""
    train_enc, held_enc, pad_id = data
    model.train()
    try:
        for step in range(state["step"] + 1, cfg.steps + 1):
            job.tick()
            lr = float(job.control("lr", cfg.learning_rate) or cfg.learning_rate)
            row = train_step(model, optimizer, params, train_enc, pad_id, cfg, step, lr)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                row["val_loss"] = eval_loss(model, held_enc, pad_id)
            row["elapsed_s"] = state["seconds"] + time.perf_counter() - t0
            state["metrics"].append(row)
            state["step"] = step
            job.report(step, row)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _checkpoint(job, run_dir, model, optimizer, state, t0, cfg.mode)
    except JobStopped:
        job.report(phase="stopping: writing a checkpoint")
        return False
    return True


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
               train_enc: list[fd.Encoded], pad_id: int, cfg: FinetuneConfig, step: int, lr: float) -> dict[str, Any]:
    """One AdamW step on one batch; the learning rate is read live (a page may change it mid-run)."""
    started = time.perf_counter()
    batch = [train_enc[i] for i in fd.batch_indices(step, cfg.batch_size, len(train_enc), cfg.seed)]
    for group in optimizer.param_groups:
        group["lr"] = lr
    try:
        loss = batch_loss(model, fd.collate(batch, pad_id))
        if not torch.isfinite(loss):
            raise JobError(f"The loss became {loss.item()} at step {step} (learning rate {lr:g} is too high?); "
                           "the last checkpoint is kept.")
        loss.backward()
    except torch.OutOfMemoryError as exc:
        raise JobError(f"Out of memory at batch size {cfg.batch_size}: choose a smaller batch or LoRA.") from exc
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": float(norm),
            "tokens": sum(e.response_tokens for e in batch), "s_per_step": time.perf_counter() - started}


def _checkpoint(job: Job, run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                state: dict[str, Any], t0: float, mode: str) -> None:
    seconds = state["seconds"] + (time.perf_counter() - t0 if t0 else 0.0)
    path = store.save_checkpoint(run_dir, model, optimizer, {**state, "seconds": seconds}, mode)
    update_run(run_dir, step=state["step"], checkpoint=str(path))
    job.report(checkpoint=str(path), checkpoint_step=state["step"])


def _result(run_dir: Path, cfg: FinetuneConfig, state: dict[str, Any], start_step: int, trainable: int, total: int,
            prompts: list[str], after: list[str], model_dir: Path, adapter_dir: Path | None) -> FinetuneResult:
    losses = [m["loss"] for m in state["metrics"] if m.get("loss") is not None]
    vals = [m["val_loss"] for m in state["metrics"] if m.get("val_loss") is not None]
    paces = [m["s_per_step"] for m in state["metrics"] if m.get("s_per_step") and m["step"] > start_step]
    return FinetuneResult(
        run_dir=str(run_dir), mode=cfg.mode, steps=state["step"], trainable=trainable, total=total,
        loss_start=losses[0] if losses else None, loss_end=losses[-1] if losses else None,
        val_loss_start=vals[0] if vals else None, val_loss_end=vals[-1] if vals else None,
        seconds=state["seconds"], s_per_step=sum(paces) / len(paces) if paces else None,
        model_dir=str(model_dir), adapter_dir=str(adapter_dir) if adapter_dir else None,
        answers=[{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, state["before"], after)])
