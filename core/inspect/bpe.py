"""Byte-pair encoding trained from scratch (Sennrich et al. 2016), and the loaded model's own tokenizer.

Training, step by step:
  1. Pre-tokenize: split the text into words and punctuation runs (`\\w+|[^\\w\\s]+`); whitespace is
     dropped. Each word becomes its base symbols followed by the end-of-word marker `</w>` (Sennrich's
     convention: `low</w>` as a whole word differs from `low` at the start of `lower`).
  2. Count each distinct word once with its frequency: the work of a merge is per unique word.
  3. Repeat until the vocabulary has the requested size: find the most frequent pair of adjacent
     symbols, merge it into a new token everywhere, and update the pair counts only in the words that
     contained it (incremental counts, no recount of the corpus).

Base symbols: `chars` (the characters that occur in the text) or `bytes` (all 256 byte values of UTF-8,
written with GPT-2's printable byte alphabet, so emoji and CJK never need an unknown token).

Tie-breaking (deterministic): among pairs with the same count, the pair that occurs first when the
unique words are read in order of first appearance, each left to right, wins. This is exactly what the
reference code of Sennrich et al. does (`max(pairs, key=pairs.get)` over an insertion-ordered dict).

Encoding applies the learned merges in rank order: within each word, repeatedly merge the adjacent pair
with the lowest rank (the one learned earliest) until no learned pair is left (GPT-2's `bpe()`).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

END_OF_WORD = "</w>"
BASES = ("chars", "bytes")
MIN_PAIR_COUNT = 2  # a pair seen once would only memorise one word: merging it compresses nothing
MAX_MERGES = 3000  # keeps a page responsive; Tiny Shakespeare trains 1,000 merges in about a second
MAX_TRAIN_CHARS = 2_000_000
UNKNOWN = "<unk>"
_WORD = re.compile(r"\w+|[^\w\s]+")

Pair = tuple[str, str]


class BPEError(ValueError):
    """Input the trainer cannot use, with a message meant for the user."""


# ---------------------------------------------------------------- base symbols


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stay themselves, the others
    (space, control bytes, ...) are shifted to U+0100 and up, so every byte is one visible character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, shift = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in byte_alphabet().items()}


def word_symbols(word: str, base: str) -> list[str]:
    """A word as base symbols plus the end-of-word marker: 'low' -> ['l', 'o', 'w', '</w>']."""
    if base == "bytes":
        table = byte_alphabet()
        return [table[b] for b in word.encode("utf-8")] + [END_OF_WORD]
    return list(word) + [END_OF_WORD]


def symbol_bytes(symbol: str, base: str) -> bytes:
    """The UTF-8 bytes a symbol or merged token stands for (the end-of-word marker stands for none)."""
    text = symbol[: -len(END_OF_WORD)] if symbol.endswith(END_OF_WORD) else symbol
    if base == "bytes":
        decoder = _byte_decoder()
        return bytes(decoder[c] for c in text)
    return text.encode("utf-8")


def readable(symbol: str, base: str) -> str:
    """What a token says as text: bytes decoded (a partial UTF-8 character shows as �), `</w>` kept."""
    if base != "bytes":
        return symbol
    end = END_OF_WORD if symbol.endswith(END_OF_WORD) else ""
    return symbol_bytes(symbol, base).decode("utf-8", errors="replace") + end


def split_words(text: str) -> list[re.Match]:
    """Pre-tokenization: words and punctuation runs, with their character spans; whitespace dropped."""
    return list(_WORD.finditer(text))


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class MergeStep:
    rank: int  # 0 = the first merge learned
    pair: Pair
    count: int  # how often the pair occurs in the corpus at this step (word frequencies included)
    token: str  # the new token, pair[0] + pair[1]
    runners_up: tuple[tuple[Pair, int], ...]  # the next most frequent pairs at this step, with counts
    words_changed: int  # unique words that contained the pair
    new_token: bool = True  # False when another merge had already produced the same string


@dataclass
class BPEResult:
    base: str
    alphabet: list[str]  # base symbols, then the end-of-word marker
    merges: list[MergeStep]
    requested_vocab_size: int
    word_counts: dict[str, int]  # unique words -> frequency, in order of first appearance
    n_chars: int  # characters of training text
    notice: str | None = None  # set when the text could not give the requested vocabulary size
    vocab: dict[str, int] = field(default_factory=dict)  # token -> id: base symbols first, then merges

    def __post_init__(self) -> None:
        if not self.vocab:
            for token in self.alphabet + [m.token for m in self.merges]:
                self.vocab.setdefault(token, len(self.vocab))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def ranks(self) -> dict[Pair, int]:
        return {m.pair: m.rank for m in self.merges}


def corpus_words(text: str) -> dict[str, int]:
    """Unique words -> frequency, in order of first appearance (the order ties are broken in)."""
    return dict(Counter(m.group() for m in split_words(text)))


def base_alphabet(words: dict[str, int] | list[str], base: str) -> list[str]:
    """The starting vocabulary: all 256 bytes, or the characters seen; then the end-of-word marker."""
    if base == "bytes":
        table = byte_alphabet()
        return [table[b] for b in range(256)] + [END_OF_WORD]
    return sorted({c for w in words for c in w}) + [END_OF_WORD]


def corpus_summary(text: str, base: str = "chars") -> dict[str, int]:
    """Sizes the page needs before training: words, unique words, base vocabulary, a merge bound.

    `merge_bound` counts adjacent symbol pairs over unique words: no training can do more merges.
    """
    _check_base(base)
    words = corpus_words(text)
    return {
        "chars": len(text),
        "words": sum(words.values()),
        "unique_words": len(words),
        "base_size": len(base_alphabet(words, base)),
        "merge_bound": sum(len(word_symbols(w, base)) - 1 for w in words),
    }


def _check_base(base: str) -> None:
    if base not in BASES:
        raise BPEError(f"Unknown base {base!r}: choose `chars` or `bytes`.")


def _pairs(symbols: tuple[str, ...]) -> list[Pair]:
    return list(zip(symbols, symbols[1:]))


def merge_symbols(symbols: tuple[str, ...], pair: Pair) -> tuple[str, ...]:
    """Replace every occurrence of `pair`, left to right, by one token: (l,o,w) + (l,o) -> (lo,w)."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _first_occurrence(pair: Pair, where: set[int], words: list[tuple[str, ...]]) -> tuple[int, int]:
    """(word index, symbol index) of the pair's first occurrence: the tie-breaking key."""
    w = min(where)
    symbols = words[w]
    for i in range(len(symbols) - 1):
        if symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            return w, i
    raise AssertionError("pair index out of sync")  # pragma: no cover


