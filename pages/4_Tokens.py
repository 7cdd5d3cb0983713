"""Tokens: byte-pair encoding from scratch, step by step, and the model's own tokenizer beside it."""

from __future__ import annotations

import shlex

import altair as alt
import pandas as pd
import streamlit as st

from core.data import tiny_shakespeare
from core.inspect import bpe
from core.models.capture import token_display
from core.models.loading import LoadedModel
from core.units import plural
from ui import state
from ui import tokens as tok
from ui.explain import how_computed
from ui.models import model_picker
from ui.text import code, md
from ui.widgets import clamp_state

TOY_SENNRICH = ("low low low low low lower lower newest newest newest newest newest newest "
                "widest widest widest")
CORPORA = ("Tiny Shakespeare", "Sennrich et al. toy corpus", "low lower lowest", "Your own text")
SHAKESPEARE_CHARS = (1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_115_394)
MAX_SENTENCE_CHARS = 2_000

st.title("🔤 Tokens")
lm = model_picker()
st.markdown(
    "A language model never sees letters: text is cut into **tokens**, and each token becomes an integer id. "
    "This page builds a tokenizer from scratch with byte-pair encoding, then compares it with the model's own. "
    "The next page, *Embeddings and positions*, follows the ids into the model.")


@st.fragment
def merge_step(result: bpe.BPEResult) -> None:
    """One merge of the training: the winning pair, the runners-up, and the most frequent words after it."""
    if len(result.merges) > 1:
        clamp_state("bpe_step", 1, len(result.merges), 1)
        step = st.slider("Look at one step", 1, len(result.merges), key="bpe_step")
    else:
        step = 1
    merge = result.merges[step - 1]
    tied = sum(c == merge.count for _p, c in merge.runners_up)
    why = (f"as often as {tied}{'+' if tied == len(merge.runners_up) else ''} other pair{'s' if tied > 1 else ''}, "
           "and it occurs first in the text (the tie-break)" if tied else "more than any other pair")
    st.markdown(f"**Step {step}**: the pair {code(merge.pair[0])} + {code(merge.pair[1])} occurs "
                f"**{merge.count:,}** times (in {merge.words_changed:,} distinct words): {why}. It becomes the new "
                f"token {code(merge.token)}." + ("" if merge.new_token else " (Another merge had already made this string.)"))
    left, right = st.columns(2)
    with left:
        bars = pd.DataFrame([{"pair": f"{a} + {b}", "count": c, "chosen": i == 0}
                             for i, ((a, b), c) in enumerate([(merge.pair, merge.count), *merge.runners_up])])
        st.altair_chart(alt.Chart(bars, title="Most frequent pairs at this step").mark_bar().encode(
            x=alt.X("count:Q"), y=alt.Y("pair:N", sort=list(bars["pair"]), title=None),
            color=alt.Color("chosen:N", legend=None, scale=alt.Scale(domain=[True, False],
                                                                     range=["#dc2626", "#94a3b8"])),
            tooltip=["pair", "count"]), width="stretch")
    with right:
        st.markdown("**The most frequent words after this step**")
        seg = bpe.segmentations(result, step)
        st.dataframe(pd.DataFrame({"word": [s["word"] for s in seg], "count": [s["count"] for s in seg],
                                   "tokens": [" · ".join(s["tokens"]) for s in seg]}),
                     hide_index=True, width="stretch")


