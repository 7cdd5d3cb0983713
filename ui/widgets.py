"""Keeping widget values valid when what they index changes (another model, another text)."""

from __future__ import annotations

from typing import Any

import streamlit as st


def clamp_state(key: str, lo: int, hi: int, default: int | None = None) -> None:
    """Keep a keyed widget's remembered value inside [lo, hi] (another model may have fewer layers or heads).

    With `default`, a key that has no value yet gets it (clamped too), so the widget can be created
    without its own value argument and never raises a stale-range error."""
    value = st.session_state.get(key, default)
    if value is None:
        return
    st.session_state[key] = int(min(max(value, lo), hi))


def keep_choice(key: str, choices: list[Any], default: Any = None) -> None:
    """Replace a remembered choice that is no longer offered (e.g. a position of a longer text) by `default`.

    Setting the value, rather than forgetting it, makes Streamlit send it to the browser, which otherwise
    keeps showing the stale option's label (the widget's identity is its key)."""
    value = st.session_state.get(key)
    if value is None or value not in choices:
        if default is not None:
            st.session_state[key] = default
        elif key in st.session_state:
            del st.session_state[key]


# A chart drawn at a fixed width (an attention matrix with one column per token, a grid of heads) wider than
# its column overflowed and was cut on a phone (390 px): its element box scrolls sideways instead. The same for a
# wide formula ("W_QKV ∈ ℝ" lost its dimensions). A Graphviz chart was shrunk to its column instead (the block
# diagram's 10 pt labels came out at ~6 px on a phone): it keeps at least its natural size and scrolls too.
_SCROLL_WIDE = ("<style>[data-testid='stElementContainer']:has([data-testid='stVegaLiteChart']),"
                "[data-testid='stElementContainer']:has([data-testid='stGraphVizChart']),"
                "[data-testid='stElementContainer']:has([data-testid='stImage']),"
                "[data-testid='stElementContainer']:has(.katex-display) {overflow-x: auto;}"
                "[data-testid='stElementContainer'] [data-testid='stGraphVizChart'] svg "
                "{max-width: none; width: auto; min-width: 100%; height: auto;}</style>")


def scroll_wide_charts() -> None:
    """Let fixed-width charts and images scroll inside their own box when the page is narrower than them."""
    st.html(_SCROLL_WIDE)