def _top_pairs(heap: list[tuple[int, Pair]], counts: dict[Pair, int], k: int) -> list[tuple[Pair, int]]:
    """The k most frequent current pairs, plus every pair tied with the first; the heap is left intact."""
    found: dict[Pair, int] = {}
    while heap:
        neg, p = heap[0]
        if counts.get(p) != -neg or p in found:  # stale or duplicate entry: drop it for good
            heapq.heappop(heap)
            continue
        if len(found) >= k and -neg < next(iter(found.values())):
            break
        found[p] = -heapq.heappop(heap)[0]
    for p, c in found.items():
        heapq.heappush(heap, (-c, p))
    return list(found.items())


def train_bpe(text: str, vocab_size: int, base: str = "chars", *, min_pair_count: int = MIN_PAIR_COUNT,
              runners_up: int = 5) -> BPEResult:
    """Learn merges until the vocabulary (base symbols + `</w>` + merged tokens) has `vocab_size` tokens.

    Raises BPEError for an empty text or a size below the base vocabulary. When the text runs out of
    pairs that occur `min_pair_count` times first, the result is smaller and `notice` says the maximum.
    """
    _check_base(base)
    if text is None or not text.strip():
        raise BPEError("The training text is empty: paste some text or pick Tiny Shakespeare.")
    if len(text) > MAX_TRAIN_CHARS:
        raise BPEError(f"The training text has {len(text):,} characters; the limit is {MAX_TRAIN_CHARS:,}.")
    word_counts = corpus_words(text)
    alphabet = base_alphabet(word_counts, base)
    if vocab_size < len(alphabet):
        raise BPEError(f"A vocabulary of {vocab_size:,} tokens is too small: this text already has "
                       f"{len(alphabet):,} base symbols ({'256 bytes' if base == 'bytes' else 'its characters'} "
                       f"and `{END_OF_WORD}`). Pick at least {len(alphabet):,}.")
    if vocab_size > len(alphabet) + MAX_MERGES:
        raise BPEError(f"At most {MAX_MERGES:,} merges are trained here (a vocabulary of "
                       f"{len(alphabet) + MAX_MERGES:,} tokens for this text); pick a smaller size.")

    words = [tuple(word_symbols(w, base)) for w in word_counts]
    freqs = list(word_counts.values())
    counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}  # pair -> indices of the unique words that contain it
    for i, symbols in enumerate(words):
        for p in _pairs(symbols):
            counts[p] = counts.get(p, 0) + freqs[i]
            where.setdefault(p, set()).add(i)

    # A max-heap of (-count, pair) with lazy deletion: an entry is current while its count matches.
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    vocab = set(alphabet)
    merges: list[MergeStep] = []
    notice = None
    while len(vocab) < vocab_size:
        top = _top_pairs(heap, counts, runners_up + 1)
        if not top or top[0][1] < min_pair_count:
            notice = (f"This text allows at most {len(merges):,} merges (a vocabulary of {len(vocab):,} tokens): "
                      f"after that no pair of adjacent symbols occurs {min_pair_count} times or more. "
                      f"You asked for {vocab_size:,}; the {len(merges):,} merges possible are shown.")
            break
        best_count = top[0][1]
        tied = [p for p, c in top if c == best_count]
        best = min(tied, key=lambda p: _first_occurrence(p, where[p], words)) if len(tied) > 1 else tied[0]
        changed = sorted(where[best])
        touched: set[Pair] = set()
        for i in changed:
            old = words[i]
            new = merge_symbols(old, best)
            words[i] = new
            old_pairs, new_pairs = _pairs(old), _pairs(new)
            for p in old_pairs:
                counts[p] -= freqs[i]
            for p in new_pairs:
                counts[p] = counts.get(p, 0) + freqs[i]
            for p in set(old_pairs) - set(new_pairs):
                where[p].discard(i)
            for p in new_pairs:
                where.setdefault(p, set()).add(i)
            touched.update(old_pairs, new_pairs)
        for p in touched:
            if counts[p] <= 0:
                del counts[p]
                where.pop(p, None)
            else:
                heapq.heappush(heap, (-counts[p], p))
        token = best[0] + best[1]
        merges.append(MergeStep(rank=len(merges), pair=best, count=best_count, token=token,
                                runners_up=tuple((p, c) for p, c in top if p != best)[:runners_up],
                                words_changed=len(changed), new_token=token not in vocab))
        vocab.add(token)
    return BPEResult(base=base, alphabet=alphabet, merges=merges, requested_vocab_size=vocab_size,
                     word_counts=word_counts, n_chars=len(text), notice=notice)