@st.fragment
def compare_tokenizers(lm: LoadedModel, result: bpe.BPEResult | None) -> None:
    """Section 2: one sentence through the BPE trained above and through the model's tokenizer."""
    sentence = state.keep(st.text_input, "A sentence to tokenize", value="The lowest king's newest crown! 😀 日本語",
                          key="bpe_sentence")
    if len(sentence) > MAX_SENTENCE_CHARS:
        st.warning(f"The sentence has {len(sentence):,} characters; only the first {MAX_SENTENCE_CHARS:,} are "
                   "tokenized here.")
        sentence = sentence[:MAX_SENTENCE_CHARS]
    if not sentence.strip():
        st.info("The sentence is empty: type something to tokenize (whitespace alone has no tokens).")
        return
    ours = bpe.encode(result, sentence) if result is not None else []
    theirs = tok.model_tokens(lm, sentence)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**BPE trained above** · {plural(len(ours), 'token')} · vocabulary {result.vocab_size if result else 0:,}")
        if result is None:
            st.info("Train a BPE in section 1 to compare.")
        else:
            tok.chips([t.text for t in ours], [f"id {t.id} · bytes {t.start}–{t.end}" for t in ours],
                      [t.id is None for t in ours])
            if any(t.id is None for t in ours):
                st.caption(f"Dashed tokens are characters the training text never contained: a character-level "
                           f"BPE has to map them to `{bpe.UNKNOWN}`. Byte-level BPE never does.")
    with right:
        st.markdown(f"**{md(lm.name)}** · {plural(len(theirs), 'token')} · vocabulary {len(lm.tokenizer):,}")
        tok.chips([r["text"] for r in theirs], [f"id {r['id']} · {r['token']} · bytes {r['bytes']}" for r in theirs])
    if result is not None:
        agree = bpe.boundary_agreement([(t.start, t.end) for t in ours], [(r["start"], r["end"]) for r in theirs])
        st.caption(f"Cut points (token ends, in UTF-8 bytes): BPE {agree['a']}, model {agree['b']}, shared "
                   f"{agree['shared']}. The model keeps the space inside the next token (`Ġ` / `▁`); this BPE drops "
                   "spaces and marks word ends with `</w>` instead.")
    st.dataframe(pd.DataFrame([{"position": r["position"], "id": r["id"], "vocabulary entry": r["token"],
                                "text": token_display(r["text"]), "UTF-8 bytes": r["bytes"], "n bytes": r["n_bytes"]}
                               for r in theirs]),
                 hide_index=True, width="stretch", height=min(300, 38 + 35 * len(theirs)))
    n_bytes = len(sentence.encode("utf-8"))
    st.caption(f"{plural(len(sentence), 'character')} = {plural(n_bytes, 'UTF-8 byte')} = "
               f"{plural(len(theirs), 'model token')} "
               f"({n_bytes / max(1, len(theirs)):.2f} bytes per token). A token shown as � is a piece of a "
               "multi-byte character (an emoji or CJK character split across tokens).")


# ---------------------------------------------------------------- 1. BPE from scratch

st.header("1. Byte-pair encoding from scratch")
st.markdown(
    "Byte-pair encoding (Sennrich et al., 2016) starts from single characters (or bytes) and repeatedly "
    "**merges the most frequent pair of adjacent symbols** into a new token. Words are split on whitespace "
    "and punctuation first, and each word ends with the marker `</w>`. Ties go to the pair that occurs first "
    "in the text, as in the paper's reference code.")

c1, c2 = st.columns([2, 1])
corpus = state.keep(c1.radio, "Training text", CORPORA, horizontal=True, key="bpe_corpus")
base = state.keep(c2.radio, "Start from", bpe.BASES, horizontal=True, key="bpe_base",
                  format_func=lambda b: "characters" if b == "chars" else "bytes (GPT-2 style)",
                  help="Bytes: the 256 UTF-8 byte values are the base vocabulary, so emoji and CJK never need an "
                       "unknown token (shown in GPT-2's printable byte alphabet: Ġ is a space byte, ð… start an "
                       "emoji).")
if corpus == "Tiny Shakespeare":
    n_chars = state.keep(st.select_slider, "Characters of Tiny Shakespeare to train on", SHAKESPEARE_CHARS,
                         value=100_000, format_func=lambda n: f"{n:,}", key="bpe_chars")
    training_text = tiny_shakespeare()[:n_chars]
elif corpus == "Sennrich et al. toy corpus":
    training_text = TOY_SENNRICH
elif corpus == "low lower lowest":
    training_text = "low lower lowest"
else:
    training_text = state.keep(st.text_area, "Your training text", height=120, key="bpe_text", url=False,
                               placeholder="Paste any text: a paragraph, a poem, code, another language…")
