"""Byte-pair encoding from scratch: textbook merges, parity with Sennrich et al.'s reference algorithm,
encoding, byte-level handling, and the model tokenizer helpers."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from core.inspect import bpe
from core.data import tiny_shakespeare

SENNRICH = ("low low low low low lower lower newest newest newest newest newest newest "
            "widest widest widest")


def reference_bpe(text: str, n_merges: int, min_count: int = 2) -> list[tuple[tuple[str, str], int]]:
    """Sennrich et al. (2016), Algorithm 1, recounting every pair at every step (slow and obviously right)."""
    counts: dict[str, int] = {}
    for w in re.findall(r"\w+|[^\w\s]+", text):
        counts[w] = counts.get(w, 0) + 1
    vocab = {tuple(w) + ("</w>",): c for w, c in counts.items()}
    merges = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = defaultdict(int)
        for symbols, freq in vocab.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[a, b] += freq
        if not pairs:
            break
        best = max(pairs, key=pairs.get)  # first in insertion order among ties
        if pairs[best] < min_count:
            break
        merges.append((best, pairs[best]))
        vocab = {bpe.merge_symbols(s, best): f for s, f in vocab.items()}
    return merges


def test_low_lower_lowest_textbook_merges():
    result = bpe.train_bpe("low lower lowest", 100)
    assert [m.pair for m in result.merges][:2] == [("l", "o"), ("lo", "w")]
    assert [m.pair for m in result.merges] == [("l", "o"), ("lo", "w"), ("low", "e")]
    assert [m.count for m in result.merges] == [3, 3, 2]
    assert result.merges[0].token == "lo" and result.merges[1].token == "low"
    # the tie at step 1: ('o','w') also occurs 3 times, and loses because ('l','o') comes first
    assert result.merges[0].runners_up[0] == (("o", "w"), 3)
    assert result.alphabet == ["e", "l", "o", "r", "s", "t", "w", "</w>"]
    assert result.notice and "at most 3 merges" in result.notice and "11 tokens" in result.notice


def test_sennrich_corpus_exact_merge_sequence():
    result = bpe.train_bpe(SENNRICH, 1000)
    got = [(m.pair, m.count) for m in result.merges]
    assert got == [
        (("e", "s"), 9), (("es", "t"), 9), (("est", "</w>"), 9), (("l", "o"), 7), (("lo", "w"), 7),
        (("n", "e"), 6), (("ne", "w"), 6), (("new", "est</w>"), 6), (("low", "</w>"), 5),
        (("w", "i"), 3), (("wi", "d"), 3), (("wid", "est</w>"), 3),
        (("low", "e"), 2), (("lowe", "r"), 2), (("lower", "</w>"), 2),
    ]
    assert got == reference_bpe(SENNRICH, 1000)
    assert result.vocab_size == len(result.alphabet) + 15 == 26
    assert bpe.compression(result) == {"symbols_before": 5 * 4 + 2 * 6 + 6 * 7 + 3 * 7, "tokens_after": 16,
                                       "ratio": 95 / 16}


def test_incremental_training_matches_reference_on_shakespeare():
    text = tiny_shakespeare()[:15_000]
    result = bpe.train_bpe(text, 400, "chars")
    n = len(result.merges)
    assert n == 400 - len(result.alphabet)
    assert [(m.pair, m.count) for m in result.merges] == reference_bpe(text, n)


def test_vocab_size_prefix_property():
    """BPE is greedy: a smaller vocabulary is a prefix of a larger one's merges."""
    text = tiny_shakespeare()[:20_000]
    small, large = bpe.train_bpe(text, 150), bpe.train_bpe(text, 300)
    assert [m.pair for m in large.merges[: len(small.merges)]] == [m.pair for m in small.merges]


def test_encode_applies_merges_in_rank_order():
    result = bpe.train_bpe(SENNRICH, 1000)
    tokens = bpe.encode(result, "lowest newer")
    assert [t.token for t in tokens] == ["low", "est</w>", "new", "e", "r", "</w>"]
    assert [t.id for t in tokens] == [result.vocab[t.token] for t in tokens]
    # spans are UTF-8 byte offsets of the text (the space between words belongs to no token)
    assert [(t.start, t.end) for t in tokens] == [(0, 3), (3, 6), (7, 10), (10, 11), (11, 12), (12, 12)]
    # with only the first two merges (e+s, es+t), 'lowest' keeps its letters l, o, w
    assert [t.token for t in bpe.encode(result, "lowest", n_merges=2)] == ["l", "o", "w", "est", "</w>"]


def test_unknown_characters_with_a_character_base():
    result = bpe.train_bpe("low lower lowest", 11)
    tokens = bpe.encode(result, "low 😀 日本")
    assert [t.id is None for t in tokens] == [False, False, True, False, True, True, False]
    assert tokens[2].token == "😀" and tokens[2].end - tokens[2].start == 4