# ---------------------------------------------------------------- encoding


@dataclass(frozen=True)
class BPEToken:
    token: str  # the vocabulary entry ('lo', 'w</w>'); bytes shown in GPT-2's byte alphabet
    id: int | None  # None: a character the training text never contained (chars base only)
    text: str  # what it says ('w' for 'w</w>'; a partial UTF-8 character shows as �)
    word: int  # index of the pre-tokenized word it belongs to
    start: int  # UTF-8 byte offsets in the encoded text
    end: int


def encode_word(symbols: list[str] | tuple[str, ...], ranks: dict[Pair, int]) -> list[str]:
    """Apply learned merges to one word, lowest rank first, until none applies."""
    symbols = tuple(symbols)
    while len(symbols) > 1:
        candidates = [p for p in _pairs(symbols) if p in ranks]
        if not candidates:
            break
        symbols = merge_symbols(symbols, min(candidates, key=ranks.__getitem__))
    return list(symbols)


def encode(result: BPEResult, text: str, n_merges: int | None = None) -> list[BPEToken]:
    """Tokens of `text` with the first `n_merges` learned merges (all by default), with byte spans."""
    merges = result.merges if n_merges is None else result.merges[:n_merges]
    ranks = {m.pair: m.rank for m in merges}
    vocab = result.vocab
    tokens: list[BPEToken] = []
    for w, match in enumerate(split_words(text)):
        offset = len(text[: match.start()].encode("utf-8"))
        for sym in encode_word(word_symbols(match.group(), result.base), ranks):
            n = len(symbol_bytes(sym, result.base))
            tokens.append(BPEToken(token=sym, id=vocab.get(sym), text=readable(sym, result.base),
                                   word=w, start=offset, end=offset + n))
            offset += n
    return tokens


