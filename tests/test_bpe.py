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


# ---------------------------------------------------------------- the Tokens page

PAGE = "pages/4_Tokens.py"


def _table(at, column: str):
    """The first dataframe on the page that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _merge_pairs(at) -> list[str]:
    return list(_table(at, "pair")["pair"])


@pytest.mark.parametrize("source", ["tiny-gpt2", "tiny-llama", pytest.param("embedded", marks=pytest.mark.embedded)])
def test_page_runs(source):
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, source)
    assert_clean(at)
    assert [h.value for h in at.header][:2] == ["1. Byte-pair encoding from scratch",
                                                "2. Your model's tokenizer vs this BPE"]
    assert not at.warning
    assert len(at.dataframe) >= 3  # merges, top words, model tokens


def test_page_bpe_toy_corpora_and_vocab_range():
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, "tiny-llama")
    at.radio(key="bpe_corpus").set_value("low lower lowest").run()
    assert_clean(at)
    assert _merge_pairs(at)[:2] == ["l + o", "lo + w"]
    assert at.slider(key="bpe_vocab").min == 8  # the base symbols: no size below them is offered
    at.slider(key="bpe_vocab").set_value(10).run()
    assert_clean(at)
    assert _merge_pairs(at) == ["l + o", "lo + w"] and not at.warning
    at.radio(key="bpe_corpus").set_value("Sennrich et al. toy corpus").run()
    assert at.slider(key="bpe_vocab").min == 11 and not at.warning  # a new text: the value follows it
    at.slider(key="bpe_vocab").set_value(16).run()
    assert _merge_pairs(at)[:5] == ["e + s", "es + t", "est + </w>", "l + o", "lo + w"]
    at.radio(key="bpe_base").set_value("bytes").run()
    assert_clean(at)
    assert at.slider(key="bpe_vocab").min == 257 and not at.warning  # 256 bytes + </w>


def test_page_vocabulary_follows_the_text_after_a_one_character_text():
    """Issue 9: after "a", the slider stayed at 3 for every later text ("too small… Pick at least 29")."""
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, "tiny-llama")
    at.radio(key="bpe_corpus").set_value("Your own text").run()
    at.text_area(key="bpe_text").set_value("a").run()
    assert_clean(at)
    at.text_area(key="bpe_text").set_value("the quick brown fox jumps over the lazy dog " * 5).run()
    assert_clean(at)
    assert not any("too small" in w.value for w in at.warning)
    slider = at.slider(key="bpe_vocab")
    assert slider.min == 27 and slider.value > slider.min  # 26 letters + </w> and len(_merge_pairs(at)) > 0


def test_page_bad_text_inputs():
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, "tiny-gpt2")
    at.radio(key="bpe_corpus").set_value("Your own text").run()
    assert_clean(at)
    assert any("training text is empty" in i.value for i in at.info)
    at.text_area(key="bpe_text").set_value("   \n  ").run()
    assert any("training text is empty" in i.value for i in at.info)
    at.text_area(key="bpe_text").set_value("数据 😀 😀 emoji 🎉🎉 日本語 日本 " * 2_000).run()  # ~20,000 characters
    assert_clean(at)
    assert len(_merge_pairs(at)) > 0
    at.text_input(key="bpe_sentence").set_value("x" * 20_000).run()
    assert_clean(at)
    assert any("only the first 2,000" in w.value for w in at.warning)
    at.text_input(key="bpe_sentence").set_value("  ").run()
    assert any("sentence is empty" in i.value for i in at.info)


def test_page_chips_show_markdown_literally():
    """Issue 9: `**bold** $x^2$` broke the chips into raw <span> HTML and made "bold" bold."""
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, "tiny-llama", bpe_sentence="**bold** $x^2$ `code`")
    assert_clean(at)
    chips = [m.value for m in at.markdown if m.value.startswith("<span")]
    assert len(chips) == 2  # the BPE's and the model's
    for html_chips in chips:  # every Markdown/LaTeX special is an entity, in the text and in the titles
        assert "*" not in html_chips and "$" not in html_chips and "`" not in html_chips
        assert "&#42;" in html_chips and "&#36;" in html_chips


def test_page_runs_the_command_it_shows():
    """The command under "How this was computed" (shell-quoted) exits 0 with the merges the page shows."""
    from pagetest import assert_clean, run_page
    from shown_command import run_shown_command

    at = run_page(PAGE, "tiny-llama")
    at.radio(key="bpe_corpus").set_value("Sennrich et al. toy corpus").run()
    at.slider(key="bpe_vocab").set_value(16).run()
    assert_clean(at)
    command = next(c.value for c in at.code if c.value.startswith("python -m core bpe"))
    assert "alt.Chart" not in command
    out = run_shown_command(command)
    assert [" + ".join(m["pair"]) for m in out["merges"]] == _merge_pairs(at)


@pytest.mark.embedded
def test_page_widgets_embedded():
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, "embedded")
    at.radio(key="bpe_base").set_value("bytes").run()
    assert_clean(at)
    at.slider(key="bpe_step").set_value(5).run()
    assert_clean(at)
    assert any(m.value.startswith("**Step 5**") for m in at.markdown)


def test_page_chips_escape_once(load):
    """Issue 20: the default sentence's `king's` showed as `&#x27;s` in both chip rows (escaped twice): one
    HTML unescape of each chip must give back exactly the token the table shows."""
    import html as html_lib

    from core.models.capture import token_display
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, "tiny-llama")
    assert_clean(at)
    sentence = at.text_input(key="bpe_sentence").value
    assert "'" in sentence
    chips = [m.value for m in at.markdown if m.value.startswith("<span")]
    model_row = [html_lib.unescape(t) for t in re.findall(r">([^<]*)</span>", chips[1])]
    assert model_row == [token_display(r["text"]) for r in bpe.model_tokens(load("tiny-llama"), sentence)]
    assert any("'" in t for t in model_row)
    titles = [html_lib.unescape(t) for t in re.findall(r"title='([^']*)'", chips[1])]
    assert all("&#" not in t for t in titles)


def test_page_counts_in_the_singular():
    """Issue 20: "1 characters = 1 UTF-8 bytes"."""
    from pagetest import assert_clean, run_page

    at = run_page(PAGE, "tiny-llama", bpe_sentence="a")
    assert_clean(at)
    assert any(c.value.startswith("1 character = 1 UTF-8 byte = 1 model token ") for c in at.caption)
