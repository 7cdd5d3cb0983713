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
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from core.jobs import JobError
from core.runs import RunLease, reserve_run, write_json
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
        self.id = f"cli-{secrets.token_urlsafe(6)}"

    def on_status(self, listener: Callable[[str], None]) -> None:
        pass

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
    """Activation memory of one micro-batch in float32, in bytes: what forward keeps for backward.

    Korthikanti et al. (2022) count 34·B·T·C bytes per layer for 16-bit activations and 1-byte dropout
    masks: 16 values per token and channel (attention input, q, k, v, attention output: 5; MLP input, its
    two 4C-wide activations: 9; the two norms' inputs: 2) — 64 bytes at fp32. For an MLP of width M
    that is 8C + 2M values (GELU) or 8C + 4M (SwiGLU keeps gate, up, SiLU and product); RMSNorm and
    RoPE keep 2C more each (measured). Their 5·B·h·T²
    attention term is absent: PyTorch's fused attention keeps no T x T matrix unless dropout is on, and
    its CPU kernel has no dropout, so with dropout the math path keeps scores, softmax, mask and dropped
    probabilities (~13 bytes per element, measured) plus two 1-byte masks per layer. The logits, their
    log-softmax and its gradient add 3·B·T·V values. Checked against the allocator's peak in
    bench/activation_memory.py (three sizes, within 25 %)."""
    B, T, C, h = config.batch_size, config.block_size, config.n_embd, config.n_head
    M = config.model_config(vocab_size).mlp_hidden
    values = 8 * C + (4 if config.mlp == "swiglu" else 2) * M
    values += 2 * C if config.norm == "rmsnorm" else 0  # the hand-written RMSNorm keeps x·rsqrt and more
    values += 2 * C if config.position == "rope" else 0  # rotated copies of q and k
    per_layer = 4 * B * T * values
    if config.dropout > 0:
        per_layer += 2 * B * T * C + 13 * B * h * T * T
    return int(config.n_layer * per_layer + 4 * 3 * B * T * vocab_size)