if corpus != "Your own text":
    st.caption(f"Training text: {md(repr(training_text[:200]))}{'…' if len(training_text) > 200 else ''}")

result: bpe.BPEResult | None = None
vocab_size = 300
if not training_text.strip():
    st.info("The training text is empty: paste some text (or pick one of the shipped texts) to train on.")
elif len(training_text) > bpe.MAX_TRAIN_CHARS:
    st.warning(f"The text has {len(training_text):,} characters; training here is limited to "
               f"{bpe.MAX_TRAIN_CHARS:,}.")
else:
    summary = tok.corpus_summary(training_text, base)
    lo = summary["base_size"]
    upper = lo + min(summary["merge_bound"], bpe.MAX_MERGES)
    tok.follow_text("bpe_vocab", (corpus, base, hash(training_text)), lo, upper, tok.vocab_default(lo, upper))
    m = st.columns(4)
    m[0].metric("Characters", f"{summary['chars']:,}")
    m[1].metric("Words", f"{summary['words']:,}")
    m[2].metric("Distinct words", f"{summary['unique_words']:,}")
    m[3].metric("Base symbols", lo, help="Characters (or the 256 bytes) plus the `</w>` marker.")
    if upper > lo:
        vocab_size = st.slider("Vocabulary size (base symbols + merges)", lo, upper, key="bpe_vocab",
                               help=f"At least {lo} (the base symbols). Each merge adds one token.")
    else:
        vocab_size = lo
        st.caption(f"Vocabulary size: {lo} (no pair occurs twice, so there is nothing to merge).")
    try:
        result = tok.train(training_text, vocab_size, base)
    except bpe.BPEError as exc:
        st.warning(str(exc))

if result is not None:
    if result.notice:
        st.info(result.notice)
    squeeze = tok.compression(training_text, vocab_size, base)
    m = st.columns(3)
    m[0].metric("Merges learned", f"{len(result.merges):,}")
    m[1].metric("Vocabulary", f"{result.vocab_size:,}")
    m[2].metric("Tokens for the training words", f"{squeeze['tokens_after']:,}",
                delta=f"{squeeze['ratio']:.2f}× fewer", delta_color="off",
                help=f"Every word of the training text (with its frequency), split with the learned merges, "
                     f"against {squeeze['symbols_before']:,} base symbols before any merge.")
    if result.merges:
        st.subheader("The merges, step by step")
        table = pd.DataFrame({
            "step": [m.rank + 1 for m in result.merges],
            "pair": [f"{m.pair[0]} + {m.pair[1]}" for m in result.merges],
            "count": [m.count for m in result.merges],
            "new token": [bpe.readable(m.token, result.base) for m in result.merges],
            "runners-up": ["  ·  ".join(f"{a}+{b}: {c}" for (a, b), c in m.runners_up) for m in result.merges],
        })
        st.dataframe(table, hide_index=True, width="stretch", height=min(400, 38 + 35 * len(table)))
        merge_step(result)

# ---------------------------------------------------------------- 2. the model's tokenizer vs BPE

st.header("2. Your model's tokenizer vs this BPE")
compare_tokenizers(lm, result)

with st.expander("Special tokens of the model's tokenizer"):
    specials = bpe.special_tokens(lm)
    if specials:
        st.dataframe(pd.DataFrame(specials), hide_index=True, width="stretch")
    else:
        st.info("This tokenizer declares no special tokens.")
    bos = getattr(lm.tokenizer, "add_bos_token", False)
    st.caption("The lab prepends the BOS token before running the model." if bos else
               "No token is prepended to your text before the model runs (this tokenizer adds no BOS).")

if corpus == "Tiny Shakespeare":
    bpe_source = f"--chars {n_chars}"
elif corpus == "Your own text":
    bpe_source = "--file your_text.txt"
else:
    bpe_source = f"--text {shlex.quote(training_text)}"
state.share_link()
how_computed(bpe.train_bpe, bpe.encode, bpe.model_tokens,
             command=f"python -m core bpe {bpe_source} --base {base} --vocab-size {vocab_size} "
                     f"--encode {shlex.quote('lowest newest')}")
