"""Cached wrappers and token chips for the Tokens page (the math is in core/inspect/bpe.py)."""

from __future__ import annotations

import streamlit as st

from core.inspect import bpe
from core.models.loading import LoadedModel
from ui.text import html_text, token_html

CHIP_COLOURS = ("#fde2e4", "#dbeafe", "#dcfce7", "#fef3c7", "#ede9fe", "#cffafe")


@st.cache_data(show_spinner=False, max_entries=16)
def corpus_summary(text: str, base: str) -> dict[str, int]:
    return bpe.corpus_summary(text, base)


@st.cache_data(show_spinner="Training byte-pair encoding…", max_entries=16)
def train(text: str, vocab_size: int, base: str) -> bpe.BPEResult:
    return bpe.train_bpe(text, vocab_size, base)


@st.cache_data(show_spinner=False, max_entries=16)
def compression(text: str, vocab_size: int, base: str) -> dict[str, float]:
    return bpe.compression(train(text, vocab_size, base))


@st.cache_data(show_spinner=False, max_entries=64)
def _model_tokens(key: str, text: str, _lm: LoadedModel) -> list[dict]:
    return bpe.model_tokens(_lm, text)


def model_tokens(lm: LoadedModel, text: str) -> list[dict]:
    """The model's own tokenization of `text`: id, vocabulary entry, text and UTF-8 bytes per token."""
    return _model_tokens(lm.spec.key, text, lm)


def vocab_default(base_size: int, upper: int) -> int:
    """The vocabulary size a new training text starts with: 250 merges, or as many as the text allows."""
    return min(base_size + 250, upper)


def follow_text(key: str, signature: tuple, lo: int, hi: int, default: int) -> None:
    """A slider whose range depends on a text: a new text re-seeds it with its own default (the value of an
    earlier text means nothing for this one); the same text keeps the user's value, kept in range."""
    marker = f"{key}__for"
    if st.session_state.get(marker) != signature:
        st.session_state[marker] = signature
        st.session_state[key] = default
    value = st.session_state.get(key, default)
    st.session_state[key] = int(min(max(value, lo), hi))


def chips(tokens: list[str], titles: list[str], unknown: list[bool] | None = None) -> None:
    """Tokens as coloured boxes, so boundaries are visible at a glance (hover for details). Token text is
    escaped for HTML and Markdown: `**bold**`, `$x^2$` and backticks show as typed."""
    unknown = unknown or [False] * len(tokens)
    spans = []
    for i, (token, title, unk) in enumerate(zip(tokens, titles, unknown)):
        style = ("border:2px dashed #dc2626;" if unk else "") + f"background:{CHIP_COLOURS[i % len(CHIP_COLOURS)]}"
        spans.append(f"<span title='{html_text(title)}' style='{style};padding:2px 4px;"
                     f"margin:2px;border-radius:4px;display:inline-block;font-family:monospace;color:#111'>"
                     f"{token_html(token)}</span>")
    st.markdown("".join(spans) or "*(no tokens)*", unsafe_allow_html=True)