def measure_step_bytes(config: TrainConfig, vocab_size: int, seed: int = 0) -> int:
    """The real peak of one training micro-batch's forward + backward on CPU, in bytes above what was
    allocated before it (weights, a previous step's state): the allocator's own records through
    `torch.profiler` (profile_memory), summed in time order op by op."""
    from torch.profiler import ProfilerActivity, profile

    from core.train.model import GPT

    gen = torch.Generator().manual_seed(seed)
    model = GPT(config.model_config(vocab_size), generator=gen).train()
    x = torch.randint(0, vocab_size, (config.batch_size, config.block_size), generator=gen)
    y = torch.randint(0, vocab_size, (config.batch_size, config.block_size), generator=gen)
    _, loss = model(x, y)  # warm-up: one-off allocations stay out of the measured step
    loss.backward()
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _, loss = model(x, y)
        loss.backward()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.end)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def check_memory(config: TrainConfig, vocab_size: int) -> None:
    """Refuse a run whose micro-batch activations need more than half the free memory. The message shows the
    estimate and, where one or two sequences are cheap to try, the allocator's measured peak extrapolated to
    the batch (activations grow linearly with it)."""
    from dataclasses import replace

    from core.models.memory import available_bytes
    from core.units import format_bytes

    need = estimate_step_bytes(config, vocab_size)
    free = available_bytes("cuda" if torch.cuda.is_available() else "cpu")
    if not free or need <= free // 2:
        return
    one = replace(config, batch_size=1, gradient_accumulation_steps=1)
    with torch.device("meta"):
        weights = GPT(one.model_config(vocab_size)).num_parameters() * 8  # weights and gradients, fp32
    measured = ""
    if config.batch_size > 4 and weights + 8 * estimate_step_bytes(one, vocab_size) < free // 4:
        # Peaks at 2 and 4 sequences (1 is off the line: small buffers): the gradients are a fixed part, the
        # activations grow with each sequence.
        p2, p4 = (measure_step_bytes(replace(one, batch_size=b), vocab_size) for b in (2, 4))
        peak = p4 + (config.batch_size - 4) * (p4 - p2) // 2
        measured = f" (measured: {format_bytes(peak)}, from 2 and 4 sequences' peaks)"
    raise ValueError(f"one batch needs about {format_bytes(need)} of activations{measured} but only "
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


def peak_bytes(config: TrainConfig, data: TextData) -> int:
    """What a pre-training job holds at its peak, declared before it starts (the server admits it against its
    memory budget): weights, gradients and AdamW's two moments (16 bytes per parameter in fp32), one
    micro-batch's activations, the token ids."""
    with torch.device("meta"):
        params = GPT(config.model_config(data.vocab_size)).num_parameters()
    return 16 * params + estimate_step_bytes(config, data.vocab_size) + 8 * (len(data.train) + len(data.val))


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
    job = job or NullJob()
    run = Path(run_dir)
    data = prepare_data(config)
    acc = make_accelerator()
    main = acc.is_main_process
    if main and not resume:
        reserve_run(run, job_id=job.id, owner=owner, kind="pretrain")
    # The run's lock: while this job holds it no one else resumes it or removes it to make room.
    lease = RunLease.claim(run, owner=owner, kind="pretrain", job_id=job.id) if main else None
    try:
        trainer = Trainer(config, data, acc)
        rows: list[dict[str, Any]] = []
        last_ckpt = None
        if resume:
            last_ckpt = ckpt.latest_checkpoint(run)
            if last_ckpt is None:
                raise JobError(f"{run.name} has no complete checkpoint to resume from")
            trainer.step = ckpt.load_checkpoint(last_ckpt, trainer.raw, trainer.optimizer)
            rows = ckpt.read_metrics(run, up_to_step=trainer.step)
            job.seed_metrics(rows, trainer.step)
        if lease is not None:
            write_json(run / "config.json", config.to_dict())
            lease.beat(step=trainer.step, max_iters=config.max_iters)
            job.on_status(lambda status: lease.beat(status=status))
        return _train_loop(config, run, job, acc, trainer, data, rows, last_ckpt, lease, export)
    except BaseException:
        if lease is not None and lease.held:
            lease.release(status="failed")
        raise


def _train_loop(config: TrainConfig, run: Path, job: Any, acc: Any, trainer: "Trainer", data: Any,
                rows: list[dict[str, Any]], last_ckpt: Path | None, lease: RunLease | None,
                export: bool) -> dict[str, Any]:
    from core.jobs import JobStopped

    main = lease is not None
    info = {"parameters": trainer.raw.num_parameters(), "processes": acc.num_processes,
            "distributed": str(acc.distributed_type), "device": str(acc.device), "run_dir": str(run),
            "memory_bytes": state_bytes(trainer.raw, trainer.optimizer, data)}
    job.report(step=trainer.step, **info)
    started, tokens_done = time.perf_counter(), 0
    elapsed0 = rows[-1]["elapsed_s"] if rows and rows[-1].get("elapsed_s") else 0.0
    tokens0 = _tokens_before(rows, trainer.step, config)

    def save(reason: str) -> None:
        nonlocal last_ckpt
        if main and (last_ckpt is None or not last_ckpt.name.endswith(f"{trainer.step:06d}")):
            last_ckpt = ckpt.save_checkpoint(run, trainer.step, trainer.raw, trainer.optimizer, {"reason": reason})
            ckpt.write_metrics(run, rows)
            lease.beat(step=trainer.step, checkpoint=str(last_ckpt))
            if export:
                _export_quietly(trainer, run, lease)
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
                                   "elapsed_s": elapsed0 + elapsed, "tokens": tokens0 + tokens_done}
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
            if lease is not None:
                lease.beat(step=trainer.step, tokens=tokens0 + tokens_done, processes=acc.num_processes)
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
        if lease is not None:
            lease.release(status=status, step=trainer.step, tokens=tokens0 + tokens_done,
                          processes=acc.num_processes)
    final = next((r for r in reversed(rows) if r.get("val_loss") is not None), {})
    return {"run_dir": str(run), "step": trainer.step, "val_loss": final.get("val_loss"),
            "train_loss": final.get("train_eval_loss"), "checkpoint": str(last_ckpt) if last_ckpt else None,
            "exported": (run / "model" / "config.json").is_file(), **info,
            "tokens": tokens0 + tokens_done, "tokens_per_s": tokens_done / max(time.perf_counter() - started, 1e-9)}


def _tokens_before(rows: list[dict[str, Any]], step: int, config: TrainConfig) -> int:
    """Tokens trained on before this (resumed) job: the last row's count, or for a run written before the
    column existed, one process's tokens per step (the only count such a run recorded)."""
    if rows and rows[-1].get("tokens") is not None:
        return int(rows[-1]["tokens"])
    return step * config.batch_size * config.block_size * config.gradient_accumulation_steps


def _export_quietly(trainer: Trainer, run: Path, lease: RunLease) -> None:
    """Export to run/model when the switches map onto a stock class; otherwise note why in run.json."""
    from core.train.export import export_reason, export_run

    reason = export_reason(trainer.config)
    if reason is None:
        export_run(trainer.raw, trainer.data, run / "model")
    lease.beat(export_note=reason or "")
