"""Training data: a text, a tokenizer, a train/val split of token ids and random batches from it.

Texts: Tiny Shakespeare (shipped, ~1.1 M characters) or a text the user pastes; optionally only the first
`max_chars` characters (a small slice overfits quickly, which is what the dropout lesson shows).
Tokenizers:
    char   one token per character, the vocabulary is the sorted set of the text's characters (nanoGPT's
           shakespeare_char: 65 symbols)
    bpe    the embedded SmolLM2 byte-level BPE (49,152 tokens): the tokenizer of the lab's own model and of
           the tiny test models, so the tokenization page explains exactly what this run sees
Split: the first (1 - val_fraction) of the ids train, the rest validate (like nanoGPT's prepare.py).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from core.units import plural

DATASETS = ("tinyshakespeare", "pasted")
TOKENIZERS = ("char", "bpe")
MIN_PASTED_CHARS = 200


@dataclass(frozen=True)
class TextData:
    """Token ids of one text, split, with the tokenizer that made them."""

    train: torch.Tensor  # [n_train] int64
    val: torch.Tensor  # [n_val] int64
    vocab_size: int
    tokenizer: str  # char | bpe
    chars: str  # the char vocabulary in id order ("" for bpe)
    n_chars: int  # characters of text used

    def encode(self, text: str) -> list[int]:
        if self.tokenizer == "char":
            index = {c: i for i, c in enumerate(self.chars)}
            return [index[c] for c in text if c in index]
        return bpe_tokenizer().encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer == "char":
            return "".join(self.chars[i] for i in ids)
        return bpe_tokenizer().decode(ids)

    @property
    def nbytes(self) -> int:
        return self.train.numel() * self.train.element_size() + self.val.numel() * self.val.element_size()


@functools.lru_cache(maxsize=1)
def bpe_tokenizer() -> Any:
    from core.models.loading import embedded_tokenizer

    return embedded_tokenizer()


def load_text(dataset: str = "tinyshakespeare", text: str = "", max_chars: int = 0) -> str:
    """The training text; ValueError for an unknown dataset or an empty/too short pasted text."""
    if dataset == "tinyshakespeare":
        from core.data import tiny_shakespeare

        body = tiny_shakespeare()
    elif dataset == "pasted":
        body = text or ""
        if not body.strip():
            raise ValueError("The pasted text is empty: paste some text to train on, or choose Tiny Shakespeare.")
    else:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    if max_chars and max_chars > 0:
        body = body[:max_chars]
    if len(body) < MIN_PASTED_CHARS:
        raise ValueError(f"The text has {plural(len(body), 'character')}; training needs at least {MIN_PASTED_CHARS:,} "
                         "(a train and a validation part, each longer than one block).")
    return body


def char_vocabulary(text: str) -> str:
    return "".join(sorted(set(text)))


@functools.lru_cache(maxsize=8)
def _encoded(digest: str, tokenizer: str, chars: str, text: str) -> torch.Tensor:
    if tokenizer == "char":
        index = {c: i for i, c in enumerate(chars)}
        return torch.tensor([index[c] for c in text if c in index], dtype=torch.long)
    return torch.tensor(bpe_tokenizer().encode(text, add_special_tokens=False), dtype=torch.long)


def build_data(dataset: str = "tinyshakespeare", tokenizer: str = "char", text: str = "", max_chars: int = 0,
               val_fraction: float = 0.1, chars: str = "") -> TextData:
    """Tokenize and split; `chars` fixes the char vocabulary (a resumed run keeps the one it started with)."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"Unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}.")
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be between 0 and 0.5, got {val_fraction}")
    body = load_text(dataset, text, max_chars)
    if tokenizer == "char":
        chars = chars or char_vocabulary(body)
        vocab = len(chars)
    else:
        chars, vocab = "", len(bpe_tokenizer())
    digest = hashlib.sha1(body.encode("utf-8", "surrogatepass")).hexdigest()
    ids = _encoded(digest, tokenizer, chars, body)
    n = int(len(ids) * (1 - val_fraction))
    return TextData(train=ids[:n], val=ids[n:], vocab_size=vocab, tokenizer=tokenizer, chars=chars,
                    n_chars=len(body))


def get_batch(ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows: x [batch, block] and y = x shifted by one token (the next-token targets)."""
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    x = torch.stack([ids[i:i + block_size] for i in starts])
    y = torch.stack([ids[i + 1:i + 1 + block_size] for i in starts])
    return x.to(device), y.to(device)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator determined by (seed, step, stream): a resumed run draws the batches the first run would have."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63))