def segmentations(result: BPEResult, n_merges: int, top_words: int = 12) -> list[dict[str, Any]]:
    """The most frequent training words as they are split after `n_merges` merges."""
    ranks = {m.pair: m.rank for m in result.merges[:n_merges]}
    common = sorted(result.word_counts.items(), key=lambda kv: -kv[1])[:top_words]
    return [{"word": w, "count": c, "tokens": encode_word(word_symbols(w, result.base), ranks)} for w, c in common]


def compression(result: BPEResult, n_merges: int | None = None) -> dict[str, float]:
    """Tokens needed for the training words before and after the merges (word frequencies included)."""
    merges = result.merges if n_merges is None else result.merges[:n_merges]
    ranks = {m.pair: m.rank for m in merges}
    before = after = 0
    for w, c in result.word_counts.items():
        symbols = word_symbols(w, result.base)
        before += c * len(symbols)
        after += c * len(encode_word(symbols, ranks))
    return {"symbols_before": before, "tokens_after": after, "ratio": before / after if after else 0.0}


# ---------------------------------------------------------------- the loaded model's tokenizer


def token_bytes(raw_token: str) -> bytes:
    """The bytes a tokenizer vocabulary entry stands for.

    Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) writes bytes in GPT-2's byte alphabet ('Ġ' = space);
    SentencePiece writes '▁' for a space and `<0xF0>` for a byte fallback; anything else is UTF-8 text.
    """
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", raw_token):
        return bytes([int(raw_token[3:5], 16)])
    decoder = _byte_decoder()
    if all(c in decoder for c in raw_token):
        return bytes(decoder[c] for c in raw_token)
    return raw_token.replace("▁", " ").encode("utf-8")


def model_tokens(lm: Any, text: str) -> list[dict[str, Any]]:
    """The model's tokenization of `text` (no special tokens added): id, vocabulary entry, text, bytes."""
    ids = lm.encode(text)
    with lm.tokenizer_lock:
        raw = lm.tokenizer.convert_ids_to_tokens(ids)
        special = set(lm.tokenizer.all_special_ids)
    texts = lm.token_strings(ids)
    # SentencePiece (Llama 2, Mistral) prepends a '▁' to the first word that the text does not hold;
    # counting it would shift every cut point by one byte.
    dummy_prefix = bool(raw) and raw[0].startswith("▁") and not text.startswith(" ")
    rows, offset = [], 0
    for i, (tid, r, t) in enumerate(zip(ids, raw, texts)):
        b = token_bytes(r) if tid not in special else t.encode("utf-8")
        if i == 0 and dummy_prefix:
            b = b[1:]
        rows.append({"position": i, "id": tid, "token": r, "text": t, "bytes": b.hex(" "),
                     "n_bytes": len(b), "start": offset, "end": offset + len(b), "special": tid in special})
        offset += len(b)
    return rows


def special_tokens(lm: Any) -> list[dict[str, Any]]:
    """Every special token of the tokenizer with its id and role (bos, eos, pad, ...)."""
    tok = lm.tokenizer
    with lm.tokenizer_lock:
        roles: dict[str, list[str]] = {}
        for role in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
            value = getattr(tok, role, None)
            if value:
                roles.setdefault(str(value), []).append(role.removesuffix("_token"))
        rows = [{"token": t, "id": tok.convert_tokens_to_ids(t), "role": ", ".join(roles.get(t, [])) or "added"}
                for t in tok.all_special_tokens]
    return rows


def boundaries(spans: list[tuple[int, int]]) -> set[int]:
    """Byte offsets where a token ends inside the text (the cut points two tokenizations can share)."""
    return {end for _start, end in spans}


def boundary_agreement(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> dict[str, int]:
    """How many cut points two tokenizations of the same text share (whitespace cuts included)."""
    cuts_a, cuts_b = boundaries(a), boundaries(b)
    return {"a": len(cuts_a), "b": len(cuts_b), "shared": len(cuts_a & cuts_b)}