def test_byte_base_covers_emoji_and_cjk():
    text = "日本語 日本 😀😀 😀 low lower"
    result = bpe.train_bpe(text, 257 + 8, "bytes")
    assert len(result.alphabet) == 257
    sentence = "日本語の😀 new"
    tokens = bpe.encode(result, sentence)
    assert all(t.id is not None for t in tokens)
    # the tokens' bytes rebuild each word exactly
    for w, match in enumerate(bpe.split_words(sentence)):
        parts = b"".join(bpe.symbol_bytes(t.token, "bytes") for t in tokens if t.word == w)
        assert parts == match.group().encode("utf-8")
    assert tokens[-1].end == len(sentence.encode("utf-8"))
    # 😀 (f0 9f 98 80) occurs 3 times: its first two bytes are the first merge, shown as 'ð' + 'Ł'
    first = result.merges[0]
    assert (first.pair, first.count) == (("ð", "Ł"), 3)
    assert bpe.symbol_bytes(first.token, "bytes") == b"\xf0\x9f"
    assert bpe.readable(first.token, "bytes") == "�"


def test_byte_alphabet_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert bpe.byte_alphabet() == bytes_to_unicode()


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_refused(text):
    with pytest.raises(bpe.BPEError, match="empty"):
        bpe.train_bpe(text, 100)


@pytest.mark.parametrize("size", [0, -5, 7])
def test_vocab_below_the_base_alphabet_is_refused(size):
    with pytest.raises(bpe.BPEError, match="Pick at least 8"):
        bpe.train_bpe("low lower lowest", size)


def test_vocab_above_the_merge_cap_is_refused():
    with pytest.raises(bpe.BPEError, match="At most"):
        bpe.train_bpe("low lower lowest", 8 + bpe.MAX_MERGES + 1)


def test_unknown_base_is_refused():
    with pytest.raises(bpe.BPEError):
        bpe.train_bpe("low", 10, "words")


def test_twenty_thousand_characters_train():
    text = tiny_shakespeare()[:20_000]
    summary = bpe.corpus_summary(text)
    result = bpe.train_bpe(text, summary["base_size"] + 100)
    assert len(result.merges) == 100 and result.notice is None
    assert summary["merge_bound"] >= 100


def test_segmentations_follow_the_steps():
    result = bpe.train_bpe(SENNRICH, 1000)
    seg = {s["word"]: s["tokens"] for s in bpe.segmentations(result, 3)}
    assert seg["newest"] == ["n", "e", "w", "est</w>"]
    assert seg["low"] == ["l", "o", "w", "</w>"]


# ---------------------------------------------------------------- the model's tokenizer


def test_token_bytes_formats():
    assert bpe.token_bytes("Ġworld") == b" world"
    assert bpe.token_bytes("âĢĻ") == "’".encode("utf-8")
    assert bpe.token_bytes("<0xF0>") == b"\xf0"
    assert bpe.token_bytes("▁the") == b" the"


def test_model_tokens_rebuild_the_text_bytes(load):
    lm = load("tiny-llama")  # the embedded model's tokenizer
    text = "The king's crown! 😀 日本語 naïve"
    rows = bpe.model_tokens(lm, text)
    assert [r["id"] for r in rows] == lm.encode(text)
    assert b"".join(bytes.fromhex(r["bytes"]) for r in rows) == text.encode("utf-8")
    assert rows[0]["start"] == 0 and rows[-1]["end"] == len(text.encode("utf-8"))
    assert all(a["end"] == b["start"] for a, b in zip(rows, rows[1:]))
    emoji = [r for r in rows if "😀".encode("utf-8")[1:2].hex() in r["bytes"]]
    assert emoji and any(r["text"].endswith("�") or "�" in r["text"] for r in emoji)


def test_model_tokens_of_a_sentencepiece_tokenizer_skip_the_dummy_prefix():
    """Llama 2 / Mistral style: Metaspace '▁' for spaces, a '▁' prepended to the first word."""
    import threading
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    raw.train_from_iterator(["the king and the queen went to the castle"] * 50,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    lm = SimpleNamespace(tokenizer=tok, tokenizer_lock=threading.Lock(),
                         encode=lambda t: tok(t, add_special_tokens=False)["input_ids"],
                         token_strings=lambda ids: [tok.decode([i]) for i in ids])
    text = "the king went"
    rows = bpe.model_tokens(lm, text)
    assert rows[0]["token"].startswith("▁")  # the prefix is in the vocabulary entry...
    assert b"".join(bytes.fromhex(r["bytes"]) for r in rows) == text.encode()  # ...not in the text's bytes
    assert rows[-1]["end"] == len(text) and all(a["end"] == b["start"] for a, b in zip(rows, rows[1:]))
    assert bpe.boundaries([(r["start"], r["end"]) for r in rows]) >= {3, 8, 13}  # the word ends


def test_special_tokens(load):
    lm = load("tiny-gpt2")
    rows = {r["token"]: r for r in bpe.special_tokens(lm)}
    assert "<|endoftext|>" in rows
    assert rows["<|endoftext|>"]["id"] == lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert set(rows) == set(lm.tokenizer.all_special_tokens)


def test_boundary_agreement():
    a = [(0, 3), (3, 6), (7, 12)]
    b = [(0, 6), (6, 12)]
    assert bpe.boundary_agreement(a, b) == {"a": 3, "b": 2, "shared": 2}


# ---------------------------------------------------------------- CLI


def test_cli_bpe(capsys):
    from core.cli import main

    assert main(["bpe", "--text", "low lower lowest", "--vocab-size", "10", "--encode", "lowest"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["pair"] for m in out["merges"]] == [["l", "o"], ["lo", "w"]]
    assert [t["token"] for t in out["encoded"]] == ["low", "e", "s", "t", "</w>"]
    assert main(["bpe", "--text", "low lower lowest", "--vocab-size", "0"]) == 2
    assert "at least 8" in capsys.readouterr().err
