"""Pre-training the lab's GPT on accelerate: one code path for the app's job thread, one GPU, and several
data-parallel processes (`torchrun --nproc_per_node 2 -m core train ...`: each process draws its own
batches, DDP averages the gradients, only the main process writes files).

    train(config, run_dir, job)      a whole run: checkpoints, metrics.csv, samples, resume, export
    Trainer                          one model + AdamW: step(), evaluate(), sample(); the lessons drive two

Accelerate is used for device placement, DDP wrapping, no_sync during gradient accumulation and the
cross-process reductions. Its gradient-accumulation helpers and optimizer wrapper are not: they read
process-wide singletons (GradientState) that another job thread of the same app may be changing.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from core.jobs import JobError
from core.train import checkpoint as ckpt
from core.train.config import TrainConfig, lr_at
from core.train.data import TextData, build_data, get_batch, step_generator
from core.train.model import GPT


class TrainingDiverged(JobError):
    """The loss or the gradient norm became NaN/inf or exploded: the run stops, the last good checkpoint stays."""


class NullJob:
    """Stands in for core.jobs.Job when training runs from the command line."""

    def __init__(self, progress: Callable[[str], None] | None = None):
        self.progress = progress

    def tick(self) -> None:
        pass

    def control(self, name: str, default: Any = None) -> Any:
        return default

    def report(self, step: int | None = None, metrics: dict[str, Any] | None = None, **info: Any) -> None:
        if self.progress and metrics and metrics.get("val_loss") is not None:
            self.progress(f"step {metrics['step']}: train loss {metrics['train_loss']:.4f}, "
                          f"val loss {metrics['val_loss']:.4f}, {metrics['tokens_per_s']:,.0f} tokens/s")

    def seed_metrics(self, rows: list[dict[str, Any]], step: int) -> None:
        pass


def make_accelerator():
    """On a machine without CUDA, `cpu=True` is what lets accelerate see torchrun's processes (MULTI_CPU, gloo)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: TextData | None = None) -> int:
    """Bytes the run holds in tensors: weights, gradients, AdamW's two moments, the token ids."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
    for state in optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total + (data.nbytes if data is not None else 0)


def estimate_step_bytes(config: TrainConfig, vocab_size: int) -> int:
    """Rough activation memory of one micro-batch (float32): per layer ~ 34 B*T*C + 5 B*h*T^2 values
    (Korthikanti et al. 2022, without recomputation) plus the logits and their gradient."""
    B, T, C, h = config.batch_size, config.block_size, config.n_embd, config.n_head
    per_layer = 34 * B * T * C + 5 * B * h * T * T
    return 4 * (config.n_layer * per_layer + 3 * B * T * vocab_size)


def check_memory(config: TrainConfig, vocab_size: int) -> None:
    from core.models.memory import available_bytes
    from core.units import format_bytes

    need = estimate_step_bytes(config, vocab_size)
    free = available_bytes("cuda" if torch.cuda.is_available() else "cpu")
    if free and need > free // 2:
        raise ValueError(f"one batch needs about {format_bytes(need)} of activations but only "
                         f"{format_bytes(free)} is free (half of it may be used): lower batch_size or block_size, "
                         "or use gradient accumulation")


def prepare_data(config: TrainConfig) -> TextData:
    """Validate the config against its data (block size vs text length) and build the token ids."""
    config.validate()
    data = build_data(config.dataset, config.tokenizer, config.text, config.max_chars, config.val_fraction,
                      config.chars)
    if config.tokenizer == "char":
        config.chars = data.chars
    shortest = min(len(data.train), len(data.val))
    if config.block_size + 1 >= shortest:
        raise ValueError(f"block_size {config.block_size} does not fit the data: the smaller split has only "
                         f"{shortest} tokens; use a longer text or a block size below {max(1, shortest - 1)}")
    check_memory(config, data.vocab_size)
    return data


@dataclass
class StepResult:
    train_loss: float
    grad_norm: float
    lr: float
    tokens: int
    seconds: float


class Trainer:
    """One model, its AdamW and its data, placed by an Accelerator."""

    def __init__(self, config: TrainConfig, data: TextData, accelerator, stream: int = 0):
        self.config, self.data, self.acc, self.stream = config, data, accelerator, stream
        init_gen = torch.Generator().manual_seed(config.seed)
        self.raw = GPT(config.model_config(data.vocab_size), generator=init_gen)
        self.optimizer = self._adamw()
        self.model = accelerator.prepare_model(self.raw)
        self.step = 0

    def _adamw(self) -> torch.optim.Optimizer:
        """Weight decay on matrices only (nanoGPT): biases, norm gains and 1-D tensors are not decayed."""
        params = [p for p in self.raw.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.config.learning_rate,
                                 betas=(self.config.beta1, self.config.beta2))

    def learning_rate(self, job: Any = None) -> float:
        """The schedule's rate, or the page's override, times the page's multiplier (read every step)."""
        lr = lr_at(self.config, self.step)
        if job is not None:
            override = job.control("lr")
            if override is not None:
                lr = float(override)
            lr *= float(job.control("lr_scale", 1.0) or 1.0)
        return lr

    def train_step(self, job: Any = None) -> StepResult:
        """One optimizer step over gradient_accumulation_steps micro-batches."""
        c, device = self.config, self.acc.device
        start = time.perf_counter()
        lr = self.learning_rate(job)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        gen = step_generator(c.seed, self.step, self.stream * 1000 + self.acc.process_index)
        total = 0.0
        for micro in range(c.gradient_accumulation_steps):
            x, y = get_batch(self.data.train, c.batch_size, c.block_size, gen, device)
            last = micro == c.gradient_accumulation_steps - 1
            with (torch.enable_grad() if last else self.acc.no_sync(self.model)):
                _, loss = self.model(x, y)
                (loss / c.gradient_accumulation_steps).backward()
            total += float(loss.detach()) / c.gradient_accumulation_steps
        params = [p for p in self.raw.parameters() if p.grad is not None]
        if c.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, c.grad_clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        loss_mean = float(self.acc.reduce(torch.tensor(total, device=device), "mean"))
        if not math.isfinite(loss_mean) or not math.isfinite(norm) or loss_mean > c.max_loss:
            self.optimizer.zero_grad(set_to_none=True)
            what = "NaN/inf" if not math.isfinite(loss_mean) or not math.isfinite(norm) else "exploded"
            raise TrainingDiverged(
                f"the loss {what} at step {self.step + 1} (loss {loss_mean:.4g}, gradient norm {norm:.4g}, "
                f"learning rate {lr:.3g}); training stopped and the last good checkpoint was kept. "
                "Lower the learning rate or switch on gradient clipping, then resume.")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = c.batch_size * c.block_size * c.gradient_accumulation_steps * self.acc.num_processes
        return StepResult(loss_mean, norm, lr, tokens, time.perf_counter() - start)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters random batches of each split (the same batches at every evaluation)."""
        c = self.config
        self.model.eval()
        out = {}
        for split, ids in (("train", self.data.train), ("val", self.data.val)):
            gen = step_generator(c.seed, -1, 10_000 + self.acc.process_index)
            losses = [float(self.raw(*get_batch(ids, c.batch_size, c.block_size, gen, self.acc.device))[1])
                      for _ in range(c.eval_iters)]
            out[split] = float(self.acc.reduce(torch.tensor(sum(losses) / len(losses), device=self.acc.device), "mean"))
        return out

    @torch.no_grad()
    def sample(self, tokens: int, prompt: str = "\n", temperature: float = 0.8) -> str:
        self.model.eval()
        ids = self.data.encode(prompt) or [0]
        idx = torch.tensor([ids], device=self.acc.device)
        gen = torch.Generator(device=self.acc.device).manual_seed(self.config.seed + self.step)
        out = self.raw.generate(idx, tokens, temperature=temperature, top_k=200, generator=gen)
        return self.data.decode(out[0, len(ids):].tolist())


def read_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} holds no config.json: nothing to resume")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def train(config: TrainConfig, run_dir: Path | str, job: Any = None, *, resume: bool = False,
          owner: str = "cli", export: bool = True) -> dict[str, Any]:
    """A whole run into run_dir: evaluate, sample and checkpoint every N steps and at the end or a stop.

    With `resume`, the last checkpoint's weights, optimizer and step are loaded and metrics.csv continues.
    """
    from core.jobs import JobStopped

    job = job or NullJob()
    run = Path(run_dir)
    data = prepare_data(config)
    acc = make_accelerator()
    trainer = Trainer(config, data, acc)
    rows: list[dict[str, Any]] = []
    last_ckpt = None
    if resume:
        last_ckpt = ckpt.latest_checkpoint(run)
        if last_ckpt is None:
            raise JobError(f"{run} has no complete checkpoint to resume from")
        trainer.step = ckpt.load_checkpoint(last_ckpt, trainer.raw, trainer.optimizer)
        rows = ckpt.read_metrics(run, up_to_step=trainer.step)
        job.seed_metrics(rows, trainer.step)
    main = acc.is_main_process
    if main:
        run.mkdir(parents=True, exist_ok=True)
        ckpt.write_json(run / "config.json", config.to_dict())
        ckpt.update_run_status(run, owner=owner, status="running", step=trainer.step)
    info = {"parameters": trainer.raw.num_parameters(), "processes": acc.num_processes,
            "distributed": str(acc.distributed_type), "device": str(acc.device), "run_dir": str(run),
            "memory_bytes": state_bytes(trainer.raw, trainer.optimizer, data)}
    job.report(step=trainer.step, **info)
    started, tokens_done = time.perf_counter(), 0
    elapsed0 = rows[-1]["elapsed_s"] if rows and rows[-1].get("elapsed_s") else 0.0

    def save(reason: str) -> None:
        nonlocal last_ckpt
        if main and (last_ckpt is None or not last_ckpt.name.endswith(f"{trainer.step:06d}")):
            last_ckpt = ckpt.save_checkpoint(run, trainer.step, trainer.raw, trainer.optimizer, {"reason": reason})
            ckpt.write_metrics(run, rows)
            ckpt.update_run_status(run, step=trainer.step, checkpoint=str(last_ckpt))
            if export:
                _export_quietly(trainer, run)
        acc.wait_for_everyone()
        job.report(checkpoint=str(last_ckpt) if last_ckpt else None)

    status = "failed"
    try:
        while trainer.step < config.max_iters:
            job.tick()
            result = trainer.train_step(job)
            tokens_done += result.tokens
            elapsed = time.perf_counter() - started
            row: dict[str, Any] = {"step": trainer.step, "train_loss": result.train_loss, "val_loss": None,
                                   "lr": result.lr, "grad_norm": result.grad_norm,
                                   "tokens_per_s": result.tokens / max(result.seconds, 1e-9),
                                   "elapsed_s": elapsed0 + elapsed}
            extra: dict[str, Any] = {}
            at_end = trainer.step == config.max_iters
            if trainer.step % config.eval_interval == 0 or at_end:
                losses = trainer.evaluate()
                row["val_loss"], row["train_eval_loss"] = losses["val"], losses["train"]
            if config.sample_interval and (trainer.step % config.sample_interval == 0 or at_end):
                extra["sample"] = trainer.sample(config.sample_tokens)
                extra["sample_step"] = trainer.step
                if main:
                    ckpt.append_sample(run, trainer.step, extra["sample"])
            rows.append(row)
            job.report(step=trainer.step, metrics=row, tokens_per_s_mean=tokens_done / max(elapsed, 1e-9),
                       memory_bytes=state_bytes(trainer.raw, trainer.optimizer, data), **extra)
            if trainer.step % config.interval_checkpoint == 0 and not at_end:
                save("interval")
        save("end")
        status = "finished"
    except JobStopped:
        status = "stopped"
        save("stop")
        raise
    except TrainingDiverged:
        status = "diverged"
        raise
    finally:
        if main:
            ckpt.update_run_status(run, status=status, step=trainer.step)
    final = next((r for r in reversed(rows) if r.get("val_loss") is not None), {})
    return {"run_dir": str(run), "step": trainer.step, "val_loss": final.get("val_loss"),
            "train_loss": final.get("train_eval_loss"), "checkpoint": str(last_ckpt) if last_ckpt else None,
            "exported": (run / "model" / "config.json").is_file(), **info,
            "tokens_per_s": tokens_done / max(time.perf_counter() - started, 1e-9)}


def _export_quietly(trainer: Trainer, run: Path) -> None:
    """Export to run/model when the switches map onto a stock class; otherwise note why in run.json."""
    from core.train.export import export_reason, export_run

    reason = export_reason(trainer.config)
    if reason is None:
        export_run(trainer.raw, trainer.data, run / "model")
    ckpt.update_run_status(run, export_note=reason or "")
