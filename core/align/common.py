"""What every alignment run shares: the preference data, prompts in the model's chat format, a private copy
of the model, log-probabilities of completions, greedy answers, and the bridge from a TRL trainer to a job.

Every run trains its own deep copy: the shared model other sessions see never changes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, TrainerCallback

from core.jobs import Job, JobError, JobStopped

DATA = Path(__file__).resolve().parent.parent.parent / "data" / "preferences.jsonl"


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    split: str  # "train" | "test"


def preference_pairs(split: str | None = None, path: Path = DATA) -> list[Pair]:
    """The shipped preference pairs (data/preferences.jsonl), optionally one split."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [Pair(r["prompt"], r["chosen"], r["rejected"], r.get("split", "train")) for r in rows]
    return [p for p in pairs if split is None or p.split == split]


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model expects a user turn: its chat template when it has one, else a plain Q/A frame."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {prompt}\nAnswer:"


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Dropout off for a measurement, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# torch's default generator is one per process: a seeded run in one job thread and sampling or dropout in
# another would draw from the same stream. Seeded runs hold this lock from their `manual_seed` until their
# last random draw, so a seed means the same figures whatever runs beside it.
SEED_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int, job: Job | None = None) -> Iterator[None]:
    """`torch.manual_seed(seed)` with the process's generators to ourselves until the block ends. A job
    waiting for another seeded run still answers stop (checked twice a second)."""
    while not SEED_LOCK.acquire(timeout=0.5):
        if job is not None:
            job.report(phase="waiting for another seeded run to finish")
            job.tick()
    try:
        torch.manual_seed(seed)
        yield
    finally:
        SEED_LOCK.release()


def private_copy(model: PreTrainedModel, trainable: bool = True) -> PreTrainedModel:
    """A deep copy on the same device, in fp32, gradients on or off; the original is never touched."""
    if getattr(model, "is_quantized", False) or getattr(model, "hf_device_map", None) and len(
            set(model.hf_device_map.values())) > 1:
        raise JobError("Training needs an unquantized model on one device: load it with quantization none.")
    clone = copy.deepcopy(model).float()
    clone.train(trainable)
    for p in clone.parameters():
        p.requires_grad_(trainable)
    return clone


def private_tokenizer(tokenizer: Any) -> Any:
    """A copy for the trainer: fast tokenizers are not thread-safe, and trainers set padding fields."""
    tok = copy.deepcopy(tokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def completion_token_logprobs(model: PreTrainedModel, tokenizer: Any, prompt_text: str,
                              completion: str) -> tuple[torch.Tensor, list[int]]:
    """log π(y_t | x, y_<t) for every completion token: [completion_len], and the completion's ids.

    The prompt is the formatted text; the completion is tokenized on its own and appended (as TRL does).
    """
    p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not c_ids:
        raise ValueError("The completion is empty: there is no token to score.")
    ids = torch.tensor([p_ids + c_ids], device=next(model.parameters()).device)
    logits = model(input_ids=ids, use_cache=False).logits[0, len(p_ids) - 1:-1].float()  # [completion_len, vocab]
    logps = F.log_softmax(logits, dim=-1)
    return logps.gather(-1, ids[0, len(p_ids):, None])[:, 0], c_ids


@torch.no_grad()
def sequence_logprobs(model: PreTrainedModel, tokenizer: Any, prompt_texts: list[str], completions: list[str],
                      batch_size: int = 16) -> torch.Tensor:
    """log π(y | x) = Σ_t log π(y_t | x, y_<t) for each (prompt, completion): [batch]. Right-padded batches."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for i in range(0, len(prompt_texts), batch_size):
        seqs, starts = [], []
        for x, y in zip(prompt_texts[i:i + batch_size], completions[i:i + batch_size]):
            p_ids = tokenizer(x, add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(y, add_special_tokens=False)["input_ids"]
            seqs.append(p_ids + c_ids)
            starts.append(len(p_ids))
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        logps = F.log_softmax(model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float(), -1)
        token_logps = logps.gather(-1, ids[:, 1:, None])[..., 0]  # [batch, width-1]: log π of token t+1
        pos = torch.arange(1, width, device=device)[None, :]
        in_completion = (pos >= torch.tensor(starts, device=device)[:, None]) & (attn[:, 1:] == 1)
        out.append((token_logps * in_completion).sum(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def greedy_answers(model: PreTrainedModel, tokenizer: Any, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    """The model's greedy answer to each prompt (chat-formatted), for before/after comparisons."""
    was_training = model.training
    model.eval()
    out = []
    for prompt in prompts:
        text = format_prompt(tokenizer, prompt)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=next(model.parameters()).device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    model.train(was_training)
    return out


def trainer_args(output_dir: str, steps: int, lr: float, batch_size: int, seed: int) -> dict[str, Any]:
    """TrainingArguments every TRL run here shares: CPU-safe precision, no checkpoints, no hub, a log per step."""
    return dict(output_dir=output_dir, max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch_size,
                logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=seed,
                use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, gradient_checkpointing=False,
                lr_scheduler_type="constant", warmup_steps=0, dataloader_num_workers=0)


class JobCallback(TrainerCallback):
    """Feeds a TRL trainer's logs into a job and lets the job's stop end training at the next step boundary.

    `on_log` appends the chosen metrics (renamed) to the job's curve; `extra(step, model)` may add more
    measured values per step (e.g. KL to the reference). A stop sets `should_training_stop`; the run then
    raises JobStopped once the trainer has returned, so nothing is left running.
    """

    def __init__(self, job: Job | None, names: dict[str, str], extra=None):
        self.job, self.names, self.extra = job, names, extra
        self.stopped = False
        self.rows: list[dict[str, float]] = []
        self._model = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._model = model
        if self.job is None:
            return control
        try:
            self.job.tick()
        except JobStopped:
            self.stopped = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        logs = logs or {}
        row = {"step": int(state.global_step)}
        row.update({short: float(logs[name]) for name, short in self.names.items() if name in logs})
        if len(row) == 1:  # the final summary log (train_runtime...) has none of our metrics
            return control
        if self.extra is not None:
            row.update(self.extra(state.global_step, model or self._model))
        self.rows.append(row)
        if self.job is not None:
            self.job.report(step=state.global_step, metrics=row)
        return control

    def finish(self) -> None:
        """Call after trainer.train(): turns a stop into JobStopped for the job runner."""
        if self.stopped:
            raise JobStopped


@torch.no_grad()
def sft_loss(model: PreTrainedModel, tokenizer: Any, prompt: str, answer: str) -> tuple[float, list[float], list[str]]:
    """The supervised fine-tuning loss on one demonstration: mean_t -log π(y_t | x, y_<t), answer tokens only.

    Returns (loss, per-token losses, the answer's tokens as text).
    """
    logps, ids = completion_token_logprobs(model, tokenizer, format_prompt(tokenizer, prompt), " " + answer.strip())
    nll = (-logps).tolist()
    return sum(nll) / len(nll), nll, [tokenizer.decode([i]) for i in ids]
