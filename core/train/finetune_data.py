"""Instruction data for supervised fine-tuning: prompt/response pairs -> token ids with a loss mask.

An example is rendered with the model's own chat template, exactly as the model will see a question at
inference time, then the response tokens are appended. Only the response is learned: every prompt token
(system prompt, user turn, the assistant header) gets the label -100, which the cross-entropy ignores.

    ids    = [<|im_start|>system ... user\\nWhat is 6 x 7?<|im_end|>\\n<|im_start|>assistant\\n] + [42 ... <|im_end|>\\n]
    labels = [-100 ...                                                                 -100] + [42 ... <|im_end|>\\n]

Tokenizers without a chat template (a bare GPT-2, say) get a plain "User: ...\\nAssistant: " format and
the end-of-text token after the response, so the model still learns where an answer stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.data import DATA_DIR

IGNORE = -100  # the label torch's cross-entropy skips
INSTRUCTIONS = DATA_DIR / "instructions.jsonl"
PLAIN_PROMPT = "User: {prompt}\nAssistant: "
MAX_EXAMPLES = 5_000


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    split: str = "train"  # train | heldout


@dataclass(frozen=True)
class Encoded:
    """One tokenized example: `labels` is `input_ids` with every prompt position set to -100."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int

    @property
    def response_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def load_instructions(path: str | Path | None = None) -> list[Example]:
    """The shipped instruction set (or a JSONL file of {"prompt", "response", "split"?} objects)."""
    path = Path(path) if path else INSTRUCTIONS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the instruction file {path}: {exc}") from exc
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {n} is not JSON: {exc.msg}") from exc
        rows.append(obj)
    return examples_from_rows(rows)


def examples_from_rows(rows: list[Any]) -> list[Example]:
    """Validate plain objects into examples; a readable ValueError names the first bad row."""
    if len(rows) > MAX_EXAMPLES:
        raise ValueError(f"{len(rows):,} examples is more than this lab takes ({MAX_EXAMPLES:,}).")
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"example {n} is not an object with \"prompt\" and \"response\"")
        prompt, response = row.get("prompt"), row.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.strip() or not response.strip():
            raise ValueError(f"example {n} needs a non-empty \"prompt\" and \"response\" (text)")
        split = row.get("split", "train")
        if split not in ("train", "heldout"):
            raise ValueError(f"example {n}: split must be \"train\" or \"heldout\", not {split!r}")
        out.append(Example(prompt, response, split))
    return out


def split_examples(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train, held-out); an empty training set is refused here, before any model work."""
    train = [e for e in examples if e.split == "train"]
    heldout = [e for e in examples if e.split == "heldout"]
    if not train:
        raise ValueError("There is no training example: the instruction set is empty (or all held out).")
    return train, heldout


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """What the model reads before it answers: the chat template's user turn + assistant header."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return PLAIN_PROMPT.format(prompt=prompt)


def response_text(tokenizer: Any, prompt: str, response: str) -> str:
    """What the model should write: the template's assistant turn after the header, end marker included."""
    if has_chat_template(tokenizer):
        head = prompt_text(tokenizer, prompt)
        full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(head):
            return full[len(head):]
    return response + (tokenizer.eos_token or "")


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def encode_example(tokenizer: Any, example: Example, max_len: int = 256) -> Encoded:
    """Prompt and response are tokenized apart, so the cut between them is exact (no merge across it)
    and the prompt ids are the same ones generation starts from. Long examples lose their tail."""
    prompt_ids = encode_prompt(tokenizer, example.prompt)
    answer_ids = list(tokenizer(response_text(tokenizer, example.prompt, example.response),
                                add_special_tokens=False)["input_ids"])
    ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_len]
    return Encoded(ids, labels, min(len(prompt_ids), max_len))


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask and labels, each [batch, seq]."""
    seq = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), seq), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), seq), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), seq), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The examples of optimizer step `step` (1-based): epochs of seeded shuffles, so a resumed run
    sees the very batches it would have seen without the interruption."""
    start = (step - 1) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, i = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        out.append(int(torch.randperm(n, generator=g)[i]))
    return out
